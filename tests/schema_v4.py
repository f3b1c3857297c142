"""
A data_dir exactly as the fourth schema (version 4: schedules) made it, for
the v4 -> v5 upgrade test (flow keys and callbacks): the statements and the
row layout of that version, frozen here. Never change them: they stand for
files that exist on servers.

Run as a script to make one: ``python -m tests.schema_v4 DATA_DIR``.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from typing import Any

from tests.schema_v1 import T0_MS
from tests.schema_v3 import V3_STATEMENTS
from tests.schema_v3 import sample_rows as v3_rows

#: The version-4 schema: version 3 plus hq/store/sqlitefile.py's _SCHEMA[3].
V4_STATEMENTS = [
    *V3_STATEMENTS,
    "ALTER TABLE jobs ADD COLUMN schedule_id INTEGER",
    "ALTER TABLE jobs ADD COLUMN fire_at INTEGER",
    "CREATE UNIQUE INDEX jobs_fires ON jobs (schedule_id, fire_at) WHERE fire_at IS NOT NULL",
    """
    CREATE TABLE schedules (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        cron TEXT NOT NULL,
        timezone TEXT NOT NULL,
        job TEXT NOT NULL,
        paused INTEGER NOT NULL,
        next_run_at INTEGER,
        last_run_at INTEGER,
        last_job_id INTEGER
    )
    """,
    "CREATE INDEX schedules_due ON schedules (next_run_at) WHERE paused = 0",
]

#: The HQ that wrote version-4 files.
V4_WRITER = "HQ 0.2.0"

_V4_COLUMNS = (
    "id, name, comment, url, payload, headers, timeout, state, status, started_at, "
    "finished_at, success, failure, canceled, status_code, err, output, output_truncated, "
    "attempts, run_after, retries, idempotency_key, schedule_id, fire_at"
)


def _id(ms: int, sequence: int = 0) -> int:
    return ((ms - 1_546_300_800_000) << 22) | sequence


def sample_rows(worker_url: str) -> list[dict[str, Any]]:
    """
    Return version-4 jobs: version 3's (a success, a waiting job with a key,
    one scheduled for later), a running one on an https URL with no port,
    and a waiting one on an IPv6 host.
    """
    rows = [dict(row, schedule_id=None, fire_at=None) for row in v3_rows(worker_url)]
    base = dict(rows[1], idempotency_key=None)
    return [
        *rows,
        dict(
            base,
            id=_id(T0_MS + 3),
            url="https://Worker.Example/run",
            state=1,
            status="running",
            started_at=T0_MS + 4,
            attempts=1,
            run_after=T0_MS + 3,
        ),
        dict(base, id=_id(T0_MS + 4), url="http://[::1]:8080/v6", run_after=T0_MS + 4),
    ]


def make_v4_data_dir(data_dir: str, rows: list[dict[str, Any]]) -> str:
    """
    Create ``data_dir`` with a version-4 ``hq.sqlite3`` holding ``rows``;
    return the file's path.
    """
    os.makedirs(data_dir, exist_ok=True)
    path = os.path.join(data_dir, "hq.sqlite3")
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("BEGIN IMMEDIATE")
        for statement in V4_STATEMENTS:
            conn.execute(statement)
        conn.execute("PRAGMA user_version = 4")
        conn.execute("INSERT INTO meta (key, value) VALUES ('created_by', ?)", (V4_WRITER,))
        conn.execute("REPLACE INTO meta (key, value) VALUES ('last_opened_by', ?)", (V4_WRITER,))
        columns = [c.strip() for c in _V4_COLUMNS.split(",")]
        conn.executemany(
            f"INSERT INTO jobs ({_V4_COLUMNS}) VALUES ({', '.join('?' * len(columns))})",
            [tuple(row[c] for c in columns) for row in rows],
        )
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('max_id', ?)",
            (str(max(row["id"] for row in rows)),),
        )
        conn.execute("COMMIT")
    finally:
        conn.close()
    return path


if __name__ == "__main__":
    print(make_v4_data_dir(sys.argv[1], sample_rows("http://127.0.0.1:9")))
