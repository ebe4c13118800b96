"""Brain-tumour MRI lab: parse flags, build the UI, launch.

    python app.py                       # http://127.0.0.1:7860
    python app.py --host 0.0.0.0 --port 7860 --sam-model none --weights-dir weights

Every flag has an environment variable (see ``--help``); on Hugging Face
Spaces GRADIO_SERVER_NAME / GRADIO_SERVER_PORT are honoured. Nothing heavy
(torch, gradio) is imported before the flags are parsed, so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


def _env(*names: str, default=None):
    for n in names:
        v = os.environ.get(n)
        if v:
            return v
    return default


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python app.py",
        description="Brain-tumour MRI clinician demo (research use only, not for diagnosis).")
    p.add_argument("--host", default=_env("BT_HOST", "GRADIO_SERVER_NAME", default="127.0.0.1"),
                   help="address to listen on (env BT_HOST or GRADIO_SERVER_NAME; default 127.0.0.1)")
    p.add_argument("--port", type=int, default=int(_env("BT_PORT", "GRADIO_SERVER_PORT", default="7860")),
                   help="port (env BT_PORT or GRADIO_SERVER_PORT; default 7860)")
    p.add_argument("--share", action="store_true", help="also open a temporary public gradio.live link")
    p.add_argument("--sam-model", default=_env("BT_SAM_MODEL"),
                   help='SAM / SAM 2 hub id or local folder (env BT_SAM_MODEL); "none" disables SAM')
    p.add_argument("--weights-dir", default=_env("BT_WEIGHTS_DIR"),
                   help="folder with unet/, clicks/, classifier/ (env BT_WEIGHTS_DIR; default <repo>/weights)")
    p.add_argument("--annotations-dir", default=_env("BT_ANNOTATIONS_DIR"),
                   help="where accepted corrections are stored (env BT_ANNOTATIONS_DIR; "
                        "default: /data/corrections on Spaces with storage, else <repo>/corrections)")
    p.add_argument("--max-corrections", type=int, default=int(_env("BT_MAX_CORRECTIONS", default="10000")),
                   help="most corrections the store keeps; a save beyond it is refused (env BT_MAX_CORRECTIONS; "
                        "default 10000)")
    p.add_argument("--device", default=_env("BT_DEVICE"), help='torch device, e.g. "cpu" or "cuda" (env BT_DEVICE)')
    p.add_argument("--max-file-size", default=_env("BT_MAX_FILE_SIZE", default="200mb"),
                   help='largest upload accepted, e.g. "200mb" (default)')
    p.add_argument("--concurrency", type=int, default=int(_env("BT_CONCURRENCY", default="2")),
                   help="events processed at once per handler (default 2)")
    p.add_argument("--threads", type=int, default=int(_env("BT_THREADS", default="0")),
                   help="CPU threads per computation (torch, BLAS, OpenMP); 0 = cores / concurrency (default). "
                        "More threads than free cores makes every click slower, not faster")
    args = p.parse_args(argv)
    if args.concurrency < 1:
        p.error("--concurrency must be 1 or more")
    if not 0 < args.port < 65536:
        p.error("--port must be 1..65535")
    if args.threads < 0:
        p.error("--threads must be 0 (automatic) or more")
    if not 1 <= args.max_corrections <= 10_000_000:
        p.error("--max-corrections must be 1..10000000")
    return args


def limit_threads(threads: int, concurrency: int) -> int:
    """Cap the math libraries' thread pools before they are imported; returns the number used.

    With 0, ``cores // concurrency`` (at least 1), unless OMP_NUM_THREADS is
    already set. Oversubscribed OpenMP/BLAS pools spin against each other:
    on a busy 2-core machine a click went from 0.3 s to 8 s with the defaults.
    """
    n = threads or max(1, (os.cpu_count() or 1) // max(1, concurrency))
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        if threads or var not in os.environ:
            os.environ[var] = str(n)
    return int(os.environ["OMP_NUM_THREADS"])


def build(args: argparse.Namespace):
    """The queued Blocks for these flags (models load lazily; their status is probed once here)."""
    from bt_demo.io.corrections import CorrectionStore, check_store_root
    from bt_demo.models.registry import Engines
    from bt_demo.ui.layout import build_demo

    engines = Engines(weights_dir=args.weights_dir, sam_model=args.sam_model, device=args.device)
    annotations = str(check_store_root(args.annotations_dir or CorrectionStore.default_root()))  # ~ expanded
    demo = build_demo(engines, annotations_dir=annotations, max_corrections=args.max_corrections)
    demo.queue(default_concurrency_limit=args.concurrency)
    demo.engines = engines  # main() preloads them once the page is served
    return demo


def main(argv=None) -> int:
    args = parse_args(argv)
    limit_threads(args.threads, args.concurrency)  # before numpy / torch are imported
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no call home unless the user asks for it
    # Gradio's queue rebuilds a pandas table of every event it remembers (up to 10,000) after each event, for
    # a monitoring page that is off unless asked for: a cost that grew with the server's life (issue 24).
    # Rebuilt every 100 events over the last 2,000 instead.
    os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "100")
    os.environ.setdefault("GRADIO_ANALYTICS_MAX_EVENTS", "2000")
    from bt_demo.ui import scratch

    scratch.install()  # before Gradio is imported: its upload cache becomes ours, swept at start and exit
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from bt_demo.io.corrections import StoreError
    from bt_demo.ui.layout import CSS, THEME

    try:
        demo = build(args)
    except StoreError as exc:  # checked at start, not at the first save
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # run_history off: Gradio 6 would keep every event's inputs and outputs (slices, masks, reports) in the
    # browser's localStorage, a record of patient images left on a shared workstation, and re-serialise
    # that whole history (up to 100 runs) three times per click: a click slowed with every upload (issue 24)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share,
                max_file_size=args.max_file_size, show_error=False, theme=THEME, css=CSS,
                footer_links=[], run_history=False, prevent_thread_lock=True)
    # engines load after the page serves (they would only compete with start-up for the CPU);
    # panels whose engine is still loading say so and fill in when it is ready
    demo.engines.preload(background=True)
    demo.block_thread()
    return 0


if __name__ == "__main__":
    sys.exit(main())
