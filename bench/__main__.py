"""python -m bench [SUITE ...] [--quick] [--weights-dir DIR]: run benchmark suites, then write the summary.

Suites (default: all but ``sam``, which downloads nothing but takes ~8 min):
  core      preprocessing steps, default pipeline, K-Means, K sweep (256², 512², 1024²)
  engines   U-Net, classifier, Grad-CAM, click model (1..20 clicks), random walker (256², 512², 1024²)
  volume    volume mode: a 155x240x240 volume segmented (time, peak memory), a 30-slice propagation, and the
            numbers on the LGG test patients (3-D Dice, volume error, propagated Dice)
  cohort    the batch command on Dask: 20 volumes in one process, then on LocalClusters of 1 and 2 workers
            (volumes per minute), the scheduler's overhead per task, 1,000 volumes on 1/8/64 workers on paper
  studies   histogram/CDF view, watershed, snakes, measurement, TTA uncertainty (256², 512²)
  ui        the app's handlers: upload -> panels, click -> mask, preprocessing change, K change
  startup   cold start of `python app.py` to the first served page (default flags offline; --sam-model none)
  browser   click -> repainted mask and upload -> panels in headless chromium, beside a minimal Gradio app's
            one-image round trip (the framework's floor) in the same run
  corpus    the bad-input corpus through the upload handler (cases passed)
  crash     SIGKILL during correction-store saves (records written / partial / lost)
  load      gradio_client load test against a real server, 1, 8 and 12 sessions (12 for 60 s)
  soak      300 upload -> click -> export cycles of one session: server memory and scratch/cache size
  hostile   the hostile files of the bad-input corpus through the real server while a victim session clicks
  domain    the image-content brain check: false notices on real slices (../shared/data), hits on decoys
  sam       SAM / SAM 2 image-encoder time per architecture and cached-click time
  summary   only rewrite bench/results/SUMMARY.md from the JSON already there

Each suite writes JSON (with CPU count and library versions) under
bench/results/; SUMMARY.md gathers the latest numbers as Markdown tables (the
README's "Performance and reliability" section quotes it). --quick runs
fewer repeats and the small sizes only, for a smoke run.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from pathlib import Path

from bench.common import RESULTS, machine

SUITES = ["core", "engines", "studies", "ui", "startup", "browser", "corpus", "crash", "load", "soak", "hostile",
          "domain", "volume", "cohort", "sam"]


def _weights(wdir: str | None) -> str | None:
    """The weights folder to bench when it holds all three trained models, else None (random weights)."""
    d = Path(wdir) if wdir else Path(__file__).resolve().parents[1] / "weights"
    return str(d) if all((d / m / "config.json").exists() for m in ("unet", "clicks", "classifier")) else None


def _calls(name: str, quick: bool, wdir: str | None) -> list[tuple[str, list[str]]]:
    w = ["--weights-dir", wdir] if wdir else []
    r = (lambda full, q: ["--repeats", str(q if quick else full)])
    big = "256" if quick else "256,512,1024"
    return {
        "core": [("bench.bench_core", r(20, 3) + ["--sweep-repeats", "1" if quick else "5", "--sizes", big])],
        "engines": [("bench.bench_engines", r(20, 3) + ["--sizes", big] + (w or ["--weights-dir", "/nonexistent"]))],
        "studies": [("bench.bench_studies", r(10, 2) + ["--sizes", "256" if quick else "256,512"])],
        "ui": [("bench.bench_ui", r(7, 2) + w)],
        "startup": [("bench.bench_startup", ["--runs", "1" if quick else "3"] + w)],
        "corpus": [("bench.bench_corpus", [])],
        "crash": [("bench.crash_store", ["--kills", "30" if quick else "300", "--json", str(RESULTS / "crash_store.json")])],
        "load": [("bench.load_test", ["--sessions", str(n), "--seconds", "10" if quick else str(s),
                                      "--out", str(RESULTS / f"load_test_{n}sessions.json")] + w)
                 for n, s in ((1, 30), (8, 30), (12, 60))],
        "soak": [("bench.soak_hostile", ["soak", "--cycles", "40" if quick else "300"] + w)],
        "hostile": [("bench.soak_hostile", ["hostile"] + w)],
        "domain": [("bench.bench_domain", ["--per-source", "200" if quick else "1000"])],
        "browser": [("bench.bench_browser", ["--clicks", str(c), "--json", str(RESULTS / f"browser_latency{sfx}.json")] + w)
                    for c, sfx in (((6, ""),) if quick else ((16, ""), (60, "_60")))],
        "cohort": [("bench.bench_volume", ["--cohort", "6" if quick else "20", "--workers", "1,2"]
                    + (["--weights-dir", wdir] if wdir else []))],
        "volume": [("bench.bench_volume", (["--weights-dir", wdir] if wdir else []) + (["--part", "speed"] if quick else []))],
        "sam": [("bench.bench_sam", ["--repeats", "1" if quick else "3"])],
    }[name]


def _ms(v) -> str:
    return "" if v is None else f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def _merged(dicts) -> dict:
    out: dict = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out


def _load(name: str) -> dict | None:
    p = RESULTS / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() else None


def summary() -> str:
    """Markdown tables of the latest JSON results."""
    out = ["# Benchmark summary", ""]
    m = machine()
    out.append(f"Machine: {m['cpu_count']} CPU cores, {m['platform']}, Python {m['python']}, "
               + ", ".join(f"{k} {v}" for k, v in m["libraries"].items()) + ". Times in ms (median / p95).")
    out.append("")
    for name, title, key in (("core", "Core (preprocessing, K-Means)", "item"),
                             ("engines", "Engines", "item"), ("studies", "Image studies", "item")):
        d = _load(name)
        if not d:
            continue
        sizes = sorted({r.get("size") for r in d["rows"]})
        items = list(dict.fromkeys(r[key] for r in d["rows"]))
        cell = {(r[key], r.get("size")): r for r in d["rows"]}
        extra = f" (weights: {', '.join(f'{k} {v}' for k, v in d['weights_source'].items()) or 'shipped'})" \
            if name == "engines" and "weights_source" in d else ""
        out += [f"## {title}{extra}", "", "| item | " + " | ".join(f"{s}²" for s in sizes) + " |",
                "|---|" + "---|" * len(sizes)]
        for it in items:
            cells = [f"{_ms(cell[(it, s)]['median_ms'])} / {_ms(cell[(it, s)]['p95_ms'])}" if (it, s) in cell else ""
                     for s in sizes]
            out.append(f"| {it} | " + " | ".join(cells) + " |")
        out.append("")
    d = _load("ui_latency")
    if d:
        out += [f"## App handlers (256² phantom; models: {d.get('models', '?')})", "", "| event | median | p95 |",
                "|---|---|---|"]
        out += [f"| {r['event']} | {_ms(r['median_ms'])} | {_ms(r['p95_ms'])} |" for r in d["rows"]]
        out.append("")
    d = _load("startup")
    if d:
        out += ["Cold start of `python app.py` to the first served page: "
                + "; ".join(f"{r['item'].replace('cold start to first page, ', '')}: median {r['median_s']} s, "
                            f"max {r['max_s']} s over {r['runs']} runs" for r in d["rows"]) + ".", ""]
    runs = [d for d in (_load("browser_latency"), _load("browser_latency_60"), _load("browser_latency_medsam")) if d]
    if runs:  # a 16-click and a 60-click session (what grows with the session's length)
        out += ["## What a user waits for in the browser (headless chromium, same run)", "",
                "| measured | clicks in the session | median ms | max ms | n |", "|---|---|---|---|---|"]
        for d in runs:
            n_clicks = next((r["n"] for r in d["rows"] if "times_floor" in r), "")
            out += [f"| {r['item']}" + (f" ({r['times_floor']}× the floor)" if "times_floor" in r else "") + " | "
                    f"{n_clicks if 'upload' not in r['item'] else ''} | {_ms(r['median_ms'])} | {_ms(r['max_ms'])} | "
                    f"{r['n']} |" for r in d["rows"]]
        notes = [d["note"] for d in runs if d.get("note")]
        if notes:
            out += [""] + sorted(set(notes))
        out.append("")
    d = _load("sam_cpu")
    if d:
        out += ["## SAM / SAM 2 on this CPU (random weights of each architecture, 1024² encoder input)", "",
                "| architecture | params (M) | encoder median / p95 |", "|---|---|---|"]
        out += [f"| {e['name']} | {e['params_m']} | {_ms(e['encoder_ms_median'])} / {_ms(e['encoder_ms_p95'])} |"
                for e in d["encoder"]]
        pr = d["predict"]
        out += ["", f"{pr['name']}: a click with the embedding cached takes {_ms(pr['predict_ms_median'])} ms median "
                f"({_ms(pr['predict_ms_p95'])} p95); the first click on a new image {_ms(pr['first_click_ms'])} ms.", ""]
    rows = [r for n in (1, 8, 12) if (d := _load(f"load_test_{n}sessions")) for r in d["rows"]]
    if rows:
        out += ["## Concurrent sessions (gradio_client against a real server)", "",
                "| sessions | seconds | clicks/s | p50 click | p95 click | errors | crosstalk | weights |",
                "|---|---|---|---|---|---|---|---|"]
        out += [f"| {r['sessions']} | {r['seconds']:g} | {r['throughput_clicks_per_s']} | {_ms(r['click_p50_ms'])} | {_ms(r['click_p95_ms'])} | "
                f"{r['errors']} | {r['crosstalk']} | {r.get('weights', '')} |" for r in rows]
        out += [f"\n{r['sessions']} sessions: {r['note']}" for r in rows if r.get("note")]
        out.append("")
    d = _load("volume")
    if d and (d.get("speed") or d.get("lgg_summary")):
        out += ["## Volume mode", ""]
        sp = d.get("speed")
        if sp:
            out.append(f"- A {'×'.join(map(str, sp['shape']))} volume (slices × rows × columns) segmented with the U-Net: "
                       f"median {sp['segment_s_median']} s over 3 runs, peak memory of the process {sp['peak_rss_mb']:.0f} MB; "
                       f"a 30-slice propagation with the click model: {sp['propagate_30_s_median']} s.")
        ls = d.get("lgg_summary")
        if ls:
            rule = ls["rule_chosen_on_validation"]["min_component_share_3d"]
            out.append(f"- LGG test patients of the U-Net card ({ls['test_patients']}, slices stacked; no spacing, so voxels): "
                       f"3-D Dice through the volume path {ls['dice_3d_mean_card_postprocessing']:.4f} (card: "
                       f"{ls['card_patient_dice_mean']:.4f}); with the 3-D rule chosen on the validation patients "
                       f"(keep components ≥ {rule:g} of the largest) {ls['dice_3d_mean_with_rule']:.4f}; tumour volume within "
                       f"10 % for {ls['volume_within_10pct']}; propagated from one simulated click on the middle tumour "
                       f"slice: mean 3-D Dice {ls['propagated_dice_3d_mean']:.3f} inside the U-Net gate "
                       f"({ls.get('propagated_dice_3d_mean_without_gate', float('nan')):.3f} without it).")
        out.append("")
    if (pr := _load("propagation")) and pr.get("summary"):
        out += ["## Propagation engines (`python -m bench.bench_volume --part propagation`)", "",
                f"{pr['note']}; {pr['threads']} torch threads.", "",
                "| engine and prompt on the next slice | mean 3-D Dice | worst patient | patients | s per slice |",
                "|---|---|---|---|---|"]
        out += [f"| {k} | {v['mean_dice_3d']:.3f} | {v['worst_dice_3d']:.3f} | {v['patients']} | {v['s_per_slice']} |"
                for k, v in pr["summary"].items()]
        out.append("")
    if (co := _load("cohort")):
        out += ["## Cohort batch on Dask (`python -m bench.bench_volume --cohort N --workers 1,2`)", "",
                f"{co['volumes']} phantom volumes of {'×'.join(map(str, co['shape_zyx']))} voxels (NIfTI), the "
                "shipped U-Net:", "",
                "| how | seconds | volumes / min | after the cluster started | masks as one 1-thread process |",
                "|---|---|---|---|---|"]
        out += [f"| {r['mode']} | {r['seconds']} | {r['volumes_per_min']} | {r.get('volumes_per_min_after_start', '')} "
                f"| {r.get('masks_identical_to_1_thread_process', '')} |" for r in co["rows"]]
        out += ["", f"The scheduler's overhead: {co['scheduler_overhead_ms_per_task']} ms per task (no-op tasks on 2 "
                f"workers). On paper, from {co['seconds_per_volume_one_process']} s per volume on one core: 1,000 "
                "volumes take " + ", ".join(f"{p['minutes_for_1000']} min on {p['workers']} worker(s)"
                                             for p in co["paper_1000_volumes"]) + f" ({co['paper_note']}).", ""]
    d, c = _load("corpus"), _load("crash_store")
    dom = _load("domain_check")
    if dom:
        real = [r for r in dom["rows"] if r["item"].startswith("real")]
        fake = [r for r in dom["rows"] if r["item"].startswith("synthetic") and "phantom" not in r["item"]]
        out += ["## Image-content brain check (`python -m bench.bench_domain`)", "",
                "| pictures | n | with a notice |", "|---|---|---|"]
        out += [f"| {r['item']} | {r['n']} | {r['notices']} ({100 * r['rate']:.1f} %) |" for r in dom["rows"]]
        out += ["", f"Real slices: {sum(r['notices'] for r in real)} notices on {sum(r['n'] for r in real)} "
                f"(reasons: " + "; ".join(f"{k} {v}" for k, v in _merged(r.get("reasons", {}) for r in real).items())
                + "). "
                f"Decoys: {sum(r['notices'] for r in fake)} of {sum(r['n'] for r in fake)}.", ""]
    if d or c or _load("hostile") or _load("soak"):
        out += ["## Reliability", ""]
        if d:
            out.append(f"- Bad-input corpus through the upload handler: {d['passed']}/{d['total']} cases behaved as required "
                       "(clear message or loaded; the next good upload worked).")
        if (h := _load("hostile")):
            r = h["rows"][0]
            out.append(f"- Hostile files through the real server ({r['files']} files of the corpus's items 2, 3 and 9 "
                       f"and a {r['cases'][-1]['file']} of the largest accepted size, each uploaded and, when it "
                       f"loads, clicked and exported, while a victim session clicks): slowest request "
                       f"{r['slowest_request_ms'] / 1000:.1f} s, server memory +{r['rss_mb_rise']:.0f} MB at peak, "
                       f"victim click p95 {_ms(r['victim_click_p95_ms'])} ms (max {_ms(r['victim_click_max_ms'])}, "
                       f"{r['victim_clicks']} clicks, {len(r['victim_errors'])} errors).")
            if (v := r.get("volumes")):
                out.append(_hostile_volume_lines(v))
        if (s := _load("soak")):
            r = s["rows"][0]
            out.append(f"- Soak, {r['cycles']} upload → click → export cycles of one session: server memory "
                       f"{r['rss_mb']['growth_after_25']:+.1%} and scratch/cache files "
                       f"{r['scratch_files']['growth_after_25']:+.1%} ({r['scratch_bytes']['growth_after_25']:+.1%} "
                       f"bytes) from cycle 25 to the end (RSS {r['rss_mb']['last']:.0f} MB, "
                       f"{r['scratch_files']['last']} files at the end; every 25 cycles: "
                       f"{', '.join(str(v) for v in r.get('files_series_every_25', []))}). Gradio writes every image "
                       "it sends into its cache: views older than 30 s and the empty temp files its upload parser "
                       "leaves are swept every 10 s (`bt_demo/ui/scratch.py`), a replaced export's cached copies go "
                       "with it, and the session's own folder keeps only its latest export.")
        if c:
            out.append(f"- Correction store under SIGKILL: {c['kills']} writers killed, {c['written']} saves returned, "
                       f"{c['readable']} records readable, {c['partial']} partial, {c['lost']} lost.")
        out.append("")
    return "\n".join(out)


def _hostile_volume_lines(v: dict) -> str:
    """The volume path of the hostile bench (issue 26) as one README item."""
    one, three, b = v["one_by_one_server"], v["three_at_once_server"], v["batch"]
    slow = max(r["ms"] for r in v["one_by_one"] + v["three_at_once"])
    return (f"- Hostile volume uploads (`bench/hostile_volumes.py`: zips of zips of 512² and 2048² DICOM files, "
            f"a zip of 2048² files over the voxel budget, a series with one 20000² slice, a multi-frame file "
            f"declaring 4000 frames, a zip member inflating past its declared size, and one legitimate series) "
            f"through the Volume tab while a victim clicks: one by one, slowest request {slow / 1000:.1f} s, server "
            f"memory +{one['rss_mb_rise']:.0f} MB, victim click p95 {_ms(one['victim_click_p95_ms'])} ms; three "
            f"sessions at once: +{three['rss_mb_rise']:.0f} MB, victim click p95 "
            f"{_ms(three['victim_click_p95_ms'])} ms ({three['victim_clicks']} clicks, "
            f"{len(three['victim_errors'])} errors), server up: {three['server_alive']}; the batch command on the "
            f"same files: {b['seconds']} s, peak memory {b.get('driver_peak_rss_mb')} MB (driver) and "
            f"{b.get('largest_worker_peak_rss_mb')} MB (largest worker), every file with its row.")


def update_readme(text: str) -> bool:
    """Put the summary (without its title) between the README's bench-summary markers, when it has them."""
    readme = Path(__file__).resolve().parents[1] / "README.md"
    start, end = "<!-- bench-summary:start -->", "<!-- bench-summary:end -->"
    doc = readme.read_text() if readme.exists() else ""
    if start not in doc or end not in doc:
        return False
    body = text.split("\n", 2)[2] if text.startswith("# ") else text
    body = body.replace("\n## ", "\n#### ")
    head, rest = doc.split(start, 1)
    readme.write_text(head + start + "\n" + body.strip() + "\n" + end + rest.split(end, 1)[1])
    return True


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    quick = "--quick" in argv
    argv = [a for a in argv if a != "--quick"]
    wdir = None
    if "--weights-dir" in argv:
        i = argv.index("--weights-dir")
        wdir = argv[i + 1]
        del argv[i:i + 2]
    bad = [a for a in argv if a not in (*SUITES, "summary", "all")]
    if bad:
        print(__doc__)
        return 2
    wanted = [s for s in SUITES if s != "sam"] if not argv or argv == ["all"] else [a for a in argv if a != "summary"]
    weights = _weights(wdir)
    failed = []
    for name in wanted:
        for mod, args in _calls(name, quick, weights):
            print(f"\n## {name}: python -m {mod} {' '.join(args)}\n", flush=True)
            t0 = time.perf_counter()
            rc = importlib.import_module(mod).main(args)
            print(f"({name} took {time.perf_counter() - t0:.0f} s)")
            if rc:
                failed.append(name)
    text = summary()
    (RESULTS / "SUMMARY.md").write_text(text + "\n")
    update_readme(text)
    print("\n" + text)
    if failed:
        print(f"\nsuites that reported a failure: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
