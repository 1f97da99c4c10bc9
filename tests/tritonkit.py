"""Helpers for tests that start a real Triton Inference Server on 127.0.0.1."""
from __future__ import annotations

import socket


def free_ports(count: int) -> list[int]:
    """`count` ports of 127.0.0.1 nothing listens on (bound by the OS, then released)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()
