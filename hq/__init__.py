"""HQ: a durable HTTP job queue server on Twisted."""

from __future__ import annotations

import os

__version__ = "0.1.0"


def commit_hash() -> str:
    """
    Return the git commit this code was built from (``$HQ_COMMIT_HASH``, or the
    checkout's HEAD), or ``"unknown"``.
    """
    env = os.environ.get("HQ_COMMIT_HASH")
    if env:
        return env
    top = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        with open(os.path.join(top, ".git", "HEAD")) as f:
            head = f.read().strip()
        if head.startswith("ref: "):
            with open(os.path.join(top, ".git", head[5:])) as f:
                head = f.read().strip()
        return head[:40] or "unknown"
    except OSError:
        return "unknown"
