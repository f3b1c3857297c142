"""
Tests for hq.delivery: the queue, the dispatcher loops, running a job and
recording its outcome (the exchange itself is tested in test_worker).
"""

from __future__ import annotations

from typing import Any, cast

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import HTTPConnectionPool
from twisted.web.server import Site
from zope.interface import implementer

from hq.delivery import FINISH_ATTEMPTS, INTERNAL_ERROR, STORE_RETRY_SECONDS, Delivery
from hq.delivery.feed import Feed
from hq.flow import FlowControl
from hq.history import BUCKET_MS, BUCKETS, HistoryBucket
from hq.ids import first_id_at
from hq.model import Job, JobState, Outcome
from hq.policy import RetryRules
from hq.store import IClaimingStore, StoreUnavailable
from hq.store.memory import MemoryStore
from hq.testing import FailingHTTP, FakeWorker, Reply, WorkerStub
from hq.worker import Exchange, WorkerClient, make_http_client

#: The clock's start, in seconds (2023-11-14).
T0 = 1_700_000_000.0
URL = "http://worker.test/work"


class BrokenOnceWorker(WorkerClient):
    """
    A worker client with a bug: its first ``post`` raises.
    """

    calls = 0

    def post(self, job: Job) -> Deferred[Exchange]:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("a bug in HQ")
        return super().post(job)


class DispatchTestCase(SynchronousTestCase):
    """
    A Delivery over a MemoryStore, a Clock and a FakeWorker reached through StubTreq.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.store = MemoryStore()
        self.worker = FakeWorker()
        self.stub = WorkerStub(self.worker)
        self.next_id = 1
        self.finished: list[Job] = []

    def start(
        self,
        http: Any = None,
        store: Any = None,
        dispatchers: int = 1,
        workers: int = 1,
        queue_size: int = 100,
        max_output_bytes: int = 1024,
        shutdown_timeout: float = 10,
        worker: WorkerClient | None = None,
        rules: RetryRules | None = None,
        jitter: float = 1.0,
    ) -> Delivery:
        """
        Build and start a Delivery; finished jobs go to ``self.finished``.
        """
        dispatch = Delivery(
            store=store if store is not None else self.store,
            worker=worker
            or WorkerClient(
                http if http is not None else self.stub.http,
                self.clock,
                "HQ/test",
                max_output_bytes,
            ),
            clock=self.clock,
            dispatchers=dispatchers,
            workers_per_dispatcher=workers,
            queue_size=queue_size,
            shutdown_timeout=shutdown_timeout,
            rules=rules,
            jitter=lambda: jitter,
        )
        dispatch.add_observer(self.finished.append)
        dispatch.startService()
        self.addCleanup(self.stop_quietly, dispatch)
        return dispatch

    def stop_quietly(self, dispatch: Delivery) -> None:
        """
        Stop ``dispatch`` at the end of a test, aborting whatever still runs.
        """
        if dispatch.running:
            dispatch.stopService()
            self.clock.advance(3600)
            self.stub.flush()

    def make_job(self, **fields: Any) -> Job:
        """
        Store a new waiting job and return it (not queued).
        """
        fields.setdefault("url", URL)
        job = Job(id=self.next_id, **fields)
        self.next_id += 1
        self.successResultOf(self.store.create(job))
        return job

    def push(self, dispatch: Delivery, **fields: Any) -> Job:
        """
        Store a new waiting job and enqueue it, as the push API does.
        """
        job = self.make_job(**fields)
        dispatch.enqueue(job)
        return job

    def get(self, job_id: int) -> Job:
        """
        Return the job as stored now.
        """
        return self.successResultOf(self.store.get(job_id))

    def stop_job(self, dispatch: Delivery, job_id: int) -> None:
        """
        Stop a job as the stop API does: the store first, then the dispatcher.
        """
        stopped = self.successResultOf(self.store.stop(job_id, int(self.clock.seconds() * 1000)))
        dispatch.cancel(job_id, stopped)

    def delivered_ids(self) -> list[int]:
        """
        Return the job ids the worker received, in arrival order.
        """
        return [int(r.header("x-hq-job-id") or 0) for r in self.worker.requests]


class OutcomeTests(DispatchTestCase):
    """
    What is recorded from the worker's answer.
    """

    def test_any_2xx_is_success(self) -> None:
        """200, 201 and 204 are success, with the code and output recorded."""
        dispatch = self.start()
        for code, body in [(200, b"fine"), (201, b"made"), (204, b"")]:
            self.worker.reply = Reply(code=code, body=body)
            job = self.push(dispatch)
            stored = self.get(job.id)
            self.assertEqual(
                (stored.status, stored.success, stored.failure, stored.status_code),
                ("success", True, False, code),
            )
            self.assertEqual((stored.err, stored.output), ("", body.decode()))
            self.assertIsNotNone(stored.started_at)
            self.assertEqual(stored.finished_at, int(T0 * 1000))

    def test_500_is_failure_with_reason_phrase(self) -> None:
        """A 500 is a failure with err 'Internal Server Error' and the body kept."""
        dispatch = self.start()
        self.worker.reply = Reply(code=500, body=b"boom")
        job = self.push(dispatch)
        stored = self.get(job.id)
        self.assertEqual(stored.status, "failure")
        self.assertEqual(stored.status_code, 500)
        self.assertEqual(stored.err, "Internal Server Error")
        self.assertEqual(stored.output, "boom")

    def test_output_is_capped_and_flagged(self) -> None:
        """A body over max_output_bytes is cut there and outputTruncated is set."""
        dispatch = self.start(max_output_bytes=10)
        self.worker.reply = Reply(body=b"0123456789abcdef" * 100)
        job = self.push(dispatch)
        stored = self.get(job.id)
        self.assertEqual(stored.output, "0123456789")
        self.assertTrue(stored.output_truncated)
        self.assertTrue(stored.success)
        self.assertEqual(stored.err, "")

    def test_output_at_the_cap_is_not_flagged(self) -> None:
        """A body of exactly max_output_bytes is kept whole, not flagged."""
        dispatch = self.start(max_output_bytes=10)
        self.worker.reply = Reply(body=b"0123456789")
        stored = self.get(self.push(dispatch).id)
        self.assertEqual((stored.output, stored.output_truncated), ("0123456789", False))

    def test_output_cut_does_not_split_a_character(self) -> None:
        """A cut inside a UTF-8 character drops that partial character."""
        dispatch = self.start(max_output_bytes=5)
        self.worker.reply = Reply(body="ééé".encode())
        stored = self.get(self.push(dispatch).id)
        self.assertEqual(stored.output, "éé")
        self.assertTrue(stored.output_truncated)

    def test_invalid_utf8_output_is_replaced(self) -> None:
        """Bytes that are not UTF-8 become U+FFFD in output."""
        dispatch = self.start()
        self.worker.reply = Reply(body=b"a\xffb")
        stored = self.get(self.push(dispatch).id)
        self.assertEqual(stored.output, "a\ufffdb")

    def test_connection_refused_is_a_failure_without_status_code(self) -> None:
        """A transport error fails the job with a short err and statusCode null."""
        http = FailingHTTP(ConnectionRefusedError())
        dispatch = self.start(http=http)
        job = self.push(dispatch)
        stored = self.get(job.id)
        self.assertEqual(stored.status, "failure")
        self.assertEqual(stored.err, "connection refused")
        self.assertIsNone(stored.status_code)
        [(method, url, kwargs)] = http.calls
        self.assertEqual((method, str(url), kwargs["allow_redirects"]), ("POST", URL, False))

    def test_failure_is_logged_at_info_with_the_job_id(self) -> None:
        """A failed job logs one info event with its id and err."""
        dispatch = self.start()
        self.worker.reply = Reply(code=503)
        with capturedLogs() as events:
            job = self.push(dispatch)
        failed = [e for e in events if e.get("err") == "Service Unavailable"]
        self.assertEqual(len(failed), 1)
        self.assertEqual(failed[0]["jobID"], job.id)
        self.assertEqual(failed[0]["log_level"].name, "info")


class TimeoutTests(DispatchTestCase):
    """
    The job timeout covers the whole exchange.
    """

    def test_timeout_fires_at_the_job_timeout(self) -> None:
        """A worker that never answers fails the job after exactly `timeout` seconds."""
        dispatch = self.start()
        self.worker.reply = Reply(hang=True)
        job = self.push(dispatch, timeout=5)
        self.clock.advance(4.9)
        self.assertTrue(self.get(job.id).running)
        self.assertEqual(dispatch.num_workers, 1)
        self.clock.advance(0.1)
        stored = self.get(job.id)
        self.assertEqual(stored.status, "failure")
        self.assertEqual(stored.err, "timed out after 5 s")
        self.assertIsNone(stored.status_code)
        self.assertEqual(stored.finished_at, int((T0 + 5) * 1000))
        self.assertEqual(dispatch.num_workers, 0)
        self.stub.flush()
        self.assertEqual(len(self.worker.lost), 1)

    def test_timeout_covers_the_body_read(self) -> None:
        """Headers in time but a body that never ends still times out."""
        dispatch = self.start()
        self.worker.reply = Reply(body=b"partial", hold_body=True)
        job = self.push(dispatch, timeout=3)
        self.stub.flush()
        self.assertTrue(self.get(job.id).running)
        self.clock.advance(3)
        stored = self.get(job.id)
        self.assertEqual(stored.err, "timed out after 3 s")
        self.assertTrue(stored.failure)
        self.assertEqual(stored.status_code, 200)
        self.assertEqual(stored.output, "partial")

    def test_zero_timeout_waits_forever(self) -> None:
        """timeout 0 sets no deadline."""
        dispatch = self.start()
        self.worker.reply = Reply(hang=True)
        job = self.push(dispatch, timeout=0)
        self.clock.advance(86400)
        self.assertTrue(self.get(job.id).running)
        self.worker.release(Reply(body=b"late"))
        self.stub.flush()
        self.assertEqual(self.get(job.id).output, "late")


class ConcurrencyTests(DispatchTestCase):
    """
    dispatchers x workers_per_dispatcher requests at most, started in FIFO order.
    """

    def test_at_most_dispatchers_times_workers_in_flight(self) -> None:
        """With 2 dispatchers x 3 workers and a hung worker, exactly 6 requests are in flight."""
        dispatch = self.start(dispatchers=2, workers=3)
        self.worker.reply = Reply(hang=True)
        for _ in range(10):
            self.push(dispatch)
        self.assertEqual(len(self.worker.requests), 6)
        self.assertEqual(dispatch.num_workers, 6)
        self.assertEqual(dispatch.in_queue, 4)
        self.assertEqual(self.worker.release(Reply(), count=1), 1)
        self.stub.flush()
        self.assertEqual(len(self.worker.requests), 7)
        self.assertEqual(dispatch.num_workers, 6)
        self.assertEqual(dispatch.in_queue, 3)

    def test_jobs_start_in_fifo_order(self) -> None:
        """Jobs start in push order, one at a time with one worker."""
        dispatch = self.start()
        self.worker.reply = Reply(hang=True)
        jobs = [self.push(dispatch) for _ in range(5)]
        for _ in jobs:
            self.worker.release(Reply())
            self.stub.flush()
        self.assertEqual(self.delivered_ids(), [job.id for job in jobs])
        self.assertEqual([j.id for j in self.finished], [job.id for job in jobs])

    def test_a_claimed_slot_takes_the_next_job_while_the_outcome_commits(self) -> None:
        """
        On a store a cluster shares, a slot whose request is over claims and
        sends the next job before the last one's outcome is committed (the
        claim and that outcome then share a transaction); the job stays held
        until recorded, and the capacity counts only requests.
        """
        store = ClaimingSlowFinishStore()
        self.store = store
        dispatch = self.start(store=store)
        self.assertTrue(dispatch.claims)
        self.worker.reply = Reply(hang=True)
        first, second, third = (self.push(dispatch) for _ in range(3))
        # One request at a time still: the slot frees when its request is over.
        self.assertEqual(self.delivered_ids(), [first.id])
        self.worker.release(Reply(), count=1)
        self.stub.flush()
        self.assertEqual(self.delivered_ids(), [first.id, second.id])
        self.assertEqual(dispatch.num_workers, 1)
        self.worker.reply = Reply()
        self.worker.release(Reply(), count=1)
        self.stub.flush()
        self.assertEqual(self.delivered_ids(), [first.id, second.id, third.id])
        self.assertEqual(len(store.pending), 3, "three outcomes not committed yet")
        self.assertEqual(self.finished, [])
        self.assertEqual(sorted(dispatch.held_ids()), [first.id, second.id, third.id])
        # One slot: every claim asked for one job.
        self.assertEqual(set(store.claims), {1})
        store.answer_all()
        self.assertEqual(sorted(job.id for job in self.finished), [first.id, second.id, third.id])
        self.assertEqual(dispatch.held_ids(), [])

    def test_a_local_slot_waits_for_the_outcome(self) -> None:
        """
        On the local store the slot is free only once the outcome is
        committed: the next job (in memory, no claim to save) waits for it.
        """
        store = SlowFinishStore()
        self.store = store
        dispatch = self.start(store=store)
        self.assertFalse(dispatch.claims)
        first, second = self.push(dispatch), self.push(dispatch)
        self.assertEqual(self.delivered_ids(), [first.id])
        store.answer_all()
        self.assertEqual(self.delivered_ids(), [first.id, second.id])

    def test_stored_jobs_load_in_id_order_at_start(self) -> None:
        """At start the waiting jobs in the store are delivered in id order."""
        for job_id in (3, 1, 2):
            self.successResultOf(self.store.create(Job(id=job_id, url=URL)))
        self.successResultOf(self.store.create(Job(id=4, url=URL, state=JobState.FINISHED)))
        self.start()
        self.assertEqual(self.delivered_ids(), [1, 2, 3])

    def test_enqueue_before_start_is_loaded_by_the_start(self) -> None:
        """A job enqueued before startService is delivered once, by the start-up feed."""
        dispatch = Delivery(
            store=self.store,
            worker=WorkerClient(self.stub.http, self.clock, "HQ/test", 100),
            clock=self.clock,
            dispatchers=1,
            workers_per_dispatcher=1,
            queue_size=10,
            shutdown_timeout=1,
        )
        dispatch.enqueue(self.make_job())
        dispatch.startService()
        self.addCleanup(dispatch.stopService)
        self.assertEqual(self.delivered_ids(), [1])


class StopTests(DispatchTestCase):
    """
    Stopping a job: never sent when waiting, aborted when running; canceled either way.
    """

    def test_stop_waiting_job_is_canceled_without_request(self) -> None:
        """A stopped queued job leaves the queue and is never sent."""
        dispatch = self.start()
        self.worker.reply = Reply(hang=True)
        first = self.push(dispatch)
        second = self.push(dispatch)
        self.assertEqual(dispatch.in_queue, 1)
        self.stop_job(dispatch, second.id)
        self.assertEqual(dispatch.in_queue, 0)
        self.worker.release(Reply())
        self.stub.flush()
        self.assertEqual(self.delivered_ids(), [first.id])
        stored = self.get(second.id)
        self.assertEqual(stored.status, "canceled")
        self.assertIsNone(stored.started_at)

    def test_stop_running_job_aborts_it_as_canceled(self) -> None:
        """A stopped running job's request is aborted and the job ends canceled."""
        dispatch = self.start()
        self.worker.reply = Reply(hang=True)
        job = self.push(dispatch, timeout=0)
        self.assertEqual(self.get(job.id).status, "running")
        self.stop_job(dispatch, job.id)
        self.assertEqual(self.get(job.id).status, "canceled")
        stored = self.get(job.id)
        self.assertEqual((stored.canceled, stored.failure, stored.err), (True, False, "stopped"))
        self.assertEqual(dispatch.num_workers, 0)
        self.assertEqual([j.id for j in self.finished], [job.id])
        self.stub.flush()
        self.assertEqual(len(self.worker.lost), 1)

    def test_stop_running_job_frees_its_slot(self) -> None:
        """After a stop the next job starts."""
        dispatch = self.start()
        self.worker.reply = Reply(hang=True)
        first = self.push(dispatch)
        second = self.push(dispatch)
        self.stop_job(dispatch, first.id)
        self.assertEqual(self.delivered_ids(), [first.id, second.id])

    def test_stop_while_the_store_starts_it_is_never_sent(self) -> None:
        """A job stopped after the store started it, before the request, is not sent."""
        store = SlowStartStore()
        self.store = store
        dispatch = self.start(store=store)
        job = self.push(dispatch)
        self.assertEqual(len(store.pending), 1)  # handed out; the store's answer is pending
        self.stop_job(dispatch, job.id)  # the store has it running: only marked canceled
        store.answer_all()
        self.assertEqual(self.worker.requests, [])
        stored = self.get(job.id)
        self.assertEqual((stored.status, stored.err), ("canceled", "stopped"))
        self.assertEqual([j.id for j in self.finished], [job.id])

    def test_stop_before_the_store_starts_it_is_skipped(self) -> None:
        """A job stopped before the store started it is skipped silently."""
        store = SlowStartStore(start_late=True)
        self.store = store
        dispatch = self.start(store=store)
        job = self.push(dispatch)
        self.stop_job(dispatch, job.id)
        store.answer_all()
        self.assertEqual(self.worker.requests, [])
        self.assertEqual(self.get(job.id).status, "canceled")
        # Counted once, by the stop; the skipped run adds nothing.
        self.assertEqual([finished.id for finished in self.finished], [job.id])
        # The dispatcher slot is free again.
        self.push(dispatch)
        self.assertEqual(len(store.pending), 1)


class BacklogTests(DispatchTestCase):
    """
    The in-memory queue bounds memory; the backlog stays in the store.
    """

    def test_backlog_bigger_than_the_queue_is_delivered_fully_in_order(self) -> None:
        """25 jobs through a queue of 4 are all delivered, in id order."""
        dispatch = self.start(queue_size=4)
        self.worker.reply = Reply(hang=True)
        jobs = [self.push(dispatch) for _ in range(25)]
        self.assertLessEqual(dispatch.in_queue, 4)
        for _ in range(30):
            self.assertLessEqual(dispatch.in_queue, 4)
            self.worker.release(Reply())
            self.stub.flush()
        self.assertEqual(self.delivered_ids(), [job.id for job in jobs])
        self.assertTrue(all(self.get(job.id).success for job in jobs))

    def test_restart_of_an_old_id_while_backlogged_is_delivered(self) -> None:
        """A job restarted in place while the queue is full is found by the feed."""
        dispatch = self.start(queue_size=2)
        old = self.push(dispatch)
        self.assertTrue(self.get(old.id).success)
        self.worker.reply = Reply(hang=True)
        later = [self.push(dispatch) for _ in range(6)]
        restarted = self.successResultOf(self.store.restart(old.id))
        dispatch.enqueue(restarted)
        for _ in range(10):
            self.worker.release(Reply())
            self.stub.flush()
        self.assertEqual(
            sorted(self.delivered_ids()), sorted([old.id, old.id] + [j.id for j in later])
        )
        # Restarted in place: the attempts count starts afresh (SPEC §11).
        self.assertEqual(self.get(old.id).attempts, 1)
        self.assertTrue(all(self.get(j.id).success for j in [old, *later]))

    def test_job_enqueued_while_the_feed_reads_is_not_lost(self) -> None:
        """A job pushed while a backlog read is in flight is loaded by a further read."""
        store = SlowFeedStore()
        self.store = store
        dispatch = self.start(store=store, queue_size=4)
        self.worker.reply = Reply(hang=True)
        self.assertEqual(len(store.pending), 1)  # the start-up read, which saw no job
        first = self.push(dispatch)  # backlogged: left to the feed, even with a dispatcher idle
        second = self.push(dispatch)
        self.assertEqual(self.delivered_ids(), [])
        store.answer_all()
        self.assertEqual(len(store.pending), 1)  # read again: the first read was short but stale
        store.answer_all()
        self.assertEqual(self.delivered_ids(), [first.id])
        self.assertEqual(dispatch.in_queue, 1)
        self.worker.release(Reply())
        self.stub.flush()
        self.assertEqual(self.delivered_ids(), [first.id, second.id])

    def test_push_during_the_start_up_feed_waits_for_older_stored_jobs(self) -> None:
        """A job pushed while the backlog is being read is delivered after the older ones."""
        store = SlowFeedStore()
        self.store = store
        for _ in range(3):
            self.make_job()
        dispatch = self.start(store=store, queue_size=10)
        self.assertEqual(len(store.pending), 1)  # the start-up read of jobs 1-3, in flight
        newest = self.push(dispatch)  # the dispatcher is idle, but older jobs come first
        self.assertEqual(self.worker.requests, [])
        store.answer_all()
        self.assertEqual(self.delivered_ids(), [1, 2, 3])
        store.answer_all()  # the read that finds the pushed job
        self.assertEqual(self.delivered_ids(), [1, 2, 3, newest.id])
        self.assertTrue(all(self.get(job_id).success for job_id in (1, 2, 3, newest.id)))
        self.assertEqual(store.pending, [])

    def test_push_during_a_refill_waits_for_older_stored_jobs(self) -> None:
        """A job pushed to an idle dispatcher while a refill is read is delivered after it."""
        store = SlowFeedStore()
        self.store = store
        dispatch = self.start(store=store, queue_size=2)
        store.answer_all()  # the start-up read: an empty store, no backlog
        self.worker.reply = Reply(hang=True)
        jobs = [self.push(dispatch) for _ in range(6)]  # 1 runs, 2 queued, 3 in the store
        for _ in range(3):
            self.worker.release(Reply())
            self.stub.flush()
        self.assertEqual(self.delivered_ids(), [job.id for job in jobs[:3]])
        self.assertEqual((len(store.pending), dispatch.in_queue), (1, 0))  # idle, refill read
        jobs.append(self.push(dispatch))
        self.assertEqual(self.delivered_ids(), [job.id for job in jobs[:3]])
        for _ in range(10):
            store.answer_all()
            self.worker.release(Reply())
            self.stub.flush()
        self.assertEqual(self.delivered_ids(), [job.id for job in jobs])
        self.assertTrue(all(self.get(job.id).success for job in jobs))

    def test_job_stored_during_a_read_that_returns_later_keys_is_not_skipped(self) -> None:
        """
        A read in flight returns a job that sorts after one stored meanwhile
        (a retry due later than the push's time): the pushed job is still read.
        """
        store = SlowFeedStore()
        self.store = store
        dispatch = self.start(store=store)
        store.answer_all()  # the start-up read: an empty store
        start = int(T0 * 1000)
        retried = self.push(dispatch, run_at=start + 100)
        self.clock.advance(0.1)  # its due time: the feed reads, and sees it
        self.assertEqual(len(store.pending), 1)
        # Stored once that read has looked, due before the job it will return.
        pushed = self.push(dispatch, run_at=start + 50)
        for _ in range(3):
            store.answer_all()
            self.stub.flush()
        self.assertEqual(self.delivered_ids(), [retried.id, pushed.id])
        self.assertTrue(self.get(pushed.id).success)

    def test_stop_service_waits_for_a_backlog_read(self) -> None:
        """stopService fires once a backlog read in flight has answered."""
        store = SlowFeedStore()
        dispatch = self.start(store=store)
        stopped = dispatch.stopService()
        self.assertNoResult(stopped)
        store.answer_all()
        self.successResultOf(stopped)

    def test_feed_recovers_from_store_errors(self) -> None:
        """A failing backlog read is logged and tried again later, not fatal."""
        store = FlakyFeedStore(failures=2)
        for _ in range(3):
            job = Job(id=self.next_id, url=URL)
            self.next_id += 1
            self.successResultOf(store.create(job))
        self.store = store
        with capturedLogs() as events:
            self.start(store=store)
        self.assertEqual(self.worker.requests, [])
        self.assertTrue(any(e.get("log_failure") for e in events))
        self.clock.advance(STORE_RETRY_SECONDS)
        self.assertEqual(self.worker.requests, [])
        self.clock.advance(STORE_RETRY_SECONDS)
        self.assertEqual(self.delivered_ids(), [1, 2, 3])
        self.assertEqual(len(self.flushLoggedErrors(StoreUnavailable)), 2)

    def test_store_start_failure_is_retried_holding_the_slot(self) -> None:
        """A job the store cannot start is tried again each second, keeping its slot."""
        dispatch = self.start()
        jobs = [self.make_job() for _ in range(3)]
        self.store.writable = False
        for job in jobs:
            dispatch.enqueue(job)
        self.clock.advance(STORE_RETRY_SECONDS)
        self.assertEqual(self.worker.requests, [])
        self.assertEqual(dispatch.in_queue, 2)  # the others wait for the slot
        self.assertEqual(len(self.flushLoggedErrors(StoreUnavailable)), 1)
        self.store.writable = True
        self.clock.advance(STORE_RETRY_SECONDS)
        self.assertEqual(self.delivered_ids(), [job.id for job in jobs])
        self.assertTrue(all(self.get(job.id).success for job in jobs))

    def test_stop_service_ends_a_start_retry(self) -> None:
        """stopService does not wait for a job the store cannot start; it stays waiting."""
        dispatch = self.start()
        job = self.make_job()
        self.store.writable = False
        dispatch.enqueue(job)
        self.successResultOf(dispatch.stopService())
        self.flushLoggedErrors(StoreUnavailable)
        self.assertTrue(self.get(job.id).waiting)

    def test_finish_failure_is_retried(self) -> None:
        """An outcome the store cannot record now is recorded on a later try."""
        store = FlakyFinishStore(failures=1)
        self.store = store
        dispatch = self.start(store=store)
        job = self.push(dispatch)
        self.assertTrue(self.get(job.id).running)
        self.assertEqual(len(self.flushLoggedErrors(StoreUnavailable)), 1)
        self.clock.advance(STORE_RETRY_SECONDS)
        self.assertTrue(self.get(job.id).success)
        self.assertEqual([j.id for j in self.finished], [job.id])


class OrphanTests(DispatchTestCase):
    """
    A job left running in the store with nothing delivering it can still end.
    """

    def test_stop_after_the_outcome_was_given_up_records_it_canceled(self) -> None:
        """A job whose outcome could not be recorded ends canceled when stopped."""
        store = BrokenFinishStore(failures=FINISH_ATTEMPTS)
        self.store = store
        dispatch = self.start(store=store)
        job = self.push(dispatch)
        for attempt in range(1, FINISH_ATTEMPTS):
            self.clock.advance(STORE_RETRY_SECONDS * attempt)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), FINISH_ATTEMPTS)
        self.assertTrue(self.get(job.id).running)  # given up: nothing delivers it now
        self.assertEqual(self.finished, [])
        self.stop_job(dispatch, job.id)
        stored = self.get(job.id)
        self.assertEqual(
            (stored.status, stored.canceled, stored.failure, stored.err),
            ("canceled", True, False, "stopped"),
        )
        self.assertEqual([j.id for j in self.finished], [job.id])
        now_ms = int(self.clock.seconds() * 1000)
        self.assertEqual(sum(b.canceled for b in dispatch.history(now_ms)), 1)
        self.assertEqual(len(self.worker.requests), 1)  # not sent again

    def test_orphan_stop_that_cannot_be_recorded_is_logged(self) -> None:
        """If recording the stop of an orphan fails too, it is logged, not raised."""
        store = BrokenFinishStore(failures=2 * FINISH_ATTEMPTS)
        self.store = store
        dispatch = self.start(store=store)
        job = self.push(dispatch)
        for attempt in range(1, FINISH_ATTEMPTS):
            self.clock.advance(STORE_RETRY_SECONDS * attempt)
        self.stop_job(dispatch, job.id)
        for attempt in range(1, FINISH_ATTEMPTS):
            self.clock.advance(STORE_RETRY_SECONDS * attempt)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2 * FINISH_ATTEMPTS)
        self.assertEqual(self.get(job.id).status, "canceling")
        self.assertEqual(self.finished, [])
        # The slot and the service are fine: the next job runs and the stop ends.
        self.assertTrue(self.get(self.push(dispatch).id).success)
        self.successResultOf(dispatch.stopService())

    def test_stop_service_waits_for_an_orphan_being_recorded(self) -> None:
        """stopService waits while the stop of an orphan is being recorded."""
        store = BrokenFinishStore(failures=FINISH_ATTEMPTS)
        self.store = store
        dispatch = self.start(store=store)
        job = self.push(dispatch)
        for attempt in range(1, FINISH_ATTEMPTS):
            self.clock.advance(STORE_RETRY_SECONDS * attempt)
        self.flushLoggedErrors(RuntimeError)
        store.slow = True
        self.stop_job(dispatch, job.id)
        stopped = dispatch.stopService()
        self.assertNoResult(stopped)
        store.answer_all()
        self.successResultOf(stopped)
        self.assertEqual(self.get(job.id).status, "canceled")

    def test_unexpected_error_in_a_run_records_a_failure(self) -> None:
        """A bug while delivering is logged and the job fails with an internal error."""
        worker = BrokenOnceWorker(self.stub.http, self.clock, "HQ/test", 1024)
        dispatch = self.start(worker=worker)
        job = self.push(dispatch)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        stored = self.get(job.id)
        self.assertEqual(
            (stored.status, stored.err, stored.status_code, stored.output),
            ("failure", INTERNAL_ERROR, None, ""),
        )
        self.assertNotIn("Traceback", stored.err)
        self.assertNotIn("a bug in HQ", stored.err)
        self.assertEqual([j.id for j in self.finished], [job.id])
        # The slot is free again.
        self.assertTrue(self.get(self.push(dispatch).id).success)


class RestartTests(DispatchTestCase):
    """
    A job restarted in place while its previous run is still ending runs again.
    """

    def test_restart_while_the_outcome_is_being_recorded_runs_again(self) -> None:
        """An enqueue of an id whose run has not ended yet is kept until it ends."""
        store = SlowFinishStore()
        self.store = store
        dispatch = self.start(store=store)
        job = self.push(dispatch)
        self.assertEqual(len(store.pending), 1)  # recorded, but the answer is late
        restarted = self.successResultOf(store.restart(job.id))
        dispatch.enqueue(restarted)
        self.assertEqual(len(self.worker.requests), 1)
        store.answer_all()
        self.assertEqual(self.delivered_ids(), [job.id, job.id])
        store.answer_all()
        self.assertEqual(self.get(job.id).attempts, 1)
        self.assertEqual(len(self.finished), 2)


class ShutdownTests(DispatchTestCase):
    """
    stopService waits up to shutdown_timeout, then aborts without recording.
    """

    def test_stop_service_with_nothing_running_fires_at_once(self) -> None:
        """An idle dispatcher stops at once."""
        dispatch = self.start()
        self.successResultOf(dispatch.stopService())

    def test_stop_service_waits_for_a_running_job(self) -> None:
        """A job that ends within shutdown_timeout is recorded, then the stop fires."""
        dispatch = self.start(shutdown_timeout=10)
        self.worker.reply = Reply(hang=True)
        job = self.push(dispatch)
        queued = self.push(dispatch)
        stopped = dispatch.stopService()
        self.assertNoResult(stopped)
        self.clock.advance(5)
        self.worker.release(Reply(body=b"done"))
        self.stub.flush()
        self.successResultOf(stopped)
        self.assertTrue(self.get(job.id).success)
        self.assertEqual(self.get(queued.id).status, "waiting")
        self.assertEqual(self.delivered_ids(), [job.id])

    def test_stop_service_aborts_after_timeout_leaving_job_running(self) -> None:
        """After shutdown_timeout the request is aborted and the job stays RUNNING."""
        dispatch = self.start(shutdown_timeout=10, workers=2)
        self.worker.reply = Reply(hang=True)
        jobs = [self.push(dispatch, timeout=0) for _ in range(2)]
        stopped = dispatch.stopService()
        self.clock.advance(9.9)
        self.assertNoResult(stopped)
        self.assertEqual(dispatch.num_workers, 2)
        self.clock.advance(0.1)
        self.successResultOf(stopped)
        for job in jobs:
            stored = self.get(job.id)
            self.assertEqual(stored.state, JobState.RUNNING)
            self.assertFalse(stored.canceled or stored.failure or stored.success)
        self.assertEqual(self.finished, [])
        self.assertEqual(dispatch.num_workers, 0)
        self.stub.flush()
        self.assertEqual(len(self.worker.lost), 2)
        # The next start's recovery makes them waiting again.
        self.successResultOf(self.store.recover(0))
        self.assertTrue(all(self.get(job.id).waiting for job in jobs))

    def test_no_job_starts_while_stopping(self) -> None:
        """Jobs enqueued after stopService stay waiting in the store."""
        dispatch = self.start()
        self.worker.reply = Reply(hang=True)
        self.push(dispatch)
        dispatch.stopService()
        late = self.push(dispatch)
        self.worker.release(Reply())
        self.stub.flush()
        self.assertEqual(len(self.worker.requests), 1)
        self.assertTrue(self.get(late.id).waiting)


class ObserverAndHistoryTests(DispatchTestCase):
    """
    Observers see every finished job; the history counts them per 10 s.
    """

    def test_observer_gets_the_recorded_job(self) -> None:
        """The observer is called with the job as the store recorded it."""
        dispatch = self.start()
        job = self.push(dispatch)
        self.assertEqual(self.finished, [self.get(job.id)])

    def test_failing_observer_does_not_stop_delivery(self) -> None:
        """An observer that raises is logged; later jobs still run and others are told."""
        dispatch = self.start()

        def broken(job: Job) -> None:
            raise RuntimeError("observer bug")

        dispatch.add_observer(broken)
        self.push(dispatch)
        self.push(dispatch)
        self.assertEqual(len(self.finished), 2)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)

    def test_history_counts_finished_jobs_per_bucket(self) -> None:
        """Success, failure and canceled land in the 10 s bucket of their finish time."""
        dispatch = self.start()
        self.push(dispatch)
        self.clock.advance(10)
        self.worker.reply = Reply(code=500)
        self.push(dispatch)
        self.push(dispatch)
        self.worker.reply = Reply(hang=True)
        running = self.push(dispatch)
        self.stop_job(dispatch, running.id)
        now_ms = int(self.clock.seconds() * 1000)
        buckets = dispatch.history(now_ms)
        self.assertEqual(len(buckets), BUCKETS)
        last = now_ms // BUCKET_MS * BUCKET_MS
        self.assertEqual(buckets[-1], HistoryBucket(start=last, success=0, failure=2, canceled=1))
        self.assertEqual(buckets[-2], HistoryBucket(start=last - BUCKET_MS, success=1))
        self.assertEqual(buckets[0].start, last - (BUCKETS - 1) * BUCKET_MS)
        self.assertEqual(sum(b.success + b.failure + b.canceled for b in buckets[:-2]), 0)

    def test_stopped_waiting_job_is_counted_and_observed(self) -> None:
        """A waiting job finished by a stop is in the history and told to observers."""
        dispatch = self.start(workers=1)
        self.worker.reply = Reply(hang=True)
        self.push(dispatch)
        waiting = self.push(dispatch)
        self.stop_job(dispatch, waiting.id)
        self.assertEqual([job.id for job in self.finished], [waiting.id])
        now_ms = int(self.clock.seconds() * 1000)
        self.assertEqual(sum(b.canceled for b in dispatch.history(now_ms)), 1)


# -- store wrappers for races and errors -----------------------------------------


class SlowStartStore(MemoryStore):
    """
    A MemoryStore whose ``start`` answers only on :meth:`answer_all`.

    By default the change happens at once and only the answer is late (the
    store has the job running); with ``start_late`` the change happens late too.
    """

    def __init__(self, start_late: bool = False) -> None:
        super().__init__()
        self.start_late = start_late
        self.pending: list[tuple[Deferred[Job | None], int, int]] = []
        self.results: list[Job | None] = []

    def start(self, job_id: int, now: int, known: Job | None = None) -> Deferred[Job | None]:
        d: Deferred[Job | None] = Deferred()
        if not self.start_late:
            self.results.append(self.successResultOf(super().start(job_id, now)))
        self.pending.append((d, job_id, now))
        return d

    @staticmethod
    def successResultOf(d: Deferred[Any]) -> Any:
        result: list[Any] = []
        d.addBoth(result.append)
        return result[0]

    def answer_all(self) -> None:
        pending, self.pending = self.pending, []
        for d, job_id, now in pending:
            if self.start_late:
                d.callback(self.successResultOf(super().start(job_id, now)))
            else:
                d.callback(self.results.pop(0))


class SlowFinishStore(MemoryStore):
    """
    A MemoryStore that records outcomes at once but answers ``finish`` only on
    :meth:`answer_all`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[tuple[Deferred[Job | None], Job | None]] = []

    def finish(
        self,
        job_id: int,
        outcome: Any,
        attempt: Any = None,
        callback_id: Any = None,
        known: Job | None = None,
    ) -> Deferred[Job | None]:
        seen: list[Job | None] = []
        super().finish(job_id, outcome, attempt, callback_id, known).addCallback(seen.append)
        d: Deferred[Job | None] = Deferred()
        self.pending.append((d, seen[0]))
        return d

    def answer_all(self) -> None:
        pending, self.pending = self.pending, []
        for d, job in pending:
            d.callback(job)


@implementer(IClaimingStore)
class ClaimingSlowFinishStore(SlowFinishStore):
    """
    A :class:`SlowFinishStore` that the delivery claims jobs from, as from a
    store a cluster shares: a claim marks the due waiting jobs running, in
    due order, at most ``limit`` (the other cluster calls are not used here).
    """

    def __init__(self) -> None:
        super().__init__()
        self.claims: list[int] = []

    def claim(self, now: int, limit: int, caps: Any = None) -> Deferred[list[Job]]:
        self.claims.append(limit)
        due = sorted(
            (job for job in self._jobs.values() if job.waiting and job.due_at <= now),
            key=lambda job: (job.due_at, job.id),
        )
        claimed = [self.successful(self.start(job.id, now)) for job in due[:limit]]
        return succeed([job for job in claimed if job is not None])

    @staticmethod
    def successful(d: Deferred[Job | None]) -> Job | None:
        result: list[Job | None] = []
        d.addCallback(result.append)
        return result[0]


class SlowFeedStore(MemoryStore):
    """
    A MemoryStore whose backlog reads see the store when called but answer
    only on :meth:`answer_all` (as a store on another thread).
    """

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[tuple[Deferred[list[Job]], list[Job]]] = []

    def waiting_jobs(self, after: Any, now: int, limit: int) -> Deferred[list[Job]]:
        seen: list[list[Job]] = []
        super().waiting_jobs(after, now, limit).addCallback(seen.append)
        d: Deferred[list[Job]] = Deferred()
        self.pending.append((d, seen[0]))
        return d

    def answer_all(self) -> None:
        pending, self.pending = self.pending, []
        for d, jobs in pending:
            d.callback(jobs)


class FlakyFeedStore(MemoryStore):
    """
    A MemoryStore whose first ``failures`` backlog reads fail.
    """

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def waiting_jobs(self, after: Any, now: int, limit: int) -> Deferred[list[Job]]:
        if self.failures:
            self.failures -= 1
            return fail(StoreUnavailable("disk on fire"))
        return super().waiting_jobs(after, now, limit)


class FlakyFinishStore(MemoryStore):
    """
    A MemoryStore whose first ``failures`` finishes fail.
    """

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def finish(
        self,
        job_id: int,
        outcome: Any,
        attempt: Any = None,
        callback_id: Any = None,
        known: Job | None = None,
    ) -> Deferred[Job | None]:
        if self.failures:
            self.failures -= 1
            return fail(StoreUnavailable("disk full"))
        return super().finish(job_id, outcome, attempt, callback_id, known)


class BrokenFinishStore(MemoryStore):
    """
    A MemoryStore whose first ``failures`` finishes fail with an unexpected
    error (not a storage one); with ``slow`` set, ``finish`` records at once
    but answers only on :meth:`answer_all`.
    """

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.slow = False
        self.pending: list[tuple[Deferred[Job | None], Job | None]] = []

    def finish(
        self,
        job_id: int,
        outcome: Any,
        attempt: Any = None,
        callback_id: Any = None,
        known: Job | None = None,
    ) -> Deferred[Job | None]:
        if self.failures:
            self.failures -= 1
            return fail(RuntimeError("store bug"))
        if not self.slow:
            return super().finish(job_id, outcome, attempt, callback_id, known)
        seen: list[Job | None] = []
        super().finish(job_id, outcome, attempt, callback_id, known).addCallback(seen.append)
        d: Deferred[Job | None] = Deferred()
        self.pending.append((d, seen[0]))
        return d

    def answer_all(self) -> None:
        pending, self.pending = self.pending, []
        for d, job in pending:
            d.callback(job)


class LoopbackTests(TestCase):
    """
    The production client (make_http_client) against a real worker on 127.0.0.1.
    """

    def setUp(self) -> None:
        self.worker = FakeWorker()
        self.port = reactor.listenTCP(0, Site(self.worker), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(self.pool.closeCachedConnections)
        self.store = MemoryStore()
        self.dispatch = Delivery(
            store=self.store,
            worker=WorkerClient(make_http_client(reactor, self.pool), reactor, "HQ/test", 1000),
            clock=reactor,
            dispatchers=1,
            workers_per_dispatcher=2,
            queue_size=10,
            shutdown_timeout=1,
        )
        self.finished: dict[int, Deferred[Job]] = {}
        self.dispatch.add_observer(lambda job: self.finished.pop(job.id).callback(job))
        self.dispatch.startService()
        self.addCleanup(self.dispatch.stopService)

    async def deliver(self, job_id: int, url: str, **fields: Any) -> Job:
        """
        Push a job and return it once finished.
        """
        job = Job(id=job_id, url=url, **fields)
        await self.store.create(job)
        self.finished[job_id] = Deferred()
        self.dispatch.enqueue(job)
        return await self.finished[job_id]

    def url(self, path: str) -> str:
        """
        Return the worker's URL for ``path``.
        """
        return f"http://127.0.0.1:{self.port.getHost().port}{path}"

    async def test_delivers_over_tcp_with_keep_alive(self) -> None:
        """Two jobs reach a real worker on one kept-alive connection, and succeed."""
        self.worker.reply = Reply(body=b"thanks")
        first = await self.deliver(1, self.url("/a"), payload='{"n":1}')
        second = await self.deliver(2, self.url("/b"))
        self.assertEqual((first.status, first.output), ("success", "thanks"))
        self.assertEqual(second.status, "success")
        a, b = self.worker.requests
        self.assertEqual((a.body, a.header("content-length")), (b'{"n":1}', "7"))
        self.assertEqual((b.body, b.header("content-length")), (b"", "0"))
        self.assertEqual(a.peer, b.peer)

    async def test_big_body_is_cut_over_tcp(self) -> None:
        """A body far over the cap is cut at max_output_bytes and the job still succeeds."""
        self.worker.reply = Reply(body=b"x" * 5_000_000)
        job = await self.deliver(1, self.url("/big"))
        self.assertEqual(
            (job.status, len(job.output), job.output_truncated), ("success", 1000, True)
        )

    async def test_closed_port_is_connection_refused(self) -> None:
        """A worker port with nobody listening gives 'connection refused'."""
        closed = reactor.listenTCP(0, Site(self.worker), interface="127.0.0.1")
        number = closed.getHost().port
        await closed.stopListening()
        job = await self.deliver(1, f"http://127.0.0.1:{number}/")
        self.assertEqual(
            (job.status, job.err, job.status_code), ("failure", "connection refused", None)
        )


class RetryTests(DispatchTestCase):
    """
    Failed attempts are tried again after the backoff, at their due time (SPEC §11).
    """

    def test_a_failure_is_retried_after_the_backoff_until_success(self) -> None:
        """500, 500, then 200: three attempts, 1 s then 2 s apart (full jitter)."""
        dispatch = self.start()
        self.worker.reply = Reply(code=500)
        job = self.push(dispatch, retries=2)
        self.assertEqual(len(self.worker.requests), 1)
        stored = self.get(job.id)
        self.assertEqual((stored.status_at(self.now()), stored.status_code), ("scheduled", 500))
        self.clock.advance(0.999)
        self.assertEqual(len(self.worker.requests), 1)
        self.clock.advance(0.001)
        self.assertEqual(len(self.worker.requests), 2)
        self.worker.reply = Reply(code=200)
        self.clock.advance(2)
        self.assertEqual(len(self.worker.requests), 3)
        done = self.get(job.id)
        self.assertEqual((done.status, done.attempts), ("success", 3))
        self.assertEqual(self.delivered_ids(), [job.id] * 3)
        history = self.successResultOf(self.store.attempts(job.id))
        self.assertEqual([a.status_code for a in history], [500, 500, 200])
        self.assertEqual([j.id for j in self.finished], [job.id])

    def test_the_last_failure_ends_the_job(self) -> None:
        """After retries + 1 attempts the job is a failure."""
        dispatch = self.start(rules=RetryRules(min_backoff=1, max_backoff=1))
        self.worker.reply = Reply(code=500)
        job = self.push(dispatch, retries=1)
        self.clock.advance(1)
        self.clock.advance(60)
        done = self.get(job.id)
        self.assertEqual((done.status, done.attempts, len(self.worker.requests)), ("failure", 2, 2))

    def test_no_retries_is_one_attempt_as_in_go(self) -> None:
        """retries 0: a failure is final at once."""
        dispatch = self.start()
        self.worker.reply = Reply(code=500)
        job = self.push(dispatch)
        self.assertEqual(self.get(job.id).status, "failure")

    def test_retry_after_seconds_on_503_waits_at_least_that(self) -> None:
        """A 503 with Retry-After: 5 waits 5 s, not the 0.5 s backoff."""
        dispatch = self.start(jitter=0.0)
        self.worker.reply = Reply(code=503, headers={"Retry-After": "5"})
        self.push(dispatch, retries=1)
        self.clock.advance(4.9)
        self.assertEqual(len(self.worker.requests), 1)
        self.clock.advance(0.1)
        self.assertEqual(len(self.worker.requests), 2)

    def test_garbage_retry_after_is_ignored(self) -> None:
        """A Retry-After that is neither seconds nor a date changes nothing."""
        dispatch = self.start(jitter=0.0)
        self.worker.reply = Reply(code=429, headers={"Retry-After": "soon, promise"})
        self.push(dispatch, retries=1)
        self.clock.advance(0.5)
        self.assertEqual(len(self.worker.requests), 2)

    def test_retry_after_is_capped_at_the_max_backoff(self) -> None:
        """A Retry-After of a day waits at most retry_max_backoff."""
        dispatch = self.start(rules=RetryRules(min_backoff=1, max_backoff=30))
        self.worker.reply = Reply(code=429, headers={"Retry-After": "86400"})
        self.push(dispatch, retries=1)
        self.clock.advance(30)
        self.assertEqual(len(self.worker.requests), 2)

    def test_a_connection_error_is_retried(self) -> None:
        """A transport error is a failure like any other, and retried."""
        dispatch = self.start(http=FailingHTTP(ConnectionRefusedError()))
        job = self.push(dispatch, retries=1)
        self.assertEqual(self.get(job.id).attempts, 1)
        self.clock.advance(1)
        done = self.get(job.id)
        self.assertEqual(
            (done.status, done.attempts, done.err), ("failure", 2, "connection refused")
        )

    def test_a_stopped_attempt_is_not_retried(self) -> None:
        """A stop aborts the attempt and ends the job canceled, retries left or not."""
        dispatch = self.start()
        self.worker.reply = Reply(hang=True)
        job = self.push(dispatch, retries=5)
        self.stop_job(dispatch, job.id)
        self.stub.flush()
        self.clock.advance(3600)
        self.assertEqual((self.get(job.id).status, len(self.worker.requests)), ("canceled", 1))

    def test_stop_while_a_retry_is_pending_cancels_at_once(self) -> None:
        """A scheduled job is canceled by a stop without another request."""
        dispatch = self.start()
        self.worker.reply = Reply(code=500)
        job = self.push(dispatch, retries=3)
        self.stop_job(dispatch, job.id)
        self.assertEqual(self.get(job.id).status, "canceled")
        self.clock.advance(3600)
        self.assertEqual(len(self.worker.requests), 1)
        self.assertEqual([j.status for j in self.finished], ["canceled"])

    def test_a_bug_in_the_decision_records_a_failure(self) -> None:
        """If deciding after an attempt raises, the job fails with an internal error, not stuck."""
        dispatch = self.start(rules=cast(RetryRules, object()))  # no backoff settings: a bug
        self.worker.reply = Reply(code=500)
        job = self.push(dispatch, retries=1)
        self.assertEqual(len(self.flushLoggedErrors(AttributeError)), 1)
        stored = self.get(job.id)
        self.assertEqual((stored.status, stored.err), ("failure", INTERNAL_ERROR))
        self.assertEqual([j.id for j in self.finished], [job.id])

    def test_attempt_observers_hear_each_attempt(self) -> None:
        """Every recorded attempt is told with its retry time, None for the last."""
        dispatch = self.start()
        seen: list[tuple[int, int | None]] = []
        dispatch.add_attempt_observer(lambda a, at: seen.append((a.attempt, at)))
        self.worker.reply = Reply(code=500)
        self.push(dispatch, retries=1)
        self.clock.advance(1)
        start = int(T0 * 1000)
        self.assertEqual(seen, [(1, start + 1000), (2, None)])

    def now(self) -> int:
        return int(self.clock.seconds() * 1000)


class DueTimeTests(DispatchTestCase):
    """
    Jobs due later wait in the store and start at their due time.
    """

    def test_a_delayed_job_starts_at_its_due_time_not_before(self) -> None:
        """run_at 10 s ahead: nothing is sent before, it is sent at 10 s."""
        dispatch = self.start()
        due = int(T0 * 1000) + 10_000
        job = self.push(dispatch, run_at=due)
        self.clock.advance(9.999)
        self.assertEqual(self.worker.requests, [])
        self.clock.advance(0.001)
        self.assertEqual(self.delivered_ids(), [job.id])

    def test_waiting_for_a_due_time_sets_one_timer_no_polling(self) -> None:
        """With one job due in an hour, the engine keeps one timer, at that hour."""
        dispatch = self.start()
        self.push(dispatch, run_at=int(T0 * 1000) + 3_600_000)
        calls = self.clock.getDelayedCalls()
        self.assertEqual([round(c.getTime() - self.clock.seconds()) for c in calls], [3600])

    def test_a_stored_delayed_job_is_found_at_start(self) -> None:
        """A job due later that is only in the store (a restart) starts at its time."""
        job = self.make_job(run_at=int(T0 * 1000) + 5_000)
        self.start()
        self.clock.advance(4.9)
        self.assertEqual(self.worker.requests, [])
        self.clock.advance(0.1)
        self.assertEqual(self.delivered_ids(), [job.id])

    def test_due_jobs_start_in_due_time_order(self) -> None:
        """Two delayed jobs start in order of due time, not of id."""
        dispatch = self.start()
        start = int(T0 * 1000)
        late = self.push(dispatch, run_at=start + 2_000)
        early = self.push(dispatch, run_at=start + 1_000)
        self.clock.advance(5)
        self.assertEqual(self.delivered_ids(), [early.id, late.id])

    def test_an_earlier_offer_moves_the_timer_forward(self) -> None:
        """A job due sooner than the one waited for is not held up by it."""
        dispatch = self.start()
        start = int(T0 * 1000)
        self.push(dispatch, run_at=start + 60_000)
        soon = self.push(dispatch, run_at=start + 1_000)
        self.clock.advance(1)
        self.assertEqual(self.delivered_ids(), [soon.id])

    def test_a_due_job_behind_newer_pushes_is_not_skipped(self) -> None:
        """A job that comes due after newer jobs were handed out is still found."""
        dispatch = self.start()
        start = int(T0 * 1000)
        delayed = self.push(dispatch, run_at=start + 1_000)
        self.clock.advance(0.5)
        fresh = self.push(dispatch)
        self.clock.advance(0.6)
        self.assertEqual(self.delivered_ids(), [fresh.id, delayed.id])


class SQLIntegerStore(MemoryStore):
    """
    A MemoryStore whose backlog reads bind their key as SQL does: an integer
    beyond 64 bits fails, as it does in SQLite and PostgreSQL.
    """

    def waiting_jobs(self, after: Any, now: int, limit: int) -> Deferred[list[Job]]:
        if not all(-(1 << 63) <= value < (1 << 63) for value in after):
            return fail(OverflowError("Python int too large to convert to SQLite INTEGER"))
        return super().waiting_jobs(after, now, limit)


class WakeKeyTests(SynchronousTestCase):
    """
    The key the feed reads from after a wake-up fits the SQL engines' integers.
    """

    def test_a_wake_behind_newer_keys_reads_with_64_bit_keys(self) -> None:
        """A wake at T after keys past T were handed out reads from (T - 1, max id), not beyond."""
        clock = Clock()
        clock.advance(T0)
        store = SQLIntegerStore()
        feed = Feed(store, clock, 10)
        feed.open()
        start = int(T0 * 1000)
        due = Job(id=first_id_at(start - 10), url=URL, run_at=start)
        self.successResultOf(store.create(due))
        # The wake for ``start`` comes late: a key past it was looked at meanwhile.
        feed._watermark = (start + 500, first_id_at(start + 500))
        feed._wake_time = start
        feed._woken()
        self.assertEqual([j.id for j in [self.successResultOf(feed.take())]], [due.id])
        self.assertEqual(self.flushLoggedErrors(OverflowError), [])


class CountingStartStore(MemoryStore):
    """
    A MemoryStore that counts its ``start`` calls.
    """

    def __init__(self) -> None:
        super().__init__()
        self.starts = 0

    def start(self, job_id: int, now: int, known: Job | None = None) -> Deferred[Job | None]:
        self.starts += 1
        return super().start(job_id, now, known)


class ReserveTests(DispatchTestCase):
    """
    A push that would start at once is stored running, its dispatcher taken
    before the store write (Delivery.reserve): one write instead of two.
    """

    def setUp(self) -> None:
        super().setUp()
        self.store = CountingStartStore()

    def push_reserved(self, dispatch: Delivery) -> Job | None:
        """
        Push as the API does: reserve, store what reserve says, deliver or enqueue.
        """
        job = Job(id=self.next_id, url=URL)
        self.next_id += 1
        reservation = dispatch.reserve(job)
        stored = job if reservation is None else reservation.job
        self.successResultOf(self.store.push([stored], 0))
        if reservation is None:
            dispatch.enqueue(job)
            return None
        dispatch.deliver(reservation)
        return reservation.job

    def test_idle_dispatcher_takes_the_job_stored_running(self) -> None:
        """With a dispatcher idle, the job is stored running and sent without a start write."""
        dispatch = self.start()
        reserved = self.push_reserved(dispatch)
        assert reserved is not None
        self.assertEqual((reserved.state, reserved.attempts), (JobState.RUNNING, 1))
        self.stub.flush()
        self.assertEqual(self.delivered_ids(), [reserved.id])
        self.assertEqual(self.store.starts, 0)
        self.assertEqual(self.get(reserved.id).status, "success")

    def test_no_reservation_while_jobs_wait_before_it(self) -> None:
        """Jobs waiting in the queue go first: the push is stored waiting (FIFO holds)."""
        dispatch = self.start()
        self.worker.reply = Reply(hang=True)
        first = self.push(dispatch)
        queued = self.push(dispatch)
        self.assertIsNone(self.push_reserved(dispatch))
        self.worker.release(Reply(), count=1)
        self.stub.flush()
        self.worker.release(Reply(), count=1)
        self.stub.flush()
        self.assertEqual(self.delivered_ids()[:3], [first.id, queued.id, queued.id + 1])

    def test_unreserve_gives_the_dispatcher_back(self) -> None:
        """A reservation not used (a replayed key): the dispatcher takes the next job."""
        dispatch = self.start()
        job = Job(id=self.next_id, url=URL)
        self.next_id += 1
        reservation = dispatch.reserve(job)
        assert reservation is not None
        dispatch.unreserve(reservation)
        other = self.push(dispatch)
        self.stub.flush()
        self.assertEqual(self.delivered_ids(), [other.id])

    def test_a_key_without_room_is_not_reserved(self) -> None:
        """A flow key at its limit: no reservation (the job waits its turn)."""
        from hq.flow import FlowControl
        from hq.model import FlowLimits

        flow = FlowControl(self.clock)
        flow.set_limits(FlowLimits("worker.test:80", paused=True))
        dispatch = Delivery(
            store=self.store,
            worker=WorkerClient(self.stub.http, self.clock, "HQ/test", 100),
            clock=self.clock,
            dispatchers=1,
            workers_per_dispatcher=2,
            queue_size=10,
            shutdown_timeout=1,
            flow=flow,
        )
        dispatch.startService()
        self.addCleanup(self.stop_quietly, dispatch)
        self.assertIsNone(dispatch.reserve(Job(id=99, url=URL)))


class FeedInterleavingTests(SynchronousTestCase):
    """
    The feed against any order of pushes, due times, clock steps and store
    reads answered late (as the reader threads answer): every stored job
    is started once, none is skipped. A push may be stored some time
    after its id was made (the API makes the id, then waits for the commit);
    a finished job may be restarted in place (its old key offered again).
    """

    @settings(max_examples=1000, deadline=None)
    @given(
        st.lists(
            st.one_of(
                # Pushes twice as often as the rest: backlogs build up.
                *[
                    st.tuples(
                        st.just("push"),
                        st.tuples(
                            st.sampled_from([0, 0, 0, 5, 20, 60]), st.sampled_from([0, 0, 10, 30])
                        ),
                    )
                ]
                * 2,
                st.tuples(st.just("answer"), st.just(0)),
                st.tuples(st.just("advance"), st.sampled_from([1, 5, 20, 50])),
                st.tuples(st.just("take"), st.just(0)),
                st.tuples(st.just("finish"), st.just(0)),
                st.tuples(st.just("restart"), st.integers(min_value=0, max_value=30)),
            ),
            max_size=80,
        ),
        st.integers(min_value=1, max_value=4),
        st.sampled_from([0, 1, 1, 2]),
    )
    def test_every_stored_job_is_started_once(
        self, ops: list[tuple[str, Any]], size: int, parallelism: int
    ) -> None:
        """
        A feed of ``size`` over a store whose reads answer when told; with a
        ``parallelism`` per flow key (two keys, one job parked per key at
        most, the rest left to the store and read back by key).
        """
        clock = Clock()
        clock.advance(T0)
        store = SlowFeedStore()
        flow = FlowControl(clock, host_parallelism=parallelism, park_capacity=1)
        feed = Feed(store, clock, size, flow=flow)
        feed.open()
        created: list[int] = []
        started: list[int] = []
        #: Jobs handed out and not released: the runs in progress.
        running: list[int] = []
        pending: list[Deferred[Job | None]] = []
        sequence = iter(range(1, 1 << 20))

        def got(job: Job | None) -> None:
            # A run begins: start the job; the store skips one no longer
            # waiting (a read older than its run may hand it out again).
            if pending and pending[0].called:
                pending.clear()
            assert job is not None
            now = int(clock.seconds() * 1000)
            if self.successResultOf(store.start(job.id, now)) is not None:
                started.append(job.id)
            running.append(job.id)

        def take() -> None:
            # Dispatchers with three slots take while one is free.
            while not pending and len(running) < 3:
                d = feed.take()
                if not d.called:
                    pending.append(d)
                    d.addCallback(got)
                    return
                got(self.successResultOf(d))

        def finish() -> None:
            # The oldest run ends: its outcome recorded, the job released.
            if running:
                job_id = running.pop(0)
                now = int(clock.seconds() * 1000)
                if self.successResultOf(store.get(job_id)).state is JobState.RUNNING:
                    done = Outcome(finished_at=now, success=True)
                    self.successResultOf(store.finish(job_id, done))
                feed.release(job_id)
                take()

        for op, value in ops:
            now = int(clock.seconds() * 1000)
            if op == "push":
                delay, age = value
                job_id = first_id_at(now - age) + next(sequence)
                job = Job(
                    id=job_id,
                    url=URL,
                    run_at=now + delay if delay else None,
                    flow_key="ab"[job_id % 2],
                )
                self.successResultOf(store.create(job))
                created.append(job.id)
                feed.offer(job)
            elif op == "restart":
                finished = [
                    job_id
                    for job_id in set(started)
                    if self.successResultOf(store.get(job_id)).state is JobState.FINISHED
                ]
                if finished:
                    restarted = self.successResultOf(
                        store.restart(sorted(finished)[value % len(finished)])
                    )
                    created.append(restarted.id)
                    feed.offer(restarted)
            elif op == "answer":
                store.answer_all()
            elif op == "advance":
                clock.advance(value / 1000)
            elif op == "finish":
                finish()
            else:
                take()
        # Then let it drain: reads answered, time passing, runs ending.
        for _ in range(100):
            take()
            store.answer_all()
            clock.advance(0.1)
            finish()
        self.assertEqual(sorted(started), sorted(created))
