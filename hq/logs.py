"""
Logging: the application log (``log_level``, ``log_file``), the access log
(``access_log_file``), and reopening both on SIGUSR1 for logrotate.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable
from typing import IO, Any, cast

from twisted.logger import (
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    PredicateResult,
    globalLogBeginner,
    globalLogPublisher,
    textFileLogObserver,
)
from twisted.web import http
from twisted.web.server import Request, Site
from zope.interface import implementer

LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
}


class ReopenableFile:
    """
    A text file opened for appending that can be reopened (after logrotate moved
    it); the empty path means standard output.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._file: IO[str] = self._open()

    def _open(self) -> IO[str]:
        if not self.path:
            return sys.stdout
        return open(self.path, "a", encoding="utf-8", buffering=1)

    def write(self, text: str) -> None:
        self._file.write(text)

    def flush(self) -> None:
        self._file.flush()

    def reopen(self) -> None:
        """
        Close and open the file again at its path (a no-op for standard output).
        """
        if not self.path:
            return
        new = self._open()
        old, self._file = self._file, new
        old.close()

    def close(self) -> None:
        if self.path:
            self._file.close()


def app_observer(level: str, out: ReopenableFile) -> ILogObserver:
    """
    Return an observer that writes events at ``level`` or above as text lines to ``out``.
    """
    text = textFileLogObserver(cast(IO[str], out))
    if level == "off":
        return FilteringLogObserver(text, [_Nothing()])
    return FilteringLogObserver(text, [LogLevelFilterPredicate(defaultLogLevel=LEVELS[level])])


@implementer(ILogFilterPredicate)
class _Nothing:
    """
    Lets no event through (``log_level = "off"``).
    """

    def __call__(self, event: Any) -> PredicateResult:
        return PredicateResult.no


def start_logging(observer: ILogObserver) -> None:
    """
    Send every log event to ``observer`` only.

    ``hq serve`` has not begun logging yet, so this begins it. Under twistd,
    twistd has begun logging to its own destination; HQ's ``log_file`` and
    ``log_level`` replace it, so the observers twistd installed are removed.
    """
    observers = list(getattr(globalLogPublisher, "_observers", ()))
    if observers:
        for existing in observers:
            globalLogPublisher.removeObserver(existing)
        globalLogPublisher.addObserver(observer)
    else:
        globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def on_sigusr1(reopen: Callable[[], None], reactor: Any) -> None:
    """
    Call ``reopen`` on the reactor thread whenever SIGUSR1 arrives, then run the
    handler that was there before (twistd rotates its own log file on it).
    """
    previous = signal.getsignal(signal.SIGUSR1)

    def handler(signum: int, frame: Any) -> None:
        reactor.callFromThread(reopen)
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGUSR1, handler)


class TimedRequest(Request):
    """
    A request that remembers when it began, for the access log's latency.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.began_ns = time.monotonic_ns()


def _human(ns: int) -> str:
    if ns < 1_000_000:
        return f"{ns / 1000:.3f}µs"
    if ns < 1_000_000_000:
        return f"{ns / 1_000_000:.3f}ms"
    return f"{ns / 1_000_000_000:.3f}s"


class AccessLogSite(Site):
    """
    A Site that writes one access-log line per request, in the Go server's
    fields: time, client address, host, method, URI, status, latency in ns,
    latency for people, bytes in, bytes out.
    """

    requestFactory = TimedRequest

    def __init__(self, resource: Any, access_log: ReopenableFile | None, **kwargs: Any) -> None:
        super().__init__(resource, **kwargs)
        self._access_log = access_log

    def log(self, request: http.Request) -> None:
        if self._access_log is None:
            return
        latency = time.monotonic_ns() - getattr(request, "began_ns", time.monotonic_ns())
        peer = request.getClientAddress()
        client = getattr(peer, "host", "-")
        host = (request.getHeader(b"host") or b"-").decode("latin-1")
        uri = request.uri.decode("latin-1")
        method = request.method.decode("latin-1")
        bytes_in = (request.getHeader(b"content-length") or b"0").decode("latin-1")
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self._access_log.write(
            f"{stamp} {client} {host} {method} {uri} {request.code} {latency} "
            f"{_human(latency)} {bytes_in} {request.sentLength}\n"
        )
