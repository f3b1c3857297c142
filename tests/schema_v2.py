"""
A data_dir exactly as the second released schema (version 2, HQ 0.1.0) made
it, for the upgrade tests: the statements, the ``meta`` rows and the row
layout of that release, frozen here. Never change them: they stand for files
that exist on servers.

Version 2 is version 1 (:data:`tests.schema_v1.V1_STATEMENTS`) plus the
``meta`` table. Its ``run_after`` column was always 0 and its ``attempts``
counted the deliveries started (one per start, kept across a crash).

Run as a script to make one: ``python -m tests.schema_v2 DATA_DIR``.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from typing import Any

from tests.schema_v1 import T0_MS, V1_STATEMENTS

#: The version-2 schema, as HQ 0.1.0 created it (hq/store/sqlite.py, _SCHEMA[0] + _SCHEMA[1]).
V2_STATEMENTS = [
    *V1_STATEMENTS,
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
]

#: The HQ that wrote version-2 files.
V2_WRITER = "HQ 0.1.0"

_V2_COLUMNS = (
    "id, name, comment, url, payload, headers, timeout, state, status, started_at, "
    "finished_at, success, failure, canceled, status_code, err, output, output_truncated, "
    "attempts"
)


def _id(ms: int, sequence: int = 0) -> int:
    # The id layout of every release: ms since 2019-01-01 << 22 | server 0 | sequence.
    return ((ms - 1_546_300_800_000) << 22) | sequence


def sample_rows(worker_url: str) -> list[dict[str, Any]]:
    """
    Return jobs in every state a version-2 file can hold, in id order: a
    success, a failure, one canceled before it ran, one running when the
    process died (a delivery started: ``attempts`` 1), one being stopped when
    it died (``canceling``), and two waiting. The running and waiting ones go
    to ``worker_url`` (with a path naming them) after the upgrade.
    """
    base = {
        "name": "v2",
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
            comment="succeeded in v2",
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
            output_truncated=1,
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
        dict(
            base,
            id=_id(T0_MS + 2),
            url="http://127.0.0.1:9/canceled",
            state=2,
            status="canceled",
            finished_at=T0_MS + 50,
            canceled=1,
            err="stopped",
        ),
        dict(
            base,
            id=_id(T0_MS + 3),
            url=worker_url + "/running",
            payload='{"n":4}',
            state=1,
            status="running",
            started_at=T0_MS + 60,
            attempts=1,
        ),
        dict(
            base,
            id=_id(T0_MS + 4),
            url="http://127.0.0.1:9/canceling",
            state=1,
            status="canceling",
            started_at=T0_MS + 70,
            canceled=1,
            attempts=1,
        ),
        dict(base, id=_id(T0_MS + 5), url=worker_url + "/waiting-1", state=0, status="waiting"),
        dict(
            base,
            id=_id(T0_MS + 5, 1),
            url=worker_url + "/waiting-2",
            payload='{"n":7}',
            state=0,
            status="waiting",
        ),
    ]


def make_v2_data_dir(data_dir: str, rows: list[dict[str, Any]]) -> str:
    """
    Create ``data_dir`` with a version-2 ``hq.sqlite3`` holding ``rows`` (as
    HQ 0.1.0's writer did: WAL, synchronous FULL, the schema, ``user_version``
    and ``created_by`` in one transaction; then the jobs, ``max_id`` and a
    health probe); return the file's path.
    """
    os.makedirs(data_dir, exist_ok=True)
    path = os.path.join(data_dir, "hq.sqlite3")
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("BEGIN IMMEDIATE")
        for statement in V2_STATEMENTS:
            conn.execute(statement)
        conn.execute("PRAGMA user_version = 2")
        conn.execute("INSERT INTO meta (key, value) VALUES ('created_by', ?)", (V2_WRITER,))
        conn.execute("REPLACE INTO meta (key, value) VALUES ('last_opened_by', ?)", (V2_WRITER,))
        conn.execute("COMMIT")
        columns = [c.strip() for c in _V2_COLUMNS.split(",")]
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            f"INSERT INTO jobs ({_V2_COLUMNS}) VALUES ({', '.join('?' * len(columns))})",
            [tuple(row[c] for c in columns) for row in rows],
        )
        if rows:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('max_id', ?)",
                (str(max(row["id"] for row in rows)),),
            )
        conn.execute("REPLACE INTO meta (key, value) VALUES ('health_probe', '1704067200000')")
        conn.execute("COMMIT")
    finally:
        conn.close()
    return path


if __name__ == "__main__":
    print(make_v2_data_dir(sys.argv[1], sample_rows("http://127.0.0.1:9")))
