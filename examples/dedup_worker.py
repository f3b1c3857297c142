#!/usr/bin/env python3
"""
An example HQ worker that does each job's work once, even when HQ delivers the
job again (delivery is at least once: see docs/delivery.md).

    python3 examples/dedup_worker.py --port 8001 --db dedup.sqlite3

It keeps, in one SQLite file, the ids of the jobs it has done (``done_jobs``)
and the work itself (here a row in ``results``). Both are written in one
transaction, so either the work and its id are stored together, or neither
is: a job that comes back with an id already in ``done_jobs`` is answered 200
("already done") without doing the work again.

Push a job to it twice under one id, as HQ does after a crash, with
``hq restart ID`` (a restart in place keeps the id), or by hand:

    curl -s -XPOST http://127.0.0.1:8001/ -H 'X-Hq-Job-Id: 42' -d '{"n": 1}'
    curl -s -XPOST http://127.0.0.1:8001/ -H 'X-Hq-Job-Id: 42' -d '{"n": 1}'
    sqlite3 dedup.sqlite3 'SELECT * FROM results'     # one row

Standard library only; a worker can be written in any language.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SCHEMA = """
CREATE TABLE IF NOT EXISTS done_jobs (job_id TEXT PRIMARY KEY, done_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS results (job_id TEXT NOT NULL, payload TEXT NOT NULL);
"""


def do_the_work(conn: sqlite3.Connection, job_id: str, payload: bytes) -> None:
    """
    The job's side effect, written through ``conn`` inside the caller's transaction.

    A real worker sends a mail, charges a card, writes a row...: whatever it
    does, it records it in the same transaction as the job id when it can.
    """
    conn.execute(
        "INSERT INTO results (job_id, payload) VALUES (?, ?)",
        (job_id, payload.decode("utf-8", "replace")),
    )


class DedupHandler(BaseHTTPRequestHandler):
    """
    Does each ``X-Hq-Job-Id`` once; answers 200 for a repeat without doing it again.
    """

    server_version = "hq-dedup-worker/1.0"
    database = "dedup.sqlite3"

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        payload = self.rfile.read(length) if length else b""
        job_id = self.headers.get("X-Hq-Job-Id")
        if not job_id:
            self.answer(400, {"error": "no X-Hq-Job-Id header: this worker is for HQ jobs"})
            return
        # One connection per request (the server runs a thread per request);
        # BEGIN IMMEDIATE takes the write lock first, so two deliveries of one
        # id at the same moment cannot both do the work.
        conn = sqlite3.connect(self.database, timeout=30, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                seen = conn.execute(
                    "SELECT 1 FROM done_jobs WHERE job_id = ?", (job_id,)
                ).fetchone()
                if seen is None:
                    do_the_work(conn, job_id, payload)
                    conn.execute(
                        "INSERT INTO done_jobs (job_id, done_at) VALUES (?, datetime('now'))",
                        (job_id,),
                    )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        finally:
            conn.close()
        if seen is None:
            print(f"job {job_id}: done", flush=True)
            self.answer(200, {"job": job_id, "result": "done"})
        else:
            print(f"job {job_id}: already done, skipped", flush=True)
            self.answer(200, {"job": job_id, "result": "already done"})

    def answer(self, status: int, document: dict[str, str]) -> None:
        body = json.dumps(document).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        sys.stderr.write(f"{self.address_string()} {format % args}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001, help="0 picks a free port")
    parser.add_argument("--db", default="dedup.sqlite3", help="the SQLite file to keep")
    args = parser.parse_args()
    with sqlite3.connect(args.db) as conn:
        conn.executescript(SCHEMA)
    conn.close()
    DedupHandler.database = args.db
    server = ThreadingHTTPServer((args.host, args.port), DedupHandler)
    print(f"Worker listening on http://{args.host}:{server.server_port}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
