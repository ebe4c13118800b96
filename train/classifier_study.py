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
    p.add_argument("--head", default="type", choices=["type", "presence", "both"],
                   help="with --cv: which head's runs (both: the presence run first, then the type folds)")
    args = p.parse_args(argv)
    rows = []
    if args.cv:
        bb, _, deg = args.cv.partition("+")
        heads = ["presence", "type"] if args.head == "both" else [args.head]
        for head in heads:
            common = ["classifier", "--head", head, "--epochs", str(args.epochs), "--time-budget", str(args.time_budget)]
            for f in ([1, 2, 3, 4] if head == "type" else [0]):
                name = f"cv_{head}_{bb}{'_deg' if deg else ''}_{int(args.time_budget)}s" + (f"_f{f}" if f else "")
                rows.append((name, [*common, "--backbone", bb, "--seed", str(f)]
                             + (["--val-fold", str(f)] if f else []) + (["--degrade-train"] if deg else [])))
    else:
        if args.head != "type":
            raise SystemExit("the backbone study is run on the type head (figshare folds); use --cv for presence")
        common = ["classifier", "--head", "type", "--epochs", str(args.epochs), "--time-budget", str(args.time_budget)]
        for bb in args.backbones:
            for deg in (False, True):
                name = f"{args.head}_{bb}{'_deg' if deg else ''}_{int(args.time_budget)}s_f{args.val_fold}"
                rows.append((name, [*common, "--backbone", bb, "--val-fold", str(args.val_fold)]
                             + (["--degrade-train"] if deg else [])))
    return run_rows(rows, Path(args.root), args.jobs)


if __name__ == "__main__":
    raise SystemExit(main())
