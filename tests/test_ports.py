"""Ports for services started here lie outside the ephemeral range, so outgoing connections cannot take them."""

from __future__ import annotations

import socket

from ai_platform.core import ports


def test_free_ports_are_bindable_distinct_and_not_ephemeral():
    low, high = ports._ephemeral_range()
    given = [ports.free_port() for _ in range(50)]
    assert len(set(given)) == len(given), "one process never gets the same port twice"
    assert not [p for p in given if low <= p <= high]
    for port in given[:5]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_port_someone_listens_on_is_never_given(monkeypatch):
    monkeypatch.setattr(ports, "LOW", 24000)
    monkeypatch.setattr(ports, "HIGH", 24019)
    listeners = []
    try:
        for port in range(24000, 24016):
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
                s.listen()
                listeners.append(s)
            except OSError:  # somebody else has it: just as good for this test
                s.close()
        given = [ports.free_port() for _ in range(4)]
        assert not set(given) & set(range(24000, 24016)), "every listened port is skipped"
        assert len(set(given)) == 4
    finally:
        for s in listeners:
            s.close()
