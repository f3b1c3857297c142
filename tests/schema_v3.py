"""
A data_dir exactly as the third schema (version 3: retries, due times, the
attempt history, idempotency keys) made it, for the v3 -> v4 upgrade test:
the statements and the row layout of that version, frozen here. Never change
them: they stand for files that exist on servers.

Run as a script to make one: ``python -m tests.schema_v3 DATA_DIR``.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from typing import Any

from tests.schema_v1 import T0_MS
from tests.schema_v2 import V2_STATEMENTS

#: The version-3 schema: version 2 plus hq/store/sqlitefile.py's _SCHEMA[2].
V3_STATEMENTS = [
    *V2_STATEMENTS,
    "ALTER TABLE jobs ADD COLUMN retries INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE jobs ADD COLUMN idempotency_key TEXT",
    "UPDATE jobs SET run_after = (id >> 22) + 1546300800000 WHERE state != 2",
    "DROP INDEX jobs_waiting",
    "CREATE INDEX jobs_due ON jobs (run_after, id) WHERE state = 0",
    """
    CREATE TABLE attempts (
        job_id INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        started_at INTEGER,
        finished_at INTEGER NOT NULL,
        status_code INTEGER,
        err TEXT NOT NULL,
        output TEXT NOT NULL,
        PRIMARY KEY (job_id, attempt)
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE idempotency_keys (
        key TEXT PRIMARY KEY,
        job_id INTEGER NOT NULL,
        created_at INTEGER NOT NULL
    )
    """,
    "CREATE INDEX idempotency_keys_job ON idempotency_keys (job_id)",
]

#: The HQ that wrote version-3 files.
V3_WRITER = "HQ 0.1.0"

_V3_COLUMNS = (
    "id, name, comment, url, payload, headers, timeout, state, status, started_at, "
    "finished_at, success, failure, canceled, status_code, err, output, output_truncated, "
    "attempts, run_after, retries, idempotency_key"
)


def _id(ms: int, sequence: int = 0) -> int:
    return ((ms - 1_546_300_800_000) << 22) | sequence


def sample_rows(worker_url: str) -> list[dict[str, Any]]:
    """
    Return version-3 jobs: a success after a retry (one attempt in the
    history), a waiting job with an idempotency key, and one scheduled for
    later with retries.
    """
    base = {
        "name": "v3",
        "comment": "",
        "payload": None,
        "headers": None,
        "timeout": 0,
        "started_at": None,
        "finished_at": None,
        "success": 0,
        "failure": 0,
        "canceled": 0,
        "status_code": None,
        "err": "",
        "output": "",
        "output_truncated": 0,
        "attempts": 0,
        "retries": 0,
        "idempotency_key": None,
    }
    return [
        dict(
            base,
            id=_id(T0_MS),
            url="http://127.0.0.1:9/done",
            state=2,
            status="success",
            started_at=T0_MS + 10,
            finished_at=T0_MS + 20,
            success=1,
            status_code=200,
            attempts=2,
            retries=1,
            run_after=T0_MS,
        ),
        dict(
            base,
            id=_id(T0_MS + 1),
            url=worker_url + "/keyed",
            state=0,
            status="waiting",
            run_after=T0_MS + 1,
            idempotency_key="k-1",
        ),
        dict(
            base,
            id=_id(T0_MS + 2),
            url=worker_url + "/later",
            state=0,
            status="waiting",
            run_after=T0_MS + 3_600_000,
            retries=3,
        ),
    ]


def make_v3_data_dir(data_dir: str, rows: list[dict[str, Any]]) -> str:
    """
    Create ``data_dir`` with a version-3 ``hq.sqlite3`` holding ``rows``, the
    first one's attempt history and the keys; return the file's path.
    """
    os.makedirs(data_dir, exist_ok=True)
    path = os.path.join(data_dir, "hq.sqlite3")
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("BEGIN IMMEDIATE")
        for statement in V3_STATEMENTS:
            conn.execute(statement)
        conn.execute("PRAGMA user_version = 3")
        conn.execute("INSERT INTO meta (key, value) VALUES ('created_by', ?)", (V3_WRITER,))
        conn.execute("REPLACE INTO meta (key, value) VALUES ('last_opened_by', ?)", (V3_WRITER,))
        conn.execute("COMMIT")
        columns = [c.strip() for c in _V3_COLUMNS.split(",")]
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            f"INSERT INTO jobs ({_V3_COLUMNS}) VALUES ({', '.join('?' * len(columns))})",
            [tuple(row[c] for c in columns) for row in rows],
        )
        conn.execute(
            "INSERT INTO attempts VALUES (?, 1, ?, ?, 500, 'Internal Server Error', 'boom')",
            (rows[0]["id"], T0_MS + 5, T0_MS + 6),
        )
        for row in rows:
            if row["idempotency_key"] is not None:
                conn.execute(
                    "INSERT INTO idempotency_keys VALUES (?, ?, ?)",
                    (row["idempotency_key"], row["id"], T0_MS),
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
    print(make_v3_data_dir(sys.argv[1], sample_rows("http://127.0.0.1:9")))
