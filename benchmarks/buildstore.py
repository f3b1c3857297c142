"""
Build a store of many finished jobs, fast, through HQ's store API.

The jobs are written with :meth:`hq.store.sqlite.SQLiteStore.create` (the same
code path and schema as a push), many at a time so that the store's writer
batches them into large transactions. Ids are made as HQ makes them, spread
evenly over ``--span-days`` that end ``--age-days`` ago; each job finished
100 ms after it was created; every ``1 / --failure-ratio``-th job failed.

With ``--scheduled-in SECONDS`` the jobs are waiting instead, created over the
last ``--span-days`` and delayed (``runAt``) to that many seconds from now,
spread over one minute: a store of scheduled jobs.

Usage: ``python benchmarks/buildstore.py DATA_DIR --jobs 1000000``
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from typing import Any

import common  # noqa: F401 (this tree's hq first on the path)
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater, react
from twisted.python.failure import Failure

from hq.ids import EPOCH_MS
from hq.model import Job, JobState
from hq.store.sqlite import SQLiteStore

DAY_MS = 86_400_000
#: Pushes in flight at once: the writer takes up to 1,000 per transaction.
_WINDOW = 20_000


def finished_jobs(
    count: int, end_ms: int, span_ms: int, failure_ratio: float, worker_url: str
) -> Iterator[Job]:
    """
    Yield ``count`` finished jobs created evenly over ``span_ms`` up to ``end_ms``.
    """
    every = round(1 / failure_ratio) if failure_ratio > 0 else 0
    step = span_ms / max(1, count)
    start = end_ms - span_ms
    last_ms = -1
    sequence = 0
    for n in range(count):
        created = int(start + n * step)
        ms = created - EPOCH_MS
        if ms == last_ms:
            sequence += 1
        else:
            last_ms, sequence = ms, 0
        job_id = (ms << 22) | sequence
        failed = every > 0 and n % every == every - 1
        yield Job(
            id=job_id,
            url=worker_url,
            name=f"bench-{n % 10}",
            comment="built by benchmarks/buildstore.py",
            payload=f'{{"n":{n},"text":"benchmark job"}}',
            state=JobState.FINISHED,
            started_at=created + 10,
            finished_at=created + 100,
            success=not failed,
            failure=failed,
            status_code=500 if failed else 200,
            err="Internal Server Error" if failed else "",
            output='{"ok":false}' if failed else '{"ok":true}',
            attempts=1,
        )


def scheduled_jobs(
    count: int, end_ms: int, span_ms: int, run_at_ms: int, worker_url: str
) -> Iterator[Job]:
    """
    Yield ``count`` waiting jobs created evenly over ``span_ms`` up to
    ``end_ms``, each due at ``run_at_ms`` plus up to one minute (a delay).
    """
    step = span_ms / max(1, count)
    start = end_ms - span_ms
    last_ms = -1
    sequence = 0
    for n in range(count):
        created = int(start + n * step)
        ms = created - EPOCH_MS
        if ms == last_ms:
            sequence += 1
        else:
            last_ms, sequence = ms, 0
        yield Job(
            id=(ms << 22) | sequence,
            url=worker_url,
            name=f"scheduled-{n % 10}",
            comment="built by benchmarks/buildstore.py --scheduled-in",
            payload=f'{{"n":{n},"text":"scheduled benchmark job"}}',
            run_at=run_at_ms + n * 60_000 // max(1, count),
            retries=3,
        )


async def fill(reactor: Any, data_dir: str, jobs: Iterator[Job], count: int) -> None:
    """
    Create the jobs through the store, ``_WINDOW`` writes in flight at a time.
    """
    store = SQLiteStore(data_dir, reactor)
    await store.open()
    began = time.monotonic()
    written = 0
    failures: list[Failure] = []
    try:
        while written < count and not failures:
            # The writer commits in order: when the last create fired, all did.
            last: Deferred[None] | None = None
            size = 0
            for job in jobs:
                last = store.create(job)
                last.addErrback(failures.append)
                size += 1
                if size >= _WINDOW:
                    break
            if last is None:
                break
            await last
            written += size
            if written % 100_000 < _WINDOW:
                rate = written / max(1e-9, time.monotonic() - began)
                print(f"  {written:,} jobs stored ({rate:,.0f}/s)", flush=True)
        await indexed(reactor, store)
    finally:
        await store.close()
    if failures:
        failures[0].raiseException()


async def indexed(reactor: Any, store: SQLiteStore) -> None:
    """
    Wait until the writer has moved every job into the search index (it does
    while it has no writes to do), as on a server that has run for a while.
    """
    began = time.monotonic()
    while True:
        backlog = await store.search_backlog()
        if not backlog:
            break
        print(f"  {backlog:,} jobs still to index", flush=True)
        await deferLater(reactor, 5, lambda: None)
    print(f"  indexed in {time.monotonic() - began:.1f} s more", flush=True)


def build(
    data_dir: str,
    count: int,
    age_days: float = 0.0,
    span_days: float = 7.0,
    failure_ratio: float = 0.01,
    worker_url: str = "http://127.0.0.1:9/job",
    scheduled_in: float | None = None,
) -> float:
    """
    Build the store in ``data_dir`` (which must not hold one yet); return the
    seconds it took. With ``scheduled_in``, of waiting jobs due that many
    seconds from now (see :func:`scheduled_jobs`).
    """
    now = int(time.time() * 1000)
    end = now - int(age_days * DAY_MS)
    jobs: Iterator[Job]
    if scheduled_in is None:
        jobs = finished_jobs(count, end, int(span_days * DAY_MS), failure_ratio, worker_url)
    else:
        run_at = now + int(scheduled_in * 1000)
        jobs = scheduled_jobs(count, end, int(span_days * DAY_MS), run_at, worker_url)
    began = time.monotonic()

    def run(reactor: Any) -> Deferred[None]:
        return Deferred.fromCoroutine(fill(reactor, data_dir, jobs, count))

    try:
        react(run)
    except SystemExit as e:
        if e.code:
            raise
    return time.monotonic() - began


def main() -> None:
    """
    Parse the arguments and build.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir")
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--age-days", type=float, default=0.0)
    parser.add_argument("--span-days", type=float, default=7.0)
    parser.add_argument("--failure-ratio", type=float, default=0.01)
    parser.add_argument(
        "--scheduled-in", type=float, default=None, help="waiting jobs due in SECONDS"
    )
    args = parser.parse_args()
    seconds = build(
        args.data_dir,
        args.jobs,
        args.age_days,
        args.span_days,
        args.failure_ratio,
        scheduled_in=args.scheduled_in,
    )
    print(f"built {args.jobs:,} jobs in {args.data_dir} in {seconds:.1f} s")


if __name__ == "__main__":
    main()
