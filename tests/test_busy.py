"""One session cannot queue heavy work ahead of everyone: while its upload is still running, its next heavy
request is answered with "still working on your previous request", and another session is served as usual."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

from bt_demo.sim.phantom import flair_phantom
from bt_demo.ui.panels import compare as CMP
from bt_demo.ui.panels import prompts as PR
from bt_demo.ui.panels import upload as UP
from bt_demo.ui.state import Session

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning:gradio.helpers"),
              pytest.mark.usefixtures("one_thread")]



def _png(folder, name, seed):
    img, _ = flair_phantom((96, 96), seed=seed)
    path = folder / name
    Image.fromarray(np.rint(img * 255).astype(np.uint8)).save(path)
    return str(path)


def test_a_busy_session_is_told_to_wait_and_another_session_is_served(engines, tmp_path, monkeypatch):
    slow_path, other_path = _png(tmp_path, "slow.png", 1), _png(tmp_path, "other.png", 2)
    a, _ = UP.load_file(Session(), engines, other_path)
    b, _ = UP.load_file(Session(), engines, other_path)

    # session A's next upload is a heavy request that stays in flight until we release it
    entered, release = threading.Event(), threading.Event()
    real_load = UP._load

    def slow_load(source, selectors):
        if str(source) == slow_path:
            entered.set()
            release.wait(30)
        return real_load(source, selectors)

    monkeypatch.setattr(UP, "_load", slow_load)
    done = {}
    worker = threading.Thread(target=lambda: done.update(result=UP.load_file(a, engines, slow_path)))
    worker.start()
    try:
        assert entered.wait(30)
        # A clicks and uploads again meanwhile: not run, and A is told why
        a2, view = PR.click(a, engines, [40, 40], "positive")
        assert view.get("_busy") and "Still working on your previous request" in " ".join(view["_messages"])
        assert "reading the file" in view["_messages"][0] and a2.prompts.empty()
        _, view = UP.load_file(a, engines, other_path)
        assert view.get("_busy")
        # B is not affected: its click is answered
        b, view = PR.click(b, engines, [40, 40], "positive")
        assert not view.get("_busy") and "1 positive" in view["prompt_info"]
    finally:
        release.set()
        worker.join(30)
    # A's upload finished, and A works again
    a, view = done["result"]
    assert a.source_path == slow_path and not view.get("_messages")
    a, view = PR.click(a, engines, [40, 40], "positive")
    assert not view.get("_busy") and "1 positive" in view["prompt_info"]


def test_light_requests_of_a_busy_session_wait_for_their_turn(engines, tmp_path):
    a, _ = UP.load_file(Session(), engines, _png(tmp_path, "a.png", 3))
    a.lock.acquire()  # a heavy request in flight
    try:
        got = {}
        t = threading.Thread(target=lambda: got.update(r=CMP.set_opacity(a, 0.7)))
        t.start()
        t.join(2.0)
        assert t.is_alive()  # waiting, not refused
    finally:
        a.lock.release()
    t.join(30)
    assert got["r"][0].opacity == pytest.approx(0.7)
