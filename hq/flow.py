"""
Flow control (SPEC §16): limits per flow key, the adaptive limit, and the
jobs that wait for room.

Every job has a flow key (by default its URL's ``host:port``). A key may have
limits (``PUT /flow/{key}``, kept in the store so they survive restarts): a
*parallelism* (jobs of the key running at once), a *rate* (jobs started per
*period* seconds, counted over a sliding window: at most ``rate`` starts in
any ``period``-long interval) and *paused*. Keys with no limits of their own
take the config's ``host_parallelism``. With ``adaptive_flow`` on, the
parallelism in force (``limit``) follows AIMD on the worker's answers: a 429,
a 503 or a timeout halves it (never below 1); each full window of successes
(``limit`` successes in a row) adds one, up to the configured parallelism
(or ``dispatchers * max_workers``).

:class:`FlowControl` keeps, per key, what this node runs, its rate window and
its adaptive limit, and answers :meth:`FlowControl.has_room`. On one node
(SQLite) it also holds the jobs that wait for room, per key
(:class:`Parked`): the feed (:class:`hq.delivery.feed.Feed`) parks a job whose
key is at its limit and goes on with the next, so a key at its limit never
holds back another key's jobs (no head-of-line blocking). Within a key, jobs
start in due time then id order. A key's parked jobs are bounded; beyond that
they stay in the store, and are read back by key
(:meth:`hq.store.IJobStore.waiting_jobs_of`, an index on
``(flow_key, due time, id)``) as room frees up. In a cluster the store's
claim applies the stored limits across all nodes (:class:`hq.store.ClaimCaps`).
"""

from __future__ import annotations

import bisect
import json
from collections import deque
from collections.abc import Callable, Iterable

import attrs
from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from hq.ids import now_ms
from hq.model import FlowLimits, Job, format_time
from hq.store import ClaimCaps, DueKey, FlowCounts, IJobStore

#: Seconds between two reads of the stored limits on a cluster node.
REFRESH_SECONDS = 5.0
#: Changes of a key's limit kept for ``limitHistory`` (and the UI's sparkline).
HISTORY_LENGTH = 120
#: Keys shown by name in the metrics; the others are summed as ``other``.
METRIC_KEYS = 20
#: Status codes that make an adaptive limit halve (with timeouts).
THROTTLE_CODES = frozenset({429, 503})


class Signal:
    """
    What an attempt's end tells the adaptive limit.
    """

    #: A 2xx.
    SUCCESS = "success"
    #: A 429, a 503 or a timeout: the worker is overloaded.
    THROTTLE = "throttle"
    #: Anything else (another error): no change.
    OTHER = "other"


def signal_of(success: bool, status_code: int | None, timed_out: bool) -> str:
    """
    Return the :class:`Signal` of an attempt that ended so.
    """
    if success:
        return Signal.SUCCESS
    if timed_out or status_code in THROTTLE_CODES:
        return Signal.THROTTLE
    return Signal.OTHER


@attrs.define
class KeyState:
    """
    One flow key as this node sees it.
    """

    key: str
    #: The limits set for it, or ``None``.
    limits: FlowLimits | None = None
    #: Jobs of the key this node runs (handed out and not ended).
    running: int = 0
    #: Start times (ms) within the rate window, oldest first.
    starts: deque[int] = attrs.Factory(deque)
    #: The adaptive limit in force, or ``None`` before the first signal.
    adaptive: int | None = None
    #: Successes in a row since the adaptive limit last changed.
    successes: int = 0
    #: ``(ms, limit)`` each time the limit in force changed, oldest first.
    history: deque[tuple[int, int]] = attrs.Factory(lambda: deque(maxlen=HISTORY_LENGTH))
    #: Jobs started (traffic, for the metrics' top keys) and held back.
    started_total: int = 0
    throttled_total: int = 0
    #: Jobs waiting here for room (one node), in start order.
    parked: Parked | None = None


@attrs.define
class Parked:
    """
    A key's jobs that wait in memory for room, in ``(due time, id)`` order,
    at most ``capacity``; ``store_from`` is set while more of the key's
    waiting jobs are in the store only (after that key).
    """

    capacity: int
    keys: list[DueKey] = attrs.Factory(list)
    jobs: dict[int, Job] = attrs.Factory(dict)
    #: Read the key's store backlog after this ``(due, id)``; ``None``: none there.
    store_from: DueKey | None = None
    reading: bool = False
    #: Jobs left to the store while a read ran: where the next read starts.
    missed_from: DueKey | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, job: Job, from_store: bool = False) -> Job | None:
        """
        Keep ``job`` in order; return the job left to the store when full
        (``job`` or the last one), or ``None``. A job after ``store_from``
        (older jobs of the key are in the store) is left to the store too,
        unless it was just read from there (``from_store``).
        """
        key = (job.due_at, job.id)
        if not from_store and self.store_from is not None and key > self.store_from:
            self._left(key)
            return job
        index = bisect.bisect(self.keys, key)
        if index >= self.capacity:
            self._left(key)
            return job
        self.keys.insert(index, key)
        self.jobs[job.id] = job
        if len(self.keys) <= self.capacity:
            return None
        last_key = self.keys.pop()
        self._left(last_key)
        return self.jobs.pop(last_key[1])

    def read_ended(self, last: DueKey | None, exhausted: bool) -> None:
        """
        A read of the key's store backlog ended: it got as far as ``last``
        (``None``: nothing); ``exhausted`` when it found fewer jobs than asked.
        """
        self.reading = False
        after = None if exhausted else (last or self.store_from)
        missed, self.missed_from = self.missed_from, None
        if missed is not None:
            after = missed if after is None else min(after, missed)
        self.store_from = after

    def _left(self, key: DueKey) -> None:
        before = (key[0], key[1] - 1)
        if self.reading:
            self.missed_from = before if self.missed_from is None else min(self.missed_from, before)
        elif self.store_from is None or before < self.store_from:
            self.store_from = before

    def pop(self) -> Job:
        """
        Remove and return the first job.
        """
        key = self.keys.pop(0)
        return self.jobs.pop(key[1])

    def remove(self, job_id: int) -> bool:
        """
        Forget ``job_id``; return whether it was here.
        """
        job = self.jobs.pop(job_id, None)
        if job is None:
            return False
        self.keys.remove((job.due_at, job.id))
        return True

    def clear(self) -> list[int]:
        """
        Forget every job (they stay waiting in the store); return their ids.
        """
        ids = list(self.jobs)
        self.keys.clear()
        self.jobs.clear()
        self.store_from = None
        self.missed_from = None
        return ids


class FlowControl:
    """
    The limits of every flow key and this node's use of them.

    :param clock: for the rate windows and the history's times.
    :param host_parallelism: the parallelism of keys with no limits of their own (0 = none).
    :param adaptive: whether AIMD adapts the limits (config ``adaptive_flow``).
    :param ceiling: the most an adaptive limit grows to for a key with no
        parallelism: ``dispatchers * max_workers``.
    :param park_capacity: jobs parked per key at most (beyond: left in the store).
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        host_parallelism: int = 0,
        adaptive: bool = False,
        ceiling: int = 1,
        park_capacity: int = 1024,
    ) -> None:
        self._clock = clock
        self.host_parallelism = max(0, host_parallelism)
        self.adaptive = adaptive
        self.ceiling = max(1, ceiling)
        self.park_capacity = max(1, park_capacity)
        self._keys: dict[str, KeyState] = {}
        #: Keys that may have room for a parked job (checked by :meth:`next_ready`).
        self._maybe_room: set[str] = set()
        #: Keys with waiting jobs in the store only (read back by key).
        self._store_backlog: set[str] = set()
        #: A timer per key whose rate window holds jobs back.
        self._rate_timers: dict[str, IDelayedCall] = {}
        #: Called with a key when room may have opened for its parked jobs.
        self.on_room: Callable[[str], None] = lambda key: None
        #: Whether any key has limits, a pause or an adaptive limit: when not,
        #: every check is a dictionary miss.
        self._active = bool(self.host_parallelism or adaptive)

    # -- limits

    def load(self, limits: Iterable[FlowLimits]) -> None:
        """
        Take the limits stored for the keys (at start, or read again).
        """
        seen = set()
        for item in limits:
            seen.add(item.key)
            self.set_limits(item)
        for state in self._keys.values():
            if state.key not in seen and state.limits is not None:
                self.set_limits(None, state.key)

    def set_limits(self, limits: FlowLimits | None, key: str | None = None) -> None:
        """
        Set (``None``: remove) the limits of a key.
        """
        name = limits.key if limits is not None else key
        assert name is not None
        if limits is None and name not in self._keys:
            return
        state = self._state(name)
        before = self.limit(name)
        state.limits = limits
        if limits is not None:
            self._active = True
        if state.adaptive is not None:
            state.adaptive = min(state.adaptive, self._ceiling_of(state))
        self._note_limit(state, before)
        self._room_opened(name)

    def limits(self, key: str) -> FlowLimits | None:
        """
        Return the limits set for ``key``, or ``None``.
        """
        state = self._keys.get(key)
        return None if state is None else state.limits

    def _configured(self, state: KeyState) -> int:
        if state.limits is None:
            return self.host_parallelism
        return state.limits.parallelism

    def _ceiling_of(self, state: KeyState) -> int:
        return self._configured(state) or self.ceiling

    def limit(self, key: str) -> int:
        """
        Return the parallelism in force for ``key`` now, 0 for none.
        """
        state = self._keys.get(key)
        if state is None:
            return self.ceiling if self.adaptive else self.host_parallelism
        if self.adaptive:
            ceiling = self._ceiling_of(state)
            return ceiling if state.adaptive is None else min(state.adaptive, ceiling)
        return self._configured(state)

    def history(self, key: str) -> list[tuple[int, int]]:
        """
        Return the changes of ``key``'s limit, ``(ms, limit)``, oldest first.
        """
        state = self._keys.get(key)
        return [] if state is None else list(state.history)

    # -- room

    def has_room(self, key: str) -> bool:
        """
        Whether a job of ``key`` may start now on this node.
        """
        if not self._active:
            return True
        state = self._keys.get(key)
        if state is None:
            return True  # Nothing of it runs here yet, and it has no limits set.
        limits = state.limits
        if limits is not None and limits.paused:
            return False
        limit = self.limit(key)
        if limit and state.running >= limit:
            return False
        if limits is not None and limits.rate:
            now = now_ms(self._clock)
            window = round(limits.period * 1000)
            starts = state.starts
            while starts and starts[0] <= now - window:
                starts.popleft()
            if len(starts) >= limits.rate:
                self._wake_for_rate(key, starts[0] + window - now)
                return False
        return True

    def _wake_for_rate(self, key: str, delay_ms: int) -> None:
        timer = self._rate_timers.get(key)
        if timer is not None and timer.active():
            return
        self._rate_timers[key] = self._clock.callLater(
            max(0.0, delay_ms / 1000), self._rate_woken, key
        )

    def _rate_woken(self, key: str) -> None:
        self._rate_timers.pop(key, None)
        self._room_opened(key)

    def started(self, job: Job) -> None:
        """
        Count ``job`` as running here from now on.
        """
        state = self._keys.get(job.flow_key)
        if state is None:
            if not self._active:
                return
            state = self._state(job.flow_key)
        state.running += 1
        state.started_total += 1
        limits = state.limits
        if limits is not None and limits.rate:
            state.starts.append(now_ms(self._clock))

    def ended(self, key: str) -> None:
        """
        A job of ``key`` counted by :meth:`started` no longer runs here.
        """
        state = self._keys.get(key)
        if state is None:
            return
        state.running = max(0, state.running - 1)
        self._room_opened(key)
        self._maybe_forget(state)

    def _maybe_forget(self, state: KeyState) -> None:
        """
        Forget a key that has nothing to remember (no limits, nothing running
        or parked, its adaptive limit back at its ceiling): memory stays
        bounded by the keys in use, not by every key ever seen.
        """
        if (
            state.running
            or state.limits is not None
            or (
                state.parked is not None
                and (state.parked.jobs or state.parked.reading or state.parked.store_from)
            )
            or (state.adaptive is not None and state.adaptive < self._ceiling_of(state))
            or state.key in self._rate_timers
        ):
            return
        del self._keys[state.key]
        self._maybe_room.discard(state.key)
        self._store_backlog.discard(state.key)

    def observe(self, key: str, signal: str) -> None:
        """
        An attempt of a job of ``key`` ended with ``signal`` (:class:`Signal`):
        adapt the key's limit (``adaptive_flow``).
        """
        if self.adaptive:
            self._adapt(self._state(key), signal)

    def _adapt(self, state: KeyState, signal: str) -> None:
        before = self.limit(state.key)
        if signal == Signal.THROTTLE:
            state.adaptive = max(1, before // 2)
            state.successes = 0
        elif signal == Signal.SUCCESS:
            state.successes += 1
            if state.successes >= before:
                state.successes = 0
                state.adaptive = min(before + 1, self._ceiling_of(state))
        else:
            return
        self._note_limit(state, before)

    def _note_limit(self, state: KeyState, before: int) -> None:
        after = self.limit(state.key)
        now = now_ms(self._clock)
        if state.history and state.history[-1][0] == now:
            # Changes in the same instant are one change.
            state.history.pop()
            if state.history and state.history[-1][1] == after:
                return
            state.history.append((now, after))
        elif after != before or not state.history:
            state.history.append((now, after))
        if after != before and self.adaptive:
            self.log.info(
                "Flow {key}: limit {before} -> {after}", key=state.key, before=before, after=after
            )

    def _state(self, key: str) -> KeyState:
        state = self._keys.get(key)
        if state is None:
            state = self._keys[key] = KeyState(key)
            state.history.append((now_ms(self._clock), self.limit(key)))
        return state

    def _room_opened(self, key: str) -> None:
        state = self._keys.get(key)
        if state is not None and state.parked is not None and state.parked.jobs:
            self._maybe_room.add(key)
            self.on_room(key)

    # -- parked jobs (one node)

    def must_wait(self, job: Job, count: bool = True) -> bool:
        """
        Whether ``job`` must wait for room: its key is at its limit, or older
        jobs of its key wait already; ``count``: count it held back (metrics).
        """
        if not self._active:
            return False
        state = self._keys.get(job.flow_key)
        if (
            state is not None
            and state.parked is not None
            and (state.parked.jobs or state.parked.store_from is not None)
        ):
            return True
        if self.has_room(job.flow_key):
            return False
        if count:
            self._state(job.flow_key).throttled_total += 1
        return True

    def park(self, job: Job) -> Job | None:
        """
        Keep ``job`` until its key has room; return the job left to the store
        instead (the key holds its most), or ``None``.
        """
        state = self._state(job.flow_key)
        if state.parked is None:
            state.parked = Parked(self.park_capacity)
        left = state.parked.add(job)
        if state.parked.store_from is not None:
            self._store_backlog.add(job.flow_key)
        if self.has_room(job.flow_key):
            self._maybe_room.add(job.flow_key)
        return left

    def take_in(
        self, key: str, batch: list[Job], last: DueKey | None, exhausted: bool
    ) -> list[Job]:
        """
        Park ``batch``, jobs of ``key`` read back from the store (the read got
        as far as ``last``); return those left to the store again (full).
        """
        state = self._state(key)
        parked = state.parked
        if parked is None:
            parked = state.parked = Parked(self.park_capacity)
        left = [job for job in batch if parked.add(job, from_store=True) is not None]
        parked.read_ended(last, exhausted)
        if parked.store_from is None:
            self._store_backlog.discard(key)
        self._room_opened(key)
        return left

    def next_ready(self) -> Job | None:
        """
        Return a parked job whose key has room now (counted as started), or ``None``.
        """
        while self._maybe_room:
            key = next(iter(self._maybe_room))
            state = self._keys[key]
            parked = state.parked
            if parked is None or not parked.jobs or not self.has_room(key):
                self._maybe_room.discard(key)
                continue
            job = parked.pop()
            self.started(job)
            return job
        return None

    def unpark(self, job_id: int, key: str) -> bool:
        """
        Forget the parked job ``job_id`` (stopped); return whether it was parked.
        """
        state = self._keys.get(key)
        if state is None or state.parked is None:
            return False
        return state.parked.remove(job_id)

    def is_parked(self, job_id: int, key: str) -> bool:
        state = self._keys.get(key)
        return state is not None and state.parked is not None and job_id in state.parked.jobs

    def backlogs(self) -> list[tuple[str, Parked]]:
        """
        Return the keys whose waiting jobs are partly in the store only, and
        whose parked jobs are down to half: to be read back.
        """
        found = []
        for key in list(self._store_backlog):
            parked = self._keys[key].parked
            if parked is None or parked.store_from is None:
                self._store_backlog.discard(key)
            elif not parked.reading and len(parked) <= parked.capacity // 2:
                found.append((key, parked))
        return found

    def clear_parked(self) -> list[int]:
        """
        Forget every parked job (the feed closes); return their ids.
        """
        ids: list[int] = []
        for state in self._keys.values():
            if state.parked is not None:
                ids.extend(state.parked.clear())
        self._maybe_room.clear()
        self._store_backlog.clear()
        for timer in self._rate_timers.values():
            if timer.active():
                timer.cancel()
        self._rate_timers.clear()
        return ids

    @property
    def parked_count(self) -> int:
        return sum(len(s.parked) for s in self._keys.values() if s.parked is not None)

    # -- a cluster's claims

    def claim_caps(self) -> ClaimCaps:
        """
        Return what this node's claims must respect beyond the stored limits:
        ``host_parallelism``, and its adaptive limits less what it runs.
        """
        local: dict[str, int] = {}
        if self.adaptive:
            for state in self._keys.values():
                if state.adaptive is not None:
                    local[state.key] = max(0, self.limit(state.key) - state.running)
        return ClaimCaps(default_parallelism=self.host_parallelism, local=local)

    # -- views

    def keys(self) -> list[str]:
        """
        The keys this node knows: with limits, running jobs, or an adaptive limit.
        """
        return [
            state.key
            for state in self._keys.values()
            if state.limits is not None or state.running or state.adaptive is not None
        ]

    def metric_rows(self, counts: dict[str, FlowCounts]) -> list[tuple[str, int, int, int, int]]:
        """
        Return ``(key, running, waiting, limit, throttled)`` for the
        :data:`METRIC_KEYS` keys with the most traffic, and the rest summed as
        ``other`` (its limit 0): bounded label cardinality.
        """
        names = set(counts) | set(self._keys)
        traffic = sorted(
            names,
            key=lambda k: (
                -(self._keys[k].started_total if k in self._keys else 0),
                -(counts[k].waiting if k in counts else 0),
                k,
            ),
        )
        rows = []
        other = [0, 0, 0]
        for index, key in enumerate(traffic):
            count = counts.get(key, FlowCounts())
            state = self._keys.get(key)
            throttled = state.throttled_total if state is not None else 0
            if index < METRIC_KEYS:
                rows.append((key, count.running, count.waiting, self.limit(key), throttled))
            else:
                other[0] += count.running
                other[1] += count.waiting
                other[2] += throttled
        if len(traffic) > METRIC_KEYS:
            rows.append(("other", other[0], other[1], 0, other[2]))
        return rows


def flow_json(
    key: str,
    limits: FlowLimits | None,
    counts: FlowCounts,
    limit: int,
    history: list[tuple[int, int]],
) -> str:
    """
    Return a flow key as ``GET /flow/{key}`` shows it (compact JSON text).
    """
    shown = limits or FlowLimits(key)
    period: float | int = shown.period
    if float(period).is_integer():
        period = int(period)
    return json.dumps(
        {
            "key": key,
            "parallelism": shown.parallelism,
            "rate": shown.rate,
            "period": period,
            "paused": shown.paused,
            "configured": limits is not None,
            "running": counts.running,
            "waiting": counts.waiting,
            "limit": limit,
            "limitHistory": [{"at": format_time(at), "limit": value} for at, value in history],
        },
        separators=(",", ":"),
        ensure_ascii=False,
    )


def limits_refresher(
    flow: FlowControl, store: IJobStore, clock: IReactorTime, seconds: float = REFRESH_SECONDS
) -> TimerService:
    """
    Return the service that reads the stored limits into ``flow`` every
    ``seconds`` on a cluster node: another node's ``PUT /flow`` reaches this
    one's adaptive ceiling and ``GET /flow`` view within that time (the
    claims themselves always read the stored limits).
    """

    def refresh() -> Deferred[None]:
        d: Deferred[None] = store.flow_limits().addCallback(flow.load)
        d.addErrback(
            lambda failure: FlowControl.log.failure("Could not read the flow limits", failure)
        )
        return d

    service = TimerService(seconds, refresh)
    service.clock = clock
    return service
