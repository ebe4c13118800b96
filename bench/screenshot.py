"""Regenerate the README screenshot: the app with the phantom loaded and one click on its lesion.

    python bench/screenshot.py [assets/screenshot.png] [--weights-dir weights]

Needs /usr/bin/chromium and the playwright package (see tests/e2e/test_browser.py,
whose helpers this uses). Without trained weights the page shows the classical
random walker answering the click and says why the U-Net and classifier are unavailable.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", nargs="?", default=str(REPO / "assets" / "screenshot.png"))
    p.add_argument("--weights-dir", default=None, help="models to show (default: weights/ when complete)")
    args = p.parse_args(argv)
    from tests.e2e.test_browser import take_screenshot

    path = take_screenshot(Path(args.out), Path(args.weights_dir) if args.weights_dir else None)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
