"""
Batch push (``POST /jobs``): how fast a 10,000-job batch is stored, and how
long the reactor is held meanwhile.

The API runs in this process over the real SQLite store (durable as shipped)
on a loopback socket, with a dispatcher that records and delivers nothing, so
the figure is the API and the store alone. A 5 ms LoopingCall measures the
longest stall of the reactor during each batch.

    .venv/bin/python benchmarks/batch.py [--jobs 10000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from typing import Any

import common  # noqa: F401 (this tree's hq first on the path)
from treq.client import HTTPClient
from twisted.internet import reactor, task
from twisted.internet.defer import Deferred
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.server import Site

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
    client = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor)))
    meter = StallMeter()
    meter.loop.start(TICK)
    results = []
    for round_ in range(rounds):
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
            raise SystemExit(f"batch failed: {response.code} {str(answer)[:200]}")
        results.append({"seconds": seconds, "stall": meter.worst})
        print(
            f"round {round_ + 1}: {jobs} jobs in {seconds * 1000:.0f} ms = "
            f"{jobs / seconds:,.0f} jobs/s stored; "
            f"longest reactor stall {meter.worst * 1000:.0f} ms",
            flush=True,
        )
    meter.loop.stop()
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


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args(argv)
    summary: dict[str, Any] = {}

    async def go() -> None:
        summary.update(await run(options.jobs, options.rounds))

    def done(result: object) -> object:
        reactor.stop()
        return result

    reactor.callWhenRunning(lambda: Deferred.fromCoroutine(go()).addBoth(done))
    reactor.run()
    print(json.dumps(summary))


if __name__ == "__main__":
    main(sys.argv[1:])
