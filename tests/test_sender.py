"""
Tests for :mod:`hq.sender`: the frames, the reports, the logs, the parent's
side over a real pipe and a fake process, the real child process against a
real worker on 127.0.0.1, and a real ``hq serve`` whose child is killed and
signalled.
"""

from __future__ import annotations

import os
import re
import signal
import urllib.request
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger, LogLevel, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web._newclient import ResponseNeverReceived
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from hq.model import Job
from hq.sender import (
    EXIT_TIMEOUT,
    PROTOCOL,
    READY,
    RESTART_DELAY,
    STABLE_SECONDS,
    Frames,
    SenderProcess,
    TurnWriter,
    _Child,
    exchange_message,
    forwarding_observer,
    frame,
    reported_exchange,
)
from hq.worker import Exchange, ExchangeFailed, TimedOut
from tests.serverprocess import RecordingWorker, ServerProcess, wait_for

SETTINGS = {
    "user_agent": "HQ/test",
    "max_output_bytes": 1024,
    "deny": [],
    "allow": [],
    "signing_secrets": [],
}
#: What the parent sends the child first.
SENT_SETTINGS = dict(SETTINGS, protocol=PROTOCOL)

messages = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=4),
    max_leaves=10,
)


class FramesTests(SynchronousTestCase):
    """
    :class:`Frames` cuts a byte stream into the frames' messages and tails.
    """

    @given(st.lists(st.tuples(messages, st.text()), min_size=1, max_size=5), st.data())
    def test_any_cut(self, sent: list[tuple[Any, str]], data: st.DataObject) -> None:
        """
        However the stream is cut into reads, the messages and their tails
        come out whole and in order.
        """
        stream = b"".join(frame(message, tail) for message, tail in sent)
        cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
        frames = Frames()
        got: list[Any] = []
        start = 0
        for cut in [*cuts, len(stream)]:
            got.extend(frames.feed(stream[start:cut]))
            start = cut
        self.assertEqual(got, sent)

    def test_large_frame_in_pipe_reads(self) -> None:
        """
        A 4 MiB frame read 8 KiB at a time (as from a pipe) comes out whole,
        with the small frame behind it.
        """
        big = ["x" * (4 << 20)]
        stream = frame(big) + frame(["next"])
        frames = Frames()
        got: list[Any] = []
        for start in range(0, len(stream), 8192):
            got.extend(frames.feed(stream[start : start + 8192]))
        self.assertEqual(got, [(big, ""), (["next"], "")])

    def test_text_is_utf8(self) -> None:
        """Text is sent as UTF-8, not escaped, and read back as sent."""
        data = frame(["post", 1, "é☃"], "☃é")
        self.assertIn("é☃".encode(), data)
        self.assertEqual(Frames().feed(data), [(["post", 1, "é☃"], "☃é")])

    def test_tail_as_it_is(self) -> None:
        """
        A tail is sent as its UTF-8, not escaped as JSON would (a payload's
        quotes and backslashes), and read back as sent, spaces included.
        """
        payload = ' {"a":"say \\"hi\\"\\n"} '
        data = frame(["post", 1, True], payload)
        self.assertTrue(data.endswith(payload.encode()))
        self.assertEqual(Frames().feed(data), [(["post", 1, True], payload)])


class ForwardingTests(SynchronousTestCase):
    """
    The child sends what it logs to the server.
    """

    def test_event_and_traceback(self) -> None:
        """An event becomes a log frame: level, namespace, text and traceback."""
        sent: list[bytes] = []
        log = Logger(namespace="hq.test", observer=forwarding_observer(sent.append))
        log.warn("odd {thing}", thing="value")
        try:
            raise ZeroDivisionError("by zero")
        except ZeroDivisionError:
            log.failure("broke")
        messages = [message for message, _ in Frames().feed(b"".join(sent))]
        self.assertEqual(messages[0], ["log", "warn", "hq.test", "odd value"])
        self.assertEqual(messages[1][:3], ["log", "critical", "hq.test"])
        self.assertTrue(messages[1][3].startswith("broke\nTraceback"))
        self.assertIn("ZeroDivisionError", messages[1][3])


class ChildTests(SynchronousTestCase):
    """
    The child's side of the frames, without a process.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.sent: list[bytes] = []
        self.child = _Child(self.reactor, self.sent.append)
        self.events: list[dict[str, Any]] = []
        self.child.log = Logger(observer=self.events.append)

    def test_ready(self) -> None:
        """Settings of its own protocol make the client; the child says it is ready."""
        self.child.received(frame(SENT_SETTINGS))
        self.assertEqual(Frames().feed(b"".join(self.sent)), [(READY, "")])
        self.assertFalse(self.reactor.hasStopped)

    def test_other_protocol(self) -> None:
        """
        Settings without the child's protocol (a server of an older HQ,
        upgraded under it) are refused: the child logs why and stops, and
        reads nothing more.
        """
        self.child.received(frame(SETTINGS) + frame(["post", 1, 1, "http://w/", None, 0, True]))
        self.reactor.advance(0)
        self.assertTrue(self.reactor.hasStopped)
        self.assertEqual(self.sent, [])
        self.assertEqual(len(self.events), 1)
        self.assertEqual(self.events[0]["log_level"], LogLevel.error)
        self.assertIn("another version of the sender's frames", formatEvent(self.events[0]))


class ReportTests(SynchronousTestCase):
    """
    What the child reports of an exchange is, to the parent, the same exchange.
    """

    def assertSameOutcome(self, sent: Exchange, timeout: int = 5) -> Exchange:
        message, output = exchange_message(7, sent)
        ((message, output),) = Frames().feed(frame(message, output))
        got = reported_exchange(message, output, timeout)
        self.assertEqual(
            (got.success, got.status_code, got.reason(), got.output(), got.truncated),
            (sent.success, sent.status_code, sent.reason(), sent.output(), sent.truncated),
        )
        self.assertEqual(
            (got.url, got.retry_after, got.unusual_error, got.phrase),
            (sent.url, sent.retry_after, sent.unusual_error, sent.phrase),
        )
        return got

    def test_response(self) -> None:
        """A response read: status, phrase, body (cut), Retry-After."""
        self.assertSameOutcome(
            Exchange(
                url="http://w/job",
                status_code=503,
                phrase=b"Busy",
                chunks=[b"caf", b"\xc3\xa9 \xff"],
                truncated=True,
                retry_after="12",
            )
        )

    def test_timeout(self) -> None:
        """A timeout stays a :class:`TimedOut`, which the runner asks for."""
        got = self.assertSameOutcome(Exchange(url="u", error=TimedOut(5)), timeout=5)
        self.assertIsInstance(got.error, TimedOut)

    def test_cancelled(self) -> None:
        """A cancelled exchange is reported as one."""
        got = self.assertSameOutcome(Exchange(url="u", error=CancelledError()))
        self.assertIsInstance(got.error, CancelledError)

    def test_connection_errors(self) -> None:
        """A connection error keeps its text, and is not logged as unusual."""
        got = self.assertSameOutcome(
            Exchange(url="http://w/", error=ResponseNeverReceived([Failure(ConnectionError())]))
        )
        self.assertIsInstance(got.error, ExchangeFailed)

    def test_unusual_errors(self) -> None:
        """Any other error keeps its text and is logged."""
        got = self.assertSameOutcome(Exchange(url="http://w/", error=ValueError("odd")))
        self.assertTrue(got.unusual_error)


class FakeWriter:
    """
    The parts of Twisted's pipe writer :class:`hq.sender.TurnWriter`
    uses, over a real pipe.
    """

    def __init__(self) -> None:
        self.read_end, self.write_end = os.pipe()
        os.set_blocking(self.read_end, False)
        self.dataBuffer = b""
        self._tempDataBuffer: list[bytes] = []

    def fileno(self) -> int:
        return self.write_end

    def write(self, data: bytes) -> None:
        self._tempDataBuffer.append(data)

    def close(self) -> None:
        os.close(self.read_end)
        os.close(self.write_end)


class FakeTransport:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.pipes = {0: FakeWriter()}
        self.stdin_closed = False
        self.signals: list[str] = []

    def closeStdin(self) -> None:
        self.stdin_closed = True

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)


class FakeReactor(Clock):
    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[FakeTransport] = []

    def spawnProcess(self, protocol: Any, executable: str, args: list[str], **kwargs: Any) -> Any:
        transport = FakeTransport(100 + len(self.spawned))
        self.spawned.append(transport)
        protocol.makeConnection(transport)
        return transport


class LocalClient:
    """
    A stand-in for the in-process :class:`hq.worker.WorkerClient`.
    """

    def __init__(self) -> None:
        self.posted: list[tuple[int, Deferred[Exchange]]] = []

    def post(self, job: Job) -> Deferred[Exchange]:
        running: Deferred[Exchange] = Deferred()
        self.posted.append((job.id, running))
        return running


def job(job_id: int, timeout: int = 0) -> Job:
    return Job(id=job_id, url=f"http://w/{job_id}", payload='{"n":1}', timeout=timeout)


class TurnWriterTests(SynchronousTestCase):
    """
    :class:`hq.sender.TurnWriter` writes a turn's frames together, at its
    end, and never ahead of what Twisted's writer still holds.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.pipe = FakeWriter()
        self.addCleanup(self.pipe.close)
        self.writer = TurnWriter(self.clock, self.pipe)

    def read(self) -> bytes:
        try:
            return os.read(self.pipe.read_end, 1 << 20)
        except BlockingIOError:
            return b""

    def test_one_write_at_the_end_of_the_turn(self) -> None:
        """Nothing is written during the turn; all of it at its end."""
        self.writer.write(b"a")
        self.writer.write(b"b")
        self.assertEqual(self.read(), b"")
        self.clock.advance(0)
        self.assertEqual(self.read(), b"ab")

    def test_behind_twisted_writer(self) -> None:
        """
        While Twisted's writer holds data, frames go behind it, not around
        it; when the pipe is full, what it did not take goes there too.
        """
        self.pipe._tempDataBuffer.append(b"held")
        self.writer.write(b"next")
        self.clock.advance(0)
        self.assertEqual((self.read(), self.pipe._tempDataBuffer), (b"", [b"held", b"next"]))
        self.pipe._tempDataBuffer.clear()
        os.set_blocking(self.pipe.write_end, False)
        while True:
            try:
                os.write(self.pipe.write_end, b"x" * 65536)
            except BlockingIOError:
                break
        self.writer.write(b"late")
        self.clock.advance(0)
        self.assertEqual(self.pipe._tempDataBuffer, [b"late"])


class SenderProcessTests(SynchronousTestCase):
    """
    The parent's side: which process makes each request, the frames it
    writes, the reports it reads, the child's death, restart and stop.
    """

    def setUp(self) -> None:
        self.reactor = FakeReactor()
        self.local = LocalClient()
        self.sender = SenderProcess(self.reactor, self.local, SETTINGS)
        self.started = self.sender.start()
        self.addCleanup(self.close_pipes)

    def close_pipes(self) -> None:
        for transport in self.reactor.spawned:
            transport.pipes[0].close()

    def written(self, index: int = -1) -> list[tuple[Any, str]]:
        """
        Send the turn's frames and return the messages (with their tails)
        the child got so far.
        """
        self.reactor.advance(0)
        writer = self.reactor.spawned[index].pipes[0]
        try:
            data = os.read(writer.read_end, 1 << 20)
        except BlockingIOError:
            data = b""
        return list(Frames().feed(data))

    def ready(self) -> None:
        self.sender.childDataReceived(1, frame(READY))

    def report(self, n: int, status: int = 200, output: str = "ok") -> None:
        self.sender.childDataReceived(
            1, frame([n, "http://w/", status, "OK", "", False, None, None, ""], output)
        )

    def test_settings_first(self) -> None:
        """The child gets its settings first; start fires once it says it is ready."""
        self.assertEqual(self.written(), [(SENT_SETTINGS, "")])
        self.assertNoResult(self.started)
        self.ready()
        self.successResultOf(self.started)

    def test_in_process_until_ready(self) -> None:
        """Before the child is ready, every request is made in this process."""
        self.sender.post(job(1))
        self.sender.post(job(2))
        self.assertEqual([job_id for job_id, _ in self.local.posted], [1, 2])
        self.assertEqual(self.written(), [(SENT_SETTINGS, "")])

    def test_lone_request_here_others_in_the_child(self) -> None:
        """
        A request made while none is in flight goes out from this process;
        while one is, the others go to the child, in one write per turn.
        """
        self.written()
        self.ready()
        first = self.sender.post(job(1))
        second = self.sender.post(job(2, timeout=3))
        third = self.sender.post(job(3))
        self.assertEqual([job_id for job_id, _ in self.local.posted], [1])
        self.assertEqual(
            self.written(),
            [
                (["post", 1, 2, "http://w/2", None, 3, True], '{"n":1}'),
                (["post", 2, 3, "http://w/3", None, 0, True], '{"n":1}'),
            ],
        )
        # The local one ends: the next goes to the child while others are pending.
        self.local.posted[0][1].callback(Exchange(url="http://w/1", status_code=200))
        self.assertTrue(self.successResultOf(first).success)
        self.sender.post(job(4))
        self.assertEqual(len(self.local.posted), 1)
        self.report(2, 200, "done")
        self.report(1, 500)
        self.assertEqual(self.successResultOf(third).output(), "done")
        got = self.successResultOf(second)
        self.assertEqual((got.success, got.status_code), (False, 500))

    def test_not_alone_while_other_runs_go_on(self) -> None:
        """
        With the engine's count of runs, a request goes out from this
        process only when its run is the only one: in a burst, the child may
        have nothing in flight while other runs record their outcomes, and
        their next jobs follow at once.
        """
        runs = [3]
        self.sender.runs = lambda: runs[0]
        self.written()
        self.ready()
        self.sender.post(job(1))
        self.assertEqual(self.local.posted, [])
        self.assertEqual(self.written(), [(["post", 1, 1, "http://w/1", None, 0, True], '{"n":1}')])
        self.report(1)
        runs[0] = 1
        self.sender.post(job(2))
        self.assertEqual([job_id for job_id, _ in self.local.posted], [2])
        self.assertEqual(self.written(), [])

    def test_cancel(self) -> None:
        """
        Cancelling a request in the child tells the child and ends the
        exchange as cancelled (like the in-process client's); a late report
        is ignored.
        """
        self.written()
        self.ready()
        self.sender.post(job(1))
        running = self.sender.post(job(2))
        self.written()
        running.cancel()
        got = self.successResultOf(running)
        self.assertIsInstance(got.error, CancelledError)
        self.assertEqual(self.written(), [(["cancel", 1], "")])
        self.report(1)

    def test_child_death(self) -> None:
        """
        When the child dies, its requests end with an error that says so,
        requests are made here meanwhile, and a new child starts after
        :data:`RESTART_DELAY`, then after twice as long if it dies young.
        """
        self.written()
        self.ready()
        self.sender.post(job(1))
        running = self.sender.post(job(2))
        self.sender.processEnded(Failure(ProcessTerminated(signal=signal.SIGKILL)))
        got = self.successResultOf(running)
        self.assertEqual(got.reason(), "the sender process ended")
        self.assertFalse(got.unusual_error)
        self.sender.post(job(3))
        self.assertEqual([job_id for job_id, _ in self.local.posted], [1, 3])
        self.reactor.advance(RESTART_DELAY)
        self.assertEqual(len(self.reactor.spawned), 2)
        self.assertEqual(self.written(), [(SENT_SETTINGS, "")])
        self.sender.processEnded(Failure(ProcessTerminated(exitCode=1)))
        self.reactor.advance(RESTART_DELAY)
        self.assertEqual(len(self.reactor.spawned), 2)
        self.reactor.advance(RESTART_DELAY)
        self.assertEqual(len(self.reactor.spawned), 3)

    def test_child_logs(self) -> None:
        """What the child logs is logged by the server, at its level."""
        events: list[dict[str, Any]] = []
        self.sender.log = Logger(observer=events.append)
        self.sender.childDataReceived(1, frame(["log", "error", "twisted.x", "it broke\ntb"]))
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0]["log_level"], LogLevel.error)
        self.assertEqual(formatEvent(events[0]), "Sender process: twisted.x: it broke\ntb")

    def test_restart_delay_resets_after_a_long_life(self) -> None:
        """
        A child that lived longer than :data:`STABLE_SECONDS` is followed
        after :data:`RESTART_DELAY` again, whatever the delay had grown to.
        """
        self.sender.processEnded(Failure(ProcessTerminated(exitCode=1)))
        self.reactor.advance(RESTART_DELAY)
        self.sender.processEnded(Failure(ProcessTerminated(exitCode=1)))
        self.reactor.advance(RESTART_DELAY * 2)
        self.assertEqual(len(self.reactor.spawned), 3)
        self.reactor.advance(STABLE_SECONDS + 1)
        self.sender.processEnded(Failure(ProcessTerminated(exitCode=1)))
        self.reactor.advance(RESTART_DELAY)
        self.assertEqual(len(self.reactor.spawned), 4)

    def test_stop(self) -> None:
        """
        Stopping closes the child's standard input and fires when it exited;
        it starts no new child.
        """
        self.ready()
        stopped = self.sender.stop()
        self.assertTrue(self.reactor.spawned[0].stdin_closed)
        self.assertNoResult(stopped)
        self.sender.processEnded(Failure(ProcessDone(0)))
        self.successResultOf(stopped)
        self.reactor.advance(60)
        self.assertEqual(len(self.reactor.spawned), 1)
        self.assertEqual(self.reactor.spawned[0].signals, [])

    def test_stop_kills_a_child_that_stays(self) -> None:
        """A child still there :data:`EXIT_TIMEOUT` s after the stop is killed."""
        self.ready()
        stopped = self.sender.stop()
        self.reactor.advance(EXIT_TIMEOUT)
        self.assertEqual(self.reactor.spawned[0].signals, ["KILL"])
        self.sender.processEnded(Failure(ProcessTerminated(signal=signal.SIGKILL)))
        self.successResultOf(stopped)


class SenderServiceTests(SynchronousTestCase):
    """
    The server's start waits for the sender process, but not for ever.
    """

    def test_start_waits_at_most_the_timeout(self) -> None:
        """
        The stage before the port waits until the child is ready, or
        :data:`hq.tap.SENDER_START_TIMEOUT` s; requests are made in-process
        meanwhile.
        """
        from hq.config import Config
        from hq.tap import SENDER_START_TIMEOUT, SenderService

        reactor = FakeReactor()
        self.addCleanup(lambda: [t.pipes[0].close() for t in reactor.spawned])
        service = SenderService(Config(), reactor)  # type: ignore[arg-type]
        local = LocalClient()
        sender = service.sender_for(local)  # type: ignore[arg-type]
        service.startService()
        waited = Deferred.fromCoroutine(service.ready().start())
        self.assertNoResult(waited)
        reactor.advance(SENDER_START_TIMEOUT)
        self.successResultOf(waited)
        sender.post(job(1))
        self.assertEqual(len(local.posted), 1)

    def test_start_goes_on_once_ready(self) -> None:
        """The wait ends as soon as the child says it is ready."""
        from hq.config import Config
        from hq.tap import SenderService

        reactor = FakeReactor()
        self.addCleanup(lambda: [t.pipes[0].close() for t in reactor.spawned])
        service = SenderService(Config(), reactor)  # type: ignore[arg-type]
        sender = service.sender_for(LocalClient())  # type: ignore[arg-type]
        service.startService()
        waited = Deferred.fromCoroutine(service.ready().start())
        sender.childDataReceived(1, frame(READY))
        self.successResultOf(waited)


# -- the real child -------------------------------------------------------------


class Worker(Resource):
    """
    A worker on 127.0.0.1: answers ``/ok`` at once (echoing headers it was
    sent), ``/busy`` with 503 and Retry-After, and never answers ``/hang``.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.hanging: list[Any] = []

    def render_POST(self, request: Any) -> Any:
        if request.path == b"/hang":
            self.hanging.append(request)
            return NOT_DONE_YET
        if request.path == b"/busy":
            request.setResponseCode(503)
            request.setHeader(b"Retry-After", b"7")
            return b"busy"
        signature = request.getHeader(b"webhook-signature") or b"-"
        return b"got " + request.content.read() + b" " + signature[:3]


class RealChildTests(TestCase):
    """
    The real child process (``python -m hq.sender``), every request
    sent through it, against a real worker.
    """

    timeout = 60

    def setUp(self) -> Deferred[None]:
        self.worker = Worker()
        port = reactor.listenTCP(0, Site(self.worker), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        self.base = f"http://127.0.0.1:{port.getHost().port}"
        self.local = LocalClient()
        settings = dict(SETTINGS, signing_secrets=["whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"])
        self.sender = SenderProcess(reactor, self.local, settings, local_slots=0)
        self.addCleanup(self.stop)
        return self.sender.start()

    def stop(self) -> Deferred[None]:
        for request in self.worker.hanging:
            if not request.finished and not request._disconnected:
                request.finish()
        return self.sender.stop()

    async def test_exchanges(self) -> None:
        """
        Responses come back whole: the body, the status, Retry-After; the
        child signs the requests; a timeout ends as one.
        """
        self.assertTrue(self.sender.ready)
        ok = self.sender.post(Job(id=1, url=self.base + "/ok", payload='{"a":"é"}'))
        busy = self.sender.post(Job(id=2, url=self.base + "/busy", payload="1"))
        hang = self.sender.post(Job(id=3, url=self.base + "/hang", payload="1", timeout=1))
        got = await ok
        self.assertEqual((got.success, got.output()), (True, 'got {"a":"é"} v1,'))
        got = await busy
        self.assertEqual((got.status_code, got.retry_after, got.output()), (503, "7", "busy"))
        got = await hang
        self.assertIsInstance(got.error, TimedOut)
        self.assertEqual(got.reason(), "timed out after 1 s")
        self.assertEqual(self.local.posted, [])

    async def test_payload_and_answer_as_they_are(self) -> None:
        """
        A payload with quotes, backslashes and a line break reaches the
        worker byte for byte, and the worker's answer comes back the same;
        a job without a payload is posted with an empty body.
        """
        payload = '{"say":"\\"hi\\"\\\\ \\n","list":[1, 2]}\n'
        got = await self.sender.post(Job(id=1, url=self.base + "/ok", payload=payload))
        self.assertEqual(got.output(), f"got {payload} v1,")
        got = await self.sender.post(Job(id=2, url=self.base + "/ok", payload=None))
        self.assertEqual(got.output(), "got  v1,")
        self.assertEqual(self.local.posted, [])

    async def test_cancel(self) -> None:
        """A cancelled request is aborted in the child: the worker sees the connection go."""
        hang = self.sender.post(Job(id=1, url=self.base + "/hang", payload="1"))
        while not self.worker.hanging:
            await deferLater(reactor, 0.01, lambda: None)
        gone = self.worker.hanging[0].notifyFinish()
        hang.cancel()
        self.assertIsInstance((await hang).error, CancelledError)
        await gone.addErrback(lambda failure: None)
        self.assertTrue(self.worker.hanging[0]._disconnected)

    async def test_killed_child(self) -> None:
        """
        A child killed mid-request ends that request with an error saying
        so; a new child starts and works.
        """
        hang = self.sender.post(Job(id=1, url=self.base + "/hang", payload="1"))
        while not self.worker.hanging:
            await deferLater(reactor, 0.01, lambda: None)
        assert self.sender.pid is not None
        first = self.sender.pid
        os.kill(first, signal.SIGKILL)
        self.assertEqual((await hang).reason(), "the sender process ended")
        restarted = self.sender.start()
        await restarted

        self.assertNotEqual(self.sender.pid, first)
        got = await self.sender.post(Job(id=2, url=self.base + "/ok", payload="2"))
        self.assertTrue(got.success)

    async def test_child_warnings_reach_the_server_log(self) -> None:
        """A warning in the child (here: a message it does not know) is logged by the server."""
        events: list[dict[str, Any]] = []
        self.sender.log = Logger(observer=events.append)
        assert self.sender._writer is not None
        self.sender._writer.write(frame(["shout"]))
        got = await self.sender.post(Job(id=1, url=self.base + "/ok", payload="1"))
        self.assertTrue(got.success)
        while not events:
            await deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(events[0]["log_level"], LogLevel.warn)
        self.assertIn("Unknown message from the server: 'shout'", formatEvent(events[0]))

    async def test_guard(self) -> None:
        """The child applies the network guard of its settings."""
        await self.sender.stop()
        settings = dict(SETTINGS, deny=["127.0.0.0/8"])
        self.sender = SenderProcess(reactor, self.local, settings, local_slots=0)
        await self.sender.start()
        got = await self.sender.post(Job(id=1, url=self.base + "/ok", payload="1"))
        self.assertFalse(got.success)
        self.assertIn("127.0.0.1", got.reason())


# -- a real server --------------------------------------------------------------


def sender_pids(parent: int) -> list[int]:
    """
    Return the ids of ``parent``'s children that run ``hq.sender``.
    """
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = f.read().rpartition(")")[2].split()[1]
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                command = f.read()
        except OSError:
            continue
        if ppid == str(parent) and b"hq.sender" in command:
            found.append(int(entry))
    return found


class SenderServerTests(SynchronousTestCase):
    """
    ``hq serve`` with ``sender_process = true``, a real worker, and the
    sender process killed, signalled, and outlived by nobody.
    """

    def setUp(self) -> None:
        self.worker = RecordingWorker()
        self.addCleanup(self.worker.close)
        self.server = ServerProcess(
            self.mktemp(), sender_process=True, dispatchers=1, max_workers=8
        ).start()
        self.addCleanup(self.server.stop)
        assert self.server.process is not None
        self.pid = self.server.process.pid
        self.child = wait_for(lambda: sender_pids(self.pid), 20, "the sender process")[0]

    def states(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        return {job["id"]: job for job in self.server.jobs() if job["id"] in ids}

    def test_requests_in_flight_go_through_it_and_end_with_it(self) -> None:
        """
        With requests in flight, the others are made by the sender process:
        killing it ends them with an error saying so (the one made by the
        server itself goes on); a new one starts and delivers.
        """
        held = [self.server.push(self.worker.url + "/hold") for _ in range(6)]
        wait_for(lambda: self.worker.holding == 6, 20, "the worker to hold 6 requests")
        os.kill(self.child, signal.SIGKILL)

        def ended() -> list[dict[str, Any]] | None:
            jobs = self.states(held)
            failed = [job for job in jobs.values() if job["failure"]]
            return failed if len(failed) == 5 else None

        for job in wait_for(ended, 20, "5 jobs to fail"):
            self.assertEqual(job["err"], "the sender process ended")
        self.worker.release()
        wait_for(
            lambda: sum(job["success"] for job in self.states(held).values()) == 1,
            20,
            "the job made in-process to succeed",
        )
        new = wait_for(lambda: sender_pids(self.pid), 20, "a new sender process")[0]
        self.assertNotEqual(new, self.child)
        again = [self.server.push(self.worker.url + "/ok") for _ in range(4)]
        wait_for(
            lambda: (
                all(job["success"] for job in self.states(again).values())
                and len(self.states(again)) == 4
            ),
            20,
            "the next jobs to succeed",
        )
        self.assertIn("The sender process ended", self.server.log_text())

        def metrics_once_up() -> str | None:
            with urllib.request.urlopen(self.server.base + "/metrics", timeout=10) as response:
                text: str = response.read().decode()
            return text if "hq_sender_up 1.0" in text else None

        metrics = wait_for(metrics_once_up, 20, "the new sender process to be ready")
        self.assertIn("hq_sender_deaths_total 1.0", metrics)
        made = re.search(r'hq_sender_requests_total\{process="sender"\} (\d+)', metrics)
        assert made is not None, metrics
        self.assertGreaterEqual(int(made.group(1)), 5)

    def test_signals_to_the_group_leave_it_to_the_server(self) -> None:
        """
        A Ctrl-C or SIGTERM that reaches the sender process (a terminal
        signals the whole group) does not end it: requests in flight go on;
        it ends once the server has stopped.
        """
        held = [self.server.push(self.worker.url + "/hold") for _ in range(3)]
        wait_for(lambda: self.worker.holding == 3, 20, "the worker to hold 3 requests")
        os.kill(self.child, signal.SIGINT)
        os.kill(self.child, signal.SIGTERM)
        self.worker.release()
        wait_for(
            lambda: sum(job["success"] for job in self.states(held).values()) == 3,
            20,
            "the held jobs to succeed",
        )
        self.assertEqual(sender_pids(self.pid), [self.child])
        self.server.stop()
        self.assertEqual(self.server.process.returncode if self.server.process else None, 0)
        wait_for(lambda: not os.path.exists(f"/proc/{self.child}"), 10, "the sender to exit")

    def test_no_orphan_when_the_server_is_killed(self) -> None:
        """A server killed with SIGKILL leaves no sender process behind."""
        self.server.kill(signal.SIGKILL)
        wait_for(lambda: not _alive(self.child), 10, "the sender to exit")


def _alive(pid: int) -> bool:
    """
    Whether ``pid`` runs (a zombie, dead but not yet reaped by init, does not).
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False
