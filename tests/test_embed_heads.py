"""Classifier heads on cached LiteMedSAM features (train/embed_heads.py): the study's cross-validation
reads the cache, keeps the held-out fold out of every choice, and reports per fold."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("sklearn")


def _cache(folder, y, folds, x):
    """A cache folder as train/embeddings.py writes it (pooled vectors + manifest lines)."""
    from bt_demo.models.medsam import CHECKPOINT_SHA256
    from train.embed_heads import TYPE_CLASSES
    from train.embeddings import PREP

    (folder / "emb").mkdir(parents=True)
    (folder / "pooled").mkdir()
    with open(folder / "manifest.jsonl", "w") as f:
        for i, (lab, fold, v) in enumerate(zip(y, folds, x, strict=True)):
            iid = f"figshare_{i}"
            np.save(folder / "emb" / f"{iid}.npy", np.zeros((1, 1, 1), np.float16))
            np.save(folder / "pooled" / f"{iid}.npy", v.astype(np.float32))
            f.write(json.dumps({"id": iid, "checkpoint_sha256": CHECKPOINT_SHA256, "prep": PREP,
                                "label": TYPE_CLASSES[lab], "fold": int(fold)}) + "\n")
    return folder


def _features(y, rng, signal):
    centres = rng.normal(size=(3, 64))
    return centres[y] * signal + rng.normal(size=(len(y), 64))


def test_type_head_learns_separable_features_and_reports_every_fold(tmp_path):
    from train.embed_heads import main

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 240)
    folds = np.repeat([1, 2, 3, 4], 60)
    cache = _cache(tmp_path / "cache", y, folds, _features(y, rng, 1.5))
    assert main(["--head", "type", "--model", "linear", "--cache", str(cache), "--out", str(tmp_path / "run")]) == 0
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert [f["val_fold"] for f in res["folds"]] == [1, 2, 3, 4]
    assert all(f["n"] == 60 and f["n_train"] == 180 for f in res["folds"])
    assert res["summary"]["macro_f1"]["mean"] > 0.9
    assert all(f["setting"] in res["grid"] for f in res["folds"])
    from train.embed_heads import report_section

    section = "\n".join(report_section(tmp_path, tmp_path / "no_card.json"))
    assert f"**{res['summary']['macro_f1']['mean']:.3f}" in section and "python -m train embed-heads" in section


def test_exported_linear_head_gives_the_fitted_heads_answers(tmp_path):
    """The exported weights (standardisation folded in) reproduce the pipeline's logits on raw features."""
    from safetensors.numpy import load_file

    from train.embed_heads import main, make_head

    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 160)
    folds = np.repeat([1, 2, 3, 4], 40)
    x = _features(y, rng, 1.5) * 5 + 3  # far from standardised: the folding must matter
    cache = _cache(tmp_path / "cache", y, folds, x)
    main(["--cache", str(cache), "--out", str(tmp_path / "run"), "--export", str(tmp_path / "head")])
    t = load_file(str(tmp_path / "head" / "model.safetensors"))
    cfg = json.loads((tmp_path / "head" / "config.json").read_text())["heads"]["type"]
    ref = make_head("linear", cfg["setting_C"]).fit(x, y).decision_function(x)
    np.testing.assert_allclose(x @ t["type.weight"].T + t["type.bias"], ref, rtol=1e-3, atol=1e-3)
    assert cfg["classes"] == ["glioma", "meningioma", "pituitary"] and cfg["temperature"] > 0


def test_type_head_on_features_without_signal_stays_near_chance(tmp_path):
    """Noise features: the inner CV cannot find a setting that helps, and the held-out folds say so."""
    from train.embed_heads import main

    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 240)
    folds = np.repeat([1, 2, 3, 4], 60)
    cache = _cache(tmp_path / "cache", y, folds, _features(y, rng, 0.0))
    main(["--head", "type", "--model", "linear", "--cache", str(cache), "--out", str(tmp_path / "run")])
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["summary"]["macro_f1"]["mean"] < 0.5


def test_empty_cache_says_how_to_fill_it(tmp_path):
    from train.embed_heads import main

    (tmp_path / "cache").mkdir()
    with pytest.raises(SystemExit, match="python -m train embeddings"):
        main(["--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "run")])


def _presence_set(root, dataset_dir, cache, direction, rng, patients, n_per=10):
    """slices.csv of a generated LGG-layout sequence and its cache: half the slices with a 400 px tumour, the
    rest tumour-free; a tumour moves the pooled features along ``direction`` (each sequence its own)."""
    from bt_demo.models.medsam import CHECKPOINT_SHA256, POOLED_DIM
    from train.embeddings import PREP

    d = root / dataset_dir
    d.mkdir(parents=True, exist_ok=True)
    (cache / "emb").mkdir(parents=True)
    (cache / "pooled").mkdir()
    lines = ["patient,slice,image,mask,mask_pixels,has_tumor"]
    with open(cache / "manifest.jsonl", "w") as man:
        for p in patients:
            for k in range(n_per):
                tumour = k >= n_per // 2
                iid = f"{p}_{k}"
                lines.append(f"{p},{k},{p}/{iid}.tif,{p}/{iid}_mask.tif,{400 if tumour else 0},{int(tumour)}")
                x = rng.normal(size=POOLED_DIM) + (2.5 * direction if tumour else 0)
                np.save(cache / "emb" / f"{iid}.npy", np.zeros((1, 1, 1), np.float16))
                np.save(cache / "pooled" / f"{iid}.npy", x.astype(np.float32))
                man.write(json.dumps({"id": iid, "checkpoint_sha256": CHECKPOINT_SHA256, "prep": PREP,
                                      "patient": p, "slice": k, "has_tumour": tumour}) + "\n")
    (d / "slices.csv").write_text("\n".join(lines) + "\n")


def test_presence_is_reported_per_sequence_and_a_second_sequence_is_learnt_when_trained_on(tmp_path):
    """FLAIR and T1-CE tumours move the features in different directions: a head trained on FLAIR alone finds
    FLAIR tumours and not T1-CE ones, the per-sequence rows say so, and training on both fixes it."""
    from bt_demo.models.medsam import POOLED_DIM
    from train.embed_presence import report_lines, run

    rng = np.random.default_rng(0)
    pats = [f"TCGA_XX_{i:04d}_20000101" for i in range(12)]
    flair_dir, t1_dir = np.zeros(POOLED_DIM), np.zeros(POOLED_DIM)
    flair_dir[:20], t1_dir[20:40] = 1.0, 1.0
    data, caches = tmp_path / "data", tmp_path / "caches"
    _presence_set(data, "lgg", caches / "lgg", flair_dir, rng, pats)
    _presence_set(data, "lgg_sequences", caches / "t1ce", t1_dir, rng, pats)
    y = np.zeros(40, int)
    _cache(caches / "fig", y, np.repeat([1, 2, 3, 4], 10), rng.normal(size=(40, POOLED_DIM)) + 2.5 * t1_dir)
    card = tmp_path / "card.json"
    card.write_text(json.dumps({"split": {"presence": {"train": pats[:8], "val": pats[8:]}}}))
    kw = dict(flair_cache=caches / "lgg", t1ce_cache=caches / "t1ce", fig_cache=caches / "fig", with_cnn=False,
              data_root=data, split_card=card, log=lambda s: None)
    only = run("flair", out=tmp_path / "runs" / "presence_flair", **kw)
    both = run("flair+t1ce", out=tmp_path / "runs" / "presence_flair+t1ce", export=tmp_path / "heads", **kw)
    assert only["val"]["flair"]["roc_auc"] > 0.9 and only["val"]["t1ce"]["roc_auc"] < 0.8
    assert both["val"]["flair"]["roc_auc"] > 0.9 and both["val"]["t1ce"]["roc_auc"] > 0.9
    assert both["val"]["t1ce"]["n"] == 4 * 10 and both["val"]["figshare_fold4"]["n"] == 10
    assert both["val"]["figshare_fold4"]["tumour_recall"] > only["val"]["figshare_fold4"]["tumour_recall"]
    cfg = json.loads((tmp_path / "heads" / "config.json").read_text())["heads"]["presence"]
    assert cfg["classes"] == ["no_tumour", "tumour"] and cfg["threshold"] == 0.5
    table = "\n".join(report_lines(tmp_path / "runs"))
    assert "| flair (" in table and "| flair+t1ce (" in table and "AUC T1-CE" in table


def _stage_cache(folder, y, folds, rng, signal):
    """A figshare cache with s3 maps whose channels carry the class (what embed-finetune reads)."""
    from bt_demo.models.medsam import CHECKPOINT_SHA256
    from train.embed_heads import TYPE_CLASSES
    from train.embeddings import PREP

    for sub in ("emb", "pooled", "stages/s3"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    centres = rng.normal(size=(3, 320, 1, 1))
    with open(folder / "manifest.jsonl", "w") as f:
        for i, (lab, fold) in enumerate(zip(y, folds, strict=True)):
            iid = f"figshare_{i}"
            m = centres[lab] * signal + rng.normal(size=(320, 64, 64))
            np.save(folder / "stages" / "s3" / f"{iid}.npy", m.astype(np.float16))
            np.save(folder / "emb" / f"{iid}.npy", np.zeros((1, 1, 1), np.float16))
            np.save(folder / "pooled" / f"{iid}.npy", rng.normal(size=520).astype(np.float32))  # 8 frozen + the neck's 512
            f.write(json.dumps({"id": iid, "checkpoint_sha256": CHECKPOINT_SHA256, "prep": PREP, "valid_hw": [256, 192],
                                "label": TYPE_CLASSES[lab], "fold": int(fold)}) + "\n")
    return folder


def test_neck_finetune_row_learns_reports_every_fold_and_resumes(tmp_path, one_thread):
    """embed-finetune: the pretrained neck + a linear head, each fold held out, a finished fold not redone."""
    from bt_demo.models import medsam

    if medsam.checkpoint_status():
        pytest.skip("the LiteMedSAM checkpoint (its neck) is not usable here")
    from train.embed_finetune import main

    rng = np.random.default_rng(0)
    y = np.tile([0, 1, 2], 16)
    folds = np.repeat([1, 2, 3, 4], 12)
    cache = _stage_cache(tmp_path / "cache", y, folds, rng, 1.0)
    out = tmp_path / "run"
    args = ["--cache", str(cache), "--out", str(out), "--epochs", "3", "--batch-size", "8", "--head-lr", "0.03",
            "--threads", "1"]
    assert main(args) == 0
    res = json.loads((out / "results.json").read_text())
    assert [f["val_fold"] for f in res["folds"]] == [1, 2, 3, 4]
    assert all(f["n"] == 12 and f["n_train"] + f["n_calibration"] == 36 for f in res["folds"])
    assert res["summary"]["macro_f1"]["mean"] > 0.8  # the class is in every channel: learnable in 3 short epochs
    (out / "fold2" / "result.json").unlink()  # as if killed after fold 2's last epoch was saved
    first = res["folds"][1]["macro_f1"]
    assert main(args) == 0  # resumes: fold 2 is evaluated from its checkpoint, the others are read back
    again = json.loads((out / "results.json").read_text())
    assert again["folds"][1]["macro_f1"] == pytest.approx(first)
    from train.embed_heads import report_section

    section = "\n".join(report_section(tmp_path, tmp_path / "no_card.json"))
    assert "| LiteMedSAM's neck fine-tuned (3 epochs, from cached s3)" in section  # the measured row
    assert "neck fine-tuned (from cached s3 maps) + linear head | not run" not in section  # not also as not run
