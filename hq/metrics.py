"""
Prometheus metrics of one server, served at ``GET /metrics``.

Counters and histograms are moved by hooks as things happen, each at the cost
of one increment: :meth:`ServerMetrics.job_pushed` (the API, after a push is
stored), :meth:`ServerMetrics.job_finished`, :meth:`ServerMetrics.attempt_recorded`
and :meth:`ServerMetrics.job_started` (:class:`hq.delivery.Delivery` observers,
registered by :meth:`ServerMetrics.observe`) and
:meth:`ServerMetrics.commit_observed` (the SQLite writer thread, after each
batched transaction). Gauges are computed when scraped, from the
store's in-memory counters, the dispatcher's counters and one indexed read for
the oldest waiting job; nothing is read from the store per push.

Each server has its own :class:`CollectorRegistry` (not the process-wide
default one), so tests can build many servers in one process. See
docs/operations.md for every metric and example alerts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from hq.flow import FlowControl
from hq.ids import first_id_at, now_ms
from hq.model import STOPPED, Attempt, Job
from hq.store import IJobStore, StoreCounts

if TYPE_CHECKING:
    from hq.sender import SenderProcess

#: Outcomes of a finished job, the ``outcome`` label.
OUTCOMES = ("success", "failure", "canceled")
#: Values of the ``status_class`` label: the worker's status code class, or
#: ``error`` when no response came (refused, timed out, connection lost).
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx", "error")

#: Seconds; deliveries range from a few ms to the longest job timeouts.
DELIVERY_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
    600,
    1800,
    3600,
)
#: Seconds; one batched transaction is usually one fsync.
COMMIT_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
)
#: Seconds a job started after its due time: ms when the dispatchers keep up,
#: minutes when a backlog builds up.
DUE_LAG_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    300,
    900,
    3600,
)


class DispatchCounters(Protocol):
    """
    What the metrics read from the dispatcher (:class:`hq.delivery.Delivery`).
    """

    @property
    def num_workers(self) -> int:
        """Deliveries in flight."""

    @property
    def in_queue(self) -> int:
        """Jobs in the in-memory queue."""


class DeliveryEvents(Protocol):
    """
    The observers the metrics register with the delivery engine
    (:class:`hq.delivery.Delivery`).
    """

    def add_observer(self, callback: Callable[[Job], None]) -> None:
        """Call ``callback`` with every finished job."""

    def add_attempt_observer(self, callback: Callable[[Attempt, int | None], None]) -> None:
        """Call ``callback(attempt, retry_at)`` for every attempt recorded."""

    def add_start_observer(self, callback: Callable[[Job], None]) -> None:
        """Call ``callback`` with every job marked running."""


def attempt_outcome(attempt: Attempt, retry_at: int | None) -> str:
    """
    Return the ``outcome`` label of a recorded attempt: ``canceled`` when a
    stop aborted it, ``success`` for a 2xx read whole and ending the job,
    ``failure`` otherwise (a retry follows every failure while attempts remain).
    """
    if attempt.err == STOPPED and retry_at is None:
        return "canceled"
    code = attempt.status_code
    if retry_at is None and not attempt.err and code is not None and 200 <= code < 300:
        return "success"
    return "failure"


def status_class(job: Job) -> str:
    """
    Return the ``status_class`` label of a delivered job: ``2xx``..., or
    ``error`` when the worker sent no status.
    """
    code = job.status_code
    if code is None or not 100 <= code <= 599:
        return "error"
    return f"{code // 100}xx"


class ServerMetrics:
    """
    The metrics of one server and their registry.

    :param store: read at scrape time (counters, oldest waiting job).
    :param dispatch: read at scrape time (in queue, in flight).
    :param clock: for the oldest waiting job's age.
    :param max_workers: deliveries the dispatchers may run at once.
    :param queue_size: the in-memory queue's capacity (``queues``).
    :param process: also export the process, platform and GC collectors.
    """

    log = Logger()

    def __init__(
        self,
        store: IJobStore,
        dispatch: DispatchCounters,
        clock: IReactorTime,
        *,
        max_workers: int,
        queue_size: int,
        version: str,
        commit_hash: str,
        process: bool = True,
    ) -> None:
        self._store = store
        self._dispatch = dispatch
        self._clock = clock
        self.registry = registry = CollectorRegistry()
        if process:
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)
        Info("hq_build", "The HQ version and commit.", registry=registry).info(
            {"version": version, "commit": commit_hash}
        )
        self._pushed = Counter(
            "hq_jobs_pushed", "Jobs pushed (POST /job) and stored.", registry=registry
        )
        self._finished = Counter(
            "hq_jobs_finished",
            "Jobs finished, by outcome.",
            ["outcome"],
            registry=registry,
        )
        self._finished_by = {o: self._finished.labels(outcome=o) for o in OUTCOMES}
        self._responses = Counter(
            "hq_worker_responses",
            "Deliveries by the worker's status class (error: no response).",
            ["status_class"],
            registry=registry,
        )
        self._responses_by = {c: self._responses.labels(status_class=c) for c in STATUS_CLASSES}
        self._duration = Histogram(
            "hq_delivery_duration_seconds",
            "Time from a job's start to its outcome (startedAt to finishedAt) of the "
            "deliveries that succeeded or failed.",
            ["outcome"],
            buckets=DELIVERY_BUCKETS,
            registry=registry,
        )
        self._duration_by = {o: self._duration.labels(outcome=o) for o in OUTCOMES[:2]}
        self._commit = Histogram(
            "hq_store_commit_duration_seconds",
            "Duration of one batched store transaction, writes and fsync included.",
            buckets=COMMIT_BUCKETS,
            registry=registry,
        )
        self._commit_writes = Counter(
            "hq_store_writes", "Writes committed to the store.", registry=registry
        )
        self._commit_failures = Counter(
            "hq_store_commit_failures",
            "Store transactions that failed (disk full, I/O error, unwritable file).",
            registry=registry,
        )
        self._attempts = Counter(
            "hq_attempts",
            "Attempts to deliver a job recorded, by outcome (a failure is retried "
            "while attempts remain).",
            ["outcome"],
            registry=registry,
        )
        self._attempts_by = {o: self._attempts.labels(outcome=o) for o in OUTCOMES}
        self._retries = Counter(
            "hq_retries_scheduled",
            "Failed attempts followed by a retry at a later time.",
            registry=registry,
        )
        self._due_lag = Histogram(
            "hq_due_lag_seconds",
            "Time from a job's due time (createdAt, runAt or its retry time) to the "
            "start of its attempt.",
            buckets=DUE_LAG_BUCKETS,
            registry=registry,
        )
        self._in_queue = Gauge(
            "hq_jobs_in_queue", "Waiting jobs in the in-memory queue.", registry=registry
        )
        self._waiting = Gauge(
            "hq_jobs_waiting",
            "Jobs waiting to start (due now or scheduled for later).",
            registry=registry,
        )
        self._scheduled = Gauge(
            "hq_jobs_scheduled",
            "Waiting jobs due later (a delay, runAt or a pending retry).",
            registry=registry,
        )
        self._running = Gauge("hq_jobs_running", "Jobs running.", registry=registry)
        self._stored = Gauge("hq_jobs_stored", "Jobs in the store.", registry=registry)
        self._oldest = Gauge(
            "hq_oldest_waiting_job_age_seconds",
            "Age (since createdAt) of the oldest waiting job; 0 when none waits.",
            registry=registry,
        )
        self._workers = Gauge(
            "hq_workers_busy", "Deliveries in flight (requests to workers).", registry=registry
        )
        Gauge(
            "hq_workers_max", "Deliveries the dispatchers may run at once.", registry=registry
        ).set(max_workers)
        Gauge(
            "hq_queue_capacity", "Jobs the in-memory queue holds at most.", registry=registry
        ).set(queue_size)
        #: The sender process (``sender_process``), once :meth:`watch_sender` is called.
        self.sender: SenderProcess | None = None
        #: Flow control (SPEC §16): the keys with most traffic, the rest as "other".
        self.flow: FlowControl | None = None
        self._flow_running = Gauge(
            "hq_flow_running", "Jobs of a flow key running.", ["key"], registry=registry
        )
        self._flow_waiting = Gauge(
            "hq_flow_waiting", "Jobs of a flow key waiting.", ["key"], registry=registry
        )
        self._flow_limit = Gauge(
            "hq_flow_limit",
            "The parallelism in force for a flow key (0: no limit).",
            ["key"],
            registry=registry,
        )
        self._flow_throttled = Gauge(
            "hq_flow_throttled_total",
            "Jobs of a flow key set aside for want of room (parallelism, rate, pause).",
            ["key"],
            registry=registry,
        )

    def watch_sender(self, sender: SenderProcess) -> None:
        """
        Export the gauges of the sender process (a server without one has none).
        """
        registry = self.registry
        self.sender = sender
        self._sender_up = Gauge(
            "hq_sender_up",
            "1 while the sender process runs and is ready, else 0.",
            registry=registry,
        )
        self._sender_requests = Gauge(
            "hq_sender_requests_total",
            "Requests to workers started, by the process that made them.",
            ["process"],
            registry=registry,
        )
        self._sender_deaths = Gauge(
            "hq_sender_deaths_total",
            "Sender processes that ended unexpectedly (each is started again).",
            registry=registry,
        )

    # -- hooks

    def observe(self, delivery: DeliveryEvents) -> None:
        """
        Register the hooks that follow deliveries with ``delivery``.
        """
        delivery.add_observer(self.job_finished)
        delivery.add_attempt_observer(self.attempt_recorded)
        delivery.add_start_observer(self.job_started)

    def job_pushed(self, job: Job) -> None:
        """
        Count a job stored by a push.
        """
        self._pushed.inc()

    def job_finished(self, job: Job) -> None:
        """
        Count a finished job (a dispatch observer): its outcome, its delivery
        time and its worker's status class.
        """
        outcome = job.status
        if outcome not in self._finished_by:
            return
        self._finished_by[outcome].inc()
        # A canceled job's request was aborted (or never sent): not a delivery.
        if outcome != "canceled" and job.started_at is not None and job.finished_at is not None:
            self._duration_by[outcome].observe(max(0, job.finished_at - job.started_at) / 1000)
            self._responses_by[status_class(job)].inc()

    def attempt_recorded(self, attempt: Attempt, retry_at: int | None) -> None:
        """
        Count an attempt the store recorded (an attempt observer), and the
        retry scheduled after it (``retry_at`` not ``None``).
        """
        self._attempts_by[attempt_outcome(attempt, retry_at)].inc()
        if retry_at is not None:
            self._retries.inc()

    def job_started(self, job: Job) -> None:
        """
        Observe how late ``job``, just marked running, started after it was due
        (a start observer). A job recovered after a crash counts from its due
        time before the crash: the downtime is lateness too.
        """
        if job.started_at is not None:
            self._due_lag.observe(max(0, job.started_at - job.due_at) / 1000)

    def commit_observed(self, seconds: float, writes: int, committed: bool) -> None:
        """
        Record one store transaction. Called on the store's writer thread
        (prometheus_client's metrics are thread-safe).
        """
        self._commit.observe(seconds)
        if committed:
            self._commit_writes.inc(writes)
        else:
            self._commit_failures.inc()

    # -- scraping

    def _now_ms(self) -> int:
        return now_ms(self._clock)

    async def refresh(self) -> None:
        """
        Set the gauges from the store and the dispatcher. A store read that
        fails leaves its gauges as they were (and is logged).
        """
        now = self._now_ms()
        self._in_queue.set(self._dispatch.in_queue)
        self._workers.set(self._dispatch.num_workers)
        reads: list[Deferred[Any]] = [
            self._store.counts(first_id_at(now), now),
            self._store.waiting_jobs((0, 0), now, 1),
        ]
        results = await DeferredList(reads, consumeErrors=True)
        (counted, counts), (found, oldest) = results
        if counted and isinstance(counts, StoreCounts):
            self._waiting.set(counts.waiting)
            self._running.set(counts.running)
            self._stored.set(counts.stored)
            self._scheduled.set(counts.scheduled)
        if found and isinstance(oldest, list):
            # The job due longest ago (a delayed job counts from its due time).
            age = (now - oldest[0].due_at) / 1000 if oldest else 0.0
            self._oldest.set(max(0.0, age))
        for ok, result in results:
            if not ok:
                self.log.failure("Metrics: could not read the store", result)
        if self.flow is not None:
            await self._refresh_flow(self.flow)
        if self.sender is not None:
            self._refresh_sender(self.sender)

    def _refresh_sender(self, sender: SenderProcess) -> None:
        self._sender_up.set(1 if sender.ready else 0)
        self._sender_requests.labels(process="server").set(sender.sent_here)
        self._sender_requests.labels(process="sender").set(sender.sent_by_child)
        self._sender_deaths.set(sender.deaths)

    async def _refresh_flow(self, flow: FlowControl) -> None:
        try:
            counts = await self._store.flow_counts()
        except Exception:
            self.log.failure("Metrics: could not read the flow counts")
            return
        gauges = (self._flow_running, self._flow_waiting, self._flow_limit, self._flow_throttled)
        for gauge in gauges:
            gauge.clear()
        for key, *values in flow.metric_rows(counts):
            for gauge, value in zip(gauges, values, strict=True):
                gauge.labels(key=key).set(value)

    async def render(self, accept: str) -> tuple[bytes, str]:
        """
        Refresh the gauges and return the exposition for an ``Accept`` header
        value: the body and its content type (Prometheus text format, or
        OpenMetrics when asked for).
        """
        await self.refresh()
        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type
