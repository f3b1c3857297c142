"""
The HTTP API: the Klein app, its response writer and its one error path.

Every request goes the same way: the binding (:mod:`hq.binding`) checks it at
the edge (media type, size, JSON, field types and values) and raises
:class:`~hq.binding.APIError`; the handler makes one or two store calls; one
writer serializes the answer (``Content-Type``, trailing newline,
``?pretty``, HTML-safe escapes); and one error path turns every exception
into ``{"status": code, "error": message}``. The writer lives here, not in
the binding, because the error path is its other user: a request the binding
refuses is still answered by this module. See docs/api.md for the wire
contract.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Coroutine, Sequence
from importlib import resources
from typing import Any, Protocol, TypeVar, cast
from urllib.parse import unquote_to_bytes

import attrs
from klein import Klein
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from hq import __version__
from hq.binding import (
    APIError,
    bind_batch_job,
    bind_bulk,
    bind_flow,
    bind_list,
    bind_push,
    bind_restart,
    parse_flow_key,
    parse_job_id,
    read_batch,
)
from hq.bulk import BulkActions
from hq.config import Config
from hq.cron import CronError, cached_rule
from hq.flow import FlowControl, flow_json
from hq.guard import NetworkGuard
from hq.health import HealthCheck
from hq.history import BUCKET_MS, HistoryBucket
from hq.ids import IdGenerator, first_id_at, now_ms
from hq.logs import debug_events
from hq.metrics import ServerMetrics
from hq.model import FlowLimits, Job, Schedule, format_time, job_json
from hq.rendering import CycleFreeKleinResource
from hq.schedules import bind_schedule, parse_schedule_id
from hq.site import error_body, json_body
from hq.store import (
    FlowCounts,
    IdempotencyConflict,
    IJobStore,
    IScheduleStore,
    JobConflict,
    JobNotFound,
    Node,
    Pushed,
    ScheduleNotFound,
    StoreUnavailable,
)

#: Seconds covered by one bucket of ``GET /stats/history``.
HISTORY_INTERVAL = BUCKET_MS // 1000

_JSON_TYPE = b"application/json; charset=UTF-8"

#: Jobs of a batch checked (or queued) between two turns of the reactor.
BATCH_STEP = 500

T = TypeVar("T")


class JobDispatch(Protocol):
    """
    What the API needs from the dispatcher (:class:`hq.delivery.Delivery`).
    """

    def enqueue(self, job: Job) -> object:
        """Queue a stored waiting job for delivery."""

    def cancel(self, job_id: int, stopped: Job | None = None) -> object:
        """Abort the job's delivery if it is queued or running."""

    def reserve(self, job: Job) -> Any:
        """A dispatcher for a job about to be stored, if it would start at once, or None."""

    def claim_with_push(self, jobs: Sequence[Job]) -> int | None:
        """A push was asked: claim with it; jobs due by the time returned need no enqueue."""

    def deliver(self, reservation: Any) -> object:
        """The reserved job is stored: send it."""

    def unreserve(self, reservation: Any) -> object:
        """The reserved job was not stored so: give the dispatcher back."""

    @property
    def num_workers(self) -> int:
        """Deliveries in flight."""

    @property
    def in_queue(self) -> int:
        """Jobs in the in-memory queue."""

    def history(self, now_ms: int) -> Sequence[HistoryBucket]:
        """The finished-job counts of the last intervals, oldest first."""


# -- Writing ------------------------------------------------------------------


def wants_pretty(request: IRequest) -> bool:
    """
    Return whether the query string has a ``pretty`` key (whatever its value).
    """
    _, _, query = request.uri.partition(b"?")
    return any(
        unquote_to_bytes(part.partition(b"=")[0].replace(b"+", b" ")) == b"pretty"
        for part in query.split(b"&")
    )


def write_json(request: IRequest, text: str, status: int = 200) -> bytes:
    """
    Set the status and content type and return the body for the JSON ``text``.

    The body is compact unless the query has ``pretty`` (2-space indent) and
    ends with a newline (:func:`hq.site.json_body`).
    """
    return _respond(request, status, json_body(text, wants_pretty(request)))


def write_error(request: IRequest, status: int, message: str) -> bytes:
    """
    Set the status and content type and return the error body
    ``{"status": status, "error": message}`` (:func:`hq.site.error_body`).
    """
    return _respond(request, status, error_body(status, message, wants_pretty(request)))


def _respond(request: IRequest, status: int, body: bytes) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", _JSON_TYPE)
    request.setHeader(b"content-length", b"%d" % len(body))
    return body


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


@functools.cache
def node_json(node: Node) -> dict[str, Any]:
    """
    Return ``node`` as ``GET /nodes`` shows it.
    """
    return {
        "serverId": node.server_id,
        "address": node.address,
        "startedAt": format_time(node.started_at),
        "heartbeatAt": format_time(node.heartbeat_at),
    }


def openapi_text(version: str) -> str:
    """
    Return the OpenAPI 3 document of the API (``hq/openapi.json``) as compact
    JSON, its ``info.version`` set to ``version``.
    """
    document = json.loads(resources.files("hq").joinpath("openapi.json").read_text("utf-8"))
    document["info"]["version"] = version
    return _compact(document)


def _conflict_message(error: IdempotencyConflict) -> str:
    return (
        f"The idempotency key {error.key!r} belongs to the job {error.job_id}, "
        "pushed with another url, name or payload"
    )


# -- The application ----------------------------------------------------------


class _APIResource(CycleFreeKleinResource):
    """
    The Klein resource (rendered without reference cycles, hq.rendering), but
    a URL that is not UTF-8 gets the JSON error body (Klein itself answers it
    in plain text).
    """

    def url_not_utf8(self, request: IRequest) -> bytes:
        return write_error(request, 400, "The URL is not valid UTF-8")


@attrs.define(slots=False)
class HQApi:
    """
    The HTTP API of one server. Serve :meth:`resource`.

    Long on purpose: one thin method per route (bind the request, call the
    store or a helper, write the answer), all sharing one error path. The
    logic lives in :mod:`hq.binding`, :mod:`hq.bulk`, :mod:`hq.schedules` and
    the store. Next clean-up: one Klein app per route group (jobs, schedules,
    server) mounted under this one.
    """

    app = Klein()
    log = Logger()

    _store: IJobStore
    _dispatch: JobDispatch
    _ids: IdGenerator
    _clock: IReactorTime
    _config: Config
    _version: str = __version__
    _commit_hash: str = "unknown"
    #: ``GET /metrics``; ``None`` answers 404 (``metrics = false``).
    _metrics: ServerMetrics | None = None
    #: ``GET /health``; ``None`` answers 404.
    _health: HealthCheck | None = None
    #: The outbound guard: a push to a literal denied address is refused (422).
    _guard: NetworkGuard | None = None
    #: ``GET /nodes``: the servers of the cluster (this one alone on SQLite).
    _nodes: Callable[[], Deferred[list[Node]]] | None = None
    #: Told when a schedule is added, paused, resumed or deleted (``Scheduler.wake``).
    _schedules_changed: Callable[[], object] = lambda: None
    #: The delivery engine's flow limits (SPEC §16).
    _flow: FlowControl | None = None

    def __attrs_post_init__(self) -> None:
        self._bulk = BulkActions(self._store, self._dispatch, self._clock)
        self._flows = self._flow or FlowControl(self._clock)

    def resource(self) -> IResource:
        """
        Return the API as a Twisted Web resource.
        """
        return _APIResource(self.app)

    def _now_ms(self) -> int:
        return now_ms(self._clock)

    def _run_to_end(self, coroutine: Coroutine[Any, Any, T]) -> Deferred[T]:
        """
        Run ``coroutine`` to its end even if the client goes away meanwhile.

        Klein cancels the handler's Deferred when the connection is lost; a
        stored job must still reach the dispatcher, so the cancel stops at the
        returned Deferred and the work goes on.
        """
        work = Deferred.fromCoroutine(coroutine)
        answer: Deferred[T] = Deferred()

        def forward(result: T | Failure) -> None:
            if not answer.called:
                if isinstance(result, Failure):
                    answer.errback(result)
                else:
                    answer.callback(result)
            elif isinstance(result, Failure) and not result.check(
                APIError, JobNotFound, JobConflict
            ):
                self.log.failure("Request failed after the client left", result)

        work.addBoth(forward)
        return answer

    # -- routes

    @app.route("/")
    def info(self, request: IRequest) -> bytes:
        """
        ``{"version", "commitHash"}``, for any method.
        """
        return write_json(
            request, _compact({"version": self._version, "commitHash": self._commit_hash})
        )

    @app.route("/openapi.json", methods=["GET"])
    def openapi(self, request: IRequest) -> bytes:
        """
        The OpenAPI 3 description of this API (also docs/openapi.json).
        """
        return write_json(request, openapi_text(self._version))

    @app.route("/metrics", methods=["GET"])
    async def metrics(self, request: IRequest) -> bytes:
        """
        The Prometheus metrics: text format, or OpenMetrics if the ``Accept``
        header asks for it.
        """
        if self._metrics is None:
            raise APIError(404, "Metrics are turned off on this server ('metrics = false')")
        accept = (request.getHeader(b"accept") or b"").decode("latin-1")
        body, content_type = await self._metrics.render(accept)
        request.setHeader(b"content-type", content_type.encode("latin-1"))
        return body

    @app.route("/health", methods=["GET"])
    async def health(self, request: IRequest) -> bytes:
        """
        200 with what was checked when the store can be written and the
        dispatchers run; 503 naming what failed otherwise.
        """
        if self._health is None:
            raise APIError(404, "The health check is not available on this server")
        report = await self._health.check()
        request.setHeader(b"cache-control", b"no-store")
        if not report.healthy:
            raise APIError(503, report.problem())
        return write_json(request, report.to_json())

    @app.route("/stats", methods=["GET"])
    async def stats(self, request: IRequest) -> bytes:
        """
        The counters of the store and the dispatcher.
        """
        now = self._now_ms()
        counts = await self._store.counts(first_id_at(now - 60_000), now)
        stats = {
            "queues": self._config.queues,
            "dispatchers": self._config.dispatchers,
            "maxWorkers": self._config.max_workers,
            "numWorkers": self._dispatch.num_workers,
            "numJobsInQueue": self._dispatch.in_queue,
            "numJobsWaiting": counts.waiting,
            "numJobsRunning": counts.running,
            "numStoredJobs": counts.stored,
            "numJobsInLastMinute": counts.created_since,
            "numJobsScheduled": counts.scheduled,
        }
        return write_json(request, _compact(stats))

    @app.route("/stats/history", methods=["GET"])
    def stats_history(self, request: IRequest) -> bytes:
        """
        Jobs finished per interval, for the UI's chart.
        """
        buckets = [
            {
                "start": format_time(bucket.start),
                "success": bucket.success,
                "failure": bucket.failure,
                "canceled": bucket.canceled,
            }
            for bucket in self._dispatch.history(self._now_ms())
        ]
        return write_json(request, _compact({"interval": HISTORY_INTERVAL, "buckets": buckets}))

    @app.route("/nodes", methods=["GET"])
    async def nodes(self, request: IRequest) -> bytes:
        """
        The live servers of the cluster: ``{"nodes": [{"serverId", "address",
        "startedAt", "heartbeatAt"}]}`` in ``serverId`` order.
        """
        if self._nodes is None:
            raise APIError(404, "The node list is not available on this server")
        nodes = await self._nodes()
        return write_json(request, _compact({"nodes": [node_json(node) for node in nodes]}))

    @app.route("/job", methods=["POST"])
    def push(self, request: IRequest) -> Deferred[bytes]:
        """
        Store a new job, queue it, and answer with it (``waiting`` or
        ``scheduled``); or, for an idempotency key seen before, answer the
        job stored then, with ``Idempotent-Replayed: true``.
        """
        now = self._now_ms()
        push = bind_push(request, self._config.max_body_bytes, now, self._config.retries)
        job = push.job(self._ids.next_id())
        self.check_destination(job.url)
        return self._run_to_end(self._push(request, job, now))

    def check_destination(self, url: str) -> None:
        """
        Refuse (422) a job ``url`` whose host is a literal address the outbound
        guard denies (a host name is checked when connecting, hq.guard).
        """
        problem = self._guard.url_problem(url) if self._guard else None
        if problem is not None:
            raise APIError(422, problem)

    async def _push(self, request: IRequest, job: Job, now: int) -> bytes:
        # When a dispatcher is idle and nothing waits before this job, it is
        # stored already running and sent at once: one store write, not two.
        # The store may say it is committed before its sync to disk is done
        # (``committed``): it is sent then, and answered once on disk.
        reservation = self._dispatch.reserve(job)
        stored = job if reservation is None else reservation.job
        delivered = False

        def deliver() -> None:
            nonlocal delivered
            assert reservation is not None
            delivered = True
            self._dispatch.deliver(reservation)
            self._pushed(job)

        def give_back() -> None:
            # A job delivered already (committed, its sync failed after) runs;
            # its client is told the push failed (at least once).
            if reservation is not None and not delivered:
                self._dispatch.unreserve(reservation)

        try:
            storing = self._store.push(
                [stored], self._keys_since(now), None if reservation is None else deliver
            )
            # A cluster node claims in the push's transaction (the job is
            # not enqueued once stored then).
            claimed_until = (
                None if reservation is not None else self._dispatch.claim_with_push([stored])
            )
            (pushed,) = await storing
        except BaseException as e:
            give_back()
            if isinstance(e, IdempotencyConflict):
                raise APIError(409, _conflict_message(e)) from None
            raise
        if pushed.replayed:
            give_back()
            request.setHeader(b"idempotent-replayed", b"true")
            self.log.debug("Push replayed job {jobID} (idempotency key)", jobID=pushed.job.id)
            return write_json(request, job_json(pushed.job, self._now_ms()))
        if reservation is None:
            if claimed_until is None or pushed.job.due_at > claimed_until:
                self._queue(pushed.job)
            else:
                self._pushed(pushed.job)
        elif not delivered:
            deliver()
        # The answer shows the job as pushed (waiting), even when its
        # delivery has begun already.
        shown = job if reservation is not None else pushed.job
        return write_json(request, job_json(shown, self._now_ms()))

    def _keys_since(self, now: int) -> int:
        return now - self._config.idempotency_ttl * 1000

    def _queue(self, job: Job) -> None:
        self._dispatch.enqueue(job)
        self._pushed(job)

    def _pushed(self, job: Job) -> None:
        if self._metrics is not None:
            self._metrics.job_pushed(job)
        if debug_events():
            self.log.debug("Job {jobID} pushed", jobID=job.id)

    @app.route("/jobs", methods=["POST"])
    def push_batch(self, request: IRequest) -> Deferred[bytes]:
        """
        Store a batch of jobs in one commit, all or none, queue the new
        ones, and answer ``{"ids": [...]}`` in the order given.
        """
        values = read_batch(request, self._config.max_body_bytes, self._config.max_batch_jobs)
        return self._run_to_end(self._push_batch(request, values))

    async def _push_batch(self, request: IRequest, values: list[Any]) -> bytes:
        now = self._now_ms()
        jobs: list[Job] = []
        for index, value in enumerate(values):
            if index and index % BATCH_STEP == 0:
                # Let other requests in between steps of a large batch.
                await deferLater(self._clock, 0)
            push = bind_batch_job(index, value, now, self._config.retries)
            job = push.job(self._ids.next_id())
            try:
                self.check_destination(job.url)
            except APIError as e:
                raise APIError(e.status, f"job {index}: {e.message}") from None
            jobs.append(job)
        del values
        try:
            storing = self._store.push(jobs, self._keys_since(now))
            claimed_until = self._dispatch.claim_with_push(jobs)
            stored: list[Pushed] = await storing
        except IdempotencyConflict as e:
            raise APIError(409, f"job {e.index}: {_conflict_message(e)}") from None
        queued = 0
        for index, pushed in enumerate(stored):
            if index and index % BATCH_STEP == 0:
                await deferLater(self._clock, 0)
            if not pushed.replayed:
                # Not _queue(): a log event per job (filtered out or not)
                # cost a third of a batch's time on the reactor thread.
                if claimed_until is None or pushed.job.due_at > claimed_until:
                    self._dispatch.enqueue(pushed.job)
                if self._metrics is not None:
                    self._metrics.job_pushed(pushed.job)
                queued += 1
        self.log.debug("{count} jobs pushed in a batch", count=queued)
        ids = ",".join(f'"{pushed.job.id}"' for pushed in stored)
        return write_json(request, f'{{"ids":[{ids}]}}')

    @app.route("/jobs/restart", methods=["POST"])
    def restart_jobs(self, request: IRequest) -> Deferred[bytes]:
        """
        Restart in place every finished job matching the filters; ``{"count"}``.
        """
        return self._run_to_end(self._counted(request, self._bulk.restart(bind_bulk(request))))

    @app.route("/jobs/stop", methods=["POST"])
    def stop_jobs(self, request: IRequest) -> Deferred[bytes]:
        """
        Stop every active job matching the filters; ``{"count"}``.
        """
        return self._run_to_end(self._counted(request, self._bulk.stop(bind_bulk(request))))

    @app.route("/jobs/delete", methods=["POST"])
    def delete_jobs(self, request: IRequest) -> Deferred[bytes]:
        """
        Delete every finished job matching the filters; ``{"count"}``.
        """
        return self._run_to_end(self._counted(request, self._bulk.delete(bind_bulk(request))))

    async def _counted(self, request: IRequest, action: Coroutine[Any, Any, int]) -> bytes:
        count = await action
        self.log.info("Bulk {path}: {count} jobs", path=request.path.decode("latin-1"), count=count)
        return write_json(request, _compact({"count": count}))

    @app.route("/job", methods=["GET"])
    async def list_jobs(self, request: IRequest) -> bytes:
        """
        One page of the jobs matching the query.
        """
        now = self._now_ms()
        query = attrs.evolve(bind_list(request, self._config.job_list_default_limit), now=now)
        page = await self._store.list_jobs(query)
        return write_json(request, page.to_json(now))

    @app.route("/job/<raw_id>", methods=["GET"])
    async def get_job(self, request: IRequest, raw_id: str) -> bytes:
        """
        One job.
        """
        job = await self._store.get(parse_job_id(raw_id))
        return write_json(request, job_json(job, self._now_ms()))

    @app.route("/job/<raw_id>/attempts", methods=["GET"])
    async def get_attempts(self, request: IRequest, raw_id: str) -> bytes:
        """
        The job's attempt history, oldest first.
        """
        attempts = await self._store.attempts(parse_job_id(raw_id))
        return write_json(request, '{"attempts":[' + ",".join(a.to_json() for a in attempts) + "]}")

    @app.route("/job/<raw_id>", methods=["DELETE"])
    def delete_job(self, request: IRequest, raw_id: str) -> Deferred[bytes]:
        """
        Delete a job that is neither waiting nor running.
        """
        return self._run_to_end(self._delete(request, parse_job_id(raw_id)))

    async def _delete(self, request: IRequest, job_id: int) -> bytes:
        await self._store.delete(job_id)
        self.log.debug("Job {jobID} deleted", jobID=job_id)
        return write_json(request, _compact({"id": str(job_id)}))

    @app.route("/job/<raw_id>/stop", methods=["POST"])
    def stop_job(self, request: IRequest, raw_id: str) -> Deferred[bytes]:
        """
        Cancel a waiting or running job.
        """
        return self._run_to_end(self._stop(request, parse_job_id(raw_id)))

    async def _stop(self, request: IRequest, job_id: int) -> bytes:
        stopped = await self._store.stop(job_id, self._now_ms())
        self._dispatch.cancel(job_id, stopped)
        self.log.debug("Job {jobID} stopped", jobID=job_id)
        return write_json(request, _compact({"id": str(job_id)}))

    @app.route("/job/<raw_id>/restart", methods=["POST"])
    def restart_job(self, request: IRequest, raw_id: str) -> Deferred[bytes]:
        """
        Run a finished job again, in place or as a new copy.
        """
        job_id = parse_job_id(raw_id)
        copy = bind_restart(request, self._config.max_body_bytes)
        return self._run_to_end(self._restart(request, job_id, copy))

    async def _restart(self, request: IRequest, job_id: int, copy: bool) -> bytes:
        if copy:
            original = await self._store.get(job_id)
            original.check_settled()
            job = attrs.evolve(
                original.reset(), id=self._ids.next_id(), idempotency_key=None, schedule_id=None
            )
            await self._store.create(job)
        else:
            job = await self._store.restart(job_id)
        self._dispatch.enqueue(job)
        self.log.debug("Job {jobID} restarted as {newID}", jobID=job_id, newID=job.id)
        return write_json(request, job_json(job, self._now_ms()))

    # -- schedules (SPEC §14)

    def _schedule_store(self) -> IScheduleStore:
        # Every engine keeps the schedules beside the jobs.
        return cast(IScheduleStore, self._store)

    @app.route("/schedule", methods=["POST"])
    def add_schedule(self, request: IRequest) -> Deferred[bytes]:
        """
        Store a new schedule and answer with it.
        """
        now = self._now_ms()
        bound = bind_schedule(request, self._config.max_body_bytes, now, self._config.retries)
        try:
            self.check_destination(bound.job.url)
        except APIError as e:
            raise APIError(e.status, e.message.replace("'url'", "'job.url'", 1)) from None
        schedule = bound.schedule(self._ids.next_id(), now)
        return self._run_to_end(self._add_schedule(request, schedule))

    async def _add_schedule(self, request: IRequest, schedule: Schedule) -> bytes:
        await self._schedule_store().add_schedule(schedule)
        self._schedules_changed()
        self.log.info(
            "Schedule {scheduleID} added: {cron} ({timezone})",
            scheduleID=schedule.id,
            cron=schedule.cron,
            timezone=schedule.timezone,
        )
        return write_json(request, schedule.to_json())

    @app.route("/schedule", methods=["GET"])
    async def list_schedules(self, request: IRequest) -> bytes:
        """
        ``{"schedules": [...]}``, in id order.
        """
        schedules = await self._schedule_store().list_schedules()
        return write_json(
            request, '{"schedules":[' + ",".join(s.to_json() for s in schedules) + "]}"
        )

    @app.route("/schedule/<raw_id>", methods=["GET"])
    async def get_schedule(self, request: IRequest, raw_id: str) -> bytes:
        """
        One schedule.
        """
        schedule = await self._schedule_store().get_schedule(parse_schedule_id(raw_id))
        return write_json(request, schedule.to_json())

    @app.route("/schedule/<raw_id>", methods=["DELETE"])
    def delete_schedule(self, request: IRequest, raw_id: str) -> Deferred[bytes]:
        """
        Delete a schedule (the jobs it made stay); ``{"id"}``.
        """
        return self._run_to_end(self._delete_schedule(request, parse_schedule_id(raw_id)))

    async def _delete_schedule(self, request: IRequest, schedule_id: int) -> bytes:
        await self._schedule_store().delete_schedule(schedule_id)
        self._schedules_changed()
        self.log.info("Schedule {scheduleID} deleted", scheduleID=schedule_id)
        return write_json(request, _compact({"id": str(schedule_id)}))

    @app.route("/schedule/<raw_id>/pause", methods=["POST"])
    def pause_schedule(self, request: IRequest, raw_id: str) -> Deferred[bytes]:
        """
        Pause a schedule (idempotent); answer with it.
        """
        return self._run_to_end(self._pause_schedule(request, parse_schedule_id(raw_id)))

    async def _pause_schedule(self, request: IRequest, schedule_id: int) -> bytes:
        schedule = await self._schedule_store().pause_schedule(schedule_id)
        self._schedules_changed()
        return write_json(request, schedule.to_json())

    @app.route("/schedule/<raw_id>/resume", methods=["POST"])
    def resume_schedule(self, request: IRequest, raw_id: str) -> Deferred[bytes]:
        """
        Resume a paused schedule from now (idempotent); answer with it.
        """
        return self._run_to_end(self._resume_schedule(request, parse_schedule_id(raw_id)))

    async def _resume_schedule(self, request: IRequest, schedule_id: int) -> bytes:
        store = self._schedule_store()
        current = await store.get_schedule(schedule_id)
        try:
            rule = cached_rule(current.cron, current.timezone)
        except CronError as e:
            # A time zone this system no longer has (the schedule was paused for it).
            raise APIError(422, e.message) from None
        next_run_at = rule.next_after(self._now_ms())
        schedule = await store.resume_schedule(schedule_id, next_run_at)
        self._schedules_changed()
        return write_json(request, schedule.to_json())

    # -- flow control (SPEC §16)

    async def _stored_flows(self) -> dict[str, FlowLimits]:
        """
        Return the stored limits by key, taken into the engine's flow limits
        too (on a cluster, another node may have changed them).
        """
        limits = {item.key: item for item in await self._store.flow_limits()}
        self._flows.load(limits.values())
        return limits

    async def _flow_view(
        self, keys: list[str] | None = None, limits: dict[str, FlowLimits] | None = None
    ) -> list[str]:
        """
        Return the flow keys as ``GET /flow`` shows them (JSON texts), every
        known key or those of ``keys``; ``limits``: the stored ones, if just read.
        """
        if limits is None:
            limits = await self._stored_flows()
        counts = await self._store.flow_counts()
        if keys is None:
            keys = sorted(set(limits) | set(counts) | set(self._flows.keys()))
        return [
            flow_json(
                key,
                limits.get(key),
                counts.get(key, FlowCounts()),
                self._flows.limit(key),
                self._flows.history(key),
            )
            for key in keys
        ]

    @app.route("/flow", methods=["GET"])
    async def list_flows(self, request: IRequest) -> bytes:
        """
        ``{"flows": [...]}``: keys with limits, active jobs or an adaptive limit, by key.
        """
        return write_json(request, '{"flows":[' + ",".join(await self._flow_view()) + "]}")

    @app.route("/flow/<path:raw_key>", methods=["GET"])
    async def get_flow(self, request: IRequest, raw_key: str) -> bytes:
        """
        One flow key (defaults for a key with no limits and no jobs).
        """
        (view,) = await self._flow_view([parse_flow_key(raw_key)])
        return write_json(request, view)

    @app.route("/flow/<path:raw_key>", methods=["PUT"])
    def put_flow(self, request: IRequest, raw_key: str) -> Deferred[bytes]:
        """
        Set a flow key's limits (absent ones: none; ``paused`` absent: as it was).
        """
        key = parse_flow_key(raw_key)
        return self._run_to_end(self._put_flow(request, key))

    async def _put_flow(self, request: IRequest, key: str) -> bytes:
        stored = await self._stored_flows()
        limits = bind_flow(request, key, self._config.max_body_bytes, stored.get(key))
        return await self._set_flow(request, key, limits, stored)

    async def _set_flow(
        self,
        request: IRequest,
        key: str,
        limits: FlowLimits | None,
        stored: dict[str, FlowLimits] | None = None,
    ) -> bytes:
        if limits is None:
            await self._store.delete_flow(key)
        else:
            await self._store.put_flow(limits)
        self._flows.set_limits(limits, key)
        self.log.info("Flow {key}: limits {limits}", key=key, limits=limits or "removed")
        if stored is not None:
            stored = {k: v for k, v in stored.items() if k != key}
            if limits is not None:
                stored[key] = limits
        (view,) = await self._flow_view([key], stored)
        return write_json(request, view)

    @app.route("/flow/<path:raw_key>/pause", methods=["POST"])
    def pause_flow(self, request: IRequest, raw_key: str) -> Deferred[bytes]:
        """
        Pause a flow key: none of its jobs starts until it is resumed.
        """
        return self._run_to_end(self._pause_flow(request, parse_flow_key(raw_key), True))

    @app.route("/flow/<path:raw_key>/resume", methods=["POST"])
    def resume_flow(self, request: IRequest, raw_key: str) -> Deferred[bytes]:
        """
        Resume a paused flow key.
        """
        return self._run_to_end(self._pause_flow(request, parse_flow_key(raw_key), False))

    async def _pause_flow(self, request: IRequest, key: str, paused: bool) -> bytes:
        stored = await self._stored_flows()
        limits: FlowLimits | None = attrs.evolve(stored.get(key) or FlowLimits(key), paused=paused)
        if limits == FlowLimits(key):
            limits = None  # Resumed with no limits left: as if it never had any.
        return await self._set_flow(request, key, limits, stored)

    @app.route("/flow/<path:raw_key>", methods=["DELETE"])
    def delete_flow(self, request: IRequest, raw_key: str) -> Deferred[bytes]:
        """
        Remove a flow key's limits (it is no longer paused either).
        """
        return self._run_to_end(self._set_flow(request, parse_flow_key(raw_key), None))

    # -- the error path, most specific first

    @app.handle_errors(APIError)
    def _api_error(self, request: IRequest, failure: Failure) -> bytes:
        error = failure.value
        assert isinstance(error, APIError)
        return write_error(request, error.status, error.message)

    @app.handle_errors(JobNotFound, ScheduleNotFound)
    def _not_found(self, request: IRequest, failure: Failure) -> bytes:
        return write_error(request, 404, str(failure.value))

    @app.handle_errors(JobConflict)
    def _conflict(self, request: IRequest, failure: Failure) -> bytes:
        return write_error(request, 409, str(failure.value))

    @app.handle_errors(StoreUnavailable)
    def _unavailable(self, request: IRequest, failure: Failure) -> bytes:
        self.log.failure("Storage unavailable", failure, level=LogLevel.error)
        request.setHeader(b"retry-after", b"1")
        return write_error(request, 503, "storage unavailable, try again later")

    @app.handle_errors(HTTPException)
    def _http_error(self, request: IRequest, failure: Failure) -> bytes:
        # Routing: NotFound, MethodNotAllowed (with Allow), a redirect for "//".
        error = failure.value
        assert isinstance(error, HTTPException)
        status = error.code or 500
        if isinstance(error, MethodNotAllowed) and error.valid_methods:
            request.setHeader(b"allow", ", ".join(error.valid_methods).encode("ascii"))
        location = getattr(error, "new_url", None)
        if isinstance(location, str):
            request.setHeader(b"location", location.encode("utf-8"))
        return write_error(request, status, error.name)

    @app.handle_errors(Exception)
    def _unexpected(self, request: IRequest, failure: Failure) -> bytes:
        self.log.failure(
            "Unexpected error in {method} {path}",
            failure,
            method=request.method.decode("latin-1"),
            path=request.path.decode("latin-1"),
        )
        return write_error(request, 500, "Internal Server Error")
