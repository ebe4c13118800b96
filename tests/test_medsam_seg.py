"""The segmentation study's rows on LiteMedSAM's encoder (issue 25, part 3), on a tiny generated LGG-layout
dataset: the cache keeps the stage maps the decoder reads and covers exactly a split's patients, the decoder
trains on the cache, exports, loads and resumes; the auto-box row refines U-Net components with MedSAM boxes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bt_demo.models import medsam, medsam_seg
from tests.test_medsam_clicks import _need_checkpoint, phantom

PATIENTS = ["TCGA_AA_0001_20000101", "TCGA_BB_0002_20000101", "TCGA_CC_0003_20000101"]


def _lgg(root):
    """Three patients of four slices each: two with a bright square (tumour), two tumour-free; the last
    patient's slices are not square, so LiteMedSAM's 256 frame has padding."""
    from PIL import Image

    for p, pat in enumerate(PATIENTS):
        shape = (60, 90) if p == 2 else (64, 64)
        pdir = root / pat
        pdir.mkdir(parents=True)
        for n in range(1, 5):
            img, truth = phantom(shape, (18 + n, 20 + 2 * p, 12), seed=10 * p + n)
            if n > 2:  # tumour-free: the head only
                img, truth = phantom(shape, (0, 0, 0), seed=10 * p + n)
            Image.fromarray((img * 255).astype(np.uint8)).save(pdir / f"{pat}_{n}.png")
            Image.fromarray(truth.astype(np.uint8) * 255).save(pdir / f"{pat}_{n}_mask.png")


def test_free_subset_keeps_every_tumour_slice_and_k_free_ones_per_patient():
    from train.embeddings import Item, free_subset

    items = [Item(f"P{p}_{n}", None, n % 3 == 0, {"patient": f"P{p}", "slice": n}) for p in range(2) for n in range(12)]
    keep = free_subset(items, 2)
    assert {it.id for it in keep if it.has_tumour} == {it.id for it in items if it.has_tumour}
    for p in ("P0", "P1"):
        free = [it.meta["slice"] for it in keep if not it.has_tumour and it.meta["patient"] == p]
        assert len(free) == 2 and free[0] < free[1]  # spread over the patient, not the first two


def test_split_patients_reads_a_run_split_and_a_model_card(tmp_path):
    from train.embeddings import split_patients

    (tmp_path / "split.json").write_text(json.dumps({"train": ["a", "b"], "val": ["c"], "test": []}))
    (tmp_path / "card.json").write_text(json.dumps({"split": {"val_patients": ["c"], "train_patients": ["a"]}}))
    assert split_patients(tmp_path / "split.json", "train") == ["a", "b"]
    assert split_patients(tmp_path / "card.json", "val") == ["c"]
    with pytest.raises(SystemExit, match="no 'test' patient list"):
        split_patients(tmp_path / "card.json", "test")


def test_decoder_maps_the_padded_frame_back_to_the_slice():
    model = medsam_seg.build(width=8, full_width=4).eval()
    logits = medsam_seg.predict_logits(model, np.zeros((2, 256, 64, 64), np.float16),
                                       np.zeros((2, 128, 128, 128), np.float16), np.zeros((2, 1, 256, 256)))
    assert logits.shape == (2, 256, 256)
    lg = np.full((256, 256), -10.0, np.float32)
    lg[:100, :50] = 10.0  # the top-left of a 200 x 300 slice resized to 171 x 256 (valid frame)
    probs = medsam_seg.logits_to_probs(lg, (171, 256), (200, 300))
    assert probs.shape == (200, 300)
    assert probs[:110, :55].mean() > 0.95 and probs[130:, 70:].max() < 0.01  # scaled by 300/256, not shifted


def test_cache_with_stages_and_decoder_train_export_load_resume(tmp_path, one_thread):
    _need_checkpoint()
    from train import embeddings
    from train import medsam_seg as trainer

    root, cache, run, out = tmp_path / "lgg", tmp_path / "emb", tmp_path / "run", tmp_path / "export"
    _lgg(root)
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": PATIENTS[:2], "val": PATIENTS[2:], "test": []}))

    # a split's patients only; every tumour slice and one tumour-free slice per patient
    res = embeddings.build_cache("lgg", root, cache, patients=PATIENTS[:2], free_per_patient=1, log=lambda s: None)
    assert res["computed"] == 6
    # asking for the s1 maps as well computes those slices again (an entry counts only with its maps)
    res = embeddings.build_cache("lgg", root, cache, patients=PATIENTS, free_per_patient=1, stages=("s1",),
                                 log=lambda s: None)
    assert res["computed"] == 9 and res["reused"] == 0
    c = embeddings.open_cache(cache)
    s1 = c.stage("s1", c.ids[0])
    assert s1.shape == (128, 128, 128) and s1.dtype == np.float16
    with pytest.raises(SystemExit, match="unknown stage"):
        embeddings.build_cache("lgg", root, cache, stages=("s9",), log=lambda s: None)

    args = ["--cache", str(cache), "--data", str(root), "--split-file", str(split), "--run-dir", str(run),
            "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "2", "--width", "8", "--threads", "1",
            "--export", str(out)]
    assert trainer.main(args) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0] and rows[0]["n_patients"] == 1 and rows[0]["n_slices"] == 3
    result = json.loads((run / "results.json").read_text())
    assert 0 <= result["val"]["patient_dice_mean"] <= 1 and result["postprocessing"]["threshold"] in (0.3, 0.4, 0.5, 0.6, 0.7)

    # the export loads and answers in the slice's own pixels
    model, cfg = medsam_seg.load(out)
    assert cfg["postprocessing"] == result["postprocessing"] and (out / "model.safetensors").stat().st_size < 10 * 2**20
    img, _ = phantom((60, 90), (20, 24, 12))
    enc = medsam.encode(img, stages=True)
    lg = medsam_seg.predict_logits(model, enc.embedding, enc.stages["s1"], medsam.prepare(img)[0][:, :1].numpy())
    assert medsam_seg.logits_to_probs(lg[0], enc.valid_hw, img.shape).shape == (60, 90)

    # measured on held-out patients with the post-processing chosen on validation
    assert trainer.main(["--evaluate", str(out), "--split", "val", "--cache", str(cache), "--data", str(root),
                         "--split-file", str(split), "--threads", "1"]) == 0
    ev = json.loads((out / "eval_val.json").read_text())
    assert ev["postprocessing"] == result["postprocessing"] and ev["metrics"]["n_slices"] == 3
    assert abs(ev["metrics"]["patient_dice_mean"] - result["val"]["patient_dice_mean"]) < 0.02  # float16 on disk

    more = list(args)
    more[more.index("--epochs") + 1] = "2"
    assert trainer.main(more + ["--resume"]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    with pytest.raises(SystemExit, match="not empty"):
        trainer.main(args)


def test_autobox_refines_each_component_inside_its_box(one_thread):
    _need_checkpoint()
    from train.autobox import component_boxes, refine

    img, truth = phantom((64, 64), (20, 18, 14))
    rough = np.zeros_like(truth)
    rough[22:32, 20:30] = True  # the U-Net's mask: inside the tumour, too small
    rough[50:53, 5:8] = True  # and a second, separate blob
    boxes = component_boxes(rough)
    assert sorted(boxes) == [(5, 50, 7, 52), (20, 22, 29, 31)]
    enc = medsam.encode(img, stages=False)
    tumour_box = [b for b in boxes if b[0] == 20]
    out = refine(medsam.load_model("cpu"), enc.embedding, tumour_box, enc.valid_hw, img.shape, margin=5)
    assert out.shape == truth.shape and not out[40:, :].any()  # nothing outside the box

    def dice(a, b):
        return 2 * (a & b).sum() / (a.sum() + b.sum())

    assert dice(out, truth) > dice(rough[:40], truth[:40])  # MedSAM's mask fits the tumour better than the blob
    assert not refine(medsam.load_model("cpu"), enc.embedding, [], enc.valid_hw, img.shape, 5).any()
