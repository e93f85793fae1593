"""A task's stdout and stderr on disk, capped: past the cap the oldest part is dropped and the tail kept.

Two files, ``<id>.log`` and ``<id>.log.1``: when the current file passes half the cap it
becomes ``.1`` (replacing the older one), so at most ``cap`` bytes are kept. Offsets are
logical (bytes since the task started); ``dropped`` is where the retained window begins.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

DROPPED_NOTICE = b"[... %d bytes of earlier output dropped to keep the log under its cap ...]\n"


class TaskLog:
    def __init__(self, path: Path, cap_bytes: int, dropped: int = 0) -> None:
        self.path = path
        self.older = path.with_name(path.name + ".1")
        self.cap = max(cap_bytes, 2)
        self.dropped = dropped
        self._fd: int | None = None
        self._bytes = 0  # in the file open for writing (only this log writes it)

    def _size(self, path: Path) -> int:
        try:
            return path.stat().st_size
        except FileNotFoundError:
            return 0

    @property
    def end(self) -> int:
        """Logical offset just past the last byte written."""
        return self.dropped + self._size(self.older) + self._size(self.path)

    def write(self, data: bytes) -> None:
        """Append ``data``; OSError when it cannot be written (a full disk, the folder removed). The log stays
        usable: the next write opens the file again, so writing resumes once the cause is gone."""
        try:
            if self._fd is None:
                try:
                    self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                except FileNotFoundError:  # its folder is gone (or not made yet)
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                self._bytes = os.fstat(self._fd).st_size
            written = os.write(self._fd, data)
            self._bytes += written
            if written < len(data):  # a short write: the disk filled up in the middle
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            if self._bytes > self.cap // 2:
                os.close(self._fd)
                self._fd = None
                older = self._size(self.older)
                os.replace(self.path, self.older)
                self.dropped += older
        except OSError:
            self.close()
            raise

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.close(fd)

    def read(self, offset: int, max_bytes: int = 1 << 20) -> tuple[int, bytes, int]:
        """(start, data, next offset) from logical ``offset`` on; a notice stands in for dropped bytes."""
        if offset < self.dropped:
            return offset, DROPPED_NOTICE % (self.dropped - offset), self.dropped
        older_size = self._size(self.older)
        within = offset - self.dropped
        path, position = (self.older, within) if within < older_size else (self.path, within - older_size)
        try:
            with open(path, "rb") as f:
                f.seek(position)
                data = f.read(max_bytes)
        except FileNotFoundError:
            data = b""
        return offset, data, offset + len(data)
