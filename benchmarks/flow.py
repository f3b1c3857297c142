"""
Flow control (SPEC §16) under load, against a real HQ server and a worker
that throttles:

- **hol**: no head-of-line blocking. A key is limited to parallelism 1 and its
  worker path is slow (each request takes a second); the backlog (10,000
  jobs) is pushed for it, then jobs for another key, one every 20 ms. The
  figures are the time from sending each of those pushes, and from its answer
  (the job committed), until the worker has the job (both read
  ``time.monotonic`` in this process).
- **aimd**: the adaptive limit. ``adaptive_flow = true``; the worker answers
  429 whenever more than ``--capacity`` requests are in flight, else takes
  20 ms and answers 200. ``--jobs`` jobs (with retries) are pushed at once and
  the key's ``limit`` (``GET /flow/{key}``) is sampled every 20 ms until all
  succeeded. Prints the figures and, when matplotlib is installed, draws the
  limit over time as a PNG (docs/flow-aimd.png).

    .venv/bin/python benchmarks/flow.py [--quick] [--plot docs/flow-aimd.png]

Used by ``benchmarks/run.py flow``. Everything is on 127.0.0.1, every wait bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from typing import Any
from urllib.parse import quote

from common import BenchmarkError, Client, HQServer, percentiles, wait_for

#: Worker paths.
SLOW, FAST, THROTTLED = "/slow", "/fast", "/throttled"


class ThrottlingWorker:
    """
    An HTTP/1.1 worker on an asyncio loop in a thread: ``/slow`` takes
    ``slow_seconds``; ``/throttled`` answers 429 above ``capacity`` requests
    in flight, else 200 after 20 ms; anything else answers 200 at once. It
    records when each job id arrived, per path.
    """

    def __init__(self, slow_seconds: float, capacity: int) -> None:
        self.slow_seconds = slow_seconds
        self.capacity = capacity
        self.arrived: dict[str, dict[str, float]] = {SLOW: {}, FAST: {}, THROTTLED: {}}
        self.in_flight = 0
        self.peak = 0
        self.throttled = 0
        self.succeeded: set[str] = set()
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> ThrottlingWorker:
        self._thread.start()
        if not self._ready.wait(10):
            raise BenchmarkError("the worker did not start")
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", 0, backlog=1024)
        )
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                path = line.split(b" ")[1].decode()
                length = 0
                job_id = ""
                while True:
                    header = await reader.readline()
                    if header in (b"\r\n", b"\n", b""):
                        break
                    name, _, value = header.decode("latin-1").partition(":")
                    name = name.strip().lower()
                    if name == "content-length":
                        length = int(value)
                    elif name == "x-hq-job-id":
                        job_id = value.strip()
                if length:
                    await reader.readexactly(length)
                status = await self._answer(path, job_id)
                writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 2\r\n\r\nok".encode())
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    async def _answer(self, path: str, job_id: str) -> int:
        now = time.monotonic()
        self.arrived.setdefault(path, {}).setdefault(job_id, now)
        if path == SLOW:
            await asyncio.sleep(self.slow_seconds)
            return 200
        if path != THROTTLED:
            return 200
        if self.in_flight >= self.capacity:
            self.throttled += 1
            return 429
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(0.02)
        finally:
            self.in_flight -= 1
        self.succeeded.add(job_id)
        return 200


def push_batch(client: Client, jobs: list[dict[str, Any]]) -> None:
    for start in range(0, len(jobs), 5000):
        status, body, _ = client.request("POST", "/jobs", json_body=jobs[start : start + 5000])
        if status != 200:
            raise BenchmarkError(f"POST /jobs: HTTP {status}: {body[:300]!r}")


def head_of_line(directory: str, backlog: int, probes: int) -> dict[str, Any]:
    """
    The ``hol`` scenario; return its figures.
    """
    worker = ThrottlingWorker(slow_seconds=1.0, capacity=1000).start()
    server = HQServer(directory).start()
    client = Client(server.base)
    try:
        client.json("PUT", "/flow/slow", json_body={"parallelism": 1})
        push_batch(client, [{"url": worker.url(SLOW), "flowKey": "slow"}] * backlog)
        # Let the feed take the backlog in before the probes.
        wait_for(lambda: worker.arrived[SLOW], 30, "the first slow job")
        time.sleep(0.5)
        sent: dict[str, float] = {}
        answered: dict[str, float] = {}
        for _ in range(probes):
            began = time.monotonic()
            job = client.json("POST", "/job", json_body={"url": worker.url(FAST)})
            sent[job["id"]] = began
            answered[job["id"]] = time.monotonic()
            time.sleep(0.02)
        wait_for(lambda: len(worker.arrived[FAST]) >= probes, 30, "the probe jobs")
        latencies = [(worker.arrived[FAST][i] - sent[i]) * 1000 for i in sent]
        # From the push's answer (the job is committed, fsync included): what
        # the feed adds, the head-of-line figure.
        after_answer = [(worker.arrived[FAST][i] - answered[i]) * 1000 for i in sent]
        flow = client.json("GET", "/flow/slow")
        return {
            "backlog": backlog,
            "probes": probes,
            "probe_latency_ms": percentiles(latencies),
            "probe_latency_max_ms": round(max(latencies), 2),
            "after_answer_ms": percentiles(after_answer),
            "after_answer_max_ms": round(max(after_answer), 2),
            "slow_running": flow["running"],
            "slow_waiting": flow["waiting"],
            "slow_started": len(worker.arrived[SLOW]),
        }
    finally:
        client.close()
        server.stop()
        worker.stop()


def aimd(
    directory: str, jobs: int, capacity: int, timeout: float, adaptive: bool = True
) -> dict[str, Any]:
    """
    The ``aimd`` scenario; return its figures and the sampled limit
    (``adaptive``: with ``adaptive_flow``; without, for comparison).
    """
    worker = ThrottlingWorker(slow_seconds=0, capacity=capacity).start()
    server = HQServer(
        directory, adaptive_flow=adaptive, retry_min_backoff=0.05, retry_max_backoff=0.5
    ).start()
    client = Client(server.base)
    key = f"127.0.0.1:{worker.port}"
    samples: list[tuple[float, int, int]] = []
    try:
        began = time.monotonic()
        push_batch(client, [{"url": worker.url(THROTTLED), "retries": 50}] * jobs)
        deadline = began + timeout
        while True:
            if time.monotonic() > deadline:
                raise BenchmarkError(
                    f"aimd: {len(worker.succeeded)} of {jobs} succeeded in {timeout} s"
                )
            flow = client.json("GET", "/flow/" + quote(key, safe=""))
            samples.append((time.monotonic() - began, flow["limit"], flow["running"]))
            if flow["running"] == 0 and flow["waiting"] == 0:
                break  # every job ended (a success, or a failure: its retries used up)
            time.sleep(0.02)
        elapsed = time.monotonic() - began
        failed = client.json("GET", "/job?status=failure&limit=-1")["count"]
        limits = [limit for _, limit, _ in samples]
        settled = limits[len(limits) // 3 :] or limits
        return {
            "jobs": jobs,
            "capacity": capacity,
            "seconds": round(elapsed, 2),
            "jobs_per_second": round(jobs / elapsed, 1),
            "succeeded": len(worker.succeeded),
            "failed_after_50_retries": failed,
            "throttled_answers": worker.throttled,
            "worker_peak_in_flight": worker.peak,
            "limit_start": limits[0] if limits else None,
            "limit_mean_after_first_third": round(statistics.mean(settled), 2) if settled else None,
            "samples": [[round(t, 3), limit, running] for t, limit, running in samples],
        }
    finally:
        client.close()
        server.stop()
        worker.stop()


def plot(result: dict[str, Any], path: str) -> bool:
    """
    Draw the limit over time; return False when matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    times = [s[0] for s in result["samples"]]
    limits = [s[1] for s in result["samples"]]
    running = [s[2] for s in result["samples"]]
    fig, (whole, zoom) = plt.subplots(2, 1, figsize=(8, 5.2), dpi=100)
    for ax, end in ((whole, None), (zoom, 3.0)):
        ax.step(times, limits, where="post", label="limit (adaptive)")
        ax.plot(times, running, ".", ms=3, alpha=0.5, label="running (sampled)")
        ax.axhline(result["capacity"], color="grey", ls="--", lw=1, label="worker capacity")
        ax.set_ylabel("requests")
        if end is not None:
            ax.set_xlim(0, end)
            ax.set_title("the first 3 seconds", fontsize=9)
    whole.set_title(
        f"AIMD: {result['jobs']} jobs, worker answers 429 above {result['capacity']} in flight"
    )
    whole.legend(loc="upper right", fontsize=8)
    zoom.set_xlabel("seconds since the push")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def run(quick: bool, work: str, plot_path: str | None = None) -> dict[str, Any]:
    """
    Both scenarios; return their results.
    """
    backlog, probes = (2_000, 20) if quick else (10_000, 50)
    hol = head_of_line(os.path.join(work, "flow-hol"), backlog=backlog, probes=probes)
    adaptive = aimd(
        os.path.join(work, "flow-aimd"), jobs=200 if quick else 1_500, capacity=4, timeout=120
    )
    fixed = aimd(
        os.path.join(work, "flow-fixed"),
        jobs=200 if quick else 1_500,
        capacity=4,
        timeout=120,
        adaptive=False,
    )
    fixed.pop("samples")
    adaptive["without_adaptive_flow"] = fixed
    if plot_path:
        adaptive["plot"] = plot_path if plot(adaptive, plot_path) else "matplotlib not installed"
    return {"hol": hol, "aimd": adaptive}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--plot", default=None, help="write the AIMD plot here (PNG)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hq-flow-") as work:
        result = run(args.quick, work, args.plot)
    samples = result["aimd"].pop("samples")
    print(json.dumps(result, indent=2))
    print(f"({len(samples)} limit samples)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
