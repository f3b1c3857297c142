"""
Tests for flow control (SPEC §16): hq.flow's limits, rate windows and AIMD,
and the delivery engine holding a key at its limit without holding back others.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from hq.delivery import Delivery
from hq.flow import METRIC_KEYS, FlowControl, Signal, signal_of
from hq.model import CALLBACK_HEADER, FlowLimits, Job
from hq.store import FlowCounts
from hq.store.memory import MemoryStore
from hq.testing import Reply
from hq.worker import WorkerClient
from tests.test_delivery import T0, URL, DispatchTestCase

OTHER = "http://other.test/work"
KEY = "worker.test:80"


def job(job_id: int, url: str = URL) -> Job:
    return Job(id=job_id, url=url)


class SignalTests(SynchronousTestCase):
    def test_signals(self) -> None:
        """A 2xx is a success; 429, 503 and timeouts throttle; other errors say nothing."""
        self.assertEqual(signal_of(True, 200, False), Signal.SUCCESS)
        self.assertEqual(signal_of(False, 429, False), Signal.THROTTLE)
        self.assertEqual(signal_of(False, 503, False), Signal.THROTTLE)
        self.assertEqual(signal_of(False, None, True), Signal.THROTTLE)
        self.assertEqual(signal_of(False, 500, False), Signal.OTHER)


class AdaptiveTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.flow = FlowControl(self.clock, adaptive=True, ceiling=16)

    def test_starts_at_the_ceiling_and_halves_on_throttle(self) -> None:
        """The limit starts at dispatchers x max_workers; each 429 halves it, never below 1."""
        self.assertEqual(self.flow.limit(KEY), 16)
        for expected in (8, 4, 2, 1, 1):
            self.flow.observe(KEY, Signal.THROTTLE)
            self.assertEqual(self.flow.limit(KEY), expected)

    def test_grows_by_one_per_full_window_of_successes(self) -> None:
        """At limit n, n successes in a row add one; a throttle restarts the count."""
        for _ in range(4):
            self.flow.observe(KEY, Signal.THROTTLE)
        self.assertEqual(self.flow.limit(KEY), 1)
        self.flow.observe(KEY, Signal.SUCCESS)
        self.assertEqual(self.flow.limit(KEY), 2)
        self.flow.observe(KEY, Signal.SUCCESS)
        self.assertEqual(self.flow.limit(KEY), 2)
        self.flow.observe(KEY, Signal.OTHER)
        self.flow.observe(KEY, Signal.SUCCESS)
        self.assertEqual(self.flow.limit(KEY), 3)
        for _ in range(2):
            self.flow.observe(KEY, Signal.SUCCESS)
        self.flow.observe(KEY, Signal.THROTTLE)
        self.assertEqual(self.flow.limit(KEY), 1)

    def test_never_above_the_configured_parallelism(self) -> None:
        """A key's own parallelism is the adaptive limit's ceiling."""
        self.flow.set_limits(FlowLimits(KEY, parallelism=3))
        self.assertEqual(self.flow.limit(KEY), 3)
        for _ in range(50):
            self.flow.observe(KEY, Signal.SUCCESS)
        self.assertEqual(self.flow.limit(KEY), 3)

    def test_history_records_each_change(self) -> None:
        """limitHistory has one entry per change, with its time; one instant, one entry."""
        self.flow.started(Job(id=1, url=URL))
        self.clock.advance(10)
        self.flow.observe(KEY, Signal.THROTTLE)
        self.clock.advance(1)
        self.flow.observe(KEY, Signal.THROTTLE)
        self.flow.observe(KEY, Signal.THROTTLE)
        self.assertEqual(self.flow.history(KEY), [(0, 16), (10_000, 8), (11_000, 2)])

    def test_off_by_default(self) -> None:
        """Without adaptive_flow, answers change nothing (SPEC §4's concurrency holds)."""
        flow = FlowControl(self.clock, ceiling=16)
        flow.observe(KEY, Signal.THROTTLE)
        self.assertEqual(flow.limit(KEY), 0)


class RoomTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(T0)

    def test_parallelism(self) -> None:
        """A key with parallelism 2 has room for two running jobs."""
        flow = FlowControl(self.clock)
        flow.set_limits(FlowLimits(KEY, parallelism=2))
        flow.started(job(1))
        self.assertTrue(flow.has_room(KEY))
        flow.started(job(2))
        self.assertFalse(flow.has_room(KEY))
        self.assertTrue(flow.has_room("other:80"))
        flow.ended(KEY)
        self.assertTrue(flow.has_room(KEY))

    def test_host_parallelism_applies_to_keys_without_limits(self) -> None:
        """host_parallelism limits every key with no limits of its own."""
        flow = FlowControl(self.clock, host_parallelism=1)
        flow.started(job(1))
        self.assertFalse(flow.has_room(KEY))
        flow.set_limits(FlowLimits(KEY, parallelism=3))
        self.assertTrue(flow.has_room(KEY))
        self.assertEqual(flow.limit("other:80"), 1)

    def test_paused(self) -> None:
        """A paused key has no room."""
        flow = FlowControl(self.clock)
        flow.set_limits(FlowLimits(KEY, paused=True))
        self.assertFalse(flow.has_room(KEY))

    @settings(max_examples=50, deadline=None)
    @given(
        rate=st.integers(1, 5),
        period=st.sampled_from([0.5, 1.0, 2.0]),
        gaps=st.lists(st.integers(0, 700), min_size=1, max_size=40),
    )
    def test_rate_is_exact_over_any_window(self, rate: int, period: float, gaps: list[int]) -> None:
        """Starting whenever there is room, no period-long window holds more than rate starts."""
        clock = Clock()
        flow = FlowControl(clock)
        flow.set_limits(FlowLimits(KEY, rate=rate, period=period))
        starts: list[int] = []
        for n, gap in enumerate(gaps):
            clock.advance(gap / 1000)
            while flow.has_room(KEY):
                flow.started(job(n + 1))
                flow.ended(KEY)
                starts.append(round(clock.seconds() * 1000))
        window = round(period * 1000)
        for index, at in enumerate(starts):
            inside = [s for s in starts[index:] if s < at + window]
            self.assertLessEqual(len(inside), rate)

    def test_metric_rows_are_bounded(self) -> None:
        """Past METRIC_KEYS keys, the rest are summed under 'other'."""
        flow = FlowControl(self.clock, host_parallelism=100)
        counts = {f"k{n}:80": FlowCounts(waiting=n, running=1) for n in range(METRIC_KEYS + 5)}
        rows = flow.metric_rows(counts)
        self.assertEqual(len(rows), METRIC_KEYS + 1)
        self.assertEqual(rows[-1][0], "other")
        self.assertEqual(sum(r[1] for r in rows), METRIC_KEYS + 5)
        self.assertEqual(sum(r[2] for r in rows), sum(c.waiting for c in counts.values()))


class KeyReadCountingStore(MemoryStore):
    """
    A MemoryStore that records the keys of its per-key backlog reads.
    """

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def waiting_jobs_of(
        self, flow_key: str, after: tuple[int, int], now: int, limit: int
    ) -> Deferred[list[Job]]:
        self.reads.append(flow_key)
        return super().waiting_jobs_of(flow_key, after, now, limit)


class FlowDeliveryTests(DispatchTestCase):
    """
    The delivery engine with flow limits, over a MemoryStore and a fake worker.
    """

    def start_flow(self, flow: FlowControl, **kwargs: Any) -> Delivery:
        kwargs.setdefault("dispatchers", 2)
        kwargs.setdefault("workers", 4)
        dispatch = Delivery(
            store=self.store,
            worker=WorkerClient(self.stub.http, self.clock, "HQ/test", 1024),
            clock=self.clock,
            dispatchers=kwargs["dispatchers"],
            workers_per_dispatcher=kwargs["workers"],
            queue_size=kwargs.get("queue_size", 100),
            shutdown_timeout=10,
            jitter=lambda: 1.0,
            flow=flow,
            new_id=self.new_id,
        )
        dispatch.add_observer(self.finished.append)
        dispatch.startService()
        self.addCleanup(self.stop_quietly, dispatch)
        return dispatch

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def limited(self, **limits: Any) -> FlowControl:
        flow = FlowControl(self.clock, ceiling=8, park_capacity=limits.pop("park", 1024))
        flow.set_limits(FlowLimits(KEY, **limits))
        return flow

    def delivered_paths(self) -> list[str]:
        return [r.path for r in self.worker.requests]

    def test_no_head_of_line_blocking(self) -> None:
        """With 50 jobs of a key at parallelism 1 hung, another key's job starts at once."""
        dispatch = self.start_flow(self.limited(parallelism=1))
        self.worker.reply = Reply(hang=True)
        held = [self.push(dispatch) for _ in range(50)]
        self.assertEqual(self.delivered_ids(), [held[0].id])
        other = self.push(dispatch, url=OTHER)
        self.assertEqual(self.delivered_ids(), [held[0].id, other.id])

    def test_order_within_a_key_is_kept(self) -> None:
        """A limited key's jobs start one by one in push order, other keys' meanwhile."""
        dispatch = self.start_flow(self.limited(parallelism=1))
        self.worker.reply = Reply(hang=True)
        mine = []
        for n in range(12):
            mine.append(self.push(dispatch))
            if n % 3 == 0:
                self.push(dispatch, url=OTHER)
        for _ in range(len(mine) + 4):
            self.worker.release(Reply())
            self.stub.flush()
        limited_order = [
            int(r.header("x-hq-job-id") or 0) for r in self.worker.requests if r.path == "/work"
        ]
        self.assertEqual(
            [i for i in limited_order if i in {j.id for j in mine}], [j.id for j in mine]
        )
        self.assertEqual(len([j for j in self.finished if j.url == URL]), 12)

    def test_parallelism_holds(self) -> None:
        """Parallelism 3: never more than 3 of the key in flight."""
        dispatch = self.start_flow(self.limited(parallelism=3))
        self.worker.reply = Reply(hang=True)
        for _ in range(10):
            self.push(dispatch)
        self.assertEqual(dispatch.num_workers, 3)
        self.worker.release(Reply(), count=1)
        self.stub.flush()
        self.assertEqual(dispatch.num_workers, 3)
        self.assertEqual(len(self.worker.requests), 4)

    def test_rate_delays_and_never_refuses(self) -> None:
        """A rate of 2 per second: 5 jobs start 2, 2 and 1 a second apart; all succeed."""
        dispatch = self.start_flow(self.limited(rate=2, period=1))
        for _ in range(5):
            self.push(dispatch)
        counts = [len(self.worker.requests)]
        for _ in range(3):
            self.clock.advance(1)
            self.stub.flush()
            counts.append(len(self.worker.requests))
        self.assertEqual(counts, [2, 4, 5, 5])
        self.assertEqual([j.status for j in self.finished], ["success"] * 5)

    def test_pause_and_resume(self) -> None:
        """A paused key's jobs wait; resumed, they start in order."""
        flow = self.limited(paused=True)
        dispatch = self.start_flow(flow)
        jobs = [self.push(dispatch) for _ in range(3)]
        other = self.push(dispatch, url=OTHER)
        self.assertEqual(self.delivered_ids(), [other.id])
        flow.set_limits(FlowLimits(KEY, paused=False))
        self.stub.flush()
        self.assertEqual(self.delivered_ids(), [other.id] + [j.id for j in jobs])

    def test_stop_a_parked_job(self) -> None:
        """A job parked for room can be stopped: it finishes canceled and never starts."""
        dispatch = self.start_flow(self.limited(parallelism=1))
        self.worker.reply = Reply(hang=True)
        first = self.push(dispatch)
        parked = self.push(dispatch)
        self.stop_job(dispatch, parked.id)
        self.worker.release(Reply())
        self.stub.flush()
        self.assertEqual(self.delivered_ids(), [first.id])
        self.assertEqual(self.get(parked.id).status, "canceled")

    def test_adaptive_limit_follows_429(self) -> None:
        """With adaptive_flow, each 429 halves the key's limit; in-flight requests follow."""
        flow = FlowControl(self.clock, adaptive=True, ceiling=8)
        dispatch = self.start_flow(flow)
        self.worker.reply = Reply(hang=True)
        for _ in range(20):
            self.push(dispatch, retries=5)
        self.assertEqual(dispatch.num_workers, 8)
        self.worker.release(Reply(code=429), count=1)
        self.stub.flush()
        self.assertEqual(flow.limit(KEY), 4)
        self.assertEqual(dispatch.num_workers, 7)
        self.worker.release(Reply(code=429), count=4)
        self.stub.flush()
        self.assertEqual(flow.limit(KEY), 1)
        self.assertEqual(dispatch.num_workers, 3)

    def test_callback_job_is_pushed_on_success(self) -> None:
        """A succeeded job with callbackUrl pushes a job there with the finished job as payload."""
        dispatch = self.start_flow(FlowControl(self.clock))
        self.worker.route("/cb", Reply())
        original = self.push(dispatch, callback_url="http://worker.test/cb", retries=2)
        self.stub.flush()
        stored = self.get(original.id)
        self.assertIsNotNone(stored.callback_job_id)
        callback = self.get(stored.callback_job_id or 0)
        self.assertEqual(callback.url, "http://worker.test/cb")
        self.assertEqual(callback.retries, 2)
        self.assertEqual(callback.headers, {CALLBACK_HEADER: str(original.id)})
        payload = json.loads(callback.payload or "null")
        self.assertEqual(payload["id"], str(original.id))
        self.assertEqual(payload["status"], "success")
        self.assertEqual(self.worker.requests[-1].path, "/cb")
        self.assertEqual(self.worker.requests[-1].header(CALLBACK_HEADER.lower()), str(original.id))
        self.assertEqual(callback.status, "success")

    def test_failure_callback_only_after_the_last_attempt(self) -> None:
        """failureCallbackUrl gets a job once the last retry failed, not before; no success one."""
        dispatch = self.start_flow(FlowControl(self.clock))
        self.worker.reply = Reply(code=500)
        self.worker.route("/failed", Reply())
        original = self.push(
            dispatch,
            retries=1,
            callback_url="http://worker.test/ok",
            failure_callback_url="http://worker.test/failed",
        )
        self.stub.flush()
        self.assertIsNone(self.get(original.id).callback_job_id)
        self.clock.advance(5)
        self.stub.flush()
        stored = self.get(original.id)
        self.assertEqual(stored.status, "failure")
        callback = self.get(stored.callback_job_id or 0)
        self.assertEqual(callback.url, "http://worker.test/failed")
        self.assertEqual(json.loads(callback.payload or "{}")["status"], "failure")

    def test_parked_overflow_stays_in_the_store_and_comes_back_in_order(self) -> None:
        """A key keeps few jobs in memory; the rest are read back by key, in order."""
        self.store = store = KeyReadCountingStore()
        dispatch = self.start_flow(self.limited(parallelism=1, park=4), queue_size=8)
        self.worker.reply = Reply(hang=True)
        jobs = [self.push(dispatch) for _ in range(30)]
        self.assertLessEqual(dispatch.in_queue, 4)
        for _ in range(40):
            self.worker.release(Reply(), count=1)
            self.stub.flush()
        self.assertEqual(self.delivered_ids(), [j.id for j in jobs])
        self.assertGreater(len(store.reads), 3)
        self.assertEqual(set(store.reads), {KEY})


class RefreshTests(SynchronousTestCase):
    def test_stored_limits_are_read_again_every_few_seconds(self) -> None:
        """A cluster node takes another node's new limits within REFRESH_SECONDS."""
        from hq.flow import REFRESH_SECONDS, limits_refresher

        clock = Clock()
        store = MemoryStore()
        flow = FlowControl(clock)
        service = limits_refresher(flow, store, clock)
        service.startService()
        self.addCleanup(service.stopService)
        self.successResultOf(store.put_flow(FlowLimits(KEY, parallelism=3)))
        self.assertEqual(flow.limit(KEY), 0)
        clock.advance(REFRESH_SECONDS)
        self.assertEqual(flow.limit(KEY), 3)
        self.successResultOf(store.delete_flow(KEY))
        clock.advance(REFRESH_SECONDS)
        self.assertEqual(flow.limit(KEY), 0)
