"""
Batch push (``POST /jobs``): how fast a 10,000-job batch is stored, and how
long the reactor is held meanwhile.

The API runs in this process over the real SQLite store (durable as shipped)
on a loopback socket, with a dispatcher that records and delivers nothing, and
the garbage collector set as the server sets it once started
(:func:`hq.gctune.settle`), so the figure is the API and the store alone. A
5 ms LoopingCall measures the longest stall of the reactor during each batch.

    .venv/bin/python benchmarks/batch.py [--jobs 10000] [--rounds 5]

Prints a line per round, then the summary as one line of JSON; exits 1 if a
batch failed. ``run.py batch`` runs it too.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from typing import Any

import common  # noqa: F401 (this tree's hq first on the path)
from treq.client import HTTPClient
from twisted.internet import reactor, task
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.server import Site

from hq import gctune
from hq.api import HQApi
from hq.config import Config
from hq.ids import IdGenerator
from hq.store.sqlite import SQLiteStore
from hq.testing import RecordingDispatch

TICK = 0.005


class StallMeter:
    """
    The longest gap between ticks of a LoopingCall, beyond its interval.
    """

    def __init__(self) -> None:
        self.last = time.perf_counter()
        self.worst = 0.0
        self.loop = task.LoopingCall(self.tick)

    def tick(self) -> None:
        now = time.perf_counter()
        self.worst = max(self.worst, now - self.last - TICK)
        self.last = now

    def reset(self) -> None:
        self.last = time.perf_counter()
        self.worst = 0.0


async def run(jobs: int, rounds: int) -> dict[str, Any]:
    directory = tempfile.mkdtemp(prefix="hq-batch-")
    try:
        return await _run(directory, jobs, rounds)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def _run(directory: str, jobs: int, rounds: int) -> dict[str, Any]:
    store = SQLiteStore(directory, reactor)
    await store.open()
    config = Config(max_batch_jobs=jobs, max_body_bytes=64 << 20)
    api = HQApi(
        store=store,
        dispatch=RecordingDispatch(),
        ids=IdGenerator(0, reactor),
        clock=reactor,
        config=config,
    )
    port = reactor.listenTCP(0, Site(api.resource()), interface="127.0.0.1")
    url = f"http://127.0.0.1:{port.getHost().port}/jobs"
    pool = HTTPConnectionPool(reactor)
    client = HTTPClient(Agent(reactor, pool=pool))
    meter = StallMeter()
    meter.loop.start(TICK)
    gctune.settle()
    results = []
    try:
        for round_ in range(rounds):
            results.append(await _round(client, url, jobs, round_, meter))
    finally:
        # Also after a failure: the store's writer thread would keep the process alive.
        meter.loop.stop()
        await pool.closeCachedConnections()
        await port.stopListening()
        await store.close()
    best = min(r["seconds"] for r in results)
    median = sorted(r["seconds"] for r in results)[len(results) // 2]
    return {
        "jobs": jobs,
        "median_jobs_per_second": jobs / median,
        "best_jobs_per_second": jobs / best,
        "worst_stall_ms": max(r["stall"] for r in results) * 1000,
    }


async def _round(
    client: HTTPClient, url: str, jobs: int, round_: int, meter: StallMeter
) -> dict[str, float]:
    """
    Push one batch of ``jobs``; return its time and the longest reactor stall.
    """
    body = json.dumps(
        [
            {"url": "http://127.0.0.1:8000/", "name": "bench", "payload": {"n": i, "r": round_}}
            for i in range(jobs)
        ]
    ).encode()
    meter.reset()
    began = time.perf_counter()
    response = await client.post(url, data=body, headers={"Content-Type": "application/json"})
    answer = await response.json()
    seconds = time.perf_counter() - began
    if response.code != 200 or len(answer["ids"]) != jobs:
        raise RuntimeError(f"batch failed: {response.code} {str(answer)[:200]}")
    print(
        f"round {round_ + 1}: {jobs} jobs in {seconds * 1000:.0f} ms = "
        f"{jobs / seconds:,.0f} jobs/s stored; "
        f"longest reactor stall {meter.worst * 1000:.0f} ms",
        flush=True,
    )
    return {"seconds": seconds, "stall": meter.worst}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args(argv)
    summary: dict[str, Any] = {}

    async def go() -> None:
        summary.update(await run(options.jobs, options.rounds))

    def done(result: object) -> None:
        if isinstance(result, Failure):
            result.printTraceback(file=sys.stderr)
        reactor.stop()

    reactor.callWhenRunning(lambda: Deferred.fromCoroutine(go()).addBoth(done))
    reactor.run()
    if not summary:
        return 1
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
