"""
The benchmarks' load generator: a separate process that pushes jobs over
keep-alive HTTP/1.1 connections and records when each push was sent.

Two modes:

- ``burst``: ``--jobs`` pushes as fast as ``--concurrency`` connections go
  (each sends its next push when the previous answer arrived);
- ``rate``: ``--jobs`` pushes at a steady ``--rate`` per second, over a small
  pool of connections.

It is a bare asyncio client (no HTTP library), so it takes as little CPU from
the server under test as it can. It writes a JSON result to ``--out``:
``ok``, ``errors``, ``error_samples``, ``first_send_ns``, ``last_done_ns``,
``push_ms`` (percentiles of the push round trip) and ``sends``
(``{job_id: monotonic_ns when its push was written}``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from typing import Any

_ID = re.compile(rb'"id":\s*"?(\d+)')


class Connection:
    """
    One keep-alive HTTP/1.1 connection; one request at a time.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        """
        Connect.
        """
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)

    def close(self) -> None:
        """
        Close the connection (the next request reconnects).
        """
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        """
        Send ``raw`` (a whole request) and return the status and the body.
        """
        if self._writer is None:
            await self.open()
        assert self._reader is not None and self._writer is not None
        reader = self._reader
        self._writer.write(raw)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = -1
        chunked = False
        close = False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                close = b"close" in value.lower()
        if chunked:
            parts = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    break
                parts.append((await reader.readexactly(size + 2))[:-2])
            body = b"".join(parts)
        elif length >= 0:
            body = await reader.readexactly(length)
        else:
            body = await reader.read()
            close = True
        if close:
            self.close()
        return status, body


def padding(size: int) -> list[dict[str, Any]]:
    """
    Return a list of small records (ids, names, tags, prices: what an
    order or an event carries) of about ``size`` bytes as compact JSON.
    """
    items: list[dict[str, Any]] = []
    used = 0
    while used < size:
        item = {"id": len(items), "name": f"item {len(items)}", "tags": ["a", "b"], "price": 1.5}
        items.append(item)
        used += len(json.dumps(item, separators=(",", ":"))) + 1
    return items


def push_request(
    host: str, port: int, worker_url: str, index: int, pad: list[dict[str, Any]] | None = None
) -> bytes:
    """
    Return the whole ``POST /job`` request of push number ``index``; its
    payload carries ``pad`` as ``items`` when given.
    """
    payload: dict[str, Any] = {"n": index, "text": "benchmark job"}
    if pad:
        payload["items"] = pad
    body = json.dumps(
        {"url": worker_url, "name": "bench", "payload": payload}, separators=(",", ":")
    ).encode()
    return (
        b"POST /job HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % (host.encode(), port, len(body))
    ) + body


def percentiles(values: list[float]) -> dict[str, float]:
    """
    Return p50, p90, p99 and max of ``values`` (0 when empty), rounded to 0.001.
    """
    if not values:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0}
    ordered = sorted(values)

    def at(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 3)

    return {"p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "max": round(ordered[-1], 3)}


class Run:
    """
    The pushes of one run and what came back.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        host, _, port = args.target.rpartition(":")
        self.host = host
        self.port = int(port)
        self.sends: dict[str, int] = {}
        self.push_ms: list[float] = []
        self.errors = 0
        self.error_samples: list[str] = []
        self.pad = padding(args.payload_bytes) if args.payload_bytes else None
        self.first_send_ns = 0
        self.last_done_ns = 0

    def _error(self, text: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 10:
            self.error_samples.append(text)

    async def push(self, connection: Connection, index: int) -> None:
        """
        Send push number ``index`` and record its id and send time, or the error.
        """
        raw = push_request(self.host, self.port, self.args.url, index, self.pad)
        sent = time.monotonic_ns()
        try:
            status, body = await asyncio.wait_for(connection.request(raw), self.args.timeout)
        except Exception as e:
            connection.close()
            self._error(f"push {index}: {type(e).__name__}: {e}")
            return
        done = time.monotonic_ns()
        self.last_done_ns = max(self.last_done_ns, done)
        if status != 200:
            self._error(f"push {index}: HTTP {status}: {body[:200]!r}")
            return
        match = _ID.search(body)
        if match is None:
            self._error(f"push {index}: no id in {body[:200]!r}")
            return
        self.sends[match.group(1).decode()] = sent
        self.push_ms.append((done - sent) / 1e6)

    async def burst(self) -> None:
        """
        Push as fast as the connections go, each sending after each answer.
        """
        connections = [Connection(self.host, self.port) for _ in range(self.args.concurrency)]
        await asyncio.gather(*(c.open() for c in connections))
        indexes = iter(range(self.args.jobs))

        async def client(connection: Connection) -> None:
            for index in indexes:
                await self.push(connection, index)
            connection.close()

        self.first_send_ns = time.monotonic_ns()
        await asyncio.gather(*(client(c) for c in connections))

    async def steady(self) -> None:
        """
        Push at ``--rate`` per second, whatever the answers take.
        """
        free: asyncio.Queue[Connection] = asyncio.Queue()
        connections = [Connection(self.host, self.port) for _ in range(self.args.concurrency)]
        await asyncio.gather(*(c.open() for c in connections))
        for c in connections:
            free.put_nowait(c)

        async def one(index: int) -> None:
            connection = await free.get()
            try:
                await self.push(connection, index)
            finally:
                free.put_nowait(connection)

        start = time.monotonic()
        self.first_send_ns = time.monotonic_ns()
        tasks = []
        for index in range(self.args.jobs):
            delay = start + index / self.args.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one(index)))
        await asyncio.gather(*tasks)
        for c in connections:
            c.close()

    def result(self) -> dict[str, Any]:
        """
        Return the result document.
        """
        elapsed = max(1, self.last_done_ns - self.first_send_ns) / 1e9
        return {
            "mode": self.args.mode,
            "jobs": self.args.jobs,
            "ok": len(self.sends),
            "errors": self.errors,
            "error_samples": self.error_samples,
            "elapsed_s": round(elapsed, 4),
            "pushes_per_s": round(len(self.sends) / elapsed, 1),
            "first_send_ns": self.first_send_ns,
            "last_done_ns": self.last_done_ns,
            "push_ms": percentiles(self.push_ms),
            "sends": self.sends,
        }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    """
    Run the pushes of ``args`` within the deadline; return the result.
    """
    run = Run(args)
    work = run.burst() if args.mode == "burst" else run.steady()
    try:
        await asyncio.wait_for(work, args.deadline)
    except TimeoutError:
        run._error(f"deadline of {args.deadline} s reached")
    return run.result()


def main() -> int:
    """
    Parse the arguments, run, write the result; exit 1 if any push failed.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["burst", "rate"])
    parser.add_argument("--target", required=True, help="host:port of the server under test")
    parser.add_argument("--url", required=True, help="the worker URL put in every job")
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rate", type=float, default=100.0, help="pushes per second (rate)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per push")
    parser.add_argument("--deadline", type=float, default=600.0, help="seconds for the run")
    parser.add_argument(
        "--payload-bytes", type=int, default=0, help="pad each payload to about this size"
    )
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    with open(args.out, "w") as f:
        json.dump(result, f)
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
