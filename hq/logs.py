"""
Logging: the application log (``log_level``, ``log_file``, ``log_format``), the
log files that logrotate can move (reopened on SIGUSR1). The access log is
written by :class:`hq.site.AccessLogSite`.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from types import FrameType
from typing import IO, Any, cast

from twisted.internet.interfaces import IDelayedCall, IReactorThreads, IReactorTime
from twisted.logger import (
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    LogLevel,
    PredicateResult,
    formatEvent,
    globalLogBeginner,
    globalLogPublisher,
    textFileLogObserver,
)
from twisted.python.failure import Failure
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
    it); the empty path means ``stdout`` (by default ``sys.stdout``). Under
    twistd, which redirects ``sys.stdout`` into its log, HQ passes the standard
    output it had before (:class:`hq.tap.Console`).

    A log that cannot be written (disk full, file gone) must not stop the
    server: failed writes are dropped and counted, and a warning goes to
    standard error at most once a minute.

    :param turns: the reactor of the server writing the lines (the access
        log's): lines written in one of its turns are kept and written together,
        with one ``write`` system call, when the reactor next runs its timed
        calls, before it waits for more I/O. A burst answers a commit's pushes in
        one turn; a ``write`` per line also let the store's writer thread take
        the interpreter lock each time. :meth:`flush`, :meth:`reopen` and
        :meth:`close` write what is kept first. Without it every line is
        written at once (the file is line-buffered).
    """

    #: Seconds between two warnings about dropped lines.
    WARN_EVERY = 60.0

    def __init__(
        self, path: str, stdout: IO[str] | None = None, turns: IReactorTime | None = None
    ) -> None:
        self.path = path
        self._stdout = stdout
        self._file: IO[str] = self._open()
        self.dropped = 0
        self._warned_at: float | None = None
        #: With a reactor: lines written in one turn of it go out together at
        #: the start of the next (one ``write`` for a commit's worth of answers).
        self._turns = turns
        self._pending: list[str] = []
        self._flushing: IDelayedCall | None = None

    def _open(self) -> IO[str]:
        if not self.path:
            return self._stdout or sys.stdout
        return open(self.path, "a", encoding="utf-8", buffering=1)

    def _failed(self, error: Exception) -> None:
        self.dropped += 1
        now = time.monotonic()
        if self._warned_at is None or now - self._warned_at >= self.WARN_EVERY:
            self._warned_at = now
            try:
                assert sys.__stderr__ is not None
                sys.__stderr__.write(
                    f"hq: cannot write log {self.path or '<stdout>'}: {error}; "
                    f"{self.dropped} lines dropped so far\n"
                )
            except (OSError, ValueError, AttributeError):
                pass

    def write(self, text: str) -> None:
        if self._turns is None:
            self._write(text)
            return
        self._pending.append(text)
        if self._flushing is None:
            self._flushing = self._turns.callLater(0, self._write_pending)

    def _write(self, text: str, lines: int = 1) -> None:
        try:
            self._file.write(text)
        except (OSError, ValueError) as e:
            self.dropped += lines - 1
            self._failed(e)

    def _write_pending(self) -> None:
        if self._flushing is not None:
            if self._flushing.active():
                self._flushing.cancel()
            self._flushing = None
        if self._pending:
            pending, self._pending = self._pending, []
            self._write("".join(pending), len(pending))

    def flush(self) -> None:
        self._write_pending()
        try:
            self._file.flush()
        except (OSError, ValueError) as e:
            self._failed(e)

    def reopen(self) -> None:
        """
        Close and open the file again at its path (a no-op for standard output).
        If it cannot be opened, keep writing to the old one.
        """
        if not self.path:
            return
        self._write_pending()  # lines of this turn go where the turn's other lines went
        try:
            new = self._open()
        except OSError as e:
            self._failed(e)
            return
        old, self._file = self._file, new
        try:
            old.close()
        except OSError as e:
            self._failed(e)

    def close(self) -> None:
        self._write_pending()
        if self.path:
            try:
                self._file.close()
            except OSError as e:
                self._failed(e)


#: Whether debug events are written (``log_level = "debug"``). Twisted's
#: ``Logger.debug`` costs ~12 µs even when every observer drops the event, so
#: the per-job debug lines of the push and delivery path ask this first.
_debug_events = True


def debug_events() -> bool:
    """
    Whether the server writes debug events (see :func:`set_debug_events`).
    """
    return _debug_events


def set_debug_events(enabled: bool) -> None:
    """
    Say whether the server writes debug events (its ``log_level``).
    """
    global _debug_events
    _debug_events = enabled


def app_observer(level: str, out: ReopenableFile, log_format: str = "text") -> ILogObserver:
    """
    Return an observer that writes events at ``level`` or above to ``out``:
    text lines for people, or with ``log_format="json"`` one JSON object per
    line (:class:`JSONLineObserver`).
    """
    if log_format == "json":
        writer: ILogObserver = JSONLineObserver(out)
    else:
        writer = textFileLogObserver(cast(IO[str], out))
    if level == "off":
        return FilteringLogObserver(writer, [_Nothing()])
    return FilteringLogObserver(writer, [_AtLeast(LEVELS[level])])


#: Keys of legacy (``twisted.python.log``) events that are not structured fields.
_LEGACY_KEYS = frozenset({"message", "isError", "system", "time", "format", "why", "failure"})


def utc_stamp(seconds: float) -> str:
    """
    Return ``seconds`` (Unix time) as RFC 3339 UTC with milliseconds.
    """
    stamp = datetime.fromtimestamp(seconds, tz=UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


@implementer(ILogObserver)
class JSONLineObserver:
    """
    Writes each event as one line of JSON, for log shippers: ``time`` (UTC,
    RFC 3339 with milliseconds), ``level``, ``namespace``, ``message`` (the
    formatted text a person reads), then the event's own fields (``jobID``,
    ``path``...) as keys of their own, and for a failure ``error`` and
    ``traceback``. A field that is not a JSON value is written as its ``str``.

    Twisted's ``eventAsJSON`` is not used: it nests the level as an object
    with class UUIDs and keeps the unformatted ``log_format``, which log
    shippers cannot use as is.
    """

    def __init__(self, out: ReopenableFile) -> None:
        self._out = out

    def __call__(self, event: dict[str, Any]) -> None:
        level = event.get("log_level")
        record: dict[str, Any] = {
            "time": utc_stamp(event.get("log_time") or time.time()),
            "level": getattr(level, "name", "info"),
            "namespace": event.get("log_namespace", ""),
            "message": formatEvent(event),
        }
        for key, value in event.items():
            if not key.startswith("log_") and key not in _LEGACY_KEYS and key not in record:
                record[key] = value
        failure = event.get("log_failure")
        if isinstance(failure, Failure):
            kind = failure.type.__name__ if failure.type is not None else "Error"
            record["error"] = f"{kind}: {failure.getErrorMessage()}"
            record["traceback"] = failure.getTraceback()
        try:
            line = json.dumps(record, default=str, ensure_ascii=False)
        except (TypeError, ValueError):
            # A field json cannot take even through str() (a dict with tuple
            # keys, a cycle): write every field that is not plain as its str.
            plain = (str, int, float, bool, type(None))
            line = json.dumps(
                {k: v if isinstance(v, plain) else str(v) for k, v in record.items()},
                ensure_ascii=False,
            )
        self._out.write(line + "\n")


@implementer(ILogFilterPredicate)
class _AtLeast:
    """
    Lets through the events at ``level`` or above.

    Twisted's ``LogLevelFilterPredicate`` does this too, but looks up each
    event's namespace (dot by dot) for a level of its own, which HQ never
    sets; that was a visible part of the cost of the ``debug`` events on the
    delivery path, dropped at the default level.
    """

    def __init__(self, level: LogLevel) -> None:
        ordered = list(LogLevel.iterconstants())
        self._levels = frozenset(ordered[ordered.index(level) :])

    def __call__(self, event: Any) -> PredicateResult:
        if event.get("log_level") in self._levels and event.get("log_namespace") is not None:
            return PredicateResult.maybe
        return PredicateResult.no


@implementer(ILogFilterPredicate)
class _Nothing:
    """
    Lets no event through (``log_level = "off"``).
    """

    def __call__(self, event: Any) -> PredicateResult:
        return PredicateResult.no


def start_logging(observer: ILogObserver, *, replace: bool = False) -> None:
    """
    Send every log event to ``observer`` only.

    ``hq serve`` has not begun logging yet: this begins it (events logged
    before are replayed). Under twistd (``replace``), twistd has begun logging
    to its own destination: its observers are removed, so that each line is
    written once, by HQ, in HQ's format (twistd offers no public way to find
    the observers it installed).
    """
    if not replace:
        globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
        return
    for existing in list(getattr(globalLogPublisher, "_observers", ())):
        globalLogPublisher.removeObserver(existing)
    globalLogPublisher.addObserver(observer)


def on_sigusr1(reopen: Callable[[], None], reactor: IReactorThreads) -> None:
    """
    Call ``reopen`` on the reactor thread whenever SIGUSR1 arrives, after the
    handler that was there before: twistd, logging to a file, rotates it on
    SIGUSR1 (renames it to ``.1`` and opens a new one), and HQ then reopens the
    new file at that path.
    """
    previous = signal.getsignal(signal.SIGUSR1)

    def handler(signum: int, frame: FrameType | None) -> None:
        if callable(previous):
            previous(signum, frame)
        reactor.callFromThread(reopen)

    signal.signal(signal.SIGUSR1, handler)
