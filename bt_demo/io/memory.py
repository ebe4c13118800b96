"""One memory budget per server that every volume load takes a share of, or waits for.

A single volume load is bounded by its upload budget (:mod:`bt_demo.io.upload`); this bounds the sum. Three
users loading the largest volume at once would otherwise add up past the machine and the server would be
killed for memory, taking every session with it. A load reserves its estimated peak before it decodes any
pixel; when the budget is taken, it waits (saying so through ``on_wait``) and gives up with a clear message
after ``wait_s``. The reservation ends when the load has built its volume: what a session keeps afterwards
is its own business (one volume per session, replaced by the next).

``BT_VOLUME_MEMORY_MB`` sets the budget (default 2048 MB: two of the largest volumes at once on a 4 GB Space).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator

from bt_demo.errors import InputError


class MemoryBudget:
    """A counting budget in bytes, shared by threads. ``reserve`` is a context manager."""

    def __init__(self, total_bytes: int) -> None:
        if total_bytes <= 0:
            raise ValueError(f"total_bytes must be positive, got {total_bytes}")
        self.total = int(total_bytes)
        self.used = 0
        self._cv = threading.Condition()

    @contextlib.contextmanager
    def reserve(self, nbytes: int, *, wait_s: float = 60.0,
                on_wait: Callable[[float, int], None] | None = None) -> Iterator[None]:
        """Hold ``nbytes`` of the budget for the ``with`` block.

        Waits up to ``wait_s`` seconds for room, calling ``on_wait(seconds_waited, bytes_in_use)`` about once a
        second; then raises InputError. A request larger than the whole budget is refused at once.
        """
        nbytes = int(nbytes)
        if nbytes > self.total:
            raise InputError(f"loading this volume needs about {nbytes / 2**20:,.0f} MB, more than this server "
                             f"allows one volume ({self.total / 2**20:,.0f} MB); crop or downsample it")
        t0 = time.monotonic()
        with self._cv:
            while self.used + nbytes > self.total:
                waited = time.monotonic() - t0
                if waited >= wait_s:
                    raise InputError(f"the server is busy loading other volumes ({self.used / 2**20:,.0f} MB of "
                                     f"{self.total / 2**20:,.0f} MB in use) and waited {waited:.0f} s for room; "
                                     "try again in a minute")
                if on_wait is not None:
                    on_wait(waited, self.used)
                self._cv.wait(min(1.0, wait_s - waited))
            self.used += nbytes
        try:
            yield
        finally:
            with self._cv:
                self.used -= nbytes
                self._cv.notify_all()


SERVER = MemoryBudget(int(os.environ.get("BT_VOLUME_MEMORY_MB", "2048")) << 20)
"""The budget every volume load in this process shares (the app's sessions, or the batch command)."""

LOAD_BYTES_PER_VOXEL = 16
"""Peak bytes per voxel while a volume is built: the float32 stack, its canonical copy, the display copy
and one slice in flight (measured on the 155-slice bench volume: see bench/soak_hostile.py hostile)."""
