"""
The PostgreSQL store beside SQLite, in one run (the ``postgres`` benchmark of
``run.py``): push and end-to-end throughput and push -> worker latency of one
node on SQLite, one node on PostgreSQL, and two nodes on one PostgreSQL; the
CPU per job of HQ and of PostgreSQL.

PostgreSQL is a throwaway server started the way the tests start theirs
(``tests/pgserver.py``: ``initdb`` and ``pg_ctl`` in a temporary directory on
127.0.0.1, as the ``postgres`` user when run as root), but *durable* (``fsync``
and ``synchronous_commit`` on, as SQLite's ``synchronous = FULL`` is), and
removed at the end. ``HQ_BENCH_POSTGRES_URL`` names an existing server to use
instead (a role that may create databases; each round gets its own).

The CPU of PostgreSQL is read from ``/proc``: the postmaster and its children
(the backends serving HQ, the WAL writer, the checkpointer...), or, with
``HQ_BENCH_POSTGRES_URL``, every process named ``postgres`` this machine shows.
Read before the nodes stop, since a backend's CPU leaves ``/proc`` with it.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from common import (
    BenchmarkError,
    Client,
    HQServer,
    child_pids,
    commit_metrics,
    cpu_seconds,
    delivery,
    loadgen,
    median,
    metrics_text,
    percentiles,
)

#: The environment variable naming an existing PostgreSQL to use.
URL_VARIABLE = "HQ_BENCH_POSTGRES_URL"

#: The setups compared: name -> number of PostgreSQL nodes (0: one node on SQLite).
SETUPS = {"sqlite": 0, "pg1": 1, "pg2": 2}


class Database:
    """
    The PostgreSQL the benchmark uses: a fresh database per round, and the
    CPU its processes have used so far.
    """

    def __init__(self) -> None:
        from tests import pgserver

        url = os.environ.get(URL_VARIABLE)
        self.postmaster = 0
        if url:
            self.server: Any = pgserver.ExternalServer(url)
            self.where = "HQ_BENCH_POSTGRES_URL"
        else:
            self.server = pgserver.PostgresServer()
            self.server.start(durable=True)
            with open(os.path.join(self.server.data, "postmaster.pid")) as f:
                self.postmaster = int(f.readline())
            self.where = "throwaway, durable (fsync on, synchronous_commit on)"
        self.version = self._version()

    def _version(self) -> str:
        import psycopg

        with psycopg.connect(self.server.dsn(), autocommit=True) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else "?"

    def new_database(self) -> str:
        """
        Return the URL of a new, empty database.
        """
        return str(self.server.new_database())

    def pids(self) -> list[int]:
        """
        Return the PostgreSQL processes: the postmaster and its children, or
        every process named ``postgres`` for a server not started here.
        """
        if self.postmaster:
            return [self.postmaster, *child_pids(self.postmaster)]
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    text = f.read()
            except OSError:
                continue
            if text[text.index("(") + 1 : text.rindex(")")] == "postgres":
                found.append(int(entry))
        return found

    def cpu(self) -> float:
        """
        Return the CPU seconds the PostgreSQL processes alive now have used.
        """
        return sum(cpu_seconds(pid) for pid in self.pids())

    def close(self) -> None:
        """
        Stop and remove the throwaway server (drop the databases of an external one).
        """
        self.server.remove()


def _nodes(ctx: Any, db: Database, setup: str, purpose: str) -> list[HQServer]:
    count = SETUPS[setup]
    if count == 0:
        return [HQServer(ctx.directory(f"{purpose}-sqlite"))]
    url = db.new_database()
    return [
        HQServer(ctx.directory(f"{purpose}-{setup}-node{n}"), store=url, server_id=n)
        for n in range(1, count + 1)
    ]


def _start(nodes: list[HQServer]) -> None:
    for node in nodes:
        node.start()


def _stop(nodes: list[HQServer]) -> None:
    for node in nodes:
        node.stop()


def _settle(node: HQServer, expected: int, timeout: float) -> dict[str, Any]:
    """
    Wait until no job waits or runs (cluster-wide on PostgreSQL); return the
    stored and successful counts.
    """
    client = Client(node.base)
    deadline = time.monotonic() + timeout
    try:
        while True:
            stats: dict[str, Any] = client.json("GET", "/stats")
            if stats["numJobsWaiting"] == 0 and stats["numJobsRunning"] == 0:
                break
            if time.monotonic() > deadline:
                raise BenchmarkError(f"HQ still has jobs waiting or running: {stats}")
            time.sleep(0.02)
        success = client.json("GET", "/job?status=success&limit=-1")["count"]
    finally:
        client.close()
    return {"stored": stats["numStoredJobs"], "success": success, "expected": expected}


def _load(
    ctx: Any, nodes: list[HQServer], mode: str, jobs: int, concurrency: int, rate: float
) -> dict[str, Any]:
    """
    Run one load generator per node at once, ``jobs`` and ``concurrency`` (and
    ``rate``) shared between them; return the results merged.
    """
    worker = ctx.worker
    results: list[dict[str, Any]] = [{} for _ in nodes]
    failures: list[BaseException] = []

    def run(index: int, node: HQServer) -> None:
        try:
            results[index] = loadgen(
                mode,
                node.base,
                ctx.job_url(worker),
                os.path.join(node.directory, "loadgen.json"),
                jobs=jobs // len(nodes),
                concurrency=max(1, concurrency // len(nodes)),
                rate=rate / len(nodes),
                deadline=300 if mode == "burst" else jobs / rate + 120,
            )
        except BaseException as e:  # re-raised by the caller
            failures.append(e)

    threads = [threading.Thread(target=run, args=item) for item in enumerate(nodes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    sends: dict[str, int] = {}
    for result in results:
        sends.update(result["sends"])
    first = min(result["first_send_ns"] for result in results)
    last = max(result["last_done_ns"] for result in results)
    errors = sum(result["errors"] for result in results)
    for result in results:
        if result["errors"]:
            ctx.problem(f"{result['errors']} pushes failed: {result['error_samples'][:3]}")
    return {
        "ok": len(sends),
        "errors": errors,
        "sends": sends,
        "first_send_ns": first,
        "pushes_per_s": round(len(sends) / max(1e-9, (last - first) / 1e9), 1),
        "push_ms_p50": median([r["push_ms"]["p50"] for r in results]),
    }


def throughput_round(ctx: Any, db: Database, setup: str, jobs: int) -> dict[str, Any]:
    """
    Push ``jobs`` with 32 clients (split over the nodes) to ``setup``; return
    the push and end-to-end rates and the CPU per job of HQ and PostgreSQL.
    """
    worker = ctx.worker
    worker.reset()
    nodes = _nodes(ctx, db, setup, "throughput")
    try:
        _start(nodes)
        hq_before = sum(node.cpu() for node in nodes)
        db_before = db.cpu() if setup != "sqlite" else 0.0
        result = _load(ctx, nodes, "burst", jobs, 32, 100.0)
        stats = worker.wait_received(result["ok"], timeout=120)
        check = _settle(nodes[0], result["ok"], timeout=60)
        hq_cpu = sum(node.cpu() for node in nodes) - hq_before
        db_cpu = db.cpu() - db_before if setup != "sqlite" else 0.0
        arrivals = worker.arrivals(os.path.join(nodes[0].directory, "arrivals.json"))
    finally:
        _stop(nodes)
    misses, duplicates, latencies, last = delivery(result["sends"], arrivals)
    elapsed = max(1, last - result["first_send_ns"]) / 1e9
    if misses or duplicates or stats["errors"]:
        ctx.problem(f"{setup}: {misses} misses, {duplicates} duplicates, {stats['errors']} errors")
    if check["stored"] != result["ok"] or check["success"] != result["ok"]:
        ctx.problem(f"{setup}: HQ recorded {check}")
    return {
        "setup": setup,
        "jobs": jobs,
        "push_per_s": result["pushes_per_s"],
        "e2e_per_s": round((result["ok"] - misses) / elapsed, 1),
        "misses": misses,
        "duplicates": duplicates,
        "errors": result["errors"],
        "hq_cpu_us_per_job": round(hq_cpu / jobs * 1e6),
        "db_cpu_us_per_job": round(db_cpu / jobs * 1e6),
        "push_to_worker_ms": percentiles(latencies),
        "check": check,
    }


def latency_block(ctx: Any, db: Database, setup: str, jobs: int, rate: float) -> dict[str, Any]:
    """
    Push ``jobs`` at ``rate`` per second to one node of ``setup``; return the
    push -> worker latencies (ms), and the node's store transactions per job
    and their mean duration (ms), from its ``/metrics``.
    """
    worker = ctx.worker
    worker.reset()
    nodes = _nodes(ctx, db, setup, "latency")
    try:
        _start(nodes)
        commits_before, seconds_before = commit_metrics(metrics_text(nodes[0].base))
        result = _load(ctx, nodes, "rate", jobs, 4, rate)
        worker.wait_received(result["ok"], timeout=60)
        _settle(nodes[0], result["ok"], timeout=60)
        commits, seconds = commit_metrics(metrics_text(nodes[0].base))
        arrivals = worker.arrivals(os.path.join(nodes[0].directory, "arrivals.json"))
    finally:
        _stop(nodes)
    misses, duplicates, latencies, _ = delivery(result["sends"], arrivals)
    if misses or duplicates:
        ctx.problem(f"{setup} latency: {misses} misses, {duplicates} duplicates")
    commits = int(commits - commits_before)
    return {
        "jobs": jobs,
        "push_to_worker_ms": percentiles(latencies),
        "commits_per_job": round(commits / max(1, jobs), 2),
        "commit_ms": round((seconds - seconds_before) / max(1, commits) * 1000, 2),
    }


def bench_postgres(ctx: Any) -> dict[str, Any]:
    """
    One node on SQLite, one on PostgreSQL and two on PostgreSQL, round after
    round (so that other work on the machine falls on all alike); medians.
    """
    jobs = ctx.args.jobs or (300 if ctx.quick else 3000)
    rounds = ctx.args.rounds or (1 if ctx.quick else 3)
    latency_jobs = ctx.args.latency_jobs or (100 if ctx.quick else 1000)
    rate = 100.0
    db = Database()
    try:
        print(f"  PostgreSQL {db.version}, {db.where}", flush=True)
        runs: dict[str, list[dict[str, Any]]] = {setup: [] for setup in SETUPS}
        for index in range(rounds):
            for setup in SETUPS:
                run = throughput_round(ctx, db, setup, jobs)
                runs[setup].append(run)
                print(
                    f"  round {index + 1} {setup:6}: push {run['push_per_s']:8.1f}/s"
                    f"   end-to-end {run['e2e_per_s']:8.1f}/s"
                    f"   CPU/job HQ {run['hq_cpu_us_per_job']:5d} us"
                    f" PostgreSQL {run['db_cpu_us_per_job']:5d} us"
                    f"   misses {run['misses']} duplicates {run['duplicates']}",
                    flush=True,
                )
        latency: dict[str, list[dict[str, Any]]] = {"sqlite": [], "pg1": []}
        block = max(1, latency_jobs // rounds)
        for _ in range(rounds):
            for setup in latency:
                latency[setup].append(latency_block(ctx, db, setup, block, rate))
    finally:
        db.close()

    def med(setup: str, key: str) -> float:
        return round(median([run[key] for run in runs[setup]]), 1)

    def lat(setup: str, key: str) -> float:
        return round(median([b["push_to_worker_ms"][key] for b in latency[setup]]), 2)

    sqlite_push, pg_push, pg2_push = (med(s, "push_per_s") for s in SETUPS)
    sqlite_e2e, pg_e2e, pg2_e2e = (med(s, "e2e_per_s") for s in SETUPS)
    ctx.figure(
        "pg_push_per_s",
        f"PostgreSQL, one node: push, {jobs:,} jobs, 32 clients",
        pg_push,
        "jobs/s",
        sqlite_push,
        round(pg_push / sqlite_push, 2),
        "baseline: one node on SQLite, same run",
    )
    ctx.figure(
        "pg_e2e_per_s",
        "PostgreSQL, one node: end-to-end",
        pg_e2e,
        "jobs/s",
        sqlite_e2e,
        round(pg_e2e / sqlite_e2e, 2),
        "baseline: one node on SQLite, same run",
    )
    ctx.figure("pg_e2e_ratio", "PostgreSQL / SQLite end-to-end", round(pg_e2e / sqlite_e2e, 2), "x")
    ctx.figure(
        "pg2_push_per_s",
        "PostgreSQL, two nodes: push (16 clients each)",
        pg2_push,
        "jobs/s",
        pg_push,
        round(pg2_push / pg_push, 2),
        "baseline: one node on PostgreSQL",
    )
    ctx.figure(
        "pg2_e2e_per_s",
        "PostgreSQL, two nodes: end-to-end",
        pg2_e2e,
        "jobs/s",
        pg_e2e,
        round(pg2_e2e / pg_e2e, 2),
        "baseline: one node on PostgreSQL",
    )
    for setup, label in (("pg1", "one node"), ("pg2", "two nodes")):
        hq, base = med(setup, "hq_cpu_us_per_job"), med("sqlite", "hq_cpu_us_per_job")
        ctx.figure(
            f"{setup}_hq_cpu_us_per_job",
            f"PostgreSQL, {label}: HQ CPU per job (all nodes)",
            hq,
            "us",
            base,
            round(hq / base, 2),
            "baseline: the SQLite node (its storage included)",
        )
        ctx.figure(
            f"{setup}_db_cpu_us_per_job",
            f"PostgreSQL, {label}: PostgreSQL CPU per job",
            med(setup, "db_cpu_us_per_job"),
            "us",
            note="postmaster and children, from /proc",
        )
    for key, label in (
        ("commits_per_job", "store transactions per job"),
        ("commit_ms", "mean transaction, ms"),
    ):
        ctx.figure(
            f"pg_latency_{key}",
            f"PostgreSQL, one node, at {rate:g}/s: {label}",
            median([b[key] for b in latency["pg1"]]),
            "",
            median([b[key] for b in latency["sqlite"]]),
            note="baseline: one node on SQLite (its /metrics)",
        )
    for key in ("p50", "p99"):
        pg, base = lat("pg1", key), lat("sqlite", key)
        ctx.figure(
            f"pg_latency_{key}_ms",
            f"PostgreSQL, one node: push -> worker {key} at {rate:g}/s",
            pg,
            "ms",
            base,
            round(pg / max(base, 0.001), 2),
            "baseline: one node on SQLite; lower is better",
        )
    return {
        "jobs": jobs,
        "rounds": rounds,
        "postgres": {"version": db.version, "where": db.where},
        "runs": runs,
        "latency": latency,
    }
