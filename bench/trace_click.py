"""Where a click's time goes, in the browser: this app beside the framework's floor (issue 24, part 4).

python -m bench.trace_click [--clicks 16] [--weights-dir weights] [--json out.json]

The same two servers and the same clicks, in turns, as ``bench.bench_browser``; for every click Chrome's
DevTools protocol (Network domain) timestamps what happens between the click and the repaint:

    server    queue/join sent -> the stream chunk that carries the result arrives (the server's handling,
              Gradio's queue and our handler)
    frontend  result chunk -> the new image's file request is sent (Gradio's front end applying the outputs)
    fetch     the image file's request -> its last byte

and ``total`` is the click's whole wait as ``bench.bench_browser`` times it (the click event -> the frame after
the new image has loaded, in the page's clock); what ``total`` holds beyond the three parts is the click
reaching Gradio's handler and the request being posted, then the image decoded and painted. Also the bytes
of the result chunks and of the image. Medians per part, for the first and the last quarter of the clicks
(what grows with the session's length).
"""

from __future__ import annotations

import argparse
import statistics
import time

from bench.bench_browser import REPO, click_and_wait, start_servers
from bench.common import write


class NetLog:
    """Network events of one page through CDP, with their monotonic timestamps (seconds)."""

    def __init__(self, page):
        self.cdp = page.context.new_cdp_session(page)
        self.events: list[tuple[str, dict]] = []
        for name in ("Network.requestWillBeSent", "Network.dataReceived", "Network.loadingFinished",
                     "Network.responseReceived"):
            self.cdp.on(name, lambda p, n=name: self.events.append((n, p)))
        self.cdp.send("Network.enable")

    def clear(self) -> None:
        self.events = []


def _one_click(page, net: NetLog, label: str, x: float, y: float) -> dict:
    net.clear()
    total = click_and_wait(page, label, x, y)["frame_ms"]
    time.sleep(0.25)  # let the trailing events (the image's last bytes, late chunks) arrive
    ev = list(net.events)
    urls = {p["requestId"]: p["request"]["url"] for n, p in ev if n == "Network.requestWillBeSent"}
    sent = {p["requestId"]: p["timestamp"] for n, p in ev if n == "Network.requestWillBeSent"}
    join = next((r for r, u in urls.items() if "queue/join" in u), None)
    stream = [r for r, u in urls.items() if "queue/data" in u or "heartbeat" in u]
    files = [r for r, u in urls.items() if "/file=" in u or "/gradio_api/file" in u]
    chunks = [(p["timestamp"], p["dataLength"], p["requestId"]) for n, p in ev if n == "Network.dataReceived"]
    finished = {p["requestId"]: p["timestamp"] for n, p in ev if n == "Network.loadingFinished"}
    row = {"total_ms": round(total, 1), "n_requests": len(urls), "n_files": len(files)}
    if join is None:
        return row
    t_join = sent[join]
    data_chunks = [c for c in chunks if c[2] in stream or c[2] not in urls]
    res_chunks = [c for c in data_chunks if c[0] >= t_join]
    t_result = max((c[0] for c in res_chunks), default=None)
    first_file = min((sent[r] for r in files if sent[r] >= t_join), default=None)
    last_file = max((finished.get(r, sent[r]) for r in files if sent[r] >= t_join), default=None)
    row.update({"result_bytes": sum(c[1] for c in res_chunks),
                "file_bytes": sum(c[1] for c in chunks if c[2] in files)})
    if t_result is not None:
        row["server_ms"] = round((t_result - t_join) * 1000, 1)
    if first_file is not None and t_result is not None:
        row["frontend_ms"] = round((first_file - t_result) * 1000, 1)
    if first_file is not None and last_file is not None:
        row["fetch_ms"] = round((last_file - first_file) * 1000, 1)
    return row


def _medians(rows: list[dict]) -> dict:
    keys = [k for k in ("total_ms", "server_ms", "frontend_ms", "fetch_ms", "result_bytes", "file_bytes",
                        "n_requests", "n_files") if any(k in r for r in rows)]
    return {k: round(statistics.median([r[k] for r in rows if k in r]), 1) for k in keys}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.trace_click", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clicks", type=int, default=16)
    ap.add_argument("--weights-dir", default=str(REPO / "weights"))
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    from tests.e2e.test_browser import EXAMPLE, block, browser_page, wait_for_image

    minimal, app, p1, p2 = start_servers(args.weights_dir)
    pts = [(0.6 + 0.01 * (i % 4), 0.45 + 0.01 * (i // 4 % 8)) for i in range(args.clicks)]
    floor, ours = [], []
    try:
        with browser_page() as page:
            floor_page = page.context.browser.new_page(viewport={"width": 1500, "height": 1000})
            floor_page.goto(f"http://127.0.0.1:{p2}/")
            wait_for_image(floor_page, "Minimal image")
            fnet = NetLog(floor_page)
            page.goto(f"http://127.0.0.1:{p1}/")
            block(page, "Upload an MRI slice").locator("input[type=file]").set_input_files(str(EXAMPLE))
            wait_for_image(page, "Click on the tumour")
            time.sleep(3)
            anet = NetLog(page)
            for x, y in pts[:3]:  # warm-up of both
                _one_click(floor_page, fnet, "Minimal image", x, y)
                _one_click(page, anet, "Click on the tumour", x, y)
            for x, y in pts:
                floor.append(_one_click(floor_page, fnet, "Minimal image", x, y))
                time.sleep(0.3)
                ours.append(_one_click(page, anet, "Click on the tumour", x, y))
                time.sleep(0.3)
    finally:
        for proc in (app, minimal):
            proc.terminate()
            proc.wait(20)
    q = max(1, len(pts) // 4)
    rows = [{"app": name, "clicks": f"{part}", **_medians(rs[sl])}
            for name, rs in (("floor", floor), ("this app", ours))
            for part, sl in (("all", slice(None)), ("first quarter", slice(0, q)), ("last quarter", slice(-q, None)))]
    for r in rows:
        print(r)
    print(f"written {write('trace_click', rows, {'clicks': args.clicks, 'per_click': {'floor': floor, 'app': ours}}, path=args.json)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
