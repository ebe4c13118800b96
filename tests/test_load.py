"""Several sessions clicking at once on a real server: no errors, and no session sees another's image or mask.

Starts ``python app.py`` (tiny random weights, SAM off) on a free port and runs
``bench.load_test`` with 4 sessions for ~10 s. Skipped with ``BT_SKIP_LOAD=1``
(about a minute on a busy 2-core machine: app start-up, four solo reference
runs, then 8 s of load). Tests do not time things: the
latency numbers are printed by ``python -m bench.load_test``, not asserted.
"""

from __future__ import annotations

import os

import pytest

pytestmark = [
    pytest.mark.skipif(os.environ.get("BT_SKIP_LOAD") == "1", reason="BT_SKIP_LOAD=1"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]


def test_four_sessions_clicking_concurrently_have_no_errors_and_no_crosstalk(tmp_path):
    pytest.importorskip("gradio_client")
    from bench.load_test import CYCLE, run, running_app

    with running_app(tmp_path) as url:
        result = run(url, sessions=4, seconds=8, side=64)
    assert result["references_distinct"], "the four phantoms gave identical answers: the crosstalk check is blind"
    assert result["errors"] == 0, result["per_session"]
    assert result["crosstalk"] == 0, result["per_session"]
    assert all(s["clicks"] >= 1 for s in result["per_session"]), result["per_session"]
    assert result["clicks"] >= 4 and CYCLE >= 2
