"""HQ: a durable HTTP job queue server on Twisted."""

from __future__ import annotations

__version__ = "0.1.0"
