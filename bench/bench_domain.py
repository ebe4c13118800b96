"""The image-content brain check (:mod:`bt_demo.image.looks_like_brain`): how often it speaks on real brain slices
(false notices) and on synthetic pictures that are not brain MRI (hits).

python -m bench.bench_domain [--data ../shared/data] [--per-source 400] [--decoys 20] [--json out.json]

Real slices are READ from the data folder (LGG FLAIR, figshare T1-CE, the Sartaj 4-class JPEGs, no-tumour
slices included), a random sample per source with a fixed seed; nothing is copied. Decoys come from
:mod:`bt_demo.sim.decoys` (chest radiograph look, blank, gradient, text, screenshot, photo) and brain phantoms
from :mod:`bt_demo.sim.phantom`. Also prints the quantiles of each measured fact, which is how the rules'
thresholds were chosen.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np

from bench.common import write

REPO = Path(__file__).resolve().parents[1]


def _sources(data: Path) -> dict[str, list[Path]]:
    return {
        "LGG FLAIR (png)": sorted((data / "lgg").glob("*/*[0-9].png")),
        "figshare T1-CE (jpg)": sorted((data / "figshare" / "images").glob("*.jpg")),
        "Sartaj 4-class (jpg)": sorted((data / "classification" / "sartaj_4class").glob("*/*/*.jpg")),
    }


def _read(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("L"), np.float32) / 255.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_domain", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--per-source", type=int, default=400)
    ap.add_argument("--decoys", type=int, default=20, help="pictures per decoy kind")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    from bt_demo.image import looks_like_brain as L
    from bt_demo.sim.decoys import KINDS, decoy
    from bt_demo.sim.phantom import flair_phantom

    rows, facts_real = [], []
    rnd = random.Random(0)
    for name, files in _sources(Path(args.data)).items():
        if not files:
            print(f"{name}: no files under {args.data}, skipped")
            continue
        pick = rnd.sample(files, min(args.per_source, len(files)))
        flagged, why = 0, {}
        for p in pick:
            f = L.facts(_read(p))
            facts_real.append(f)
            r = L.reasons(f)
            if r:
                flagged += 1
                for x in r:
                    why[x.split(" (")[0]] = why.get(x.split(" (")[0], 0) + 1
        rows.append({"item": f"real: {name}", "n": len(pick), "notices": flagged,
                     "rate": round(flagged / len(pick), 4), "reasons": why})
    for kind in ("phantom",) + KINDS:
        n_hit = 0
        for seed in range(args.decoys):
            img = flair_phantom((256, 256), seed=seed)[0] if kind == "phantom" else decoy(kind, 256, seed)
            n_hit += bool(L.reasons(L.facts(img)))
        rows.append({"item": f"synthetic: {kind}", "n": args.decoys, "notices": n_hit,
                     "rate": round(n_hit / args.decoys, 4)})
    for r in rows:
        print(r)
    if facts_real:
        print("quantiles of the facts on real slices (1%, 5%, 50%, 95%, 99%):")
        for k in facts_real[0]:
            v = np.array([f[k] for f in facts_real], float)
            print(f"  {k:11s}", np.round(np.quantile(v, [0.01, 0.05, 0.5, 0.95, 0.99]), 3))
    print(f"written {write('domain_check', rows, path=args.json)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
