"""
The client library (hq.client) against the real API (HQApi over the memory store, through
treq's StubTreq), against small fake resources, and once over real loopback sockets.
"""

from __future__ import annotations

import json
import socket
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError, DNSLookupError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import ResponseNeverReceived
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from hq import __version__
from hq.api import HQApi
from hq.client import (
    DEFAULT_ADDRESS,
    Attempt,
    BatchPushError,
    Flow,
    FlowLimitChange,
    HQClient,
    HQError,
    JobList,
    RemoteJob,
    Schedule,
    ServerInfo,
    Stats,
    format_time,
    with_options,
)
from hq.config import Config
from hq.ids import IdGenerator
from hq.model import Attempt as StoredAttempt
from hq.model import ListQuery, Outcome
from hq.store.memory import MemoryStore
from hq.testing import FailingHTTP, RecordingDispatch
from tests.flowfake import FlowResource, FlowTable

#: The fake clock's start, seconds since the Unix epoch.
T0 = 1_700_000_000
WORKER = "http://worker.test/run"


def make_api(clock: Clock, store: MemoryStore, dispatch: RecordingDispatch) -> HQApi:
    """
    Return the real API over ``store``, ``dispatch`` and ``clock``.
    """
    return HQApi(
        store=store,
        dispatch=dispatch,
        ids=IdGenerator(0, clock),
        clock=clock,
        config=Config(queues=100, dispatchers=2, max_workers=3),
        version="1.2.3",
        commit_hash="abc123",
    )


class RecordingResource(Resource):
    """
    Answers every request with ``status`` and ``body``; records the requests.
    """

    isLeaf = True

    def __init__(self, status: int = 200, body: bytes = b"{}\n") -> None:
        super().__init__()
        self.status = status
        self.body = body
        self.requests: list[tuple[bytes, bytes, dict[bytes, list[bytes]], bytes]] = []

    def render(self, request: Request) -> bytes:
        assert request.method is not None and request.uri is not None
        assert request.content is not None
        headers = dict(request.requestHeaders.getAllRawHeaders())
        self.requests.append((request.method, request.uri, headers, request.content.read()))
        request.setResponseCode(self.status)
        return self.body


class BatchResource(Resource):
    """
    Answers ``POST /jobs`` with consecutive ids, one per job; records the batch sizes.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def render(self, request: Request) -> bytes:
        assert request.content is not None
        jobs = json.loads(request.content.read())
        start = sum(self.sizes)
        self.sizes.append(len(jobs))
        return json.dumps({"ids": [str(start + i) for i in range(len(jobs))]}).encode()


class ClientTestCase(SynchronousTestCase):
    """
    An HQClient over StubTreq and the real HQApi.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.store = MemoryStore()
        self.dispatch = RecordingDispatch()
        self.stub = StubTreq(make_api(self.clock, self.store, self.dispatch).resource())
        self.client = HQClient("http://hq.test/", http=self.stub)

    def result(self, d: Deferred[Any]) -> Any:
        """
        Return what ``d`` fired with, after the stub has delivered everything.
        """
        self.settle()
        return self.successResultOf(d)

    def settle(self) -> None:
        """
        Deliver everything, letting the API's zero-delay steps (large batches and bulk
        actions yield to the reactor between steps) run on the clock.
        """
        for _ in range(20):
            self.stub.flush()
            self.clock.advance(0)

    def error(self, d: Deferred[Any]) -> HQError:
        """
        Return the HQError ``d`` failed with.
        """
        self.settle()
        failure = self.failureResultOf(d, HQError)
        assert isinstance(failure.value, HQError)
        return failure.value

    def push(self, **fields: Any) -> RemoteJob:
        fields.setdefault("url", WORKER)
        job: RemoteJob = self.result(self.client.push(fields))
        return job

    def stored_ids(self) -> list[str]:
        """
        Return the ids of every stored job, oldest first.
        """
        page = self.successResultOf(self.store.list_jobs(ListQuery()))
        return [str(job.id) for job in page.jobs]

    def finish(self, job_id: str, success: bool = True) -> None:
        """
        Run the stored job ``job_id`` to its end, as a dispatcher would.
        """
        now = T0 * 1000
        self.successResultOf(self.store.start(int(job_id), now))
        outcome = Outcome(finished_at=now + 1500, success=success, failure=not success)
        self.successResultOf(self.store.finish(int(job_id), outcome))

    def test_push_returns_waiting_job_with_string_id(self) -> None:
        """
        push() answers a RemoteJob: string id, the fields sent, waiting, creation time.
        """
        job = self.push(name="mail", comment="hello", payload={"n": 1}, timeout=5)
        self.assertIsInstance(job.id, str)
        self.assertTrue(job.id.isdigit())
        self.assertEqual(job.name, "mail")
        self.assertEqual(job.comment, "hello")
        self.assertEqual(job.payload, {"n": 1})
        self.assertEqual(job.timeout, 5)
        self.assertEqual(job.status, "waiting")
        self.assertTrue(job.waiting)
        self.assertEqual(job.created_at, datetime.fromtimestamp(T0, UTC))
        self.assertIsNone(job.started_at)
        self.assertIsNone(job.duration)
        self.assertEqual(job.raw["id"], job.id)
        self.assertEqual([j.id for j in self.dispatch.enqueued], [int(job.id)])

    def test_push_without_url_raises_server_message(self) -> None:
        """
        A refused push raises HQError with the HTTP status and the server's own message.
        """
        error = self.error(self.client.push({"name": "x"}))
        self.assertEqual((error.status, error.message), (422, "'url' is required"))
        self.assertEqual(str(error), "'url' is required")

    def test_get_returns_the_job(self) -> None:
        """
        get() answers the stored job, by string or int id.
        """
        pushed = self.push()
        self.assertEqual(self.result(self.client.get(pushed.id)), pushed)
        self.assertEqual(self.result(self.client.get(int(pushed.id))).id, pushed.id)

    def test_get_unknown_job_is_404(self) -> None:
        """
        get() of an unknown id raises HQError 404 with the server's message.
        """
        error = self.error(self.client.get("123"))
        self.assertEqual((error.status, error.message), (404, "The job '123' is not found"))

    def test_id_that_is_not_a_number_is_refused_without_request(self) -> None:
        """
        An id like "5/stop" is refused with the server's 404 message and sends nothing.
        """
        pushed = self.push()
        error = self.error(self.client.delete(pushed.id + "/stop"))
        self.assertEqual(
            (error.status, error.message),
            (404, f"The job id must be a number but '{pushed.id}/stop'"),
        )
        self.assertEqual(self.dispatch.canceled, [])
        http = FailingHTTP(ConnectionRefusedError())
        self.failureResultOf(HQClient(http=http).get("abc"), HQError)
        self.assertEqual(http.calls, [])

    def test_list_jobs_returns_a_page(self) -> None:
        """
        list_jobs() answers a JobList with the jobs in id order and the count.
        """
        a, b = self.push(), self.push()
        page = self.result(self.client.list_jobs())
        self.assertIsInstance(page, JobList)
        self.assertEqual([j.id for j in page.jobs], [a.id, b.id])
        self.assertEqual((page.count, page.has_next, page.next), (2, False, None))
        self.assertEqual(page.raw["count"], 2)

    def test_list_jobs_sends_every_filter(self) -> None:
        """
        name, term (dropped by the Go client), status, reverse, begin and limit all reach
        the server.
        """
        a = self.push(name="mail", comment="weekly report")
        b = self.push(name="mail")
        c = self.push(name="sms", comment="weekly")
        self.finish(b.id)

        def ids(**query: Any) -> list[str]:
            page: JobList = self.result(self.client.list_jobs(**query))
            return [j.id for j in page.jobs]

        self.assertEqual(ids(name="^mail$"), [a.id, b.id])
        self.assertEqual(ids(term="weekly"), [a.id, c.id])
        self.assertEqual(ids(status="success"), [b.id])
        self.assertEqual(ids(reverse=True), [c.id, b.id, a.id])
        self.assertEqual(ids(begin=b.id), [b.id, c.id])
        self.assertEqual(ids(begin=int(b.id), reverse=True), [b.id, a.id])
        page = self.result(self.client.list_jobs(limit=1))
        self.assertEqual([j.id for j in page.jobs], [a.id])
        self.assertEqual((page.has_next, page.next), (True, b.id))

    def test_list_jobs_bad_regexp_is_400(self) -> None:
        """
        An invalid regexp raises HQError 400 naming the parameter.
        """
        self.push()
        error = self.error(self.client.list_jobs(term="(?=x)"))
        self.assertEqual(error.status, 400)
        self.assertIn("'term'", error.message)

    def test_delete_returns_the_id(self) -> None:
        """
        delete() of a finished job answers its id and removes it.
        """
        job = self.push()
        self.finish(job.id)
        self.assertEqual(self.result(self.client.delete(job.id)), job.id)
        self.assertEqual(self.error(self.client.get(job.id)).status, 404)

    def test_delete_waiting_job_is_409(self) -> None:
        """
        delete() of a waiting job raises HQError 409.
        """
        job = self.push()
        error = self.error(self.client.delete(job.id))
        self.assertEqual(error.status, 409)
        self.assertIn(job.id, error.message)

    def test_stop_returns_the_id(self) -> None:
        """
        stop() of a waiting job answers its id and asks the dispatcher to cancel it.
        """
        job = self.push()
        self.assertEqual(self.result(self.client.stop(job.id)), job.id)
        self.assertEqual(self.dispatch.canceled, [int(job.id)])

    def test_schedules(self) -> None:
        """
        add_schedule(), schedule(), schedules(), pause, resume and delete: Schedule values.
        """
        job = {"url": WORKER, "payload": {"report": "daily"}}
        d = self.client.add_schedule("30 2 * * *", job, name="nightly", timezone="Europe/Berlin")
        added: Schedule = self.result(d)
        self.assertEqual(
            (added.name, added.cron, added.timezone, added.paused, added.job["payload"]),
            ("nightly", "30 2 * * *", "Europe/Berlin", False, {"report": "daily"}),
        )
        self.assertEqual(added.job["name"], "nightly")
        # 02:30 in Berlin (CET, UTC+1) after T0 (2023-11-14 22:13:20 UTC).
        self.assertEqual(added.next_run_at, datetime(2023, 11, 15, 1, 30, tzinfo=UTC))
        self.assertEqual((added.last_run_at, added.last_job_id), (None, None))
        self.assertEqual(self.result(self.client.schedule(added.id)), added)
        self.assertEqual(self.result(self.client.schedules()), [added])
        paused: Schedule = self.result(self.client.pause_schedule(int(added.id)))
        self.assertEqual((paused.paused, paused.next_run_at), (True, None))
        resumed: Schedule = self.result(self.client.resume_schedule(added.id))
        self.assertEqual((resumed.paused, resumed.next_run_at), (False, added.next_run_at))
        self.assertEqual(self.result(self.client.delete_schedule(added.id)), added.id)
        self.assertEqual(self.result(self.client.schedules()), [])
        error = self.error(self.client.schedule(added.id))
        self.assertEqual(
            (error.status, error.message), (404, f"The schedule '{added.id}' is not found")
        )

    def test_schedule_errors(self) -> None:
        """
        A bad cron or job is a 422 naming the field; a malformed id a 404, unsent.
        """
        error = self.error(self.client.add_schedule("61 * * * *", {"url": WORKER}))
        self.assertEqual(error.status, 422)
        self.assertIn("cron", error.message)
        error = self.error(self.client.add_schedule("* * * * *", {}, paused=True))
        self.assertEqual((error.status, error.message), (422, "'job.url' is required"))
        error = self.error(self.client.pause_schedule("1/resume"))
        self.assertEqual(error.status, 404)

    def test_restart_in_place_and_as_copy(self) -> None:
        """
        restart() keeps the id; restart(copy=True) answers a new job with a new id.
        """
        job = self.push(name="mail")
        self.finish(job.id, success=False)
        again: RemoteJob = self.result(self.client.restart(job.id))
        self.assertEqual((again.id, again.status), (job.id, "waiting"))
        self.finish(job.id)
        self.clock.advance(1)
        copy: RemoteJob = self.result(self.client.restart(job.id, copy=True))
        self.assertNotEqual(copy.id, job.id)
        self.assertEqual((copy.name, copy.status), ("mail", "waiting"))
        self.assertEqual(self.result(self.client.get(job.id)).status, "success")

    def test_stats_returns_the_counters(self) -> None:
        """
        stats() answers Stats with the counters and every key in raw.
        """
        self.push()
        stats = self.result(self.client.stats())
        self.assertIsInstance(stats, Stats)
        self.assertEqual((stats.queues, stats.dispatchers, stats.max_workers), (100, 2, 3))
        self.assertEqual(stats.num_stored_jobs, 1)
        self.assertEqual(list(stats.raw)[:2], ["queues", "dispatchers"])

    def test_info_returns_version(self) -> None:
        """
        info() answers the server's version and commit.
        """
        info = self.result(self.client.info())
        self.assertEqual(info, ServerInfo("1.2.3", "abc123", raw={}))
        self.assertEqual(info.raw, {"version": "1.2.3", "commitHash": "abc123"})

    # -- retries, due times, idempotency, batches, attempts, bulk (SPEC §11, §15); these
    # need the server side of branch api11.

    def test_push_options_reach_the_job(self) -> None:
        """
        retries and delay set the job's fields; a delayed job is scheduled, runAt shown.
        """
        job = self.result(self.client.push({"url": WORKER}, retries=3, delay=90))
        self.assertEqual((job.retries, job.attempts, job.status), (3, 0, "scheduled"))
        self.assertEqual(job.run_at, datetime.fromtimestamp(T0 + 90, UTC))
        self.assertEqual(uuid.UUID(job.idempotency_key or "").version, 4)
        self.assertFalse(job.replayed)

    def test_push_run_at_as_datetime_or_string(self) -> None:
        """
        run_at takes an aware datetime or an RFC 3339 string; both schedule the job.
        """
        at = datetime.fromtimestamp(T0 + 3600, UTC)
        first = self.result(self.client.push({"url": WORKER}, run_at=at))
        second = self.result(self.client.push({"url": WORKER}, run_at="2023-11-15T00:13:20+01:00"))
        self.assertEqual((first.status, first.run_at), ("scheduled", at))
        self.assertEqual((second.status, second.run_at), ("scheduled", at))

    def test_push_idempotency_key_replays(self) -> None:
        """
        A second push with the same key answers the first job, marked replayed.
        """
        first = self.result(self.client.push({"url": WORKER}, idempotency_key="order-1"))
        again = self.result(self.client.push({"url": WORKER}, idempotency_key="order-1"))
        self.assertEqual((first.idempotency_key, first.replayed), ("order-1", False))
        self.assertEqual((again.id, again.replayed), (first.id, True))
        self.assertEqual(len(self.dispatch.enqueued), 1)

    def test_push_idempotency_conflict_is_409(self) -> None:
        """
        The same key with another payload is refused with 409.
        """
        self.push(idempotencyKey="k", payload=1)
        error = self.error(self.client.push({"url": WORKER, "payload": 2}, idempotency_key="k"))
        self.assertEqual(error.status, 409)
        self.assertIn("'k'", error.message)

    def test_push_bad_run_at_is_refused(self) -> None:
        """
        A naive datetime or run_at with delay fail with ValueError; a bad string with 422.
        """
        naive = self.client.push({"url": WORKER}, run_at=datetime(2024, 1, 1))
        self.failureResultOf(naive, ValueError)
        both = self.client.push({"url": WORKER}, run_at="2024-01-01T00:00:00Z", delay=1)
        self.failureResultOf(both, ValueError)
        error = self.error(self.client.push({"url": WORKER}, run_at="tomorrow"))
        self.assertEqual(error.status, 422)
        self.assertIn("'runAt' must be an RFC 3339 time", error.message)

    def test_push_many_returns_ids_in_order(self) -> None:
        """
        push_many() stores every job and answers their ids in input order, per batch too.
        """
        batches: list[list[str]] = []
        jobs = [{"url": WORKER, "name": f"n{i}"} for i in range(5)]
        ids = self.result(self.client.push_many(jobs, batch_size=2, on_batch=batches.append))
        self.assertEqual(len(ids), 5)
        self.assertEqual(batches, [ids[:2], ids[2:4], ids[4:]])
        names = [self.successResultOf(self.store.get(int(i))).name for i in ids]
        self.assertEqual(names, [f"n{i}" for i in range(5)])

    def test_push_many_refused_batch_names_the_job(self) -> None:
        """
        A refused batch fails with BatchPushError: the earlier batches' ids, where the
        refused batch starts, and the index of the job at fault in the whole input.
        """
        jobs: list[dict[str, Any]] = [{"url": WORKER} for _ in range(5)]
        jobs[3] = {"name": "no url"}
        d = self.client.push_many(jobs, batch_size=2)
        self.settle()
        error = self.failureResultOf(d, BatchPushError).value
        assert isinstance(error, BatchPushError)
        self.assertEqual((error.status, error.start, error.job_index), (422, 2, 3))
        self.assertEqual(error.message, "job 1: 'url' is required")
        self.assertEqual(error.reason, "'url' is required")
        self.assertEqual(len(error.ids), 2)
        self.assertEqual(self.stored_ids(), error.ids)

    def test_attempts_lists_the_history(self) -> None:
        """
        attempts() answers the job's attempts, oldest first, as Attempt values.
        """
        job = self.push(retries=1)
        self.assertEqual(self.result(self.client.attempts(job.id)), [])
        now = T0 * 1000
        started = self.successResultOf(self.store.start(int(job.id), now))
        assert started is not None
        outcome = Outcome(
            finished_at=now + 250, failure=True, status_code=500, err="Internal Server Error"
        )
        stored = StoredAttempt.of(started, outcome)
        self.successResultOf(self.store.finish(int(job.id), outcome, stored))
        (attempt,) = self.result(self.client.attempts(job.id))
        self.assertIsInstance(attempt, Attempt)
        self.assertEqual(
            (attempt.attempt, attempt.status_code, attempt.err),
            (1, 500, "Internal Server Error"),
        )
        self.assertEqual(attempt.started_at, datetime.fromtimestamp(T0, UTC))
        self.assertEqual(attempt.duration, timedelta(milliseconds=250))
        self.assertEqual(self.error(self.client.attempts("77")).status, 404)

    def test_bulk_actions_answer_counts(self) -> None:
        """
        restart/stop/delete_matching act on the jobs the filters match and answer counts.
        """
        done = [self.push(name="mail").id for _ in range(2)]
        other = self.push(name="other").id
        for job_id in done:
            self.finish(job_id, success=False)
        self.assertEqual(self.result(self.client.restart_matching(status="failure")), 2)
        self.assertEqual(self.result(self.client.stop_matching(name="^mail$", limit=1)), 1)
        self.assertEqual(self.result(self.client.stop_matching(name="^mail$")), 1)
        self.assertEqual(self.result(self.client.delete_matching(status="canceled")), 2)
        self.assertEqual(self.stored_ids(), [other])

    def test_bulk_without_name_term_or_status_is_400(self) -> None:
        """
        A bulk action without name, term or status is refused by the server.
        """
        error = self.error(self.client.delete_matching(limit=5))
        self.assertEqual(error.status, 400)
        self.assertIn("'name', 'term' or 'status'", error.message)

    def test_stats_count_scheduled_jobs(self) -> None:
        """
        Stats has num_jobs_scheduled.
        """
        self.result(self.client.push({"url": WORKER}, delay=60))
        stats = self.result(self.client.stats())
        self.assertEqual(stats.num_jobs_scheduled, 1)


class WireTests(SynchronousTestCase):
    """
    What the client sends and how it reads answers that are not HQ's usual ones.
    """

    def call(self, resource: RecordingResource, d_for: Any) -> Deferred[Any]:
        stub = StubTreq(resource)
        client = HQClient("http://hq.test:19900/", http=stub)
        d: Deferred[Any] = d_for(client)
        stub.flush()
        return d

    def test_requests_carry_user_agent_and_content_type(self) -> None:
        """
        Every request has User-Agent HQ-Client/<version>, JSON Content-Type, and the
        address's trailing slash is trimmed.
        """
        resource = RecordingResource(body=b'{"id": "7"}')
        self.successResultOf(self.call(resource, lambda c: c.stop("7")))
        method, uri, headers, body = resource.requests[0]
        self.assertEqual((method, uri, body), (b"POST", b"/job/7/stop", b""))
        self.assertEqual(headers[b"User-Agent"], [f"HQ-Client/{__version__}".encode()])
        self.assertEqual(headers[b"Content-Type"], [b"application/json"])

    def test_push_sends_the_job_as_json(self) -> None:
        """
        push() sends the job as a JSON body, with a new UUID4 idempotency key added.
        """
        resource = RecordingResource(body=b'{"id": "9", "status": "waiting"}')
        job = {"url": WORKER, "payload": {"text": "h\u00e9"}}
        result = self.successResultOf(self.call(resource, lambda c: c.push(job)))
        self.assertEqual(result.id, "9")
        _, uri, _, body = resource.requests[0]
        self.assertEqual(uri, b"/job")
        sent = json.loads(body)
        key = sent.pop("idempotencyKey")
        self.assertEqual(uuid.UUID(key).version, 4)
        self.assertEqual(sent, job)
        self.assertEqual(job, {"url": WORKER, "payload": {"text": "h\u00e9"}})

    def test_push_without_auto_key_sends_the_job_as_is(self) -> None:
        """
        With auto_idempotency_key=False, push() sends the job without a key.
        """
        resource = RecordingResource(body=b'{"id": "9"}')
        job = {"url": WORKER}
        client = HQClient("http://hq.test", http=StubTreq(resource), auto_idempotency_key=False)
        self.successResultOf(client.push(job))
        self.assertEqual(json.loads(resource.requests[0][3]), job)

    def test_push_options_are_sent_as_fields(self) -> None:
        """
        push() options become fields of the body; run_at replaces a delay of the job.
        """
        resource = RecordingResource(body=b'{"id": "9"}')
        at = datetime(2024, 5, 1, 11, 30, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
        job = {"url": WORKER, "delay": 5, "retries": 1}
        self.successResultOf(
            self.call(resource, lambda c: c.push(job, retries=2, run_at=at, idempotency_key="k"))
        )
        self.assertEqual(
            json.loads(resource.requests[0][3]),
            {
                "url": WORKER,
                "retries": 2,
                "runAt": "2024-05-01T09:30:00.123Z",
                "idempotencyKey": "k",
            },
        )
        self.assertEqual(job, {"url": WORKER, "delay": 5, "retries": 1})

    def test_replayed_header_marks_the_job(self) -> None:
        """
        An answer with Idempotent-Replayed: true gives a job with replayed set.
        """

        class Replaying(RecordingResource):
            def render(self, request: Request) -> bytes:
                request.setHeader(b"Idempotent-Replayed", b"true")
                return super().render(request)

        job = self.successResultOf(self.call(Replaying(body=b'{"id": "9"}'), lambda c: c.push({})))
        self.assertTrue(job.replayed)

    def test_push_many_splits_into_batches_of_10000(self) -> None:
        """
        25,000 jobs go in three POST /jobs requests of 10,000, 10,000 and 5,000 jobs.
        """
        resource = BatchResource()
        jobs = [{"url": WORKER, "n": i} for i in range(25_000)]
        ids = self.successResultOf(self.call(resource, lambda c: c.push_many(jobs)))
        self.assertEqual(resource.sizes, [10_000, 10_000, 5_000])
        self.assertEqual(ids, [str(i) for i in range(25_000)])
        self.failureResultOf(
            self.call(resource, lambda c: c.push_many([], batch_size=0)), ValueError
        )

    def test_push_many_splits_by_bytes_too(self) -> None:
        """
        A batch also ends before it would pass batch_bytes; a larger job goes alone.
        """
        resource = BatchResource()
        jobs = [{"p": "x" * 40}, {"p": "y" * 40}, {"p": "z" * 200}, {"p": ""}]
        ids = self.successResultOf(
            self.call(resource, lambda c: c.push_many(jobs, batch_bytes=100))
        )
        self.assertEqual(resource.sizes, [2, 1, 1])
        self.assertEqual(ids, ["0", "1", "2", "3"])

    def test_push_many_answer_without_ids_is_an_error(self) -> None:
        """
        An answer to POST /jobs without one id per job fails with BatchPushError.
        """
        d = self.call(RecordingResource(body=b'{"ids": []}'), lambda c: c.push_many([{}]))
        error = self.failureResultOf(d, BatchPushError).value
        self.assertEqual((error.status, error.ids, error.job_index), (None, [], None))
        self.assertIn("/jobs has no list of ids", str(error))

    def test_bulk_sends_filters_in_the_query(self) -> None:
        """
        The bulk actions POST /jobs/<action> with the filters in the query string.
        """
        resource = RecordingResource(body=b'{"count": 4}')
        count = self.successResultOf(
            self.call(resource, lambda c: c.stop_matching(term="a b", begin=5, reverse=True))
        )
        self.assertEqual(count, 4)
        self.successResultOf(self.call(resource, lambda c: c.delete_matching(status="failure")))
        self.successResultOf(self.call(resource, lambda c: c.restart_matching(name="x", limit=2)))
        self.assertEqual(
            [(method, uri) for method, uri, _, _ in resource.requests],
            [
                (b"POST", b"/jobs/stop?term=a+b&begin=5&reverse=true"),
                (b"POST", b"/jobs/delete?status=failure"),
                (b"POST", b"/jobs/restart?name=x&limit=2"),
            ],
        )

    def test_restart_sends_copy(self) -> None:
        """
        restart() sends {"copy": ...} in the body.
        """
        resource = RecordingResource(body=b'{"id": "9"}')
        self.successResultOf(self.call(resource, lambda c: c.restart("5", copy=True)))
        _, uri, _, body = resource.requests[0]
        self.assertEqual((uri, json.loads(body)), (b"/job/5/restart", {"copy": True}))

    def test_list_query_leaves_out_unset_arguments(self) -> None:
        """
        list_jobs() sends only the arguments that were given.
        """
        resource = RecordingResource(body=b'{"jobs": [], "hasNext": false, "count": 0}')
        self.successResultOf(self.call(resource, lambda c: c.list_jobs()))
        self.successResultOf(
            self.call(resource, lambda c: c.list_jobs(term="a b", reverse=True, limit=-1))
        )
        self.assertEqual(resource.requests[0][1], b"/job")
        self.assertEqual(resource.requests[1][1], b"/job?term=a+b&reverse=true&limit=-1")

    def test_error_without_json_body_names_the_status(self) -> None:
        """
        A non-2xx answer that is not HQ's JSON error gives HQError with the status phrase.
        """
        resource = RecordingResource(status=502, body=b"<html>bad gateway</html>")
        failure = self.failureResultOf(self.call(resource, lambda c: c.stats()), HQError)
        self.assertEqual(failure.value.status, 502)
        self.assertEqual(failure.value.message, "502 Bad Gateway from http://hq.test:19900/stats")

    def test_success_that_is_not_json_is_an_error(self) -> None:
        """
        A 200 answer that is not JSON (not an HQ server) gives HQError, not a crash.
        """
        resource = RecordingResource(body=b"<html>hello</html>")
        failure = self.failureResultOf(self.call(resource, lambda c: c.stats()), HQError)
        self.assertEqual(failure.value.status, 200)
        self.assertIn("is not JSON", failure.value.message)

    def test_connection_refused_has_one_clear_message(self) -> None:
        """
        A refused connection gives HQError with status None and a message for a person.
        """
        client = HQClient(http=FailingHTTP(ConnectionRefusedError()))
        failure = self.failureResultOf(client.list_jobs(), HQError)
        self.assertIsNone(failure.value.status)
        self.assertEqual(
            failure.value.message,
            "cannot reach HQ at http://127.0.0.1:19900: connection refused",
        )

    def test_unknown_host_and_lost_connection_messages(self) -> None:
        """
        DNS failures and connections closed before an answer are said in words.
        """
        client = HQClient("http://nowhere.test", http=FailingHTTP(DNSLookupError("x")))
        failure = self.failureResultOf(client.stats(), HQError)
        self.assertEqual(
            failure.value.message, "cannot reach HQ at http://nowhere.test: host not found"
        )
        client = HQClient(http=FailingHTTP(ResponseNeverReceived([])))
        failure = self.failureResultOf(client.stats(), HQError)
        self.assertEqual(
            failure.value.message,
            "no answer from HQ at http://127.0.0.1:19900: "
            "the connection closed before an answer came",
        )

    def test_address_must_be_http(self) -> None:
        """
        An address that is not an http(s) URL is refused at once with ValueError.
        """
        for address in ("localhost:19900", "ftp://x", "http://", "http:///job"):
            with self.assertRaises(ValueError, msg=address):
                HQClient(address, http=FailingHTTP(ConnectionRefusedError()))
        client = HQClient("https://hq.example/prefix/", http=FailingHTTP(OSError()))
        self.assertEqual(client.address, "https://hq.example/prefix")
        self.assertEqual(HQClient(http=StubTreq(Resource())).address, DEFAULT_ADDRESS)


class RemoteJobTests(SynchronousTestCase):
    """
    Reading the wire job into a RemoteJob.
    """

    def test_go_style_times_and_duration(self) -> None:
        """
        Times with trimmed fractions (as the Go server writes them) parse; duration is
        finished minus started.
        """
        job = RemoteJob.from_dict(
            {
                "id": "42",
                "createdAt": "2019-10-29T07:32:26Z",
                "startedAt": "2019-10-29T07:32:26.05Z",
                "finishedAt": "2019-10-29T07:32:27.354Z",
                "statusCode": 200,
                "success": True,
                "status": "success",
            }
        )
        self.assertEqual(job.created_at, datetime(2019, 10, 29, 7, 32, 26, tzinfo=UTC))
        self.assertEqual(job.duration, timedelta(seconds=1, milliseconds=304))
        self.assertEqual((job.status_code, job.success, job.name), (200, True, ""))

    def test_missing_and_wrong_fields_take_defaults(self) -> None:
        """
        Missing or mistyped keys give defaults instead of errors (old servers, new keys).
        """
        job = RemoteJob.from_dict({"id": 5, "timeout": "x", "createdAt": "never"})
        self.assertEqual((job.id, job.timeout, job.created_at), ("5", 0, None))
        self.assertEqual((job.status, job.headers, job.output_truncated), ("unknown", None, False))


class OptionTests(SynchronousTestCase):
    """
    format_time and with_options, the pieces push() builds its body with.
    """

    def test_format_time_is_utc_with_milliseconds(self) -> None:
        """
        Aware datetimes are written in UTC with milliseconds and Z; naive ones refused.
        """
        at = datetime(2024, 5, 1, 9, 30, tzinfo=UTC)
        self.assertEqual(format_time(at), "2024-05-01T09:30:00.000Z")
        with self.assertRaises(ValueError):
            format_time(datetime(2024, 5, 1))

    def test_with_options_replaces_keys_and_the_other_due_time(self) -> None:
        """
        Options replace the job's keys; delay drops runAt; None leaves a key alone.
        """
        job = {"url": "u", "runAt": "x", "retries": 1}
        self.assertEqual(with_options(job, delay=2.5), {"url": "u", "retries": 1, "delay": 2.5})
        self.assertEqual(with_options(job), job)
        with self.assertRaises(ValueError):
            with_options(job, delay=1, run_at="y")


class LoopbackTests(TestCase):
    """
    The client with its own connection pool on the real reactor, over 127.0.0.1.
    """

    def test_real_server_round_trip(self) -> Deferred[None]:
        """
        Push, get and stats over a real socket; close() leaves no connection open.
        """
        clock = Clock()
        clock.advance(T0)
        api = make_api(clock, MemoryStore(), RecordingDispatch())
        port = reactor.listenTCP(0, Site(api.resource()), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        client = HQClient(f"http://127.0.0.1:{port.getHost().port}", reactor=reactor)  # type: ignore[arg-type]

        async def scenario() -> None:
            try:
                job = await client.push({"url": WORKER, "name": "loop"})
                again = await client.get(job.id)
                self.assertEqual(again.name, "loop")
                stats = await client.stats()
                self.assertEqual(stats.num_stored_jobs, 1)
            finally:
                await client.close()

        return Deferred.fromCoroutine(scenario())

    def test_nothing_listening_is_connection_refused(self) -> Deferred[None]:
        """
        A port with nothing listening gives HQError(None, "... connection refused").
        """
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            free_port = s.getsockname()[1]
        address = f"http://127.0.0.1:{free_port}"
        client = HQClient(address, reactor=reactor)  # type: ignore[arg-type]

        async def scenario() -> None:
            try:
                with self.assertRaises(HQError) as caught:
                    await client.stats()
            finally:
                await client.close()
            self.assertIsNone(caught.exception.status)
            self.assertEqual(
                caught.exception.message, f"cannot reach HQ at {address}: connection refused"
            )

        return Deferred.fromCoroutine(scenario())


class ConnectingTests(SynchronousTestCase):
    """
    The client connects through HQ's endpoints (hq.worker.WorkerEndpoints).
    """

    def test_a_name_whose_first_address_refuses_is_reached_at_once(self) -> None:
        """
        ``localhost`` resolving to ::1 then 127.0.0.1, a server on 0.0.0.0:
        127.0.0.1 is tried as soon as ::1 refuses, not 0.3 s later.
        """
        from twisted.internet.testing import MemoryReactorClock
        from twisted.python.failure import Failure

        from tests.test_guard import FakeResolver

        memory = MemoryReactorClock()
        memory.nameResolver = FakeResolver(["::1", "127.0.0.1"])  # type: ignore[attr-defined]
        client = HQClient("http://localhost:19900", reactor=memory)  # type: ignore[arg-type]
        asking = client.stats()
        self.assertEqual([c[:2] for c in memory.tcpClients], [("::1", 19900)])
        memory.tcpClients[0][2].clientConnectionFailed(
            memory.connectors[0], Failure(ConnectionRefusedError())
        )
        self.assertEqual([c[:2] for c in memory.tcpClients], [("::1", 19900), ("127.0.0.1", 19900)])
        self.assertNoResult(asking)
        asking.cancel()
        self.failureResultOf(asking)


class FlowClientTests(SynchronousTestCase):
    """
    The flow methods against an in-memory stand-in for the flow routes (tests/flowfake.py).
    """

    def setUp(self) -> None:
        self.table = FlowTable()
        self.stub = StubTreq(FlowResource(self.table))
        self.client = HQClient("http://hq.test/", http=self.stub)

    def result(self, d: Deferred[Any]) -> Any:
        self.stub.flush()
        return self.successResultOf(d)

    def test_set_get_list_pause_resume_delete(self) -> None:
        """Each flow method answers the key's Flow, read into its fields."""
        flow = self.result(self.client.set_flow("api.test:443", parallelism=4, rate=10, period=60))
        self.assertIsInstance(flow, Flow)
        self.assertEqual(
            (flow.key, flow.parallelism, flow.rate, flow.period, flow.paused, flow.configured),
            ("api.test:443", 4, 10, 60, False, True),
        )
        self.assertEqual((flow.running, flow.waiting, flow.limit), (0, 0, 4))
        self.assertEqual(self.result(self.client.get_flow("api.test:443")), flow)
        self.assertEqual(self.result(self.client.list_flows()), [flow])
        self.assertTrue(self.result(self.client.pause_flow("api.test:443")).paused)
        self.assertFalse(self.result(self.client.resume_flow("api.test:443")).paused)
        deleted = self.result(self.client.delete_flow("api.test:443"))
        self.assertEqual((deleted.configured, deleted.parallelism, deleted.rate), (False, 0, 0))

    def test_keys_are_percent_encoded_whole(self) -> None:
        """':', '/', '[', ']', '%' and spaces of a key are encoded: it stays one segment."""
        for key in ("[::1]:8000", "a/b c", "100%"):
            self.assertEqual(self.result(self.client.get_flow(key)).key, key)
        self.assertEqual(
            [path for _, path in self.table.requests],
            ["/flow/%5B%3A%3A1%5D%3A8000", "/flow/a%2Fb%20c", "/flow/100%25"],
        )

    def test_set_flow_sends_only_what_is_given(self) -> None:
        """Arguments left None are not sent; the server replaces the limits with the rest."""
        self.result(self.client.set_flow("k", parallelism=2, paused=True))
        self.assertEqual(
            self.table.limits["k"], {"parallelism": 2, "rate": 0, "period": 1, "paused": True}
        )
        self.result(self.client.set_flow("k", rate=5))
        self.assertEqual(
            self.table.limits["k"], {"parallelism": 0, "rate": 5, "period": 1, "paused": True}
        )

    def test_errors(self) -> None:
        """A refusal is an HQError with the server's text; an empty key a ValueError."""
        d = self.client.set_flow("k", parallelism=-1)
        self.stub.flush()
        error = self.failureResultOf(d, HQError).value
        self.assertEqual(
            (error.status, error.message), (422, "'parallelism' must be an integer 0 or more")
        )
        self.failureResultOf(self.client.get_flow(""), ValueError)
        self.failureResultOf(self.client.set_flow("k", period=float("inf")), ValueError)
        self.assertEqual(len(self.table.requests), 1)

    def test_push_sends_the_flow_options_as_fields(self) -> None:
        """push(flow_key=, callback_url=, failure_callback_url=) become the job's fields."""
        resource = RecordingResource(body=b'{"id": "9"}')
        client = HQClient("http://hq.test", http=StubTreq(resource), auto_idempotency_key=False)
        self.successResultOf(
            client.push(
                {"url": WORKER, "flowKey": "old"},
                flow_key="tenant-1",
                callback_url="http://cb.test/ok",
                failure_callback_url="http://cb.test/failed",
            )
        )
        self.assertEqual(
            json.loads(resource.requests[0][3]),
            {
                "url": WORKER,
                "flowKey": "tenant-1",
                "callbackUrl": "http://cb.test/ok",
                "failureCallbackUrl": "http://cb.test/failed",
            },
        )


class FlowModelTests(SynchronousTestCase):
    """
    Reading flows and the flow fields of jobs, from new and old servers.
    """

    def test_flow_defaults_and_history(self) -> None:
        """Missing keys take defaults; limitHistory is read into FlowLimitChange values."""
        flow = Flow.from_dict(
            {
                "key": "k",
                "period": 0.5,
                "limit": 2,
                "limitHistory": [
                    {"at": "2026-11-29T12:00:00.000Z", "limit": 4},
                    {"at": None, "limit": 2},
                    "junk",
                ],
            }
        )
        self.assertEqual((flow.key, flow.period, flow.limit, flow.parallelism), ("k", 0.5, 2, 0))
        self.assertEqual(
            flow.limit_history,
            (
                FlowLimitChange(datetime(2026, 11, 29, 12, tzinfo=UTC), 4),
                FlowLimitChange(None, 2),
            ),
        )
        empty = Flow.from_dict({})
        self.assertEqual(
            (empty.key, empty.period, empty.paused, empty.configured, empty.limit_history),
            ("", 1, False, False, ()),
        )

    def test_job_flow_fields(self) -> None:
        """A job's flowKey, callback URLs and callbackJobId are read; without them, defaults."""
        job = RemoteJob.from_dict(
            {
                "id": "1",
                "flowKey": "k",
                "callbackUrl": "http://cb.test/",
                "failureCallbackUrl": None,
                "callbackJobId": "77",
            }
        )
        self.assertEqual(
            (job.flow_key, job.callback_url, job.failure_callback_url, job.callback_job_id),
            ("k", "http://cb.test/", None, "77"),
        )
        old = RemoteJob.from_dict({"id": "1", "url": WORKER})
        self.assertEqual(
            (old.flow_key, old.callback_url, old.failure_callback_url, old.callback_job_id),
            ("", None, None, None),
        )
