"""Finding processes by their process group or session, from /proc (Linux)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

_PGRP, _SESSION = 2, 3  # positions after the command name in /proc/<pid>/stat


def _members(position: int, wanted: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[position]) == wanted:
                members.append(int(entry.name))
    return members


def group_members(pgid: int) -> list[int]:
    """PIDs whose process group is ``pgid``."""
    return _members(_PGRP, pgid)


def session_members(sid: int) -> list[int]:
    """PIDs whose session is ``sid``."""
    return _members(_SESSION, sid)


PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_NAME, PR_SET_CHILD_SUBREAPER = 1, 4, 15, 36


_prctl: list[Any] = []  # libc's prctl, found once (a forked task calls it without looking it up again)


def prctl(option: int, value: int | bytes) -> None:
    """Linux's prctl(2), quietly nothing where libc cannot be loaded."""
    try:
        if not _prctl:
            import ctypes

            _prctl.append(ctypes.CDLL("libc.so.6", use_errno=True).prctl)
        _prctl[0](option, value, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def not_dumpable() -> None:
    """Make this process non-dumpable: other processes of the same user (a task's script) can then read neither its
    environment (the platform's credentials) nor its memory from /proc. Root still can."""
    prctl(PR_SET_DUMPABLE, 0)


def process_name(task_id: str) -> str:
    """The name (``comm``) a task process forked by the local backend's fork server carries: its
    /proc/<pid>/environ is the server's, so this is how the backend finds what is left of a task after a restart."""
    return f"aip-{task_id}"[:15]
