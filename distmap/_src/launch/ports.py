"""Coordinator ports: a free one on this machine, a random one for remote hosts, checks.

Example:
    >>> 1 <= free_port() <= 65535, PORT_RANGE[0] <= pick_port() < PORT_RANGE[1]
    (True, True)
"""

from __future__ import annotations

import errno
import secrets
import socket

LOOPBACK = "127.0.0.1"

#: Ports a launcher picks from for remote hosts: above most services' fixed ports and below
#: Linux's ephemeral range (32768-60999), so an outgoing connection cannot hold one.
PORT_RANGE = (20000, 30000)


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that is free on ``host`` right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_in_use(port: int, host: str = LOOPBACK) -> bool:
    """Whether something listens on ``host:port`` (binding it fails)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            return e.errno == errno.EADDRINUSE
    return False


def pick_port() -> int:
    """A coordinator port for a run on other hosts, drawn from :data:`PORT_RANGE`."""
    lo, hi = PORT_RANGE
    return lo + secrets.SystemRandom().randrange(hi - lo)


__all__ = ["LOOPBACK", "PORT_RANGE", "free_port", "pick_port", "port_in_use"]
