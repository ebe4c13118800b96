"""python -m bench [core|engines|sam|all] [--quick]: run the benchmark suites, JSON under bench/results/."""

from __future__ import annotations

import sys


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    quick = "--quick" in argv
    argv = [a for a in argv if a != "--quick"]
    which = argv[0] if argv else "all"
    suites = {"core": "bench.bench_core", "engines": "bench.bench_engines", "sam": "bench.bench_sam"}
    if which not in (*suites, "all"):
        print(__doc__)
        return 2
    import importlib

    for name in (suites if which == "all" else [which]):
        if which == "all" and name == "sam" and quick:
            continue
        print(f"\n## {name}\n")
        mod_argv = ["--repeats", "5"] if quick else []
        importlib.import_module(suites[name]).main(mod_argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
