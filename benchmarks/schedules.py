"""
Schedules at scale (SPEC §14): the memory 10,000 schedules cost a running
server, and how late their fires are when all 10,000 fire in the same second.

    .venv/bin/python -m benchmarks.schedules [--schedules 10000] [--rounds 2]

The schedules (``*/10 * * * * *``: every 10 seconds, all at once) are written
into the data_dir with the store's own SQL before the server starts; their jobs
go to a closed port (each fails at once, no retries). Lateness is the time
from a fire's time to its job's creation (the job id's timestamp), read from
the stopped server's database. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time

import common  # noqa: F401 (this tree's hq first on the path)

from hq.cron import CronRule
from hq.ids import IdGenerator, id_to_ms
from hq.model import JobTemplate, Schedule
from hq.store import sql
from hq.store.sqlite import _SCHEMA, DATABASE_FILE, SCHEMA_VERSION
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
        for statements in _SCHEMA:
            for statement in statements:
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
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


def fires(data_dir: str) -> list[int]:
    """
    Return the lateness (ms) of every fire stored.
    """
    conn = sqlite3.connect(os.path.join(data_dir, DATABASE_FILE))
    try:
        rows = conn.execute("SELECT fire_at, id FROM jobs WHERE fire_at IS NOT NULL").fetchall()
    finally:
        conn.close()
    return sorted(id_to_ms(job_id) - fire_at for fire_at, job_id in rows)


def percentile(values: list[int], p: float) -> int:
    return values[min(len(values) - 1, int(len(values) * p))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--schedules", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="hq_bench_schedules_")
    config = {"dispatchers": 2, "max_workers": 8}

    empty = ServerProcess(os.path.join(directory, "empty"), **config).start()
    time.sleep(2)
    assert empty.process is not None
    base_rss = rss_kib(empty.process.pid)
    empty.stop()

    server = ServerProcess(os.path.join(directory, "full"), **config)
    data_dir = os.path.join(server.directory, "data")
    rule = CronRule.parse(CRON)
    first = rule.next_after(int(time.time() * 1000) + 6000)
    assert first is not None
    seed(data_dir, args.schedules, first)
    server.start()
    assert server.process is not None
    time.sleep(max(0.5, (first - time.time() * 1000) / 1000 - 1))
    loaded_rss = rss_kib(server.process.pid)
    time.sleep(10 * args.rounds + 1)
    peak = rss_kib(server.process.pid)
    server.stop()
    late = fires(data_dir)
    result = {
        "schedules": args.schedules,
        "fires": len(late),
        "expected_fires": args.schedules * args.rounds,
        "rss_empty_kib": base_rss,
        "rss_with_schedules_kib": loaded_rss,
        "rss_after_fires_kib": peak,
        "lateness_ms": {
            "p50": statistics.median(late) if late else None,
            "p99": percentile(late, 0.99) if late else None,
            "max": late[-1] if late else None,
        },
    }
    print(json.dumps(result, indent=2))
    return 0 if late else 1


if __name__ == "__main__":
    sys.exit(main())
