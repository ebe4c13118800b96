"""No uploaded byte outlives its session or the server: uploads leave Gradio's cache at once, a session's
folder goes with the session, the server's folder goes at exit and on SIGTERM, and a start sweeps what a
killed server left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image

from bt_demo.ui import scratch


def test_upload_leaves_gradio_cache_and_goes_with_the_session(engines, tmp_path, monkeypatch):
    from bt_demo.sim.phantom import flair_phantom
    from bt_demo.ui.panels import upload as UP
    from bt_demo.ui.state import Session, delete_session

    monkeypatch.setenv("BT_SCRATCH_DIR", str(tmp_path / "scratch"))
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gcache"))
    cached = tmp_path / "gcache" / "3f2a9c" / "Doe_John_brain.png"  # how Gradio keeps an upload
    cached.parent.mkdir(parents=True)
    img, _ = flair_phantom((96, 96), seed=1)
    Image.fromarray((img * 255).astype(np.uint8)).save(cached)
    data = cached.read_bytes()
    s, view = UP.load_file(Session(), engines, str(cached))
    assert s.loaded
    assert not cached.exists() and not cached.parent.exists()  # nothing left in Gradio's cache
    assert Path(s.source_path).parent == Path(s.workdir) and "Doe" not in s.source_path
    assert str(tmp_path / "scratch") in s.workdir
    # a second upload replaces the first one on disk
    second = tmp_path / "gcache" / "77aa" / "second.png"
    second.parent.mkdir()
    Image.fromarray((img[::-1] * 255).astype(np.uint8)).save(second)
    first_copy = s.source_path
    s, _ = UP.load_file(s, engines, str(second))
    assert not Path(first_copy).exists() and len(os.listdir(s.workdir)) == 1
    # a refused upload is deleted too, and the previous image stays
    bad = tmp_path / "gcache" / "0bad" / "bad.png"
    bad.parent.mkdir()
    bad.write_bytes(b"not an image at all")
    s, view = UP.load_file(s, engines, str(bad))
    assert "could not be opened" in view["status"] and not bad.exists() and len(os.listdir(s.workdir)) == 1
    workdir = s.workdir
    delete_session(s)  # what Gradio calls when the tab closes or the session expires
    assert not Path(workdir).exists()
    leftover = [p for p in (tmp_path).rglob("*") if p.is_file() and p.read_bytes() == data]
    assert leftover == [cached] if cached.exists() else leftover == []


def test_a_file_outside_gradios_cache_is_read_where_it_is(engines, tmp_path, monkeypatch):
    from bt_demo.sim.phantom import flair_phantom
    from bt_demo.ui.panels import upload as UP
    from bt_demo.ui.state import Session

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gcache"))
    mine = tmp_path / "mine.png"
    img, _ = flair_phantom((64, 64), seed=2)
    Image.fromarray((img * 255).astype(np.uint8)).save(mine)
    s, _ = UP.load_file(Session(), engines, str(mine))
    assert s.loaded and mine.exists() and s.source_path == str(mine)


def test_sigterm_and_exit_remove_the_servers_files_and_a_start_sweeps_dead_ones(tmp_path):
    env = os.environ | {"BT_SCRATCH_DIR": str(tmp_path)}
    env.pop("GRADIO_TEMP_DIR", None)
    script = textwrap.dedent("""
        import os, sys, time
        from bt_demo.ui import scratch
        scratch.install()
        d = scratch.session_dir()
        open(os.path.join(d, "upload_1"), "wb").write(b"secret")
        g = os.environ["GRADIO_TEMP_DIR"]
        os.makedirs(os.path.join(g, "abc"), exist_ok=True)
        open(os.path.join(g, "abc", "patient.dcm"), "wb").write(b"secret")
        print(d, flush=True)
        if sys.argv[1] == "exit":
            sys.exit(0)
        time.sleep(60)
    """)
    for how in ("exit", "sigterm"):
        p = subprocess.Popen([sys.executable, "-c", script, how], env=env, stdout=subprocess.PIPE, text=True,
                             cwd=Path(__file__).resolve().parents[1])
        d = p.stdout.readline().strip()
        if how == "sigterm":
            assert Path(d).is_dir()
            p.send_signal(signal.SIGTERM)
        p.wait(30)
        assert not Path(d).exists(), how
        assert not any(f.is_file() for f in tmp_path.rglob("*")), how
    # a server killed outright (SIGKILL) leaves its folder; the next start removes it
    p = subprocess.Popen([sys.executable, "-c", script, "sleep"], env=env, stdout=subprocess.PIPE, text=True,
                         cwd=Path(__file__).resolve().parents[1])
    d = p.stdout.readline().strip()
    p.kill()
    p.wait(30)
    assert Path(d).exists()
    old = os.environ.get("BT_SCRATCH_DIR")
    os.environ["BT_SCRATCH_DIR"] = str(tmp_path)
    try:
        removed = scratch.sweep_dead()
    finally:
        if old is None:
            os.environ.pop("BT_SCRATCH_DIR")
        else:
            os.environ["BT_SCRATCH_DIR"] = old
    assert str(Path(d).parent) in removed and not Path(d).exists()


def test_old_image_views_leave_gradios_cache_and_exports_stay(tmp_path, monkeypatch):
    """Gradio writes each image it sends into its cache; views older than the sweep age go (so a long session
    does not fill the disk), a view just sent and any export stay; a replaced export's cached copy goes."""
    import time

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    old_view = tmp_path / "gradio" / "h1" / "image.jpeg"
    new_view = tmp_path / "gradio" / "h2" / "image.jpeg"
    export = tmp_path / "gradio" / "h3" / "mask_abc123.png"
    old_export = tmp_path / "gradio" / "h4" / "report_def456.json"
    stale_tmp = tmp_path / "gradio" / "tmpab12cd34"  # Gradio's upload parser leaves these behind
    for f in (old_view, new_view, export, old_export, stale_tmp):
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"x")
    past = time.time() - 10 * scratch.TMP_MAX_AGE_S
    for f in (old_view, export, stale_tmp):
        os.utime(f, (past, past))
    assert scratch.sweep_views() == 2 and not stale_tmp.exists()
    assert not old_view.exists() and not old_view.parent.exists()
    assert new_view.exists() and export.exists()
    assert scratch.forget_cached(["report_def456.json", "../etc"]) == 1 and not old_export.exists()
