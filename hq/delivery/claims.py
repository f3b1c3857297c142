"""
The claim feed: due jobs claimed from a store shared by a cluster (SPEC §13).

On a store several nodes share, reading waiting jobs and starting them one by
one would let two nodes send the same job. Here a node *claims* due jobs: the
store marks them running for this node with a lease, in due time then id
order, skipping the rows another node is claiming, all in one statement
(:meth:`hq.store.IClaimingStore.claim`). The feed claims only while a
dispatcher waits for a job, and at most as many jobs as this node has free
slots (``capacity`` less the jobs it holds, not counting those whose request
is over and whose outcome is being recorded: :meth:`ClaimFeed.settle`), so a
claimed job starts at once and several free slots cost one round trip.

It claims when a dispatcher asks and nothing is queued, when it is told that
jobs wait (:meth:`ClaimFeed.poke`: a push here, or a notification from another
node), at the earliest known due time, and every ``poll`` seconds as a
fallback for notifications lost (a reconnecting listener). It has
:class:`hq.delivery.feed.Feed`'s interface, so the runner and the engine use
either; the runner does not start a claimed job again (it is running already).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from hq.flow import FlowControl
from hq.ids import now_ms
from hq.model import Job
from hq.store import STORE_RETRY_SECONDS, Claimed, IClaimingStore

#: Seconds between two claims while a dispatcher is idle and nothing told of jobs.
POLL_SECONDS = 1.0


class ClaimFeed:
    """
    Jobs claimed for this node, handed to its dispatchers.

    Every claimed job stays *held* until :meth:`release` (its run ended); the
    jobs held count against ``capacity``.

    :param store: the shared store the jobs are claimed from.
    :param clock: for the timers.
    :param capacity: jobs this node runs at most (``dispatchers * max_workers``).
    :param on_idle: called when a claim ends (the shutdown waits for claims).
    :param poll: seconds between two fallback claims while idle.
    """

    log = Logger()

    def __init__(
        self,
        store: IClaimingStore,
        clock: IReactorTime,
        capacity: int,
        on_idle: Callable[[], None] = lambda: None,
        poll: float = POLL_SECONDS,
        flow: FlowControl | None = None,
    ) -> None:
        self._store = store
        #: The flow limits: the store's claim applies the stored ones across
        #: the cluster; this node adds its adaptive limits (``claim_caps``).
        self._flow = flow or FlowControl(clock)
        #: Claimed job id -> its flow key.
        self._keys: dict[int, str] = {}
        self._clock = clock
        self._capacity = max(1, capacity)
        self._on_idle = on_idle
        self._poll = LoopingCall(self._polled)
        self._poll.clock = clock
        self._poll_seconds = poll
        self._queue: OrderedDict[int, Job] = OrderedDict()
        self._held: set[int] = set()
        #: Held jobs whose request is over, their outcome being recorded.
        self._settling: set[int] = set()
        self._idle: deque[Deferred[Job | None]] = deque()
        self._claiming = False
        #: Told of jobs during a claim: claim again after it.
        self._again = False
        #: A held job's request or run ended during a claim: its key may have
        #: room the claim did not see; claim again after it if limits applied.
        self._freed = False
        self._retry: IDelayedCall | None = None
        self._wake: IDelayedCall | None = None
        self._wake_time = 0
        self._open = False
        #: Claims failed in a row (the store is unavailable): logged once, then seldom.
        self._failures = 0

    @property
    def in_queue(self) -> int:
        """
        Jobs claimed and not yet handed out.
        """
        return len(self._queue)

    @property
    def reading(self) -> bool:
        """
        Whether a claim is in progress.
        """
        return self._claiming

    @property
    def is_open(self) -> bool:
        """
        Whether the feed claims and hands out jobs.
        """
        return self._open

    def held_ids(self) -> list[int]:
        """
        The ids of the jobs claimed here and not released: whose leases to renew.
        """
        return list(self._held)

    def holds(self, job_id: int) -> bool:
        """
        Whether ``job_id`` was claimed here and its run has not ended.
        """
        return job_id in self._held

    def queued(self, job_id: int) -> bool:
        """
        Whether ``job_id`` is claimed and not handed out yet.
        """
        return job_id in self._queue

    def open(self) -> None:
        """
        Start claiming jobs for the dispatchers.
        """
        self._open = True
        self._poll.start(self._poll_seconds, now=False)
        self._maybe_claim()

    def close(self) -> None:
        """
        Stop claiming, and answer the idle dispatchers ``None``. Jobs claimed
        and not handed out stay running in the store under this node's lease:
        the node gives them back as it stops (:class:`hq.cluster.ClusterNode`),
        or, if it dies, another node delivers them once the lease expired.
        """
        self._open = False
        if self._poll.running:
            self._poll.stop()
        for call in (self._retry, self._wake):
            if call is not None and call.active():
                call.cancel()
        self._retry = self._wake = None
        self._held.difference_update(self._queue)
        self._queue.clear()
        idle, self._idle = self._idle, deque()
        for waiting in idle:
            waiting.callback(None)

    def offer(self, job: Job) -> None:
        """
        ``job`` was stored waiting here: claim it (or whatever is due before
        it) if a dispatcher is idle, or at its due time.
        """
        self.poke(job.due_at)

    def poke(self, due: int | None = None) -> None:
        """
        Jobs wait, due at ``due`` (ms) or now (``None``): claim if a
        dispatcher is idle, or wake at that time.
        """
        if not self._open:
            return
        now = now_ms(self._clock)
        if due is not None and due > now:
            self._wake_at(due, now)
            return
        if self._claiming:
            self._again = True
        self._maybe_claim()

    def take(self) -> Deferred[Job | None]:
        """
        Return the next claimed job, waiting until there is one; ``None``
        once the feed is closed.
        """
        if not self._open:
            return succeed(None)
        if self._queue:
            _, job = self._queue.popitem(last=False)
            return succeed(job)
        waiting: Deferred[Job | None] = Deferred(self._forget_idle)
        self._idle.append(waiting)
        self._maybe_claim()
        return waiting

    def drop(self, job_id: int) -> bool:
        """
        A claimed job is running in the store: a stop goes through its run
        (see :meth:`hq.delivery.runner.Runner.ask_stop`), so nothing is dropped.
        """
        return False

    def settle(self, job_id: int) -> bool:
        """
        The request of ``job_id``'s run is over and its outcome is about to
        be recorded; return whether its dispatcher slot may take the next job
        now: yes. The job no longer counts against the capacity, so the
        dispatcher that waits for the slot claims at once, and the claim
        shares the writer's transaction with this outcome instead of
        waiting for its commit: a transaction less per job, each a round
        trip to the database and a sync. The job stays held, its lease
        renewed and its flow key's limits counting it, until :meth:`release`.
        """
        if job_id not in self._held:
            return False
        self._settling.add(job_id)
        self._freed = self._freed or self._claiming
        self._maybe_claim()
        return True

    def release(self, job_id: int) -> None:
        """
        Forget ``job_id``, whose run has ended: its slot is free again (a
        dispatcher may already wait for it: the runner frees its slot first).
        """
        self._held.discard(job_id)
        self._settling.discard(job_id)
        key = self._keys.pop(job_id, None)
        if key is not None:
            self._flow.ended(key)
        self._freed = self._freed or self._claiming
        self._maybe_claim()

    def _forget_idle(self, waiting: Deferred[Job | None]) -> None:
        if waiting in self._idle:
            self._idle.remove(waiting)

    def _polled(self) -> None:
        self._maybe_claim()

    def _maybe_claim(self) -> None:
        room = self._capacity - len(self._held) + len(self._settling)
        if not self._open or self._claiming or self._retry is not None:
            return
        if not self._idle or room <= 0:
            return
        self._claiming = True
        self._again = self._freed = False
        d = Deferred.fromCoroutine(self._claim(room))
        d.addErrback(lambda failure: self.log.failure("Claiming jobs failed", failure))

    async def _claim(self, room: int) -> None:
        now = now_ms(self._clock)
        try:
            jobs = await self._store.claim(now, room, self._flow.claim_caps())
        except Exception as e:
            self._claiming = False
            self._failures += 1
            if self._failures == 1:
                self.log.failure(
                    "Could not claim jobs from the store; trying again every {delay} s",
                    delay=STORE_RETRY_SECONDS,
                )
            elif self._failures % 60 == 0:
                self.log.warn(
                    "Still cannot claim jobs after {count} tries: {error}",
                    count=self._failures,
                    error=str(e),
                )
            if self._open:
                self._retry = self._clock.callLater(STORE_RETRY_SECONDS, self._claim_again)
            self._on_idle()
            return
        if self._failures:
            self.log.info("Claiming jobs again after {count} failed tries", count=self._failures)
            self._failures = 0
        # The claimed jobs are running in the store for this node: hand them
        # out before anything else can fail, or nobody would send them.
        for job in jobs:
            self._held.add(job.id)
            self._keys[job.id] = job.flow_key
            self._flow.started(job)
            if self._idle:
                self._idle.popleft().callback(job)
            else:
                self._queue[job.id] = job
        # Under flow limits, a key the claim found full may have room now:
        # a job of it ended while the claim was read (a claim without limits
        # took every due job it had room for, so it is not repeated: more,
        # smaller claims cost more than they gain).
        again = self._again or (self._freed and isinstance(jobs, Claimed) and jobs.limited)
        later = None
        if len(jobs) < room and not again and self._open:
            try:
                if isinstance(jobs, Claimed) and jobs.due_read:
                    later = jobs.next_due  # read with the claim
                else:
                    later = await self._store.next_due(now)
            except Exception:
                self.log.failure(
                    "Could not read the next due time; claiming again in {delay} s",
                    delay=STORE_RETRY_SECONDS,
                )
                later = now + int(STORE_RETRY_SECONDS * 1000)
        self._claiming = False
        try:
            if later is not None and self._open:
                self._wake_at(later, now_ms(self._clock))
        finally:
            self._on_idle()
        if len(jobs) == room or again:
            self._maybe_claim()

    def _claim_again(self) -> None:
        self._retry = None
        self._maybe_claim()

    def _wake_at(self, due: int, now: int) -> None:
        """
        Make sure the feed claims at ``due`` (ms) at the latest.
        """
        if self._wake is not None and self._wake.active():
            if self._wake_time <= due:
                return
            self._wake.cancel()
        self._wake_time = due
        self._wake = self._clock.callLater(max(0.0, (due - now) / 1000), self._woken)

    def _woken(self) -> None:
        self._wake = None
        self.poke()
