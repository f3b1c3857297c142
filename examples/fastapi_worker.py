#!/usr/bin/env python3
"""
An HQ worker on FastAPI that checks every delivery's signature and does each job once.

    pip install fastapi uvicorn hq-server
    HQ_SIGNING_SECRETS=whsec_... python3 examples/fastapi_worker.py --port 8003

``HQ_SIGNING_SECRETS`` lists the secrets of HQ's ``signing_secrets`` (space-separated;
all of them while they rotate). Push it a job:

    echo '{"url": "http://127.0.0.1:8003/jobs", "payload": {"to": "ann"}}' | hq push -

Each job's payload is written to the table ``results`` of the SQLite file. The ids of the
jobs done are kept in memory (:class:`hq_sdk.dedup.MemoryDedupStore`, the most recent
100,000), so a job delivered again while the worker runs is answered 200 without being
done twice; use :class:`~hq_sdk.dedup.SQLiteDedupStore` (as examples/flask_worker.py) to
remember them across restarts. A payload with ``"busy": true`` is answered 429 with
``Retry-After: 1``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sqlite3
import sys

import uvicorn
from fastapi import FastAPI, Request, Response

from hq_sdk.dedup import MemoryDedupStore
from hq_sdk.receiver import ReceivedJob, Receiver, TryLater


def create_app(secrets: list[str], database: str) -> FastAPI:
    """
    Return the FastAPI app: ``POST /jobs`` receives HQ's deliveries.
    """
    app = FastAPI()
    receiver = Receiver(secrets, dedup=MemoryDedupStore())
    conn = sqlite3.connect(database)
    conn.execute("CREATE TABLE IF NOT EXISTS results (job_id TEXT, payload TEXT)")
    conn.commit()
    conn.close()

    def record(job: ReceivedJob) -> None:
        with sqlite3.connect(database) as db:
            db.execute(
                "INSERT INTO results (job_id, payload) VALUES (?, ?)",
                (job.id, json.dumps(job.payload)),
            )

    async def do_the_work(job: ReceivedJob) -> dict[str, object]:
        if isinstance(job.payload, dict) and job.payload.get("busy"):
            raise TryLater(1, "busy now")
        await asyncio.to_thread(record, job)  # blocking I/O off the event loop
        return {"id": job.id, "done": True}

    @app.post("/jobs")
    async def jobs(request: Request) -> Response:
        answer = await receiver.handle_async(request.headers, await request.body(), do_the_work)
        return Response(answer.body, answer.status, dict(answer.headers))

    return app


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8003, help="0 picks a free port")
    parser.add_argument("--db", default="fastapi_worker.sqlite3")
    args = parser.parse_args()
    secrets = os.environ.get("HQ_SIGNING_SECRETS", "").split()
    if not secrets:
        print("set HQ_SIGNING_SECRETS to HQ's signing_secrets (whsec_...)", file=sys.stderr)
        return 2
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(128)  # connections wait in the backlog until uvicorn serves them
    print(f"listening on http://{args.host}:{sock.getsockname()[1]}/jobs", flush=True)
    config = uvicorn.Config(create_app(secrets, args.db), log_level="warning")
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
