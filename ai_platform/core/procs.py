"""Finding processes by their process group or session, from /proc (Linux)."""

from __future__ import annotations

from pathlib import Path

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


def not_dumpable() -> None:
    """Make this process non-dumpable: other processes of the same user (a task's script) can then read neither its
    environment (the platform's credentials) nor its memory from /proc. Root still can."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(4, 0)  # PR_SET_DUMPABLE = 0
    except OSError:
        pass
