"""Process facts shared by the parts that clean up after dead processes (correction store, scratch folders)."""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs (one we may not signal counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
