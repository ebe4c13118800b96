"""python -m train {segmentation,segmentation-study,lab-robustness,failures,clicks,classifier,classifier-study,classifier-ship,evaluate,report,diffusion,synthetic-pool,generator-eval,embeddings,medsam-clicks,embed-heads,embed-finetune,engine-protocol,medsam-seg,autobox} ... (each has --help)."""

import sys

COMMANDS = {
    "segmentation": "train.segmentation",
    "clicks": "train.clicks",
    "classifier": "train.classifier",
    "classifier-study": "train.classifier_study",
    "classifier-ship": "train.classifier_ship",
    "report": "train.report",
    "segmentation-study": "train.seg_study",
    "lab-robustness": "train.lab_robustness",
    "failures": "train.failures",
    "diffusion": "train.diffusion",
    "synthetic-pool": "train.synthetic_pool",
    "generator-eval": "train.generator_eval",
    "diffusion-x0": "train.diffusion_x0",
    "evaluate": "train.evaluate",
    "embeddings": "train.embeddings",
    "medsam-clicks": "train.medsam_clicks",
    "embed-heads": "train.embed_heads",
    "embed-finetune": "train.embed_finetune",
    "engine-protocol": "train.engine_protocol",
    "medsam-seg": "train.medsam_seg",
    "autobox": "train.autobox",
}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__.strip())
        print("commands: " + ", ".join(COMMANDS))
        if argv and argv[0] not in ("-h", "--help"):
            print(f"unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    import importlib

    return importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
