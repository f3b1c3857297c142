"""
The sender: a second process that makes the requests to workers.

HQ's reactor thread parses, stores and answers pushes, and for each delivery
marks the job running, makes the POST, reads the answer and records the
outcome. The POST and the answer, treq and Twisted's HTTP client, took a third
of that thread's time under load, and CPython runs one thread's Python at a
time. A server on a machine with more than one core (``sender_process``)
therefore hands most exchanges to a child process, ``python -m hq.sender``,
which runs the same :class:`hq.worker.WorkerClient` (treq, the connection
pool, the redirects, the response cap, the network guard, the signatures) on a
reactor of its own and sends back what each exchange learned.

:class:`SenderProcess` is the parent's side. An exchange that starts while no
other job is being delivered (in flight, or waiting for its outcome to be
stored) runs in the parent, as without the child: a lone job then reaches its
worker without the hop through the pipe. The others run in the
child whenever it is ready; until then (at start-up, after a death) in the
parent.

Between the two, over the child's standard input and output, each message is
a frame: a 4-byte big-endian length, then that many bytes of UTF-8: a JSON
list, and right after it a tail of text, often empty, written by
:class:`TurnWriter` once per reactor turn. The tail carries a job's payload
or a worker's answer as it is, not as a string inside the JSON, which would
be escaped on one side and unescaped on the other (for a 10 KB payload,
about 60 and 100 µs against 6 and 4):

- parent -> child, first: ``{"protocol", "user_agent", "max_output_bytes",
  "deny", "allow", "signing_secrets"}``, the settings; the child answers
  ``["ready"]`` once its client is made. A child of another
  :data:`PROTOCOL` (the package was upgraded under a running server, which
  then starts a child of the new code) says so in the log and exits: the
  server keeps making its requests itself until it is restarted;
- ``["post", n, job_id, url, headers, timeout, has_payload]``, the payload
  (compact JSON text) as the tail: make exchange ``n``;
- ``["cancel", n]``: abort exchange ``n`` (a stop, or the shutdown's timeout);
  the parent ends it at once, as cancelled;
- child -> parent: ``["log", level, namespace, text]``, a warning or an
  error the child logged, which the parent logs;
- child -> parent: ``[n, url, status_code, phrase, err, truncated,
  retry_after, error, reason]``, the worker's answer (what is kept of it) as
  the tail: exchange ``n`` ended; ``error`` is ``None`` (a response was read),
  ``"timeout"``, ``"cancelled"``, ``"transport"`` (the connection failed or
  closed around the response) or ``"other"``, and ``reason`` is
  :meth:`hq.worker.Exchange.reason`.

The child ends when its standard input closes: the parent closes it after the
delivery engine stopped (:meth:`SenderProcess.stop`), and the system closes it
when the parent dies, killed or not; the child then aborts what it still runs
(those jobs are still ``running`` in the store, and the next start delivers
them again). It ignores SIGINT, SIGTERM and SIGHUP, which a terminal sends to
the whole process group: the parent's graceful stop decides. When the child
dies, the exchanges it ran end with an error (``the sender process ended``)
and a new child is started.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.error import ProcessDone
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger, LogLevel, formatEvent
from twisted.python.failure import Failure

from hq import gctune
from hq.model import Job
from hq.worker import Exchange, ExchangeFailed, Sender, TimedOut, worker_client

_LENGTH = struct.Struct("!I")
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_DECODER = json.JSONDecoder()

#: Exchanges :class:`SenderProcess` runs in the server's own process at a time.
LOCAL_SLOTS = 1

#: Seconds to wait before starting a new child after one died; doubled after
#: each child that lived less than ``STABLE_SECONDS``, up to ``MAX_RESTART_DELAY``.
RESTART_DELAY = 0.5
STABLE_SECONDS = 10.0
MAX_RESTART_DELAY = 30.0

#: The child's first message: its client is made.
READY = ["ready"]

#: The frames' version: a child refuses settings of another. (Version 1, the
#: payload inside the JSON, sent none.)
PROTOCOL = 2


#: Seconds :meth:`SenderProcess.stop` waits for the child to exit before killing it.
EXIT_TIMEOUT = 5.0


def frame(message: Any, tail: str = "") -> bytes:
    """
    Return ``message`` as one frame, followed by the text ``tail``.
    """
    head = _ENCODER.encode(message).encode("utf-8")
    body = tail.encode("utf-8") if tail else b""
    return b"".join((_LENGTH.pack(len(head) + len(body)), head, body))


class Frames:
    """
    Cut a byte stream into its frames: (message, tail) pairs.
    """

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._size = 0
        #: Bytes needed before the next frame is whole (its length, once known).
        self._need = 4

    def feed(self, data: bytes) -> list[tuple[Any, str]]:
        """
        Add ``data``; return the (message, tail) pairs it completes. A frame
        read in many pieces is joined once, when whole.
        """
        self._chunks.append(data)
        self._size += len(data)
        if self._size < self._need:
            return []
        buffer = b"".join(self._chunks)
        messages = []
        start, end = 0, len(buffer)
        self._need = 4
        while end - start >= 4:
            (length,) = _LENGTH.unpack_from(buffer, start)
            if end - start - 4 < length:
                self._need = 4 + length
                break
            start += 4
            text = buffer[start : start + length].decode("utf-8")
            message, cut = _DECODER.raw_decode(text)
            messages.append((message, text[cut:]))
            start += length
        rest = buffer[start:]
        self._chunks = [rest] if rest else []
        self._size = len(rest)
        return messages


def exchange_message(n: int, exchange: Exchange) -> tuple[list[Any], str]:
    """
    Return the child's report of exchange ``n``: the message and its tail,
    the answer's output.
    """
    error = exchange.error
    if error is None:
        kind = None
    elif isinstance(error, TimedOut):
        kind = "timeout"
    elif isinstance(error, CancelledError):
        kind = "cancelled"
    elif exchange.unusual_error:
        kind = "other"
    else:
        kind = "transport"
    message = [
        n,
        exchange.url,
        exchange.status_code,
        exchange.phrase.decode("latin-1"),
        exchange.err,
        exchange.truncated,
        exchange.retry_after,
        kind,
        exchange.reason(),
    ]
    return message, exchange.output()


def reported_exchange(message: list[Any], output: str, timeout: int) -> Exchange:
    """
    Return the :class:`Exchange` the child reported in ``message`` and its
    tail ``output``, for a job of ``timeout`` seconds.
    """
    _, url, status_code, phrase, err, truncated, retry_after, kind, reason = message
    error: Exception | None
    if kind is None:
        error = None
    elif kind == "timeout":
        error = TimedOut(timeout)
    elif kind == "cancelled":
        error = CancelledError()
    else:
        error = ExchangeFailed(reason, unusual=kind == "other")
    return Exchange(
        url=url,
        status_code=status_code,
        phrase=phrase.encode("latin-1"),
        err=err,
        truncated=truncated,
        error=error,
        retry_after=retry_after,
        reported_output=output,
    )


class TurnWriter:
    """
    Write the frames of a reactor turn to a pipe together, at the end of the
    turn, with one ``write`` where Twisted's own writer (``writer``, the
    pipe's :class:`twisted.internet.abstract.FileDescriptor`) would wait for
    the next poll and watch the pipe for writing around it; through that
    writer whenever it still holds data or the pipe is full.
    """

    def __init__(self, reactor: Any, writer: Any) -> None:
        self._reactor = reactor
        self._writer = writer
        #: Whether Twisted's writer exposes the buffers this looks at.
        self._direct = all(hasattr(writer, name) for name in ("dataBuffer", "_tempDataBuffer"))
        self._turn: list[bytes] = []
        self._later: Any = None

    def write(self, data: bytes) -> None:
        self._turn.append(data)
        if self._later is None:
            self._later = self._reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        self._later = None
        if self._turn:
            data = b"".join(self._turn)
            self._turn.clear()
            self._send(data)

    def _send(self, data: bytes) -> None:
        writer = self._writer
        if self._direct and not writer.dataBuffer and not writer._tempDataBuffer:
            try:
                sent = os.write(writer.fileno(), data)
            except BlockingIOError:
                sent = 0
            except OSError:
                # The other side is gone: Twisted's writer notices and reports it.
                sent = 0
            data = data[sent:]
        if data:
            writer.write(data)


class SenderProcess(ProcessProtocol):
    """
    Run exchanges with workers (the same ``post`` as
    :class:`hq.worker.WorkerClient`): with ``local`` in this process when none
    is in flight in the child, fewer than ``local_slots`` run here and the
    delivery engine has no other run in progress (:attr:`runs`, when set), else in
    the child.

    A lone job's way to its worker thus stays as short as it was (no hop
    through the pipe); under load nearly all exchanges run in the child. Until
    the child is ready, and while a dead one's successor starts, every
    exchange runs here.

    :param reactor: spawns the child and times its restarts.
    :param local: the client of this process.
    :param settings: the child's settings (see the module's docstring).
    :param argv: the child's command (tests run another one).
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        local: Sender,
        settings: dict[str, Any],
        argv: list[str] | None = None,
        local_slots: int = LOCAL_SLOTS,
    ) -> None:
        self._reactor = reactor
        self._local = local
        self._local_slots = local_slots
        #: Returns how many runs the delivery engine has in progress, the
        #: asking one included (:attr:`hq.delivery.engine.Delivery.runs`); set
        #: by :func:`hq.tap.delivery_engine`, the engine being made after its
        #: sender. ``None``: only the exchanges in flight count.
        self.runs: Callable[[], int] | None = None
        self._settings = settings
        self._argv = argv or [sys.executable, "-m", "hq.sender"]
        self._frames = Frames()
        self._writer: TurnWriter | None = None
        self._next = 0
        #: Exchange number -> (its Deferred, the job's timeout, its URL).
        self._pending: dict[int, tuple[Deferred[Exchange], int, str]] = {}
        self._closing = False
        self._exited: list[Deferred[None]] = []
        self._starting: list[Deferred[None]] = []
        self._restart: Any = None
        self._started_at = 0.0
        self._delay = RESTART_DELAY
        #: Exchanges running in this process.
        self.local_running = 0
        #: Exchanges started in this process and in the child, and children
        #: that ended unexpectedly, since the server started (for the metrics).
        self.sent_here = 0
        self.sent_by_child = 0
        self.deaths = 0
        #: Whether the child runs and said it is ready.
        self.ready = False
        #: The running child's process id, or ``None``.
        self.pid: int | None = None

    def start(self) -> Deferred[None]:
        """
        Start the child; return a Deferred that fires once it is ready, or
        has ended without being ready (it is then started again later).
        """
        self._closing = False
        self._delay = RESTART_DELAY
        started: Deferred[None] = Deferred()
        self._starting.append(started)
        if self.pid is None and self._restart is None:
            self._spawn()
        elif self.ready:
            self._started()
        elif self._restart is not None:
            # A dead child's successor: start it now.
            self._restart.cancel()
            self._spawn()
        return started

    def _started(self) -> None:
        starting, self._starting = self._starting, []
        for started in starting:
            started.callback(None)

    def _spawn(self) -> None:
        self._restart = None
        self._frames = Frames()
        env = os.environ.copy()
        # The child imports the same hq as this process, installed or not.
        env["PYTHONPATH"] = os.pathsep.join(path for path in sys.path if path)
        self._started_at = self._reactor.seconds()
        try:
            transport = self._reactor.spawnProcess(
                self, self._argv[0], self._argv, env=env, childFDs={0: "w", 1: "r", 2: 2}
            )
        except OSError as e:
            self.log.error("Cannot start the sender process: {error}", error=e)
            self._started()
            self._restart_later()
            return
        self.pid = transport.pid
        self._writer = TurnWriter(self._reactor, transport.pipes[0])
        self._writer.write(frame(dict(self._settings, protocol=PROTOCOL)))

    def post(self, job: Job) -> Deferred[Exchange]:
        """
        POST ``job``; return a Deferred of the exchange (see
        :meth:`hq.worker.WorkerClient.post`).
        """
        if not self.ready or (
            self.local_running < self._local_slots and not self._pending and self._alone()
        ):
            self.local_running += 1
            self.sent_here += 1
            running = self._local.post(job)
            running.addBoth(self._local_ended)
            return running
        assert self._writer is not None
        self.sent_by_child += 1
        self._next += 1
        n = self._next
        done: Deferred[Exchange] = Deferred(lambda d: self._cancel(n))
        self._pending[n] = (done, job.timeout, job.url)
        payload = job.payload
        self._writer.write(
            frame(
                ["post", n, job.id, job.url, job.headers, job.timeout, payload is not None],
                payload or "",
            )
        )
        return done

    def _alone(self) -> bool:
        # In a burst the child is sometimes left with nothing in flight while
        # the other runs wait for their outcomes to be committed: their next
        # jobs come at once, so this one is not alone.
        return self.runs is None or self.runs() <= 1

    def _local_ended(self, result: Any) -> Any:
        self.local_running -= 1
        return result

    def _cancel(self, n: int) -> None:
        # Ends like WorkerClient.post's: an Exchange whose error is the cancellation.
        pending = self._pending.pop(n, None)
        if pending is None:
            return
        if self._writer is not None:
            self._writer.write(frame(["cancel", n]))
        done, _, url = pending
        done.callback(Exchange(url=url, error=CancelledError()))

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        for message, tail in self._frames.feed(data):
            if message == READY:
                self.ready = True
                self._started()
                continue
            if message[0] == "log":
                _, level, namespace, text = message
                self.log.emit(
                    LogLevel.levelWithName(level),
                    "Sender process: {namespace}: {text}",
                    namespace=namespace,
                    text=text,
                )
                continue
            pending = self._pending.pop(message[0], None)
            if pending is not None:
                done, timeout, _ = pending
                done.callback(reported_exchange(message, tail, timeout))

    def processEnded(self, reason: Failure) -> None:
        self.pid = None
        self.ready = False
        self._writer = None
        if not self._closing or not isinstance(reason.value, ProcessDone):
            self.deaths += 1
            self.log.error(
                "The sender process ended: {reason}; requests to workers are made "
                "by the server's own process until it is started again",
                reason=reason.getErrorMessage(),
            )
        if not self._closing:
            if self._reactor.seconds() - self._started_at > STABLE_SECONDS:
                self._delay = RESTART_DELAY
            self._restart_later()
        # The state is settled: what the callbacks below run may start or stop.
        pending, self._pending = self._pending, {}
        exited, self._exited = self._exited, []
        starting, self._starting = self._starting, []
        # The worker may have had the request: an outcome like a connection lost.
        ended = ExchangeFailed("the sender process ended", unusual=False)
        for done, _, url in pending.values():
            done.callback(Exchange(url=url, error=ended))
        for waiting in [*exited, *starting]:
            waiting.callback(None)

    def _restart_later(self) -> None:
        self._restart = self._reactor.callLater(self._delay, self._spawn)
        self._delay = min(self._delay * 2, MAX_RESTART_DELAY)

    def stop(self) -> Deferred[None]:
        """
        Let the child exit (it aborts what it still runs); return a Deferred
        that fires once it did (it is killed after :data:`EXIT_TIMEOUT` s).
        """
        self._closing = True
        self.ready = False
        if self._restart is not None and self._restart.active():
            self._restart.cancel()
        self._restart = None
        if self.pid is None or self.transport is None:
            return succeed(None)
        exited: Deferred[None] = Deferred()
        self._exited.append(exited)
        self.transport.closeStdin()
        kill = self._reactor.callLater(EXIT_TIMEOUT, self._kill)

        def stop_kill(result: None) -> None:
            if kill.active():
                kill.cancel()

        exited.addCallback(stop_kill)
        return exited

    def _kill(self) -> None:
        if self.transport is not None and self.pid is not None:
            self.transport.signalProcess("KILL")


# -- the child ------------------------------------------------------------------


class _Child:
    """
    The child's side: run each exchange asked for, report it when it ends.
    """

    log = Logger()

    def __init__(self, reactor: Any, write: Any) -> None:
        self._reactor = reactor
        self._write = write
        self._frames = Frames()
        self._client: Any = None
        self._running: dict[int, Deferred[Exchange]] = {}
        #: Whether the settings were of another :data:`PROTOCOL` (the child stops).
        self.refused = False

    def received(self, data: bytes) -> None:
        for message, tail in self._frames.feed(data):
            if self.refused:
                return
            if self._client is None:
                if message.pop("protocol", None) != PROTOCOL:
                    self.log.error(
                        "The server speaks another version of the sender's frames "
                        "(HQ was upgraded while it ran?): its requests stay in the "
                        "server until it is restarted"
                    )
                    self.refused = True
                    self._reactor.callLater(0, self._reactor.stop)
                    return
                self._client = worker_client(self._reactor, **message)
                self._write(frame(READY))
            elif message[0] == "post":
                self._post(message, tail)
            elif message[0] == "cancel":
                running = self._running.get(message[1])
                if running is not None:
                    running.cancel()
            else:
                self.log.warn("Unknown message from the server: {kind!r}", kind=message[0])

    def _post(self, message: list[Any], payload: str) -> None:
        _, n, job_id, url, headers, timeout, has_payload = message
        job = Job(
            id=job_id,
            url=url,
            payload=payload if has_payload else None,
            headers=headers,
            timeout=timeout,
        )
        running = self._client.post(job)
        self._running[n] = running
        running.addCallback(self._ended, n)

    def _ended(self, exchange: Exchange, n: int) -> None:
        self._running.pop(n, None)
        self._write(frame(*exchange_message(n, exchange)))

    def abort_all(self) -> None:
        for running in list(self._running.values()):
            running.cancel()


def forwarding_observer(write: Any) -> Any:
    """
    Return a log observer that sends each event to the parent as a
    ``["log", level, namespace, text]`` frame, ``text`` with its traceback.
    """

    def observe(event: dict[str, Any]) -> None:
        text = formatEvent(event)
        failure = event.get("log_failure")
        if failure is not None:
            text = f"{text}\n{failure.getTraceback()}"
        level = event.get("log_level", LogLevel.error)
        write(frame(["log", level.name, event.get("log_namespace", "-"), text]))

    return observe


def main() -> None:
    """
    Run the child until its standard input closes.
    """
    from twisted.internet import reactor, stdio
    from twisted.internet.protocol import Protocol
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
    )

    # Its life is the parent's: a Ctrl-C or a SIGTERM to the process group
    # would end requests the parent is waiting for at its graceful shutdown.
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, signal.SIG_IGN)

    class _Pipe(Protocol):
        def dataReceived(self, data: bytes) -> None:
            child.received(data)

        def connectionLost(self, reason: Failure = Failure(ProcessDone(0))) -> None:
            child.abort_all()
            reactor.callLater(0, reactor.stop)  # type: ignore[attr-defined]

    pipe = _Pipe()
    io = stdio.StandardIO(pipe)
    # StandardIO's writer of standard output (a FileDescriptor).
    writer = TurnWriter(reactor, getattr(io, "_writer", io))
    child = _Child(reactor, writer.write)
    # Warnings and errors go to the server's log; nothing is kept in memory.
    globalLogBeginner.beginLoggingTo(
        [
            FilteringLogObserver(
                forwarding_observer(writer.write),
                [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)],
            )
        ],
        redirectStandardIO=False,
    )
    # As in the server (hq.tap): what exists now lives as long as the process.
    gctune.settle()
    reactor.run(installSignalHandlers=False)  # type: ignore[call-arg]


if __name__ == "__main__":
    main()
