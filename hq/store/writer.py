"""
The writer thread both SQL engines use: it takes the writes queued since its
last turn (up to :data:`BATCH` of them; or, with ``merge_queued`` off, the
batches the reactor thread makes, one at a time), runs them in one
transaction and commits once, so one commit serves many writes; then it hands
the results to the reactor thread.

An engine subclasses :class:`BatchWriter` with how to run a batch
(``run_batch``), how to fail it whole (``fail_batch``) and what to release at
the end (``finish``).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from hq.store import StoreUnavailable

#: How many writes one transaction takes at most.
BATCH = 1000

#: A queued write: the operation and the Deferred to fire once it is committed.
OpT = TypeVar("OpT")


class BatchWriter(threading.Thread, Generic[OpT]):
    """
    The one thread that writes: runs queued operations in batched transactions.

    :param name: the thread's name.
    :param reactor: ``callFromThread`` hands results to the reactor thread.
    :param deliver: called on the reactor thread with each batch's results,
        a list whose items start with ``(deferred, result)``.
    :param on_commit: called on this thread after each transaction with its
        duration in seconds, the number of writes in it and whether it committed.
    """

    log = Logger()

    #: Whether a batch takes every write queued (up to :data:`BATCH`), or one
    #: queued list of writes only (each list then gets its own ``deliver``).
    merge_queued = True

    def __init__(
        self,
        name: str,
        reactor: Any,
        deliver: Callable[[list[Any]], None],
        on_commit: Callable[[float, int, bool], None] | None = None,
    ) -> None:
        super().__init__(name=name, daemon=True)
        self._reactor = reactor
        self._deliver = deliver
        self.on_commit = on_commit
        self._queue: queue.SimpleQueue[list[tuple[OpT, Deferred[Any]]] | None] = queue.SimpleQueue()
        #: Writes asked for during this turn of the reactor, handed to the
        #: thread together at its end (one wake-up of the thread, not one per
        #: write: each thread hop costs far more than the SQL it carries).
        self._pending: list[tuple[OpT, Deferred[Any]]] = []
        self._flush_call: Any = None

    def write(self, op: OpT) -> Deferred[Any]:
        """
        On the reactor thread: queue ``op`` with the other writes of this
        reactor turn; return the Deferred that fires once it is committed.
        """
        d: Deferred[Any] = Deferred()
        self._pending.append((op, d))
        if self._flush_call is None:
            self._flush_call = self._reactor.callLater(0, self.flush)
        return d

    def flush(self) -> None:
        """
        On the reactor thread: hand the writes of this reactor turn to the thread now.
        """
        self._cancel_flush()
        pending, self._pending = self._pending, []
        if pending:
            self.submit_many(pending)

    def _cancel_flush(self) -> None:
        """
        Cancel the hand-over scheduled for the end of this reactor turn.
        """
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None

    def submit(self, op: OpT) -> Deferred[Any]:
        """
        Queue one operation; return the Deferred that fires once it is committed.
        """
        d: Deferred[Any] = Deferred()
        self.submit_many([(op, d)])
        return d

    def submit_many(self, ops: list[tuple[OpT, Deferred[Any]]]) -> None:
        """
        Queue ``ops`` (each with the Deferred to fire when it is committed).
        """
        self._queue.put(ops)

    def stop(self) -> None:
        """
        End the thread once the writes queued before are done.
        """
        self._queue.put(None)

    def run(self) -> None:
        stopping = False
        while not stopping:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                # Nothing to write: background work, a bounded step at a time,
                # looking for writes between steps.
                wait = self.idle()
                if wait is not None and wait <= 0:
                    continue
                try:
                    item = self._queue.get(timeout=wait)
                except queue.Empty:
                    continue
            if item is None:
                break
            batch = list(item)
            while self.merge_queued and len(batch) < BATCH:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    break
                batch.extend(more)
            began = time.perf_counter()
            try:
                results = self.run_batch(batch)
            except Exception:
                # Never let the writer die: fail this batch's writes and go on.
                failure = Failure()
                self._reactor.callFromThread(
                    self.log.failure, "The store writer failed a batch", failure
                )
                results = self.fail_batch(batch, failure)
            self._observe(time.perf_counter() - began, len(results), results)
            self._reactor.callFromThread(self._deliver, results)
        self.finish()

    def _observe(self, seconds: float, writes: int, results: Sequence[Any]) -> None:
        if self.on_commit is None:
            return
        # A failed commit fails every write of the batch with StoreUnavailable.
        committed = not any(
            isinstance(result[1], Failure) and result[1].check(StoreUnavailable)
            for result in results
        )
        try:
            self.on_commit(seconds, writes, committed)
        except Exception:
            failure = Failure()
            self._reactor.callFromThread(self.log.failure, "The commit observer failed", failure)

    def idle(self) -> float | None:
        """
        Do one short step of background work while no write waits; return
        when to call again if no write comes first: ``0`` at once, a number of
        seconds, or ``None`` (wait for writes).
        """
        return None

    def run_batch(self, batch: list[tuple[OpT, Deferred[Any]]]) -> list[Any]:
        """
        Run ``batch`` in one transaction; return one result tuple per write,
        ``(deferred, result or Failure, ...)``.
        """
        raise NotImplementedError

    def fail_batch(self, batch: list[tuple[OpT, Deferred[Any]]], failure: Failure) -> list[Any]:
        """
        Return the results that fail every write of ``batch`` with ``failure``.
        """
        return [(d, failure) for _, d in batch]

    def finish(self) -> None:
        """
        Release what the thread holds (its connection) as it ends.
        """
