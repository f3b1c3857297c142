"""
Readiness and status notifications to systemd (``Type=notify`` units), with
the standard library only: one datagram to the socket named by ``$NOTIFY_SOCKET``.

Outside systemd (no ``NOTIFY_SOCKET``) every call does nothing.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping


def notify_address(environ: Mapping[str, str]) -> str | bytes | None:
    """
    Return the socket address in ``NOTIFY_SOCKET``: a path, or for the
    abstract namespace (a leading ``@``) the name with a leading NUL byte;
    ``None`` when it is not set or not a unix socket.
    """
    value = environ.get("NOTIFY_SOCKET", "")
    if value.startswith("@"):
        return b"\0" + value[1:].encode("utf-8")
    if value.startswith("/"):
        return value
    return None


def sd_notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """
    Send ``state`` (e.g. ``"READY=1"``, ``"STOPPING=1"``, ``"STATUS=..."``;
    several as lines) to systemd. Return whether it was sent.

    Never raises: a unit that is not ``Type=notify`` simply has no socket.
    """
    address = notify_address(os.environ if environ is None else environ)
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode("utf-8"))
    except OSError:
        return False
    return True
