"""
The bare baselines HQ is compared with, on the same stack (Twisted, Klein, treq).

- ``push``: a minimal Klein endpoint: ``POST /job`` parses the JSON body,
  checks ``url``, gives an id and answers the job as JSON. No storage, no
  delivery.
- ``relay``: the same, and it then POSTs the payload to the job's URL with
  treq over a persistent connection pool, at most ``--workers`` at a time
  (a ``DeferredSemaphore``, as HQ's ``dispatchers x max_workers``). No storage.

Both are what HQ would cost with nothing of its own: the ratio HQ / baseline
says how much HQ's own work (checks, ids, durable store, dispatch) costs.
Prints ``listening on http://127.0.0.1:PORT`` on stdout once serving.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from typing import Any

import treq
from klein import Klein
from twisted.internet import reactor as _reactor
from twisted.internet.defer import DeferredSemaphore
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IRequest
from twisted.web.server import Site

reactor: Any = _reactor


class QuietSite(Site):
    """
    A Site without an access log.
    """

    def log(self, request: Any) -> None:
        """
        Write no access log.
        """
        pass


class Baseline:
    """
    The two baselines' Klein app.
    """

    app = Klein()

    def __init__(self, relay: bool, workers: int) -> None:
        self._relay = relay
        self._ids = itertools.count(1)
        self._semaphore = DeferredSemaphore(workers)
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = workers
        self._http = treq.client.HTTPClient(Agent(reactor, pool=pool))
        self.failures = 0

    @app.route("/job", methods=["POST"])
    def push(self, request: IRequest) -> bytes:
        """
        Answer the job as JSON; with ``relay``, POST its payload to its URL.
        """
        document = json.loads(request.content.read())
        url = document.get("url")
        if not isinstance(url, str) or not url:
            request.setResponseCode(422)
            return b'{"status":422,"error":"\'url\' is required"}\n'
        job_id = str(next(self._ids))
        payload = document.get("payload")
        job = {
            "id": job_id,
            "url": url,
            "name": document.get("name") or "default",
            "comment": document.get("comment") or "",
            "payload": payload,
            "headers": document.get("headers"),
            "timeout": document.get("timeout") or 0,
            "status": "waiting",
        }
        if self._relay:
            body = json.dumps(payload, separators=(",", ":")).encode()
            self._semaphore.run(self._deliver, job_id, url, body).addErrback(self._failed)
        request.setHeader(b"content-type", b"application/json; charset=UTF-8")
        return (json.dumps(job, separators=(",", ":")) + "\n").encode()

    async def _deliver(self, job_id: str, url: str, body: bytes) -> None:
        response = await self._http.post(
            url,
            data=body,
            headers={"Content-Type": "application/json", "X-Hq-Job-Id": job_id},
        )
        await treq.content(response)

    def _failed(self, reason: Any) -> None:
        self.failures += 1
        if self.failures <= 5:
            sys.stderr.write(f"relay failed: {reason.getErrorMessage()}\n")


def main() -> None:
    """
    Parse the arguments and serve until killed.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["push", "relay"])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--workers", type=int, default=16)
    args = parser.parse_args()
    baseline = Baseline(relay=args.mode == "relay", workers=args.workers)
    port = reactor.listenTCP(
        args.port, QuietSite(baseline.app.resource(), timeout=60), interface="127.0.0.1"
    )
    print(f"listening on http://127.0.0.1:{port.getHost().port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
