"""Many sessions clicking at once on the real app, through Gradio's own client.

    python -m bench.load_test --sessions 8 --seconds 30 --start            # starts app.py (tiny weights)
    python -m bench.load_test --sessions 8 --seconds 30 --start --weights-dir weights
    python -m bench.load_test --sessions 8 --seconds 30 --port 7860        # an app already running

Each session is one ``gradio_client.Client`` (its own ``session_hash``, so its
own ``gr.State``) in its own thread. It uploads ITS OWN phantom slice
(``bt_demo.sim.phantom.flair_phantom`` with its own seed, so its own lesion
position), then clicks positive points on its lesion in a cycle of
:data:`CYCLE` clicks followed by "Clear points", until the time is up.

Crosstalk check (valid with random tiny weights too, where masks are not
meaningful): before the timed run every session's cycle is played once alone
(one session at a time, after all of them uploaded) and the clickable image (slice, mask, points) and the prompted
mask's area are recorded for each click of the cycle. Under load every click's
answer must match its own session's solo answer for that position (area equal,
overlay within :data:`OVERLAY_TOLERANCE` of differing pixels) and be closer to
its own reference than to any other session's. The overlay shows the session's
own slice under its mask, so an answer computed on another session's image, or
with another session's points, fails the check.

Endpoints: the page's events have no ``api_name`` of their own (Gradio names
them ``lambda_N`` by position), so they are found from the page config by the
component and event that trigger them: "Upload an MRI slice" ``change`` (and
the ``then`` chained after it, which prepares the prompt engine), "Click on
the tumour" ``select`` and the "Clear points" button's ``click``.
``gradio_client`` has no argument for event data, so the click (a
``gr.SelectData`` with ``index = [x, y]`` in displayed pixels) is sent with
the endpoint's own end-to-end function and an ``event_data`` payload, which
is exactly what the browser posts.

Prints JSON (throughput in clicks/s, click latency p50/p95 in ms, errors,
crosstalk) and writes it with :func:`bench.common.write` (``bench/results/load_test.json``).
Latencies include the client downloading the returned images, as a browser would.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CYCLE = 3                    # positive clicks per cycle, then "Clear points"
OVERLAY_TOLERANCE = 0.01     # fraction of overlay pixels allowed to differ from the solo run
STARTUP_S = 150

UPLOAD_LABEL = "Upload an MRI slice"
CLICK_LABEL = "Click on the tumour"
CLEAR_TEXT = "Clear points"
OVERLAY_LABEL = "Click on the tumour"   # the clickable image (the only picture a click sends back)
AREA_LABEL = "Prompt status"          # "... mask N px ..." (the Compare tab is drawn when opened)


# ---------------------------------------------------------------------------
# the app as a subprocess
# ---------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_app(workdir: Path, weights_dir: Path | None = None, port: int | None = None,
                concurrency: int | None = None, info: dict | None = None):
    """``python app.py --sam-model none`` on a free port (tiny random weights unless ``weights_dir``); yields its URL.

    info: a dict filled with the server's ``pid`` and its ``scratch`` folder (``BT_SCRATCH_DIR``, under which
    ``<pid>/gradio`` is its Gradio cache), for benchmarks that watch its memory and disk."""
    workdir = Path(workdir)
    if weights_dir is None:
        sys.path.insert(0, str(REPO))
        from tests.tiny_models import make_weights_dir

        weights_dir = make_weights_dir(workdir / "weights")
    port = port or free_port()
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1",
               BT_DEVICE=os.environ.get("BT_DEVICE", "cpu"), BT_SCRATCH_DIR=str(workdir / "scratch"))
    cmd = [sys.executable, str(REPO / "app.py"), "--host", "127.0.0.1", "--port", str(port),
           "--weights-dir", str(weights_dir), "--sam-model", "none",
           "--annotations-dir", str(workdir / "corrections")]
    if concurrency:
        cmd += ["--concurrency", str(concurrency)]
    log_path = workdir / "app.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    if info is not None:
        info.update(pid=proc.pid, scratch=workdir / "scratch")
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + STARTUP_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"app exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"app did not answer within {STARTUP_S} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


# ---------------------------------------------------------------------------
# endpoints, found by the component and event that trigger them
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Endpoints:
    upload: int
    prepare: int
    click: int
    clear: int
    click_outputs: tuple[str, ...]  # label of each returned value of the click endpoint, state removed


def find_endpoints(config: dict) -> Endpoints:
    comps = {c["id"]: c for c in config["components"]}

    def comp_id(label: str | None = None, value: str | None = None, kind: str | None = None) -> int:
        for cid, c in comps.items():
            props = c.get("props", {})
            if kind and c.get("type") != kind:
                continue
            if label and str(props.get("label") or "").startswith(label):
                return cid
            if value and props.get("value") == value:
                return cid
        raise LookupError(f"no component labelled {label or value!r} on the page")

    def dep_for(cid: int, event: str) -> dict:
        for d in config["dependencies"]:
            if [cid, event] in [list(t) for t in d["targets"]]:
                return d
        raise LookupError(f"no {event!r} event on component {cid}")

    upload = dep_for(comp_id(UPLOAD_LABEL, kind="file"), "change")
    prepare = next((d for d in config["dependencies"] if d.get("trigger_after") == upload["id"]), None)
    if prepare is None:
        raise LookupError("no event chained after the upload")
    click = dep_for(comp_id(CLICK_LABEL, kind="image"), "select")
    clear = dep_for(comp_id(value=CLEAR_TEXT, kind="button"), "click")
    labels = tuple(str(comps[o].get("props", {}).get("label") or comps[o].get("type")) for o in click["outputs"]
                   if comps[o].get("type") != "state")
    return Endpoints(upload["id"], prepare["id"], click["id"], clear["id"], labels)


# ---------------------------------------------------------------------------
# one session
# ---------------------------------------------------------------------------
def make_phantom(folder: Path, seed: int, side: int) -> tuple[Path, np.ndarray, list[tuple[float, float]]]:
    """PNG of ``flair_phantom((side, side), seed)``, its mask, and CYCLE click points (x, y) inside the lesion."""
    from PIL import Image
    from scipy import ndimage

    from bt_demo.sim.phantom import flair_phantom

    img, mask = flair_phantom((side, side), seed=seed)
    path = folder / f"session_{seed}.png"
    Image.fromarray(np.rint(img * 255).astype(np.uint8)).save(path)
    d = ndimage.distance_transform_edt(mask)
    y0, x0 = np.unravel_index(int(np.argmax(d)), d.shape)
    r = max(1.0, float(d[y0, x0]) / 2)
    points = [(float(x0), float(y0)), (x0 + r, float(y0)), (float(x0), y0 + r)][:CYCLE]
    return path, mask, points


def _overlay_array(value) -> np.ndarray | None:
    from PIL import Image

    path = value.get("path") if isinstance(value, dict) else value
    if not path:
        return None
    return np.asarray(Image.open(path).convert("RGB"))


def _prompt_area(value) -> int | None:
    """Area (px) of the prompted mask from the prompt status line ("mask N px"), or None when it has none."""
    import re

    m = re.search(r"mask (\d+) px", str(value or ""))
    return int(m.group(1)) if m else None


class SessionDriver:
    """One browser tab: its own Client (session_hash), its own phantom."""

    def __init__(self, url: str, ep: Endpoints, image: Path, points: list[tuple[float, float]], side: int):
        from gradio_client import Client

        from bt_demo.ui.views import display_factor

        # a generous read time-out: on a loaded 2-core machine a first upload can take tens of seconds, which
        # is a figure to report, not an error of the app
        self.client = Client(url, verbose=False, download_files=tempfile.mkdtemp(prefix="bt_load_"),
                             httpx_kwargs={"timeout": 300})
        self.ep, self.image = ep, image
        f = display_factor((side, side))
        self.display_points = [[round((x + 0.5) * f - 0.5), round((y + 0.5) * f - 0.5)] for x, y in points]

    def _call(self, fn_index: int, *args, **kwargs):
        end = self.client.endpoints[fn_index]
        return end.make_end_to_end_fn(self.client.new_helper(fn_index))(*args, **kwargs)

    def upload(self) -> None:
        from gradio_client import handle_file

        self._call(self.ep.upload, handle_file(str(self.image)))
        self._call(self.ep.prepare)

    def click(self, k: int) -> dict:
        """Positive click number ``k`` of the cycle; returns {"area", "overlay", "info"}."""
        out = self._call(self.ep.click, "positive",
                         event_data={"index": self.display_points[k], "value": None, "selected": True})
        out = dict(zip(self.ep.click_outputs, out if isinstance(out, (list, tuple)) else [out], strict=False))

        def labelled(prefix):  # labels are matched by their start, as find_endpoints does
            return next((v for k, v in out.items() if k.startswith(prefix)), None)

        return {"area": _prompt_area(labelled(AREA_LABEL)), "overlay": _overlay_array(labelled(OVERLAY_LABEL)),
                "info": str(labelled(AREA_LABEL) or "")}

    def clear(self) -> None:
        self._call(self.ep.clear)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()


def _differs(a: np.ndarray | None, b: np.ndarray | None) -> float:
    if a is None or b is None or a.shape != b.shape:
        return 1.0
    return float(np.any(a != b, axis=-1).mean())


# ---------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------
def run(url: str, sessions: int, seconds: float, side: int = 128, seed0: int = 100) -> dict:
    from gradio_client import Client

    folder = Path(tempfile.mkdtemp(prefix="bt_load_images_"))
    probe = Client(url, verbose=False)
    ep = find_endpoints(probe.config)
    probe.close()
    phantoms = [make_phantom(folder, seed0 + i, side) for i in range(sessions)]

    # every session uploads its own slice (all at once), then the solo references, one session at a time
    from concurrent.futures import ThreadPoolExecutor

    drivers = [SessionDriver(url, ep, path, points, side) for path, _mask, points in phantoms]
    with ThreadPoolExecutor(max_workers=sessions) as pool:
        list(pool.map(SessionDriver.upload, drivers))
    refs = []
    for d in drivers:
        refs.append([d.click(k) for k in range(CYCLE)])
        d.clear()
    distinct = all(_differs(refs[i][0]["overlay"], refs[j][0]["overlay"]) > 0
                   for i in range(sessions) for j in range(i + 1, sessions))

    lat: list[float] = []
    per_session = [dict(clicks=0, errors=0, crosstalk=0, error_samples=[]) for _ in range(sessions)]
    lock = threading.Lock()
    start = threading.Barrier(sessions + 1)
    t_end = [0.0]

    def worker(i: int) -> None:
        d, mine, stats = drivers[i], refs[i], per_session[i]
        start.wait()
        k = 0
        while time.perf_counter() < t_end[0]:
            try:
                t0 = time.perf_counter()
                got = d.click(k)
                dt = time.perf_counter() - t0
                with lock:
                    lat.append(dt)
                stats["clicks"] += 1
                own = _differs(got["overlay"], mine[k]["overlay"])
                others = [_differs(got["overlay"], refs[j][k]["overlay"]) for j in range(sessions) if j != i]
                if got["area"] != mine[k]["area"] or own > OVERLAY_TOLERANCE or any(o <= own for o in others):
                    stats["crosstalk"] += 1
                k += 1
                if k == CYCLE:
                    d.clear()
                    k = 0
            except Exception as exc:  # noqa: BLE001 - counted and reported, the run goes on
                stats["errors"] += 1
                if len(stats["error_samples"]) < 3:
                    stats["error_samples"].append(f"{type(exc).__name__}: {str(exc)[:200]}")
                with contextlib.suppress(Exception):
                    d.clear()
                k = 0

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(sessions)]
    for t in threads:
        t.start()
    t_end[0] = time.perf_counter() + seconds
    t0 = time.perf_counter()
    start.wait()
    for t in threads:
        t.join(timeout=seconds + 120)
    elapsed = time.perf_counter() - t0
    hung = sum(t.is_alive() for t in threads)
    for d in drivers:
        d.close()

    ms = sorted(v * 1000 for v in lat)
    p95 = ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))] if ms else None
    return {
        "sessions": sessions,
        "seconds": seconds,
        "side": side,
        "clicks": len(ms),
        "elapsed_s": round(elapsed, 2),
        "throughput_clicks_per_s": round(len(ms) / elapsed, 2) if elapsed else 0.0,
        "click_p50_ms": round(statistics.median(ms), 1) if ms else None,
        "click_p95_ms": round(p95, 1) if p95 is not None else None,
        "click_max_ms": round(ms[-1], 1) if ms else None,
        "errors": sum(s["errors"] for s in per_session) + hung,
        "crosstalk": sum(s["crosstalk"] for s in per_session),
        "references_distinct": distinct,
        "per_session": [{k: v for k, v in s.items() if k != "error_samples" or v} for s in per_session],
    }


def _relative(path: str) -> str:
    """A folder named relative to the repository when inside it (results are committed; no machine paths)."""
    p = Path(path).resolve()
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else p.name


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.load_test", description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=8)
    p.add_argument("--seconds", type=float, default=30)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--port", type=int, help="an app already running on 127.0.0.1:PORT")
    where.add_argument("--start", action="store_true", help="start app.py (the default when --port is not given)")
    p.add_argument("--weights-dir", help="real weights for --start (default: tiny random weights)")
    p.add_argument("--concurrency", type=int, help="app.py --concurrency for --start (default: the app's)")
    p.add_argument("--side", type=int, default=128, help="phantom side in pixels (default 128)")
    p.add_argument("--out", help="JSON path (default bench/results/load_test.json)")
    p.add_argument("--note", default="", help="conditions of the run, kept in the JSON and the README table")
    args = p.parse_args(argv)
    if args.sessions < 1 or args.seconds <= 0:
        p.error("--sessions must be >= 1 and --seconds > 0")
    sys.path.insert(0, str(REPO))
    from bench.common import write

    with tempfile.TemporaryDirectory(prefix="bt_load_app_") as tmp:
        if args.port:
            result = run(f"http://127.0.0.1:{args.port}/", args.sessions, args.seconds, args.side)
        else:
            with running_app(Path(tmp), Path(args.weights_dir) if args.weights_dir else None,
                             concurrency=args.concurrency) as url:
                result = run(url, args.sessions, args.seconds, args.side)
    if args.note:
        result["note"] = args.note
    result["weights"] = _relative(args.weights_dir) if args.weights_dir else ("tiny random (tests/tiny_models.py)" if not args.port else "as running")
    print(json.dumps(result, indent=1))
    out = write("load_test", [result], path=args.out)
    print(f"wrote {out}", file=sys.stderr)
    return 0 if result["errors"] == 0 and result["crosstalk"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
