"""Loopback helpers shared by the tests, the benchmarks and the demo (one copy instead of three)."""
from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (for a local Mosquitto; loopback only)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":  # scripts/demo.sh: python -m pi.loopback
    print(free_port())
