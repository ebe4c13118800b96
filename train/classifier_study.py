"""`python -m train classifier-study`: the backbone study of the type head (seeds 000 and 003).

Every backbone, with and without degradation training, trained from scratch
for the same CPU time (--time-budget) on figshare folds 1-3 and validated on
fold 4 (the author's patient-level folds), clean and degraded. Rows land in
``runs/study_classifier/<name>/results.json``; then ``--cv`` runs the chosen
configuration on every fold for the cross-validated numbers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from train.study import run_rows

BACKBONES = ["small_cnn", "vgg_style", "resnet18", "resnet50", "efficientnet_b0", "convnext_atto"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m train classifier-study", description=__doc__)
    p.add_argument("--root", default="runs/study_classifier")
    p.add_argument("--backbones", nargs="+", default=BACKBONES)
    p.add_argument("--time-budget", type=float, default=300, help="training seconds per row (one thread)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--val-fold", type=int, default=4)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--cv", default=None, metavar="BACKBONE[+degrade]",
                   help="instead of the study: this configuration on every fold (1-4) at --time-budget")
    p.add_argument("--head", default="type", choices=["type", "presence"])
    args = p.parse_args(argv)
    common = ["classifier", "--head", args.head, "--epochs", str(args.epochs), "--time-budget", str(args.time_budget)]
    rows = []
    if args.cv:
        bb, _, deg = args.cv.partition("+")
        folds = [1, 2, 3, 4] if args.head == "type" else [0]
        for f in folds:
            name = f"cv_{args.head}_{bb}{'_deg' if deg else ''}_{int(args.time_budget)}s_f{f}"
            rows.append((name, [*common, "--backbone", bb, "--val-fold", str(f), "--seed", str(f)]
                         + (["--degrade-train"] if deg else [])))
    else:
        for bb in args.backbones:
            for deg in (False, True):
                name = f"{args.head}_{bb}{'_deg' if deg else ''}_{int(args.time_budget)}s_f{args.val_fold}"
                rows.append((name, [*common, "--backbone", bb, "--val-fold", str(args.val_fold)]
                             + (["--degrade-train"] if deg else [])))
    return run_rows(rows, Path(args.root), args.jobs)


if __name__ == "__main__":
    raise SystemExit(main())
