"""Where this server keeps per-session files, and how none of them outlive it.

Layout: ``<tmp>/bt_demo/<pid>/`` holds one folder per session (its upload,
moved out of Gradio's cache, and its exports). A session's folder goes when
the session ends; the process's folder goes at exit (normal, Ctrl-C or
SIGTERM); a start removes the folders of processes that are gone (a crash or
SIGKILL). Gradio's own upload cache is a folder of this process
(``<tmp>/bt_demo/<pid>/gradio``, unless GRADIO_TEMP_DIR is set), so two servers on one machine never
share or delete each other's files; it goes with the process's folder.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from bt_demo.process import pid_alive

_lock = threading.Lock()
_installed = False

# Gradio writes every image it sends as <cache>/<content hash>/image.<ext> and keeps it until its own sweep
# (an hour by default, 15 min here): hundreds of files a day per busy session. It rewrites the file each time
# it sends it and the browser fetches it at once, so a view older than this is never asked for again.
VIEW_MAX_AGE_S = 30.0
VIEW_SWEEP_EVERY_S = 10.0
# Gradio's upload parser leaves one empty temp file per upload in the cache's root (``tmp...``); one not
# written to for this long belongs to no upload in progress
TMP_MAX_AGE_S = 120.0


def base() -> Path:
    """``$BT_SCRATCH_DIR`` or ``<system tmp>/bt_demo``."""
    return Path(os.environ.get("BT_SCRATCH_DIR") or Path(tempfile.gettempdir()) / "bt_demo")


def process_root() -> Path:
    """This process's folder (created on first use)."""
    p = base() / str(os.getpid())
    p.mkdir(parents=True, exist_ok=True, mode=0o700)
    return p


def gradio_cache() -> Path:
    """Gradio's upload cache folder for this process (GRADIO_TEMP_DIR when set)."""
    env = os.environ.get("GRADIO_TEMP_DIR")
    return Path(env) if env else base() / str(os.getpid()) / "gradio"


def session_dir() -> str:
    """A new private folder for one session."""
    return tempfile.mkdtemp(prefix="session_", dir=process_root())


def sweep_dead() -> list[str]:
    """Remove the folders of server processes that no longer run; returns what was removed."""
    gone = []
    root = base()
    if not root.is_dir():
        return gone
    for d in root.iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid() and not pid_alive(int(d.name)):
            shutil.rmtree(d, ignore_errors=True)
            gone.append(str(d))
    return gone


def in_gradio_cache(path: str | os.PathLike) -> bool:
    """True when ``path`` lies inside a Gradio upload cache (this app's, or Gradio's default)."""
    try:
        p = Path(path).resolve()
    except OSError:
        return False
    roots = {gradio_cache(), Path(tempfile.gettempdir()) / "gradio"}
    return any(p.is_relative_to(r.resolve()) for r in roots)


def _remove(f: Path) -> bool:
    try:
        f.unlink()
    except OSError:
        return False
    try:
        f.parent.rmdir()  # the content-hash folder, when it held only this file
    except OSError:
        pass
    return True


def sweep_views(max_age_s: float = VIEW_MAX_AGE_S, now: float | None = None) -> int:
    """Delete the image views in Gradio's cache older than ``max_age_s`` (and its upload parser's stale empty
    temp files); returns how many. Exports and uploads keep their own names there and are left to Gradio's
    sweep (uploads are moved out at once, ``panels.upload.load_file``)."""
    root = gradio_cache()
    if not root.is_dir():
        return 0
    t = time.time() if now is None else now
    n = 0
    for pattern, age in (("*/image.*", max_age_s), ("tmp*", max(max_age_s, TMP_MAX_AGE_S))):
        for f in root.glob(pattern):
            try:
                old = f.is_file() and t - f.stat().st_mtime > age
            except OSError:
                continue
            if old and pattern == "tmp*":  # no folder of its own
                f.unlink(missing_ok=True)
                n += 1
            elif old:
                n += _remove(f)
    return n


def forget_cached(names) -> int:
    """Remove Gradio's cached copies of files with these base names (an export the page no longer offers)."""
    root = gradio_cache()
    n = 0
    for name in names:
        if name and "/" not in name and root.is_dir():
            n += sum(_remove(f) for f in root.glob(f"*/{name}"))
    return n


def _sweep_views_forever() -> None:
    while True:
        time.sleep(VIEW_SWEEP_EVERY_S)
        sweep_views()


def cleanup() -> None:
    """Remove this process's folder (its sessions' files and, unless the user chose another, Gradio's cache)."""
    shutil.rmtree(base() / str(os.getpid()), ignore_errors=True)


def install(own_gradio_cache: bool = True) -> None:
    """Call once at server start: sweep what dead servers left, point Gradio's cache at our folder,
    and clean up at exit, on Ctrl-C and on SIGTERM (what Docker, systemd and Spaces send)."""
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
    sweep_dead()
    if own_gradio_cache and "GRADIO_TEMP_DIR" not in os.environ:
        os.environ["GRADIO_TEMP_DIR"] = str(process_root() / "gradio")
    atexit.register(cleanup)
    threading.Thread(target=_sweep_views_forever, name="sweep-views", daemon=True).start()

    def on_term(signum, frame):  # run the same cleanup as a normal exit
        cleanup()
        sys.exit(128 + signum)
    signal.signal(signal.SIGTERM, on_term)
