#!/usr/bin/env python3
"""
An HQ worker on Flask that checks every delivery's signature and does each job once.

    pip install flask hq-server
    HQ_SIGNING_SECRETS=whsec_... python3 examples/flask_worker.py --port 8002

``HQ_SIGNING_SECRETS`` lists the secrets of HQ's ``signing_secrets`` (space-separated;
all of them while they rotate). Push it a job:

    echo '{"url": "http://127.0.0.1:8002/jobs", "payload": {"to": "ann"}}' | hq push -

Each job's payload is written to the table ``results`` of the SQLite file; the ids of the
jobs done are kept in the same file (``hq_jobs_done``, by
:class:`hq_sdk.dedup.SQLiteDedupStore`), so a job delivered again (``hq restart ID``, a
retry after a lost answer) is answered 200 without being done twice. A payload with
``"busy": true`` is answered 429 with ``Retry-After: 1`` (HQ tries again if the job has
retries left).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys

from flask import Flask, request
from werkzeug.serving import make_server

from hq_sdk.dedup import SQLiteDedupStore
from hq_sdk.receiver import ReceivedJob, Receiver, TryLater


def create_app(secrets: list[str], database: str) -> Flask:
    """
    Return the Flask app: ``POST /jobs`` receives HQ's deliveries.
    """
    app = Flask(__name__)
    receiver = Receiver(secrets, dedup=SQLiteDedupStore(database))
    conn = sqlite3.connect(database)
    conn.execute("CREATE TABLE IF NOT EXISTS results (job_id TEXT, payload TEXT)")
    conn.commit()
    conn.close()

    def do_the_work(job: ReceivedJob) -> dict[str, object]:
        if isinstance(job.payload, dict) and job.payload.get("busy"):
            raise TryLater(1, "busy now")
        with sqlite3.connect(database) as db:
            db.execute(
                "INSERT INTO results (job_id, payload) VALUES (?, ?)",
                (job.id, json.dumps(job.payload)),
            )
        return {"id": job.id, "done": True}

    @app.post("/jobs")
    def jobs() -> tuple[bytes, int, list[tuple[str, str]]]:
        answer = receiver.handle(request.headers, request.get_data(), do_the_work)
        return answer.body, answer.status, list(answer.headers)

    return app


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002, help="0 picks a free port")
    parser.add_argument("--db", default="flask_worker.sqlite3")
    args = parser.parse_args()
    secrets = os.environ.get("HQ_SIGNING_SECRETS", "").split()
    if not secrets:
        print("set HQ_SIGNING_SECRETS to HQ's signing_secrets (whsec_...)", file=sys.stderr)
        return 2
    server = make_server(args.host, args.port, create_app(secrets, args.db), threaded=True)
    print(f"listening on http://{args.host}:{server.server_port}/jobs", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
