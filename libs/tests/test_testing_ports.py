"""The test harness's port picker (gatehouse.testing.stack.free_port)."""

from __future__ import annotations

import socket

from gatehouse.testing.stack import _ephemeral_start, free_port


def test_free_ports_are_distinct_bindable_and_outside_the_kernels_range():
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50  # never the same port twice in one process
    top = _ephemeral_start()
    assert all(1024 <= p < top for p in ports)  # the kernel never hands these out by itself
    for port in ports[:5]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
