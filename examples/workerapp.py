#!/usr/bin/env python3
"""
An example HQ worker: prints every job it receives and answers 200.

    python3 examples/workerapp.py --port 8000

Then push a job to it:

    curl -s -XPOST http://127.0.0.1:19900/job -H 'Content-Type: application/json' \
        -d '{"url": "http://127.0.0.1:8000/", "payload": {"message": "Hello world!"}}'

Standard library only; a worker can be written in any language.

It speaks HTTP/1.0, as Python's ``http.server`` does by default: it closes the
connection after each answer, and HQ opens a new one for the next job. With
``--keep-alive`` it speaks HTTP/1.1 and keeps connections open between jobs
(fewer connections, the usual case for production workers).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class WorkerHandler(BaseHTTPRequestHandler):
    """
    Prints the job request and answers with a small JSON body.
    """

    server_version = "hq-example-worker/1.0"
    delay = 0.0
    fail_rate = 0.0

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        job_id = self.headers.get("X-Hq-Job-Id", "?")
        print(f"--- job {job_id}: {self.command} {self.path}", flush=True)
        for name, value in self.headers.items():
            print(f"{name}: {value}", flush=True)
        print(body.decode("utf-8", "replace") or "(no body)", flush=True)
        if self.delay:
            time.sleep(self.delay)
        failed = random.random() < self.fail_rate
        answer = json.dumps({"job": job_id, "ok": not failed}).encode("utf-8")
        self.send_response(500 if failed else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: object) -> None:
        sys.stderr.write(f"{self.address_string()} {format % args}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds to wait per job")
    parser.add_argument("--fail-rate", type=float, default=0.0, help="share of jobs to fail")
    parser.add_argument(
        "--keep-alive",
        action="store_true",
        help="speak HTTP/1.1 and keep connections open (default: HTTP/1.0, one per job)",
    )
    args = parser.parse_args()
    WorkerHandler.delay = args.delay
    WorkerHandler.fail_rate = args.fail_rate
    if args.keep_alive:
        WorkerHandler.protocol_version = "HTTP/1.1"
    server = ThreadingHTTPServer((args.host, args.port), WorkerHandler)
    print(f"Worker listening on http://{args.host}:{server.server_port}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
