"""
Tests for hq.tap: HQService's children, their start order and their stop order.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys

from twisted.application.internet import TimerService
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from hq import gctune, tap
from hq.config import Config
from hq.delivery import Delivery
from hq.scheduler import Scheduler
from hq.tap import (
    Console,
    ExitOnSecondSignal,
    FatalStartError,
    HQService,
    LogService,
    Options,
    Recovery,
    SenderReady,
    SenderService,
    Stage,
    StartFailure,
    StoreService,
    SystemdNotifier,
    WebListener,
    makeService,
)


class RecordingStage(Stage):
    """
    A stage that records its start and stop, and waits for ``gate`` to start.
    """

    def __init__(
        self,
        name: str,
        events: list[str],
        gate: Deferred[None] | None = None,
        error: Exception | None = None,
    ) -> None:
        self.name = name
        self._events = events
        self._gate = gate
        self._error = error
        self.stop_gate: Deferred[None] = succeed(None)

    async def start(self) -> None:
        self._events.append(f"start {self.name}")
        if self._gate is not None:
            await self._gate
        if self._error is not None:
            raise self._error
        self._events.append(f"started {self.name}")

    async def stop(self) -> None:
        self._events.append(f"stop {self.name}")
        await self.stop_gate
        self._events.append(f"stopped {self.name}")


class RecordingService(Service):
    """
    A plain service whose stop returns ``stop_gate``.
    """

    def __init__(self, name: str, events: list[str]) -> None:
        self.name = name
        self._events = events
        self.stop_gate: Deferred[None] = succeed(None)

    def startService(self) -> None:
        super().startService()
        self._events.append(f"start {self.name}")

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._events.append(f"stop {self.name}")
        return self.stop_gate


class HQServiceTests(SynchronousTestCase):
    """
    HQService starts its children in order and stops them in reverse, each awaited.
    """

    def setUp(self) -> None:
        # Readiness tunes the collector for the server's process, not the tests'.
        self.settled: list[str] = []
        self.patch(gctune, "settle", lambda: self.settled.append("settle"))
        self.reactor = MemoryReactorClock()
        self.err = io.StringIO()
        self.events: list[str] = []

    def service(self, *children: Service, **config: object) -> HQService:
        """
        Return an HQService over ``children`` (its own removed), or with its own.
        """
        values: dict[str, object] = {"data_dir": self.mktemp(), "metrics": False}
        values.update(config)
        console = Console(io.StringIO(), self.err)
        hq = HQService(Config(**values), self.reactor, console)  # type: ignore[arg-type]
        if children:
            for child in list(hq):
                child.disownServiceParent()
            for child in children:
                child.setServiceParent(hq)
        return hq

    def test_sqlite_server_does_not_load_postgresql(self) -> None:
        """
        A server on SQLite never imports psycopg (and with it libpq, about
        10 MB of memory): checked in a fresh interpreter, since this one may
        have imported it for other tests.
        """
        script = (
            "import sys\n"
            "from twisted.internet.testing import MemoryReactorClock\n"
            "from hq.config import Config\n"
            "from hq.tap import HQService\n"
            "HQService(Config(data_dir=sys.argv[1], metrics=False), MemoryReactorClock())\n"
            "print(sorted(m for m in sys.modules if m.startswith('psycopg')))\n"
        )
        completed = subprocess.run(
            [sys.executable, "-c", script, self.mktemp()],
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual((completed.stdout, completed.returncode), ("[]\n", 0), completed.stderr)

    def test_settled_collector(self) -> None:
        """
        gctune.settle() freezes what exists and sets the thresholds: checked
        in a fresh interpreter, this one's collector being the tests'.
        """
        script = (
            "import gc\n"
            "from hq import gctune\n"
            "gctune.settle()\n"
            "print(gc.get_threshold(), gc.get_freeze_count() > 0)\n"
        )
        completed = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
        )
        self.assertEqual(completed.stdout, "(10000, 20, 100) True\n", completed.stderr)

    def test_children_in_documented_order(self) -> None:
        """
        The sender process, store, recovery, delivery, clean-up, the wait for
        the sender, the scheduler and HTTP children, in that order.
        """
        kinds = [type(child) for child in self.service(sender_process=True)]
        self.assertEqual(
            kinds,
            [
                ExitOnSecondSignal,
                LogService,
                SenderService,
                StoreService,
                Recovery,
                Delivery,
                TimerService,
                SenderReady,
                Scheduler,
                WebListener,
                SystemdNotifier,
            ],
        )

    def test_sender_counts_the_engines_runs(self) -> None:
        """
        The sender process is told how many runs the delivery engine has in
        progress (a request goes out in-process only when its run is alone).
        """
        children = list(self.service(sender_process=True))
        sender = next(child for child in children if isinstance(child, SenderService))
        delivery = next(child for child in children if isinstance(child, Delivery))
        assert sender.sender is not None and sender.sender.runs is not None
        self.assertEqual(sender.sender.runs(), 0)
        delivery._shutdown.run_began()
        delivery._shutdown.run_began()
        self.assertEqual((delivery.runs, sender.sender.runs()), (2, 2))

    def test_no_sender_children_without_the_process(self) -> None:
        """With sender_process false, requests to workers are made in-process: no sender child."""
        kinds = [type(child) for child in self.service(sender_process=False)]
        self.assertNotIn(SenderService, kinds)
        self.assertNotIn(SenderReady, kinds)
        self.assertIn(Delivery, kinds)

    def test_no_cleanup_timer_when_jobs_are_kept_forever(self) -> None:
        """With job_lifetime 0 there is no clean-up child."""
        kinds = [type(child) for child in self.service(job_lifetime=0)]
        self.assertNotIn(TimerService, kinds)

    def test_each_stage_is_awaited_before_the_next_starts(self) -> None:
        """The next child starts only once a stage's start has finished; then ready fires."""
        gate: Deferred[None] = Deferred()
        hq = self.service(
            RecordingStage("store", self.events, gate), RecordingService("web", self.events)
        )
        hq.startService()
        self.assertEqual(self.events, ["start store"])
        self.assertNoResult(hq.ready)
        self.assertEqual(self.settled, [])
        gate.callback(None)
        self.assertEqual(self.events, ["start store", "started store", "start web"])
        self.successResultOf(hq.ready)
        # Once every child has started, the collector is set for a long life.
        self.assertEqual(self.settled, ["settle"])

    def test_stop_is_in_reverse_order_each_awaited(self) -> None:
        """Stop waits for each child's stop before stopping the one started before it."""
        store = RecordingStage("store", self.events)
        web = RecordingService("web", self.events)
        web.stop_gate = Deferred()
        hq = self.service(store, web)
        hq.startService()
        del self.events[:]
        with capturedLogs() as events:
            stopped = hq.stopService()
            self.assertEqual(self.events, ["stop web"])
            self.assertNoResult(stopped)
            web.stop_gate.callback(None)
            self.successResultOf(stopped)
        self.assertEqual(self.events, ["stop web", "stop store", "stopped store"])
        formats = [e["log_format"] for e in events]
        self.assertEqual(formats[0][:14], "Shutting down:")
        self.assertEqual(formats[-1], "HQ stopped")

    def test_failed_start_stops_what_started_without_shutting_down(self) -> None:
        """
        A stage that fails: "HQ cannot start" logged and on stderr, exit status
        1, the started children stopped in reverse, no "Shutting down".
        """
        later = RecordingService("later", self.events)
        hq = self.service(
            RecordingStage("store", self.events),
            RecordingStage("schema", self.events, error=FatalStartError("too new")),
            later,
        )
        with capturedLogs() as events:
            hq.startService()
            self.successResultOf(hq.stopService())
        self.assertEqual(hq.exit_code, 1)
        self.assertEqual(self.err.getvalue(), "error: too new\n")
        self.assertNoResult(hq.ready)
        self.assertFalse(later.running)
        self.assertEqual(
            self.events,
            [
                "start store",
                "started store",
                "start schema",
                "stop schema",
                "stopped schema",
                "stop store",
                "stopped store",
            ],
        )
        self.assertEqual(
            [(e["log_format"], e.get("error")) for e in events],
            [("HQ cannot start: {error}", "too new")],
        )

    def test_privileged_start_failure_exits_1(self) -> None:
        """A port in use (or any FatalStartError) before the reactor runs: stderr, exit 1."""

        class Refusing(Service):
            def privilegedStartService(self) -> None:
                raise FatalStartError("cannot listen on 127.0.0.1:1: Address already in use")

        hq = self.service(Refusing())
        with capturedLogs() as events:
            with self.assertRaises(SystemExit) as raised:
                hq.privilegedStartService()
        self.assertEqual(raised.exception.code, 1)
        self.assertEqual(
            self.err.getvalue(), "error: cannot listen on 127.0.0.1:1: Address already in use\n"
        )
        self.assertEqual([e["log_format"] for e in events], ["HQ cannot start: {error}"])


class MakeServiceTests(SynchronousTestCase):
    """
    The twistd plugin's entry point.
    """

    def test_unusable_config_is_reported_at_start_not_as_usage(self) -> None:
        """A bad config file gives a service that says why and exits 1, not a usage error."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("dispatcherz = 3\n")
        options = Options()
        options.parseOptions(["-c", path])
        service = makeService(options)
        self.assertIsInstance(service, StartFailure)
        err = io.StringIO()
        service._console = Console(io.StringIO(), err)  # type: ignore[attr-defined]
        with capturedLogs():
            with self.assertRaises(SystemExit):
                service.privilegedStartService()
        self.assertEqual(err.getvalue(), "error: unknown configuration key 'dispatcherz'\n")


class ConsoleTests(SynchronousTestCase):
    """
    What a daemon's console tells twistd's waiting parent.
    """

    def test_failed_start_removes_the_pidfile_before_the_parent_hears(self) -> None:
        """
        The parent exits as soon as it reads the failure, and whoever ran it
        may look for the pidfile at once: it is gone before the status is written.
        """
        pidfile = self.mktemp()
        with open(pidfile, "w") as f:
            f.write("12345\n")
        read_end, write_end = os.pipe()
        self.addCleanup(os.close, read_end)
        pidfile_when_told: list[bool] = []
        real_write = os.write

        def write(fd: int, data: bytes) -> int:
            if fd == write_end:
                pidfile_when_told.append(os.path.exists(pidfile))
            return real_write(fd, data)

        self.patch(tap.os, "write", write)
        twistd = {"pidfile": pidfile, "statusPipe": write_end}
        console = Console(io.StringIO(), io.StringIO(), "", twistd)
        console.starting()
        console.failed("cannot listen on 127.0.0.1:1: Address already in use")
        self.assertEqual(pidfile_when_told, [False])
        self.assertEqual(
            os.read(read_end, 200), b"1 cannot listen on 127.0.0.1:1: Address already in use"
        )
