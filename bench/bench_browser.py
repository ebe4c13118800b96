"""What a user waits for in the browser: click -> repainted mask, and upload -> panels, in headless chromium,
against the framework's floor: a minimal Gradio app doing one image round trip per click, in the same run.

python -m bench.bench_browser [--clicks 12] [--weights-dir weights] [--json out.json]

Both apps run as real servers (``app.py`` with the shipped weights and ``--sam-model none``; the minimal app
serves one 512-px image whose click handler draws a dot and sends the image back). A click's time runs from
the click event's timestamp in the page to the animation frame after the clicked picture's new image has
loaded (the repaint), both read from the page's clock (``_ARM``); floor and app clicks are taken in turns, in
two tabs of one browser, so both meet the same load on the machine. An upload's time runs from the file landing
in the upload box (after the previous one was cleared and that settled) to the moment the clickable image shows
the new slice.

Until issue 24's last round a click's wait was Playwright polling the picture's ``src`` every 5 ms through a
label locator, and it stopped at the src change (before the image loads). Each poll runs that locator's query on
the page's main thread, which is the thread that does Gradio's work for the click; on this app's page (about
1,400 elements, against the floor's 120) the polls cost the app several times what they cost the floor.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

from bench.common import write

REPO = Path(__file__).resolve().parents[1]

MINIMAL = textwrap.dedent("""
    import sys, numpy as np, gradio as gr
    from bt_demo.sim.phantom import flair_phantom
    img, _ = flair_phantom((256, 256), seed=0)
    base = np.repeat(np.repeat((img * 255).astype(np.uint8), 2, 0), 2, 1)
    def on_click(evt: gr.SelectData):
        out = np.stack([base] * 3, -1)
        x, y = int(evt.index[0]), int(evt.index[1])
        out[max(0, y - 3):y + 3, max(0, x - 3):x + 3] = (255, 0, 0)
        return out
    with gr.Blocks() as demo:
        im = gr.Image(value=np.stack([base] * 3, -1), label="Minimal image", interactive=False, format="png")
        im.select(on_click, None, im)
    demo.launch(server_port=int(sys.argv[1]), prevent_thread_lock=False)
""")


def serve(cmd, port: int, log: Path):
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    t0 = time.time()
    while time.time() - t0 < 150:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2):
                return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"no page on port {port}: {log.read_text()[-2000:]}")


def start_servers(weights_dir: str):
    """The minimal app (the floor) and this app (its weights, SAM off, a scratch correction store), each on a
    free port: (minimal, app, app_port, minimal_port)."""
    from tests.e2e.test_browser import _free_port

    tmp = Path(tempfile.mkdtemp())
    p1, p2 = _free_port(), _free_port()
    minimal = serve([sys.executable, "-c", MINIMAL, str(p2)], p2, tmp / "minimal.log")
    app = serve([sys.executable, "app.py", "--port", str(p1), "--sam-model", "none", "--weights-dir",
                 weights_dir, "--annotations-dir", str(tmp / "corr")], p1, tmp / "app.log")
    return minimal, app, p1, p2


# Armed on the clicked picture's block before each click: records the click's event time, then the moment the
# picture's <img> gets a new src, the moment that image has loaded, and the next animation frame after it (the
# repaint). All in the page's own clock, so the measurement puts no work on the page's main thread while it
# waits (polling a Playwright locator there costs in proportion to the page's size: issue 24's note).
_ARM = """
(el) => {
  const t = window.__click = {};
  const old = (el.querySelector('img') || {}).src;
  document.addEventListener('pointerdown', (e) => { t.down = e.timeStamp; }, {capture: true, once: true});
  const obs = new MutationObserver(() => {
    const img = el.querySelector('img');
    if (!img || !img.src || img.src === old || t.src !== undefined) return;
    t.src = performance.now();
    obs.disconnect();
    const loaded = () => { t.load = performance.now();
                           requestAnimationFrame(() => { t.frame = performance.now(); }); };
    if (img.complete && img.naturalWidth) loaded(); else img.addEventListener('load', loaded, {once: true});
  });
  obs.observe(el, {subtree: true, attributes: true, childList: true, attributeFilter: ['src']});
}
"""


def click_and_wait(page, label: str, x: float, y: float) -> dict:
    """Click the picture labelled ``label`` at (x, y) (fractions of it) and wait for its repaint: ms from the
    click to the new src (``src_ms``), to the new image loaded (``load_ms``), to the frame after (``frame_ms``)."""
    from tests.e2e.test_browser import block

    el = block(page, label).element_handle()
    el.evaluate(_ARM)
    box = el.query_selector("img").bounding_box()
    page.mouse.click(box["x"] + box["width"] * x, box["y"] + box["height"] * y)
    page.wait_for_function("window.__click.frame !== undefined", polling="raf", timeout=30_000)
    t = page.evaluate("window.__click")
    return {f"{k}_ms": t[k] - t["down"] for k in ("src", "load", "frame")}


def _click_time(page, label: str, x: float, y: float) -> float:
    """ms from a click at (x, y) (fractions of the picture) to the frame that shows the new picture."""
    return click_and_wait(page, label, x, y)["frame_ms"]


def _click_pairs(floor_page, app_page, points) -> tuple[list[float], list[float]]:
    """Floor and app clicks taken in turns (one each, then the next), so both see the same machine load."""
    floor, app = [], []
    for x, y in points:
        floor.append(_click_time(floor_page, "Minimal image", x, y))
        time.sleep(0.3)  # a person's pace
        app.append(_click_time(app_page, "Click on the tumour", x, y))
        time.sleep(0.3)
    return floor, app


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_browser", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clicks", type=int, default=12)
    ap.add_argument("--weights-dir", default=str(REPO / "weights"))
    ap.add_argument("--uploads", type=int, default=5, help="timed uploads (after one warm-up upload)")
    ap.add_argument("--note", default="", help="conditions of the run, kept in the JSON and the README table")
    ap.add_argument("--engine", default=None,
                    help="a prompt engine to pick in the chooser before the clicks (e.g. medsam_clicks); the clicks "
                         "start once its embedding is ready (the page no longer says 'Preparing')")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    from tests.e2e.test_browser import EXAMPLE, block, browser_page, wait_for_image

    minimal, app, p1, p2 = start_servers(args.weights_dir)
    pts = [(0.6 + 0.01 * (i % 4), 0.45 + 0.01 * (i // 4)) for i in range(args.clicks)]
    rows = []
    try:
        with browser_page() as page:
            floor_page = page.context.browser.new_page(viewport={"width": 1500, "height": 1000})
            floor_page.goto(f"http://127.0.0.1:{p2}/")
            wait_for_image(floor_page, "Minimal image")
            for x, y in pts[:3]:  # warm-up of the floor app (its first clicks pay for imports)
                _click_time(floor_page, "Minimal image", x, y)
            page.bring_to_front()
            page.goto(f"http://127.0.0.1:{p1}/")
            uploads = []
            img = block(page, "Click on the tumour").locator("img").first
            box = block(page, "Upload an MRI slice")
            for k in range(args.uploads + 1):
                ex = EXAMPLE if k % 2 else EXAMPLE.with_name("phantom_cystic.png")
                old = img.get_attribute("src") if img.count() else None
                # clear the previous file first, as a person would, and let that settle: the wait starts at the drop
                clear = box.get_by_role("button", name="Clear")
                if clear.count():
                    clear.first.click()
                    time.sleep(1.5)
                t0 = time.perf_counter()
                box.locator("input[type=file]").set_input_files(str(ex))
                while (img.get_attribute("src") if img.count() else None) in (old, None):
                    if time.perf_counter() - t0 > 60:
                        raise TimeoutError("no panels within 60 s")
                    time.sleep(0.005)
                uploads.append((time.perf_counter() - t0) * 1000)
                time.sleep(1.5)  # let the chained steps finish before the next upload
            uploads = uploads[1:]  # the first upload also warms the engines
            if args.engine:
                from bt_demo.models.registry import PROMPT_ENGINES

                block(page, "Prompt engine").get_by_text(PROMPT_ENGINES[args.engine], exact=True).click()
                t0 = time.perf_counter()
                time.sleep(1.0)
                while page.get_by_text("Preparing", exact=False).count():
                    if time.perf_counter() - t0 > 120:
                        raise TimeoutError(f"{args.engine} still preparing after 120 s")
                    time.sleep(0.1)
                print(f"{args.engine} ready {time.perf_counter() - t0:.1f} s after it was picked")
            _click_time(page, "Click on the tumour", *pts[0])  # warm-up: the first click loads the click model
            floor, app_clicks = _click_pairs(floor_page, page, pts)
    finally:
        for proc in (app, minimal):
            proc.terminate()
            proc.wait(20)
    med = {k: statistics.median(v) for k, v in (("floor", floor), ("app", app_clicks), ("upload", uploads))}
    rows = [{"item": "minimal Gradio app: click -> repainted image (the floor)", "median_ms": round(med["floor"], 1),
             "max_ms": round(max(floor), 1), "n": len(floor)},
            {"item": f"this app: click -> repainted mask ({args.engine or 'click model'})", "median_ms": round(med["app"], 1),
             "max_ms": round(max(app_clicks), 1), "n": len(app_clicks),
             "times_floor": round(med["app"] / med["floor"], 2)},
            {"item": "this app: upload 256² phantom -> panels shown", "median_ms": round(med["upload"], 1),
             "max_ms": round(max(uploads), 1), "n": len(uploads)}]
    for r in rows:
        print(r)
    print(f"written {write('browser_latency', rows, {'note': args.note} if args.note else None, path=args.json)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
