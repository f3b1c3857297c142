"""
HQ's benchmark suite: the single entry point.

    python benchmarks/run.py                  # every benchmark, full size
    python benchmarks/run.py --quick          # every benchmark, small (< 1 min, CI)
    python benchmarks/run.py throughput latency --rounds 5
    python benchmarks/run.py scale --store-jobs 1000000
    python benchmarks/run.py scheduled --scheduled-jobs 1000000

Benchmarks: ``throughput`` (push and end-to-end rates, exactly-once),
``latency`` (push -> worker at a steady rate), ``scale`` (queries, start-up and
memory with a million finished jobs stored), ``cleanup`` (API latency while
``job_lifetime`` deletes them), ``backlog`` (100,000 jobs pushed while the
worker is stopped), ``scheduled`` (start-up and memory with a million jobs
delayed to tomorrow), ``postgres`` (one node on SQLite, one and two nodes on a
throwaway PostgreSQL, see ``postgres.py``), ``flow`` (flow control, see
``flow.py``), ``batch`` (10,000 jobs per ``POST /jobs``, see ``batch.py``) and
``schedules`` (10,000 schedules firing at once, see ``schedules.py``). Each
throughput and latency figure is measured beside a bare baseline in the same
invocation (see ``baseline.py``) and reported as a ratio to it.

Prints the figures and writes them as JSON to ``--out``. Exits 1 only when a
benchmark breaks (a crash, a timeout, a lost or duplicated job, a failed
request), never because a figure misses its target.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

from common import (
    HERE,
    PYTHON,
    ROOT,
    Baseline,
    BenchmarkError,
    Client,
    CpuShare,
    HQServer,
    RssSampler,
    Worker,
    delivery,
    loadgen,
    machine,
    median,
    percentiles,
)
from flow import run as _flow_run
from postgres import bench_postgres as _bench_postgres
from schedules import run as _schedules_run

BENCHMARKS = (
    "throughput",
    "latency",
    "connections",
    "scale",
    "cleanup",
    "backlog",
    "scheduled",
    "postgres",
    "flow",
    "batch",
    "schedules",
)

#: Targets from the issue: figure key -> (comparison, value).
TARGETS: dict[str, tuple[str, float]] = {
    "push_per_s": (">=", 1200),
    "e2e_per_s": (">=", 600),
    "e2e_ratio": (">=", 0.8),
    "push_ratio": (">=", 0.6),
    "cpu_ratio": ("<=", 1.25),
    "latency_p50_ratio": ("<=", 1.3),
    "latency_pooled_p99_ratio": ("<=", 2),
    "latency_p50_ms": ("<=", 4),
    "latency_p99_ms": ("<=", 15),
    "duplicates": ("<=", 0),
    "misses": ("<=", 0),
    "http10_misses": ("<=", 0),
    "list_newest_p99_ms": ("<=", 50),
    "list_middle_p99_ms": ("<=", 50),
    "list_failures_p99_ms": ("<=", 100),
    "stats_p99_ms": ("<=", 20),
    "term_literal_no_match_p99_ms": ("<=", 50),
    "term_regexp_no_match_p99_ms": ("<=", 1000),
    "startup_s": ("<=", 5),
    "idle_rss_mb": ("<=", 150),
    "cleanup_api_p99_ms": ("<=", 100),
    "backlog_rss_mb": ("<=", 200),
    "scheduled_startup_s": ("<=", 5),
    "scheduled_idle_rss_mb": ("<=", 150),
    "pg_e2e_ratio": (">=", 0.7),
    "flow_hol_max_ms": ("<=", 100),
    "batch_jobs_per_s": (">=", 25_000),
}


class Context:
    """
    One invocation: the options, a work directory, the shared worker, the results.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.quick: bool = args.quick
        #: Pad each pushed payload to about this many bytes (0: the jobs' own 40).
        self.payload_bytes: int = getattr(args, "payload_bytes", 0)
        os.makedirs(args.results_dir, exist_ok=True)
        self.work = tempfile.mkdtemp(prefix="run-", dir=args.results_dir)
        self.results: dict[str, Any] = {}
        self.figures: list[dict[str, Any]] = []
        self.problems: list[str] = []
        self._worker: Worker | None = None
        self._count = 0

    def directory(self, name: str) -> str:
        """
        Return a new, numbered directory for one server run.
        """
        self._count += 1
        path = os.path.join(self.work, f"{self._count:02d}-{name}")
        os.makedirs(path)
        return path

    @property
    def worker(self) -> Worker:
        """
        The shared worker, started (again) when needed.
        """
        if self._worker is None or not self._worker.alive():
            http10 = getattr(self.args, "http10", False)
            self._worker = Worker(self.work, http10=http10).start()
        return self._worker

    def worker_cpu(self) -> float:
        """
        Return the CPU seconds the shared worker has used (0 when not running).
        """
        if self._worker is None or not self._worker.alive():
            return 0.0
        return self._worker.cpu()

    def job_url(self, worker: Worker, host: str | None = None) -> str:
        """
        Return the URL jobs are pushed with, on ``worker`` (named ``host``
        instead of its address 127.0.0.1 when given).
        """
        base = worker.base if host is None else worker.base.replace("127.0.0.1", host, 1)
        return base + "/job"

    def problem(self, text: str) -> None:
        """
        Record and print something that broke.
        """
        print(f"  PROBLEM: {text}", flush=True)
        self.problems.append(text)

    def figure(
        self,
        key: str,
        label: str,
        value: float,
        unit: str,
        baseline: float | None = None,
        ratio: float | None = None,
        note: str = "",
    ) -> None:
        """
        Record one figure, with its baseline, ratio and whether it meets its target.
        """
        target = TARGETS.get(key)
        met = None
        if target is not None:
            op, limit = target
            met = value >= limit if op == ">=" else value <= limit
        self.figures.append(
            {
                "key": key,
                "label": label,
                "value": value,
                "unit": unit,
                "baseline": baseline,
                "ratio": ratio,
                "target": None if target is None else f"{target[0]} {target[1]:g}",
                "met": met,
                "note": note,
            }
        )

    def close(self) -> None:
        """
        Stop the shared worker and remove the work directory (unless ``--keep``).
        """
        if self._worker is not None:
            self._worker.stop()
        if not self.args.keep:
            shutil.rmtree(self.work, ignore_errors=True)


@contextlib.contextmanager
def running(process: Any) -> Iterator[Any]:
    """
    Stop ``process`` when the block ends, whatever happens.
    """
    try:
        yield process
    finally:
        process.stop()


# -- Profiling ------------------------------------------------------------------------


class Profiler:
    """
    ``py-spy record`` on a process and its children while a block runs (when
    ``--profile`` is given).
    """

    def __init__(self, ctx: Context, pid: int, name: str) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self.path = ""
        if not ctx.args.profile:
            return
        spy = shutil.which("py-spy") or os.path.join(os.path.dirname(PYTHON), "py-spy")
        if not os.path.exists(spy):
            ctx.problem("--profile needs py-spy (pip install py-spy)")
            return
        self.path = os.path.join(ctx.args.results_dir, f"profile-{name}.txt")
        # --subprocesses: HQ's sender process (hq.sender) is sampled too.
        record = [spy, "record", "-p", str(pid), "--subprocesses", "-r", "250", "-t"]
        self._process = subprocess.Popen(
            [*record, "-f", "raw", "-o", self.path],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)

    def stop(self) -> dict[str, Any] | None:
        """
        Stop profiling; return the summary, or ``None``.
        """
        if self._process is None:
            return None
        self._process.send_signal(signal.SIGINT)
        try:
            self._process.wait(30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            return None
        return summarize_profile(self.path)


def summarize_profile(path: str, top: int = 25) -> dict[str, Any]:
    """
    Return the functions with the most samples (self and inclusive) in a
    py-spy raw (collapsed stacks) file.
    """
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    threads: dict[str, int] = {}
    total = 0
    idle = 0
    with open(path) as f:
        for line in f:
            stack, _, count_text = line.rstrip("\n").rpartition(" ")
            if not count_text.isdigit():
                continue
            count = int(count_text)
            # With --subprocesses, a stack begins with its process and its
            # parents ('process PID:"COMMAND"', whose command may hold ";"),
            # then, with -t, its thread ("thread (TID): NAME").
            at = stack.find("thread (")
            thread, *frames = stack[at:].split(";") if at >= 0 else ["", *stack.split(";")]
            total += count
            threads[thread] = threads.get(thread, 0) + count
            if not frames:
                continue
            leaf = frames[-1]
            # Threads parked in a wait are not CPU; count them apart.
            if any(w in leaf for w in ("doPoll", "Condition.wait", "Queue.get", "wait (threading")):
                idle += count
            own[leaf] = own.get(leaf, 0) + count
            for frame in set(frames):
                inclusive[frame] = inclusive.get(frame, 0) + count

    def ranked(counts: dict[str, int]) -> list[tuple[str, float]]:
        items = sorted(counts.items(), key=lambda item: -item[1])[:top]
        return [(name, round(100 * n / max(1, total), 1)) for name, n in items]

    return {
        "file": path,
        "samples": total,
        "idle_percent": round(100 * idle / max(1, total), 1),
        "threads": ranked(threads),
        "self": ranked(own),
        "inclusive": ranked(inclusive),
    }


# -- throughput -------------------------------------------------------------------------


def server_for(kind: str, directory: str) -> Any:
    """
    Return the server a round loads: HQ for ``hq``, else the ``push`` or
    ``relay`` baseline (not started yet).
    """
    return HQServer(directory) if kind == "hq" else Baseline(directory, kind)


def burst(
    ctx: Context,
    kind: str,
    server: Any,
    directory: str,
    jobs: int,
    worker: Worker | None = None,
    host: str | None = None,
) -> dict[str, Any]:
    """
    Push ``jobs`` for ``worker`` (default: the shared one; named ``host``
    in the jobs' URL when given) to ``server`` from 32 keep-alive clients,
    each sending its next push when the last is answered; note failed pushes
    as a problem and return the load generator's result.
    """
    result = loadgen(
        "burst",
        server.base,
        ctx.job_url(worker or ctx.worker, host),
        os.path.join(directory, "loadgen.json"),
        jobs=jobs,
        concurrency=32,
        deadline=300,
        payload_bytes=ctx.payload_bytes,
    )
    if result["errors"]:
        ctx.problem(f"{kind}: {result['errors']} pushes failed: {result['error_samples'][:3]}")
    return result


def throughput_round(
    ctx: Context, kind: str, jobs: int, worker: Worker | None = None, host: str | None = None
) -> dict[str, Any]:
    """
    Push ``jobs`` with 32 clients to ``kind`` (``hq``, ``push`` or ``relay``)
    for ``worker`` (default: the shared one; named ``host`` in the jobs' URL
    when given); measure the push rate and, but for ``push``, the end-to-end
    rate.
    """
    worker = worker or ctx.worker
    worker.reset()
    directory = ctx.directory(f"throughput-{kind}")
    server = server_for(kind, directory)
    with running(server.start()):
        sampler = RssSampler(server.pid)
        profiler = Profiler(ctx, server.pid, "throughput") if kind == "hq" else None
        cpu_before = server.cpu()
        result = burst(ctx, kind, server, directory, jobs, worker, host)
        figures: dict[str, Any] = {
            "jobs": jobs,
            "push_per_s": result["pushes_per_s"],
            "push_ms": result["push_ms"],
            "errors": result["errors"],
        }
        # CPU the server used per job: steadier than rates on a shared machine.
        # Read once every job is delivered (and, for HQ, recorded), before the
        # checks below ask HQ to list them all.
        cpu_used = server.cpu() - cpu_before
        if kind != "push":
            stats = worker.wait_received(result["ok"], timeout=120)
            if kind == "hq":
                settle(server, timeout=30)
            cpu_used = server.cpu() - cpu_before
            arrivals = worker.arrivals(os.path.join(directory, "arrivals.json"))
            misses, duplicates, latencies, last = delivery(result["sends"], arrivals)
            elapsed = max(1, last - result["first_send_ns"]) / 1e9
            figures.update(
                e2e_per_s=round((result["ok"] - misses) / elapsed, 1),
                e2e_s=round(elapsed, 3),
                misses=misses,
                duplicates=duplicates,
                worker_errors=stats["errors"],
                push_to_worker_ms=percentiles(latencies),
            )
            if misses or duplicates or stats["errors"]:
                ctx.problem(
                    f"{kind}: {misses} misses, {duplicates} duplicates, "
                    f"{stats['errors']} bad requests at the worker"
                )
            if kind == "hq":
                figures["hq_check"] = check_all_succeeded(server, result["ok"], ctx)
        figures["cpu_us_per_job"] = round(cpu_used / jobs * 1e6)
        if profiler is not None:
            figures["profile"] = profiler.stop()
        figures["rss_peak_mb"] = sampler.stop()
    return figures


def settle(server: HQServer, timeout: float) -> dict[str, Any]:
    """
    Wait until HQ has no job waiting or running; return its stats.
    """
    client = Client(server.base)
    deadline = time.monotonic() + timeout
    try:
        while True:
            stats: dict[str, Any] = client.json("GET", "/stats")
            if stats["numJobsWaiting"] == 0 and stats["numJobsRunning"] == 0:
                return stats
            if time.monotonic() > deadline:
                raise BenchmarkError(f"HQ still has jobs waiting or running: {stats}")
            time.sleep(0.02)
    finally:
        client.close()


def check_all_succeeded(server: HQServer, expected: int, ctx: Context) -> dict[str, Any]:
    """
    Check in HQ's own records that every pushed job finished ``success``.
    """
    client = Client(server.base)
    try:
        stats = client.json("GET", "/stats")
        success = client.json("GET", "/job?status=success&limit=-1")["count"]
    finally:
        client.close()
    check = {"stored": stats["numStoredJobs"], "success": success}
    if stats["numStoredJobs"] != expected or success != expected:
        ctx.problem(f"HQ recorded {check}, expected {expected} successful jobs")
    return check


def bench_throughput(ctx: Context) -> dict[str, Any]:
    """
    Push and end-to-end rates beside the push and relay baselines.
    """
    jobs = ctx.args.jobs or (300 if ctx.quick else 3000)
    rounds = ctx.args.rounds or (1 if ctx.quick else 3)
    runs: dict[str, list[dict[str, Any]]] = {"push": [], "relay": [], "hq": []}
    for index in range(rounds):
        for kind in ("push", "relay", "hq"):
            run = throughput_round(ctx, kind, jobs)
            runs[kind].append(run)
            line = (
                f"  round {index + 1} {kind:5}: CPU {run['cpu_us_per_job']:5d} us/job"
                f"   push {run['push_per_s']:8.1f}/s"
            )
            if "e2e_per_s" in run:
                line += (
                    f"   end-to-end {run['e2e_per_s']:8.1f}/s"
                    f"   misses {run['misses']} duplicates {run['duplicates']}"
                )
            print(line, flush=True)

    def med(kind: str, key: str) -> float:
        return round(median([run[key] for run in runs[kind]]), 1)

    push, push_base = med("hq", "push_per_s"), med("push", "push_per_s")
    e2e, e2e_base = med("hq", "e2e_per_s"), med("relay", "e2e_per_s")
    misses = sum(run["misses"] for run in runs["hq"])
    duplicates = sum(run["duplicates"] for run in runs["hq"])
    ctx.figure(
        "push_per_s",
        f"push throughput, {jobs:,} jobs, 32 clients",
        push,
        "jobs/s",
        push_base,
        round(push / push_base, 2),
        "baseline: bare Klein push endpoint",
    )
    ctx.figure(
        "e2e_per_s",
        f"end-to-end, first push to all {jobs:,} received",
        e2e,
        "jobs/s",
        e2e_base,
        round(e2e / e2e_base, 2),
        "baseline: bare Klein -> treq relay",
    )
    ctx.figure("push_ratio", "push throughput / push baseline", round(push / push_base, 2), "x")
    ctx.figure("e2e_ratio", "end-to-end / relay", round(e2e / e2e_base, 2), "x")
    cpu, cpu_base = med("hq", "cpu_us_per_job"), med("relay", "cpu_us_per_job")
    ctx.figure(
        "cpu_us_per_job",
        "server CPU per job, push to delivered",
        cpu,
        "us",
        cpu_base,
        round(cpu / cpu_base, 2),
        "baseline: relay; lower is better; all threads, user + system",
    )
    ctx.figure("cpu_ratio", "server CPU per job / relay", round(cpu / cpu_base, 2), "x")
    ctx.figure("duplicates", "duplicates (all rounds)", duplicates, "jobs")
    ctx.figure("misses", "misses (all rounds)", misses, "jobs")
    return {"jobs": jobs, "rounds": rounds, "runs": runs}


# -- connections --------------------------------------------------------------------------


def bench_connections(ctx: Context) -> dict[str, Any]:
    """
    HQ delivering to a worker that closes each connection (HTTP/1.0, as
    Python's ``http.server``: a new connection per job), by address and by
    the name ``localhost``, beside HQ delivering to the keep-alive worker,
    taking turns. No baseline: the relay's stock connection pool loses jobs
    to such a worker.
    """
    jobs = ctx.args.jobs or (300 if ctx.quick else 3000)
    rounds = ctx.args.rounds or (1 if ctx.quick else 3)
    closing = Worker(ctx.directory("worker-http10"), http10=True).start()
    runs: dict[str, list[dict[str, Any]]] = {"keep-alive": [], "http10": [], "http10-name": []}
    try:
        for index in range(rounds):
            for name in runs:
                worker = None if name == "keep-alive" else closing
                host = "localhost" if name == "http10-name" else None
                run = throughput_round(ctx, "hq", jobs, worker, host)
                runs[name].append(run)
                print(
                    f"  round {index + 1} {name:11}: CPU {run['cpu_us_per_job']:5d} us/job"
                    f"   end-to-end {run['e2e_per_s']:8.1f}/s"
                    f"   misses {run['misses']} duplicates {run['duplicates']}",
                    flush=True,
                )
    finally:
        closing.stop()

    def med(name: str, key: str) -> float:
        return round(median([run[key] for run in runs[name]]), 1)

    keep_alive = "baseline: HQ with the keep-alive worker"
    by_address = "baseline: by address (127.0.0.1)"
    for key, label, figure, name, base, note in (
        (
            "http10_e2e_per_s",
            f"end-to-end, an HTTP/1.0 worker (a connection per job), {jobs:,} jobs",
            "e2e_per_s",
            "http10",
            "keep-alive",
            keep_alive,
        ),
        (
            "http10_cpu_us_per_job",
            "server CPU per job, an HTTP/1.0 worker",
            "cpu_us_per_job",
            "http10",
            "keep-alive",
            keep_alive,
        ),
        (
            "http10_name_e2e_per_s",
            "... the same worker named localhost in the URL: end-to-end",
            "e2e_per_s",
            "http10-name",
            "http10",
            by_address,
        ),
        (
            "http10_name_cpu_us_per_job",
            "... named localhost: server CPU per job",
            "cpu_us_per_job",
            "http10-name",
            "http10",
            by_address,
        ),
    ):
        value, base_value = med(name, figure), med(base, figure)
        unit = "jobs/s" if figure == "e2e_per_s" else "us"
        ctx.figure(key, label, value, unit, base_value, round(value / base_value, 2), note)
    ctx.figure(
        "http10_misses",
        "misses and duplicates, an HTTP/1.0 worker (all rounds)",
        sum(
            run["misses"] + run["duplicates"]
            for name in ("http10", "http10-name")
            for run in runs[name]
        ),
        "jobs",
    )
    return {"jobs": jobs, "rounds": rounds, "runs": runs}


# -- latency ------------------------------------------------------------------------------


def latency_run(ctx: Context, kind: str, jobs: int, rate: float) -> dict[str, Any]:
    """
    Push ``jobs`` at ``rate`` per second to ``kind``; return push -> worker latencies.
    """
    worker = ctx.worker
    worker.reset()
    directory = ctx.directory(f"latency-{kind}")
    server = server_for(kind, directory)
    with running(server.start()):
        result = loadgen(
            "rate",
            server.base,
            ctx.job_url(worker),
            os.path.join(directory, "loadgen.json"),
            jobs=jobs,
            concurrency=4,
            rate=rate,
            deadline=jobs / rate + 120,
            payload_bytes=ctx.payload_bytes,
        )
        if result["errors"]:
            ctx.problem(f"{kind}: {result['errors']} pushes failed: {result['error_samples'][:3]}")
        worker.wait_received(result["ok"], timeout=60)
        arrivals = worker.arrivals(os.path.join(directory, "arrivals.json"))
        misses, duplicates, latencies, _ = delivery(result["sends"], arrivals)
        if misses or duplicates:
            ctx.problem(f"{kind}: {misses} misses, {duplicates} duplicates")
        return {
            "jobs": jobs,
            "rate": rate,
            "push_ms": result["push_ms"],
            "push_to_worker_ms": percentiles(latencies),
            "misses": misses,
            "duplicates": duplicates,
            "latencies": latencies,
        }


def bench_latency(ctx: Context) -> dict[str, Any]:
    """
    Push -> worker latency at a steady rate, relay and HQ in turn.
    """
    rate = 100.0
    jobs = ctx.args.latency_jobs or (100 if ctx.quick else 3000)
    # Relay and HQ take turns in blocks, so that a burst of other work on the
    # machine falls on both alike rather than on one of them.
    rounds = ctx.args.rounds or (1 if ctx.quick else 5)
    block = max(1, jobs // rounds)
    runs: dict[str, list[dict[str, Any]]] = {"relay": [], "hq": []}
    for _ in range(rounds):
        for kind in ("relay", "hq"):
            runs[kind].append(latency_run(ctx, kind, block, rate))
    combined: dict[str, dict[str, Any]] = {}
    for kind, blocks in runs.items():
        latencies = [t for run in blocks for t in run.pop("latencies")]
        # The median over blocks, as for throughput: one block that other work
        # on the machine disturbed does not decide the figure.
        by_block = {
            key: round(median([run["push_to_worker_ms"][key] for run in blocks]), 3)
            for key in ("p50", "p90", "p99", "max")
        }
        combined[kind] = {
            "jobs": len(latencies),
            "rate": rate,
            "push_to_worker_ms": by_block,
            "pooled_ms": percentiles(latencies),
            "blocks": blocks,
        }
    relay, hq = combined["relay"], combined["hq"]
    for name, run in (("relay", relay), ("hq", hq)):
        for block in run["blocks"]:
            lat = block["push_to_worker_ms"]
            print(
                f"  {name:5} block: push -> worker p50 {lat['p50']:6.2f} ms"
                f"  p99 {lat['p99']:7.2f} ms  max {lat['max']:7.2f} ms",
                flush=True,
            )
    for name, run in (("relay", relay), ("hq", hq)):
        lat = run["pooled_ms"]
        print(
            f"  {name:5} all {run['jobs']} jobs: p50 {lat['p50']:6.2f} ms  p99 {lat['p99']:7.2f} ms"
            f"  max {lat['max']:7.2f} ms",
            flush=True,
        )
    h, r = hq["push_to_worker_ms"], relay["push_to_worker_ms"]
    ph, pr = hq["pooled_ms"], relay["pooled_ms"]

    def ratio(a: float, b: float) -> float:
        return round(a / max(b, 0.001), 2)

    note = "baseline: relay; ratio HQ / relay (lower is better)"
    for key, label, value, base in (
        ("latency_p50_ms", f"p50 (median of {rounds} blocks)", h["p50"], r["p50"]),
        ("latency_p99_ms", f"p99 (median of {rounds} blocks)", h["p99"], r["p99"]),
        ("latency_pooled_p50_ms", "p50 (all jobs pooled)", ph["p50"], pr["p50"]),
        ("latency_pooled_p99_ms", "p99 (all jobs pooled)", ph["p99"], pr["p99"]),
    ):
        ctx.figure(
            key,
            f"push -> worker at {rate:g} jobs/s, {label}",
            value,
            "ms",
            base,
            ratio(value, base),
            note,
        )
    ctx.figure(
        "latency_p50_ratio",
        "latency p50 / relay (median of blocks)",
        ratio(h["p50"], r["p50"]),
        "x",
    )
    ctx.figure(
        "latency_pooled_p99_ratio",
        "latency p99 / relay (all jobs pooled)",
        ratio(ph["p99"], pr["p99"]),
        "x",
    )
    return {"hq": hq, "relay": relay}


# -- the million-job store ------------------------------------------------------------------


def store_jobs(ctx: Context) -> int:
    """
    Return how many finished jobs the scale and clean-up store holds.
    """
    return int(ctx.args.store_jobs or (20_000 if ctx.quick else 1_000_000))


def built_store(ctx: Context) -> tuple[str, float | None]:
    """
    Return a data_dir holding the finished jobs (built once, then reused) and
    the seconds its build took (``None`` when reused).
    """
    count = store_jobs(ctx)
    from hq.store.sqlite import SCHEMA_VERSION

    # Keyed by schema version: a store of an older one would be upgraded at
    # start-up, and the start-up figure would measure the upgrade.
    name = f"finished-{count}-v{SCHEMA_VERSION}"
    cache = os.path.join(ctx.args.results_dir, "stores", name)
    marker = os.path.join(cache, "complete.json")
    if os.path.exists(marker):
        return cache, None
    shutil.rmtree(cache, ignore_errors=True)
    print(f"  building a store of {count:,} finished jobs in {cache} ...", flush=True)
    began = time.monotonic()
    completed = subprocess.run(
        [PYTHON, os.path.join(HERE, "buildstore.py"), cache, "--jobs", str(count)],
        cwd=ROOT,
        timeout=1800,
    )
    if completed.returncode != 0:
        raise BenchmarkError(f"building the store failed ({completed.returncode})")
    seconds = time.monotonic() - began
    os.remove(os.path.join(cache, "hq.lock"))
    with open(marker, "w") as f:
        json.dump({"jobs": count, "seconds": round(seconds, 1)}, f)
    print(f"  built in {seconds:.1f} s", flush=True)
    return cache, seconds


def copy_store(source: str, directory: str) -> str:
    """
    Copy the database files of ``source`` into ``directory/data``; return that.
    """
    data_dir = os.path.join(directory, "data")
    os.makedirs(data_dir)
    for name in os.listdir(source):
        if name.startswith("hq.sqlite3"):
            shutil.copyfile(os.path.join(source, name), os.path.join(data_dir, name))
    return data_dir


def timed(
    client: Client, path: str, samples: int, check: Callable[[Any], bool] | None = None
) -> list[float]:
    """
    Request ``GET path`` ``samples`` times (after 3 unmeasured); return the times in ms.
    """
    times = []
    for index in range(samples + 3):
        status, body, elapsed = client.request("GET", path)
        if status != 200:
            raise BenchmarkError(f"GET {path}: HTTP {status}: {body[:300]!r}")
        if check is not None and index == 0 and not check(json.loads(body)):
            raise BenchmarkError(f"GET {path}: unexpected answer {body[:300]!r}")
        if index >= 3:
            times.append(elapsed)
    return times


def bench_scale(ctx: Context) -> dict[str, Any]:
    """
    Queries, start-up and memory with the big store.
    """
    count = store_jobs(ctx)
    source, build_seconds = built_store(ctx)
    directory = ctx.directory("scale")
    data_dir = copy_store(source, directory)
    samples = 30 if ctx.quick else 300
    server = HQServer(directory, data_dir=data_dir)
    result: dict[str, Any] = {"store_jobs": count, "build_s": build_seconds}
    with running(server.start(timeout=120)):
        result["startup_s"] = round(server.listening_after, 3)
        time.sleep(1)
        result["rss_after_start_mb"] = server.rss()
        client = Client(server.base)
        newest = client.json("GET", "/job?reverse=true&limit=1")["jobs"][0]["id"]
        oldest = client.json("GET", "/job?limit=1")["jobs"][0]["id"]
        low, high = int(oldest), int(newest)
        rng = random.Random(7)

        def middle() -> int:
            return rng.randint(low + (high - low) // 4, high - (high - low) // 4)

        def full_page(page: Any) -> bool:
            return bool(page["count"] == 100 and page["hasNext"])

        queries: dict[str, list[float]] = {}
        queries["floor"] = timed(client, "/", samples)
        queries["list_newest"] = timed(client, "/job?reverse=true&limit=100", samples, full_page)
        queries["list_middle"] = []
        for _ in range(samples // 2):
            queries["list_middle"] += timed(client, f"/job?begin={middle()}&limit=100", 1)
            queries["list_middle"] += timed(
                client, f"/job?begin={middle()}&reverse=true&limit=100", 1, full_page
            )
        queries["list_failures"] = timed(client, "/job?status=failure&limit=100", samples)
        queries["list_failures_middle"] = []
        for _ in range(samples // 2):
            queries["list_failures_middle"] += timed(
                client, f"/job?status=failure&begin={middle()}&reverse=true&limit=100", 1
            )
        queries["stats"] = timed(client, "/stats", samples)
        queries["get_job"] = []
        for _ in range(samples):
            queries["get_job"] += timed(client, f"/job/{newest}", 1)
        queries["list_name"] = timed(client, "/job?name=bench-3&reverse=true&limit=100", samples)
        # Searches that match nothing: the worst case of the UI's search box. A
        # literal (3+ characters) is looked up in the trigram index; a regexp
        # with no such literal reads every row, a chunk at a time
        # (docs/performance.md, "Search").
        queries["search_absent"] = timed(client, "/job?term=absent&limit=100", samples // 3)
        queries["search_regexp_absent"] = timed(
            client, "/job?term=%5Bqxz%5D%7B3%7D&limit=100", samples // 15
        )
        # Informational: a regexp with a literal (the index, then the regexp) and a
        # digits-only literal (it may be in an id, which the index does not hold).
        queries["search_regexp_literal_absent"] = timed(
            client, "/job?term=abs(e%7Co)nt.%2A&limit=100", samples // 3
        )
        queries["search_digits_absent"] = timed(
            client, "/job?term=0000000000&limit=100", samples // 15
        )
        client.close()
        time.sleep(2)
        result["idle_rss_mb"] = server.rss()
        result["queries_ms"] = {name: percentiles(times) for name, times in queries.items()}
        began = time.monotonic()
    status = server.process.returncode if server.process else None
    result["shutdown_s"] = round(time.monotonic() - began, 2)
    if status not in (0, None):
        ctx.problem(f"HQ exited with {status} after the scale run")
    q = result["queries_ms"]
    for name, stats in q.items():
        print(
            f"  {name:28} p50 {stats['p50']:7.2f} ms   p99 {stats['p99']:7.2f} ms"
            f"   max {stats['max']:7.2f} ms",
            flush=True,
        )
    print(
        f"  start-up {result['startup_s']} s, RSS after start {result['rss_after_start_mb']} MB,"
        f" idle after queries {result['idle_rss_mb']} MB",
        flush=True,
    )
    floor = q["floor"]["p99"]
    note = f"{count:,} jobs stored; baseline: GET / on the same server"

    def ratio(value: float) -> float:
        return round(value / max(floor, 0.001), 1)

    for key, name, label in (
        ("list_newest_p99_ms", "list_newest", "GET /job?reverse=true&limit=100 p99"),
        ("list_middle_p99_ms", "list_middle", "GET /job?begin=<middle>&limit=100 p99"),
        ("list_failures_p99_ms", "list_failures", "GET /job?status=failure&limit=100 p99"),
        ("stats_p99_ms", "stats", "GET /stats p99"),
        ("term_literal_no_match_p99_ms", "search_absent", "GET /job?term=absent p99 (no match)"),
        (
            "term_regexp_no_match_p99_ms",
            "search_regexp_absent",
            "GET /job?term=[qxz]{3} p99 (no match)",
        ),
    ):
        value = q[name]["p99"]
        ctx.figure(key, label, value, "ms", floor, ratio(value), note)
    ctx.figure("startup_s", "start-up to serving", result["startup_s"], "s", note=note)
    ctx.figure("idle_rss_mb", "RSS of the idle server", result["idle_rss_mb"], "MB", note=note)
    return result


# -- cleanup ----------------------------------------------------------------------------------


def bench_cleanup(ctx: Context) -> dict[str, Any]:
    """
    API latency while ``job_lifetime`` deletes every job of the big store.
    """
    count = store_jobs(ctx)
    source, _ = built_store(ctx)
    directory = ctx.directory("cleanup")
    data_dir = copy_store(source, directory)
    worker = ctx.worker
    worker.reset()
    # Every stored job finished more than a second ago: all of them expire.
    server = HQServer(directory, data_dir=data_dir, job_lifetime=1)
    calls: dict[str, list[float]] = {"stats": [], "list_newest": [], "push": []}
    result: dict[str, Any] = {"store_jobs": count}
    with running(server.start(timeout=120)):
        ready = time.monotonic()
        sampler = RssSampler(server.pid)
        client = Client(server.base)
        pushes = 0
        deadline = ready + (60 if ctx.quick else 900)
        body = {"url": ctx.job_url(worker), "name": "during-cleanup"}
        while True:
            status, data, elapsed = client.request("GET", "/stats")
            if status != 200:
                raise BenchmarkError(f"GET /stats: HTTP {status}")
            calls["stats"].append(elapsed)
            stored = json.loads(data)["numStoredJobs"]
            if stored <= pushes:
                break
            if time.monotonic() > deadline:
                raise BenchmarkError(f"{stored} jobs still stored after the deadline")
            status, data, elapsed = client.request("GET", "/job?reverse=true&limit=100")
            if status != 200:
                raise BenchmarkError(f"GET /job: HTTP {status}")
            calls["list_newest"].append(elapsed)
            status, data, elapsed = client.request("POST", "/job", json_body=body)
            if status != 200:
                raise BenchmarkError(f"POST /job: HTTP {status}: {data[:200]!r}")
            calls["push"].append(elapsed)
            pushes += 1
            time.sleep(0.01)
        result["delete_s"] = round(time.monotonic() - ready, 2)
        # The counter says so; check that the rows are gone too.
        left = client.json("GET", "/job?limit=1&name=%5Ebench-")["count"]
        if left:
            ctx.problem("expired jobs are still listed after the clean-up")
        client.close()
        result["pushes_during"] = pushes
        received = worker.wait_received(pushes, timeout=30)
        if received["unique"] != pushes or received["duplicates"]:
            ctx.problem(f"pushes during the clean-up: {pushes} pushed, worker saw {received}")
        result["rss_peak_mb"] = sampler.stop()
    everything = [t for times in calls.values() for t in times]
    result["api_ms"] = percentiles(everything)
    result["by_call_ms"] = {name: percentiles(times) for name, times in calls.items()}
    print(
        f"  deleted {count:,} jobs in {result['delete_s']} s; API during it:"
        f" p50 {result['api_ms']['p50']:.2f} ms p99 {result['api_ms']['p99']:.2f} ms"
        f" max {result['api_ms']['max']:.2f} ms; RSS peak {result['rss_peak_mb']} MB",
        flush=True,
    )
    ctx.figure(
        "cleanup_api_p99_ms",
        f"API p99 while {count:,} expired jobs are deleted",
        result["api_ms"]["p99"],
        "ms",
        note=f"deleted in {result['delete_s']} s; /stats, /job list and push in turn",
    )
    return result


# -- backlog ----------------------------------------------------------------------------------


def bench_backlog(ctx: Context) -> dict[str, Any]:
    """
    Memory and delivery of a backlog pushed while the worker is stopped.
    """
    jobs = ctx.args.backlog_jobs or (2_000 if ctx.quick else 100_000)
    queues = 256 if ctx.quick else 8192
    directory = ctx.directory("backlog")
    worker = Worker(directory).start()
    server = HQServer(directory, queues=queues)
    result: dict[str, Any] = {"jobs": jobs, "queues": queues}
    with running(worker), running(server.start()):
        sampler = RssSampler(server.pid)
        worker.signal(signal.SIGSTOP)
        try:
            pushed = loadgen(
                "burst",
                server.base,
                ctx.job_url(worker),
                os.path.join(directory, "loadgen.json"),
                jobs=jobs,
                concurrency=32,
                deadline=900,
            )
            client = Client(server.base)
            stats = client.json("GET", "/stats")
            client.close()
            result["stats_while_down"] = stats
            result["push_per_s"] = pushed["pushes_per_s"]
            result["rss_while_down_mb"] = server.rss()
        finally:
            worker.signal(signal.SIGCONT)
        if pushed["errors"]:
            ctx.problem(f"backlog: {pushed['errors']} pushes failed: {pushed['error_samples'][:3]}")
        began = time.monotonic()
        received = worker.wait_received(pushed["ok"], timeout=max(120, jobs / 100))
        result["drain_s"] = round(time.monotonic() - began, 2)
        settle(server, timeout=60)
        arrivals = worker.arrivals(os.path.join(directory, "arrivals.json"))
        misses, duplicates, _, _ = delivery(pushed["sends"], arrivals)
        result.update(misses=misses, duplicates=duplicates, worker_errors=received["errors"])
        result["rss_peak_mb"] = sampler.stop()
    if misses or duplicates:
        ctx.problem(f"backlog: {misses} misses, {duplicates} duplicates")
    print(
        f"  {jobs:,} pushed at {result['push_per_s']}/s while the worker was stopped"
        f" (in memory: {result['stats_while_down']['numJobsInQueue']}); delivered in"
        f" {result['drain_s']} s; misses {misses} duplicates {duplicates};"
        f" RSS peak {result['rss_peak_mb']} MB",
        flush=True,
    )
    ctx.figure(
        "backlog_rss_mb",
        f"RSS peak, {jobs:,} jobs pushed while the worker is stopped",
        result["rss_peak_mb"],
        "MB",
        note=f"queues = {queues}; all delivered in {result['drain_s']} s after it came back"
        f" ({misses} misses, {duplicates} duplicates)",
    )
    return result


# -- scheduled --------------------------------------------------------------------------------

#: Seconds ahead the scheduled jobs are due: a day, and a store is rebuilt
#: once less than an hour of that is left (its jobs must not become due).
SCHEDULED_IN = 86_400
_SCHEDULED_MARGIN_S = 3_600


def scheduled_store(ctx: Context) -> tuple[str, int, float | None]:
    """
    Return a data_dir holding the scheduled jobs (built once, reused while
    they are more than an hour from due), how many, and the seconds its
    build took (``None`` when reused).
    """
    count = int(ctx.args.scheduled_jobs or (20_000 if ctx.quick else 1_000_000))
    from hq.store.sqlite import SCHEMA_VERSION

    cache = os.path.join(ctx.args.results_dir, "stores", f"scheduled-{count}-v{SCHEMA_VERSION}")
    marker = os.path.join(cache, "complete.json")
    if os.path.exists(marker):
        with open(marker) as f:
            due_at = json.load(f).get("due_at", 0)
        if due_at - time.time() > _SCHEDULED_MARGIN_S:
            return cache, count, None
    shutil.rmtree(cache, ignore_errors=True)
    print(f"  building a store of {count:,} scheduled jobs in {cache} ...", flush=True)
    began = time.monotonic()
    due_at = time.time() + SCHEDULED_IN
    completed = subprocess.run(
        [
            PYTHON,
            os.path.join(HERE, "buildstore.py"),
            cache,
            "--jobs",
            str(count),
            "--span-days",
            "1",
            "--scheduled-in",
            str(SCHEDULED_IN),
        ],
        cwd=ROOT,
        timeout=1800,
    )
    if completed.returncode != 0:
        raise BenchmarkError(f"building the scheduled store failed ({completed.returncode})")
    seconds = time.monotonic() - began
    os.remove(os.path.join(cache, "hq.lock"))
    with open(marker, "w") as f:
        json.dump({"jobs": count, "seconds": round(seconds, 1), "due_at": due_at}, f)
    print(f"  built in {seconds:.1f} s", flush=True)
    return cache, count, seconds


def bench_scheduled(ctx: Context) -> dict[str, Any]:
    """
    Start-up and idle memory with a million jobs delayed to tomorrow: they
    live in the store, not in memory, and nothing is delivered or polled.
    """
    source, count, build_seconds = scheduled_store(ctx)
    directory = ctx.directory("scheduled")
    data_dir = copy_store(source, directory)
    server = HQServer(directory, data_dir=data_dir)
    result: dict[str, Any] = {"scheduled_jobs": count, "build_s": build_seconds}
    with running(server.start(timeout=120)):
        result["startup_s"] = round(server.listening_after, 3)
        sampler = RssSampler(server.pid)
        client = Client(server.base)
        stats = client.json("GET", "/stats")
        if stats.get("numJobsScheduled") != count or stats.get("numJobsInQueue"):
            ctx.problem(f"scheduled: /stats says {stats}, expected {count:,} scheduled")
        result["stats_ms"] = percentiles(timed(client, "/stats", 10 if ctx.quick else 50))
        result["list_scheduled_ms"] = percentiles(
            timed(client, "/job?status=scheduled&limit=100", 10 if ctx.quick else 50)
        )
        client.close()
        # Idle: nothing is due, so nothing should read the store or use the CPU.
        idle = 3 if ctx.quick else 10
        cpu = server.cpu()
        time.sleep(idle)
        result["idle_cpu_share"] = round((server.cpu() - cpu) / idle, 4)
        result["idle_rss_mb"] = server.rss()
        result["rss_peak_mb"] = sampler.stop()
        began = time.monotonic()
    result["shutdown_s"] = round(time.monotonic() - began, 2)
    print(
        f"  {count:,} scheduled jobs: start-up {result['startup_s']} s,"
        f" idle RSS {result['idle_rss_mb']} MB (peak {result['rss_peak_mb']} MB),"
        f" idle CPU {result['idle_cpu_share']:.1%},"
        f" GET /stats p99 {result['stats_ms']['p99']:.2f} ms,"
        f" GET /job?status=scheduled p99 {result['list_scheduled_ms']['p99']:.2f} ms",
        flush=True,
    )
    note = f"{count:,} jobs delayed by a day in the store"
    ctx.figure("scheduled_startup_s", "start-up to serving", result["startup_s"], "s", note=note)
    ctx.figure(
        "scheduled_idle_rss_mb", "RSS of the idle server", result["idle_rss_mb"], "MB", note=note
    )
    return result


# -- PostgreSQL ----------------------------------------------------------------------------


def bench_postgres(ctx: Context) -> dict[str, Any]:
    """
    One node on SQLite beside one and two nodes on PostgreSQL (``postgres.py``).
    """
    return _bench_postgres(ctx)


def bench_flow(ctx: Context) -> dict[str, Any]:
    """
    Flow control (``flow.py``): no head-of-line blocking, and the AIMD limit.
    """
    plot = None if ctx.quick else os.path.join(ROOT, "docs", "flow-aimd.png")
    result = _flow_run(ctx.quick, ctx.work, plot)
    hol, adaptive = result["hol"], result["aimd"]
    ctx.figure(
        "flow_hol_max_ms",
        f"another key's job, push answered -> worker, behind {hol['backlog']:,} jobs"
        " of a key at parallelism 1, max",
        hol["after_answer_max_ms"],
        "ms",
    )
    ctx.figure(
        "flow_hol_sent_p50_ms",
        "... from the push sent (its commit included), p50",
        hol["probe_latency_ms"]["p50"],
        "ms",
    )
    ctx.figure(
        "flow_hol_sent_max_ms", "... from the push sent, max", hol["probe_latency_max_ms"], "ms"
    )
    ctx.figure(
        "flow_aimd_rate",
        f"AIMD against a worker of capacity {adaptive['capacity']}: jobs/s",
        adaptive["jobs_per_second"],
        "jobs/s",
    )
    ctx.figure(
        "flow_aimd_limit",
        "AIMD: mean limit after the first third",
        adaptive["limit_mean_after_first_third"],
        "",
    )
    print(json.dumps({k: v for k, v in adaptive.items() if k != "samples"}), flush=True)
    print(json.dumps(hol), flush=True)
    return result


def bench_batch(ctx: Context) -> dict[str, Any]:
    """
    Batch push (``batch.py``, in a process of its own: it runs its own reactor).
    """
    jobs, rounds = (1_000, 2) if ctx.quick else (10_000, 5)
    completed = subprocess.run(
        [PYTHON, os.path.join(HERE, "batch.py"), "--jobs", str(jobs), "--rounds", str(rounds)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    print(completed.stdout, end="", flush=True)
    if completed.returncode != 0:
        raise BenchmarkError(f"batch.py exited {completed.returncode}: {completed.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    ctx.figure(
        "batch_jobs_per_s",
        f"batch push (POST /jobs, {jobs:,} per request), stored, median of {rounds}",
        round(result["median_jobs_per_second"]),
        "jobs/s",
    )
    ctx.figure(
        "batch_stall_ms",
        "... longest reactor stall during a batch",
        round(result["worst_stall_ms"], 1),
        "ms",
    )
    return result


def bench_schedules(ctx: Context) -> dict[str, Any]:
    """
    Schedules at scale (``schedules.py``): memory, and lateness when all fire at once.
    """
    count, rounds = (300, 1) if ctx.quick else (10_000, 2)
    result = _schedules_run(count, rounds)
    print(f"  {json.dumps(result)}", flush=True)
    if result["missing_fires"]:
        ctx.problem(
            f"schedules: {result['missing_fires']} of {result['expected_fires']} fires missing"
        )
    ctx.figure(
        "schedules_rss_mb",
        f"RSS with {count:,} schedules (an empty server: {result['rss_empty_kib'] / 1024:.1f} MB)",
        round(result["rss_with_schedules_kib"] / 1024, 1),
        "MB",
    )
    if result["fires"]:
        ctx.figure(
            "schedules_late_p99_ms",
            f"{count:,} schedules firing in the same second: job created after its time, p99",
            result["lateness_ms"]["p99"],
            "ms",
        )
    return result


# -- main --------------------------------------------------------------------------------------


def print_table(figures: list[dict[str, Any]]) -> None:
    """
    Print the figures as a Markdown table.
    """
    print()
    print("| figure | HQ | baseline | ratio | target | met |")
    print("|---|---|---|---|---|---|")
    for f in figures:
        baseline = "" if f["baseline"] is None else f"{f['baseline']:g}"
        ratio = "" if f["ratio"] is None else f"{f['ratio']:g}"
        met = {True: "yes", False: "**miss**", None: ""}[f["met"]]
        print(
            f"| {f['label']} | {f['value']:g} {f['unit']} | {baseline} | {ratio} |"
            f" {f['target'] or ''} | {met} |"
        )


def main() -> int:
    """
    Run the chosen benchmarks; return the exit status.
    """
    parser = argparse.ArgumentParser(
        description="HQ's benchmarks.", formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "benchmarks", nargs="*", metavar="BENCHMARK", help=f"any of {', '.join(BENCHMARKS)}"
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "latest.json"))
    parser.add_argument("--results-dir", default=os.path.join(HERE, "results"))
    parser.add_argument("--rounds", type=int, default=0, help="throughput rounds (3)")
    parser.add_argument("--jobs", type=int, default=0, help="throughput jobs (3000)")
    parser.add_argument("--latency-jobs", type=int, default=0, help="latency jobs (3000)")
    parser.add_argument("--store-jobs", type=int, default=0, help="scale store (1000000)")
    parser.add_argument("--backlog-jobs", type=int, default=0, help="backlog jobs (100000)")
    parser.add_argument("--scheduled-jobs", type=int, default=0, help="scheduled store (1000000)")
    parser.add_argument("--profile", action="store_true", help="py-spy HQ in throughput")
    parser.add_argument("--keep", action="store_true", help="keep the run's directories")
    args = parser.parse_args()
    chosen = args.benchmarks or list(BENCHMARKS)
    unknown = [name for name in chosen if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(BENCHMARKS)}")
    ctx = Context(args)
    began = time.monotonic()
    document: dict[str, Any] = {
        "command": " ".join(["python", "benchmarks/run.py", *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": machine(),
    }
    broken = False
    try:
        for name in chosen:
            print(f"== {name}", flush=True)
            share = CpuShare(ctx.worker_cpu)
            share.start()
            try:
                ctx.results[name] = globals()[f"bench_{name}"](ctx)
            except Exception as e:
                broken = True
                ctx.problem(f"{name} broke: {e}")
                traceback.print_exc()
            # Other work on the machine moves every figure: keep a trace of it.
            other = share.stop()
            document.setdefault("other_cpu_share", {})[name] = other
            print(f"  (other processes used {other:.0%} of the cores meanwhile)", flush=True)
    finally:
        ctx.close()
    document["seconds"] = round(time.monotonic() - began, 1)
    document["figures"] = ctx.figures
    document["problems"] = ctx.problems
    document["results"] = ctx.results
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(document, f, indent=2)
    print_table(ctx.figures)
    print(f"\n{document['seconds']} s; results in {args.out}")
    if ctx.problems:
        print(f"{len(ctx.problems)} problem(s):")
        for text in ctx.problems:
            print(f"  - {text}")
    return 1 if broken or ctx.problems else 0


if __name__ == "__main__":
    sys.exit(main())
