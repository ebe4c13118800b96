"""One heavy request per session at a time, so one session cannot fill the server's worker slots.

Gradio's ``concurrency_limit`` bounds the work of all sessions together; inside
it, a session that fires requests faster than they finish (a flood of uploads,
an API client in a loop) would otherwise take one slot per request, each
waiting on that session's lock, and everyone else would queue behind it.

The guard is the session's own lock (one ``Session`` per Gradio session hash,
in ``gr.State``): a heavy request waits at most :data:`BUSY_WAIT_S` for the
session's previous request (so a person's quick second click still goes
through), then gives its slot back with :func:`message` instead of waiting.
"""

from __future__ import annotations

import contextlib

BUSY_WAIT_S = 1.0  # a click of the click model takes ~0.1 s; an upload ~0.2-0.5 s
PREPARE_WAIT_S = 30.0  # a prompt waits this long for SAM's / MedSAM's image embedding (1-4 s on a CPU core)
WAIT_FOR = ("preparing the prompt engine",)  # what a heavy request waits for instead of being turned away


def message(session) -> str:
    doing = getattr(session, "busy_with", None) or "your previous request"
    return (f"Still working on your previous request ({doing}); this one was not run. "
            "Try again when the panels have updated.")


@contextlib.contextmanager
def turn(session, what: str, heavy: bool):
    """Hold ``session``'s lock for one request; yields False when a heavy request found it busy too long.

    Light requests (opacity, undo, a tab opened) wait for their turn as before. A heavy request that
    finds the session preparing its prompt engine (SAM's / MedSAM's embedding) waits for it, up to
    :data:`PREPARE_WAIT_S`: the prompt is answered once the embedding is ready.
    """
    got = session.lock.acquire(timeout=BUSY_WAIT_S) if heavy else session.lock.acquire()
    if not got and getattr(session, "busy_with", None) in WAIT_FOR:
        # a click while the prompt engine computes this image's embedding: the click is what it is for
        got = session.lock.acquire(timeout=PREPARE_WAIT_S)
    if not got:
        yield False
        return
    outer = getattr(session, "busy_with", None)
    if heavy and outer is None:
        session.busy_with = what
    try:
        yield True
    finally:
        if heavy and outer is None:
            session.busy_with = None
        session.lock.release()
