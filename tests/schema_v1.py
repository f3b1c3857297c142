"""
A data_dir exactly as the first released schema (version 1) made it, for the
upgrade tests: the statements, pragmas and row layout of that release, frozen
here. Never change them: they stand for files that exist on servers.

Run as a script to make one: ``python -m tests.schema_v1 DATA_DIR``.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from typing import Any

#: The version-1 schema, as HQ's first release created it (hq/store/sqlite.py, _SCHEMA[0]).
V1_STATEMENTS = [
    """
        CREATE TABLE jobs (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            comment TEXT NOT NULL,
            url TEXT NOT NULL,
            payload TEXT,
            headers TEXT,
            timeout INTEGER NOT NULL,
            state INTEGER NOT NULL,
            status TEXT NOT NULL,
            started_at INTEGER,
            finished_at INTEGER,
            success INTEGER NOT NULL,
            failure INTEGER NOT NULL,
            canceled INTEGER NOT NULL,
            status_code INTEGER,
            err TEXT NOT NULL,
            output TEXT NOT NULL,
            output_truncated INTEGER NOT NULL,
            attempts INTEGER NOT NULL,
            run_after INTEGER NOT NULL DEFAULT 0
        )
        """,
    "CREATE INDEX jobs_status ON jobs (status, id)",
    "CREATE INDEX jobs_waiting ON jobs (id) WHERE state = 0",
    "CREATE INDEX jobs_running ON jobs (id) WHERE state = 1",
    "CREATE INDEX jobs_expiry ON jobs (finished_at) WHERE state = 2",
]

_V1_COLUMNS = (
    "id, name, comment, url, payload, headers, timeout, state, status, started_at, "
    "finished_at, success, failure, canceled, status_code, err, output, output_truncated, "
    "attempts"
)

#: Milliseconds since the Unix epoch of the sample jobs (2024-01-01T00:00:00Z).
T0_MS = 1_704_067_200_000


def _id(ms: int, sequence: int = 0) -> int:
    # The id layout of every release: ms since 2019-01-01 << 22 | server 0 | sequence.
    return ((ms - 1_546_300_800_000) << 22) | sequence


def sample_rows(worker_url: str) -> list[dict[str, Any]]:
    """
    Return three jobs as a version-1 file held them: one succeeded, one
    failed, one waiting (to be delivered to ``worker_url`` after the upgrade).
    """
    base = {
        "name": "v1",
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
    }
    return [
        dict(
            base,
            id=_id(T0_MS),
            url="http://127.0.0.1:9/done",
            comment="succeeded in v1",
            payload='{"n":1}',
            headers='{"X-A":"b"}',
            timeout=5,
            state=2,
            status="success",
            started_at=T0_MS + 10,
            finished_at=T0_MS + 20,
            success=1,
            status_code=200,
            output="ok",
            attempts=1,
        ),
        dict(
            base,
            id=_id(T0_MS + 1),
            url="http://127.0.0.1:9/failed",
            state=2,
            status="failure",
            started_at=T0_MS + 30,
            finished_at=T0_MS + 40,
            failure=1,
            status_code=500,
            err="Internal Server Error",
            output="boom",
            attempts=1,
        ),
        dict(base, id=_id(T0_MS + 2), url=worker_url, state=0, status="waiting"),
    ]


def make_v1_data_dir(data_dir: str, rows: list[dict[str, Any]]) -> str:
    """
    Create ``data_dir`` with a version-1 ``hq.sqlite3`` holding ``rows`` (as
    the first release's writer did: WAL, synchronous FULL, the schema and
    ``user_version`` in one transaction); return the file's path.
    """
    os.makedirs(data_dir, exist_ok=True)
    path = os.path.join(data_dir, "hq.sqlite3")
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("BEGIN IMMEDIATE")
        for statement in V1_STATEMENTS:
            conn.execute(statement)
        conn.execute("PRAGMA user_version = 1")
        conn.execute("COMMIT")
        columns = [c.strip() for c in _V1_COLUMNS.split(",")]
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            f"INSERT INTO jobs ({_V1_COLUMNS}) VALUES ({', '.join('?' * len(columns))})",
            [tuple(row[c] for c in columns) for row in rows],
        )
        conn.execute("COMMIT")
    finally:
        conn.close()
    return path


if __name__ == "__main__":
    print(make_v1_data_dir(sys.argv[1], sample_rows("http://127.0.0.1:9/waiting")))
