"""Free loopback ports for services started on this machine.

A port from ``bind(("127.0.0.1", 0))`` lies in the kernel's ephemeral range, where any outgoing
connection may take it between the moment it is chosen and the moment a service binds it. Ports
handed out here lie below that range (and above Ray's worker ports), so only another listener
can take them, and one process never hands out the same port twice.
"""

from __future__ import annotations

import random
import socket
import threading
from pathlib import Path

LOW, HIGH = 20000, 32767  # above Ray's default worker ports (10002-19999)
_given: set[int] = set()
_lock = threading.Lock()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def bindable(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a listener could bind ``host:port`` now."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: TIME_WAIT does not block them
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port that nothing listens on now and that no outgoing connection can be given."""
    ephemeral_low, ephemeral_high = _ephemeral_range()
    candidates = [p for p in range(LOW, HIGH + 1) if not ephemeral_low <= p <= ephemeral_high]
    with _lock:
        for port in random.sample(candidates, min(len(candidates), 200)):
            if port not in _given and bindable(port, host):
                _given.add(port)
                return port
    with socket.socket() as s:  # every candidate taken: fall back to the kernel's choice
        s.bind((host, 0))
        return s.getsockname()[1]


def free_port_block(count: int, host: str = "127.0.0.1") -> int:
    """The first of ``count`` consecutive free ports (``aip up --port BASE`` takes seven from its base)."""
    ephemeral_low, ephemeral_high = _ephemeral_range()
    starts = [p for p in range(LOW, HIGH + 2 - count)
              if not any(ephemeral_low <= q <= ephemeral_high for q in (p, p + count - 1))]
    with _lock:
        for start in random.sample(starts, min(len(starts), 200)):
            block = range(start, start + count)
            if not _given.intersection(block) and all(bindable(port, host) for port in block):
                _given.update(block)
                return start
    raise OSError(f"no {count} consecutive free ports between {LOW} and {HIGH}")
