"""Fixtures shared by the handler-level UI tests (upload corpus, handlers, studies)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def one_thread():
    """One math thread, as app.py sets on a small machine: oversubscribed pools make each call 10x slower."""
    import torch
    from threadpoolctl import threadpool_limits

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    """The app's engines over tiny random models (tests/tiny_models.py); SAM off (nothing to download)."""
    from bt_demo.models.registry import Engines
    from tests.tiny_models import make_weights_dir

    return Engines(weights_dir=str(make_weights_dir(tmp_path_factory.mktemp("weights"))), sam_model="none",
                   device="cpu")
