"""
Schedules at scale (SPEC §14): the memory 10,000 schedules cost a running
server, and how late their fires are when all 10,000 fire in the same second.

    .venv/bin/python benchmarks/schedules.py [--schedules 10000] [--rounds 2]

The schedules (``*/10 * * * * *``: every 10 seconds, all at once) are written
into the data_dir with the store's own SQL before the server starts; their jobs
go to a closed port (each fails at once, no retries). Lateness is the time
from a fire's time to its job's creation (the job id's timestamp), read from
the stopped server's database. Prints one JSON object; exits 1 if a fire of
the rounds measured is missing. ``run.py schedules`` runs it too.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from typing import Any

import common  # noqa: F401 (this tree's hq first on the path)

from hq.cron import CronRule
from hq.ids import IdGenerator, id_to_ms
from hq.model import JobTemplate, Schedule
from hq.store import sql
from hq.store.sqlitefile import DATABASE_FILE, upgrade
from tests.serverprocess import ServerProcess

CRON = "*/10 * * * * *"


class _WallClock:
    def seconds(self) -> float:
        return time.time()


def rss_kib(pid: int) -> int:
    """
    Return the resident memory of process ``pid``, KiB.
    """
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def seed(data_dir: str, count: int, first_fire: int) -> None:
    """
    Write ``count`` schedules, all next firing at ``first_fire`` (ms), into a new data_dir.
    """
    os.makedirs(data_dir, exist_ok=True)
    ids = IdGenerator(1, _WallClock())  # type: ignore[arg-type]
    conn = sqlite3.connect(os.path.join(data_dir, DATABASE_FILE), isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("BEGIN IMMEDIATE")
        upgrade(conn, 0)
        template = JobTemplate(url="http://127.0.0.1:1/scheduled", name="bench")
        rows = [
            sql.schedule_row(
                Schedule(
                    id=ids.next_id(),
                    name=f"s{n}",
                    cron=CRON,
                    timezone="UTC",
                    job=template,
                    next_run_at=first_fire,
                )
            )
            for n in range(count)
        ]
        conn.executemany(sql.INSERT_SCHEDULE, rows)
        conn.execute("COMMIT")
    finally:
        conn.close()


def fires(data_dir: str, before: int) -> list[int]:
    """
    Return the lateness (ms) of every fire stored that was due before ``before`` (ms).
    """
    conn = sqlite3.connect(os.path.join(data_dir, DATABASE_FILE))
    try:
        rows = conn.execute(
            "SELECT fire_at, id FROM jobs WHERE fire_at IS NOT NULL AND fire_at < ?", (before,)
        ).fetchall()
    finally:
        conn.close()
    return sorted(id_to_ms(job_id) - fire_at for fire_at, job_id in rows)


def percentile(values: list[int], p: float) -> int:
    return values[min(len(values) - 1, int(len(values) * p))]


def run(count: int = 10_000, rounds: int = 2) -> dict[str, Any]:
    """
    Seed ``count`` schedules, let them fire ``rounds`` times (10 s apart) in a
    server process, and return the memory and lateness figures, with the
    number of fires missing from those rounds.
    """
    directory = tempfile.mkdtemp(prefix="hq_bench_schedules_")
    try:
        return _run(directory, count, rounds)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _run(directory: str, count: int, rounds: int) -> dict[str, Any]:
    config = {"dispatchers": 2, "max_workers": 8}

    empty = ServerProcess(os.path.join(directory, "empty"), **config).start()
    try:
        time.sleep(2)
        assert empty.process is not None
        base_rss = rss_kib(empty.process.pid)
    finally:
        empty.stop()

    server = ServerProcess(os.path.join(directory, "full"), **config)
    data_dir = os.path.join(server.directory, "data")
    rule = CronRule.parse(CRON)
    first = rule.next_after(int(time.time() * 1000) + 6000)
    assert first is not None
    seed(data_dir, count, first)
    server.start()
    try:
        assert server.process is not None
        time.sleep(max(0.5, (first - time.time() * 1000) / 1000 - 1))
        loaded_rss = rss_kib(server.process.pid)
        time.sleep(10 * rounds + 1)
        peak = rss_kib(server.process.pid)
    finally:
        server.stop()
    # The rounds measured: fires due at first, first + 10 s, ... (a later one
    # may have begun as the server stopped).
    late = fires(data_dir, before=first + 10_000 * rounds)
    return {
        "schedules": count,
        "fires": len(late),
        "expected_fires": count * rounds,
        "missing_fires": count * rounds - len(late),
        "rss_empty_kib": base_rss,
        "rss_with_schedules_kib": loaded_rss,
        "rss_after_fires_kib": peak,
        "lateness_ms": {
            "p50": statistics.median(late) if late else None,
            "p99": percentile(late, 0.99) if late else None,
            "max": late[-1] if late else None,
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--schedules", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    result = run(args.schedules, args.rounds)
    print(json.dumps(result, indent=2))
    return 1 if result["missing_fires"] else 0


if __name__ == "__main__":
    sys.exit(main())
