"""
The moving parts of a cluster on PostgreSQL (SPEC §13), each a child service
of :class:`hq.tap.HQService`:

- :class:`ClusterNode` registers this node (refusing to start when a live node
  has its ``server_id``), then every third of ``lease_timeout`` renews its
  heartbeat and the leases of the jobs it runs in one write, aborts those whose
  stop was asked on another node (a fallback for lost notifications), and
  reaps the expired leases of dead nodes; at a clean stop it gives back the
  jobs it leaves running and unregisters;
- :class:`NotifyListener` LISTENs on a connection of its own, on a thread, for
  the notifications the store sends at commit: jobs pushed (an idle
  dispatcher claims at once) and stops (the node running the job aborts it).

Work done once per cluster (clean-up, schedules) asks the store for a leader
lease (:meth:`hq.store.IClaimingStore.lead`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from hq.ids import now_ms
from hq.store import IClaimingStore, Node
from hq.tap import Stage

log = Logger()

#: Seconds the listener waits before connecting again after losing its connection.
RECONNECT_SECONDS = 1.0


class ClusterNode(Stage):
    """
    This node's registration, heartbeat, lease renewal and reaper.

    :param store: the shared store.
    :param address: returns this node's API address (known once the port is bound).
    :param delivery: what runs the claimed jobs: ``held_ids()``, ``cancel(id)``,
        ``poke()``.
    """

    def __init__(
        self,
        store: IClaimingStore,
        address: Callable[[], str],
        delivery: Any,
        clock: IReactorTime,
    ) -> None:
        self._store = store
        self._address = address
        self._delivery = delivery
        self._clock = clock
        self._timer = LoopingCall(self.tick)
        self._timer.clock = clock
        self._registered = False
        self._ticking = False
        self._failures = 0

    async def start(self) -> None:
        """
        Register; fails with :class:`hq.store.NodeInUse` naming the live node
        that has this ``server_id``.
        """
        await self._store.register(self._address(), now_ms(self._clock))
        self._registered = True
        self._timer.start(self._store.lease_timeout / 3, now=False)

    async def stop(self) -> None:
        """
        Stop renewing, give back the jobs this node leaves running (the
        shutdown timeout aborted them), and unregister: run after the
        delivery has stopped, so that other nodes deliver those jobs at once.
        """
        if self._timer.running:
            self._timer.stop()
        if self._registered:
            self._registered = False
            try:
                given = await self._store.recover(now_ms(self._clock))
                if given.requeued:
                    log.info(
                        "Gave {count} interrupted jobs back to the cluster", count=given.requeued
                    )
                await self._store.unregister()
            except Exception:
                log.failure("Could not unregister this node")

    def tick(self) -> Deferred[None]:
        """
        Renew, then reap; errors are logged, and the next tick tries again.
        """
        if self._ticking:
            return succeed(None)
        self._ticking = True
        d = Deferred.fromCoroutine(self._tick())

        def failed(failure: Failure) -> None:
            self._failures += 1
            if self._failures == 1:
                log.failure("Renewing leases failed; trying again at every tick", failure)
            else:
                log.warn(
                    "Renewing leases failed again ({count} in a row): {error}",
                    count=self._failures,
                    error=failure.getErrorMessage(),
                )

        def done(_: object) -> None:
            self._ticking = False

        return d.addErrback(failed).addBoth(done)

    async def _tick(self) -> None:
        stopped = await self._store.renew(self._delivery.held_ids())
        if self._failures:
            log.info("Renewing leases again after {count} failures", count=self._failures)
            self._failures = 0
        for job_id in stopped:
            # A stop asked on another node whose notification did not arrive.
            self._delivery.cancel(job_id)
        reaped = await self._store.reap(now_ms(self._clock))
        if reaped.requeued:
            # The notification of the reap is this node's own: not heard.
            self._delivery.poke()
        if reaped.requeued or reaped.canceled:
            log.info(
                "Took over {requeued} jobs whose node stopped renewing its lease "
                "(delivered again) and finished {canceled} stopped ones",
                requeued=reaped.requeued,
                canceled=reaped.canceled,
            )


class NotifyListener(Service):
    """
    LISTENs for pushes and stops on a connection of its own, on a thread;
    reconnects by itself. Calls ``on_push(due)`` (ms, or ``None`` for now) and
    ``on_stop(job_id)`` on the reactor thread.

    A push this node's store writer notified (``own_pid()``, the server
    process of its connection) is skipped: the node's delivery was told of
    it when it was written (a claim with the push, an enqueue, a poke after
    a reap), and a claim for each of its own notifications would be one
    more transaction per job, most of them empty.

    :param connect: returns a new autocommit connection (blocking).
    :param own_pid: returns the server process whose pushes are this node's.
    """

    def __init__(
        self,
        connect: Callable[[], Any],
        reactor: IReactorThreads,
        on_push: Callable[[int | None], None],
        on_stop: Callable[[int], None],
        channels: tuple[str, str] = ("hq_push", "hq_stop"),
        own_pid: Callable[[], int | None] = lambda: None,
    ) -> None:
        self._connect = connect
        self._own_pid = own_pid
        self._reactor = reactor
        self._on_push = on_push
        self._on_stop = on_stop
        self._push_channel, self._stop_channel = channels
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def startService(self) -> None:
        super().startService()
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="hq-postgres-listen", daemon=True)
        self._thread.start()

    def stopService(self) -> None:
        super().stopService()
        # The thread sees it within a second (its wait's timeout) and closes
        # its connection; nothing waits for it.
        self._stopping.set()

    def _run(self) -> None:
        failed = False
        while not self._stopping.is_set():
            try:
                conn = self._connect()
            except Exception as e:
                if not failed:
                    self._reactor.callFromThread(self._lost, str(e))
                failed = True
                self._stopping.wait(RECONNECT_SECONDS)
                continue
            try:
                conn.execute(f"LISTEN {self._push_channel}")
                conn.execute(f"LISTEN {self._stop_channel}")
                if failed:
                    self._reactor.callFromThread(log.info, "Listening to the cluster again")
                failed = False
                # Notifications may have been missed while not listening.
                self._reactor.callFromThread(self._on_push, None)
                while not self._stopping.is_set():
                    for notify in conn.notifies(timeout=1.0):
                        if notify.channel == self._push_channel and notify.pid == self._own_pid():
                            continue
                        self._reactor.callFromThread(self._notified, notify.channel, notify.payload)
            except Exception as e:
                if not self._stopping.is_set():
                    self._reactor.callFromThread(self._lost, str(e))
                    failed = True
                    self._stopping.wait(RECONNECT_SECONDS)
            finally:
                try:
                    conn.close()
                except Exception:  # noqa: S110 - a broken connection may fail to close
                    pass

    @staticmethod
    def _lost(why: str) -> None:
        log.warn(
            "Not listening to the cluster (pushes on other nodes reach this one within "
            "{poll} s meanwhile): {why}",
            poll=1,
            why=why,
        )

    def _notified(self, channel: str, payload: str) -> None:
        try:
            if channel == self._push_channel:
                self._on_push(int(payload) if payload else None)
            elif channel == self._stop_channel:
                self._on_stop(int(payload))
        except Exception:
            log.failure(
                "Handling the notification {channel} {payload!r} failed",
                channel=channel,
                payload=payload,
            )


def local_nodes(
    server_id: int, address: Callable[[], str], started_at: int, clock: IReactorTime
) -> Callable[[], Deferred[list[Node]]]:
    """
    Return what ``GET /nodes`` answers on a server alone on its store (SQLite):
    itself, its heartbeat now.
    """

    def nodes() -> Deferred[list[Node]]:
        return succeed([Node(server_id, address(), started_at, now_ms(clock))])

    return nodes
