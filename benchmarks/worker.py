"""
The benchmarks' fast worker: a separate process that answers every job with
200 at once and records when each job id arrived.

It is a bare asyncio HTTP/1.1 server (keep-alive, ``Content-Length`` bodies),
so it costs as little CPU as a worker can. With ``--http10`` it answers jobs
as a plain HTTP/1.0 server does (``HTTP/1.0 200 OK``, then it closes the
connection), so HQ opens a connection per job. It prints
``listening on http://127.0.0.1:PORT`` on stdout once it accepts requests.

Control paths (used by ``run.py``, never by HQ):

- ``GET /_stats``: ``{"received", "unique", "duplicates", "errors"}``
- ``POST /_dump`` with a file path as the body: writes
  ``{"arrivals": [[job_id, monotonic_ns], ...]}`` there
- ``POST /_reset``: forgets everything received

Any other request is a job: its ``X-Hq-Job-Id`` header is recorded with the
``time.monotonic_ns()`` at which its body was complete (the same clock in every
process on Linux, so the load generator's send times compare with it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

_OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
_OK_10 = b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
_BAD = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
#: Requests larger than this are refused (HQ's benchmark payloads are tiny).
_MAX_REQUEST = 1 << 20


class Recorder:
    """
    Every job id received, in order, with its arrival time.
    """

    def __init__(self) -> None:
        self.arrivals: list[tuple[str, int]] = []
        self.seen: set[str] = set()
        self.duplicates = 0
        self.errors = 0

    def record(self, job_id: str) -> None:
        """
        Record that ``job_id`` arrived now.
        """
        self.arrivals.append((job_id, time.monotonic_ns()))
        if job_id in self.seen:
            self.duplicates += 1
        else:
            self.seen.add(job_id)

    def stats(self) -> bytes:
        """
        Return the counters as JSON.
        """
        return json.dumps(
            {
                "received": len(self.arrivals),
                "unique": len(self.seen),
                "duplicates": self.duplicates,
                "errors": self.errors,
            }
        ).encode()

    def dump(self, path: str) -> None:
        """
        Write every arrival to ``path`` as JSON.
        """
        with open(path, "w") as f:
            json.dump({"arrivals": self.arrivals}, f)

    def reset(self) -> None:
        """
        Forget everything received.
        """
        self.arrivals = []
        self.seen = set()
        self.duplicates = 0
        self.errors = 0


class WorkerProtocol(asyncio.Protocol):
    """
    One keep-alive connection: parse requests from the buffer, answer each at
    once (with ``http10``: answer one job in HTTP/1.0 and close).
    """

    def __init__(self, recorder: Recorder, http10: bool = False) -> None:
        self._recorder = recorder
        self._http10 = http10
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while self._transport is not None:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > _MAX_REQUEST:
                    self._fail()
                return
            head = bytes(self._buffer[:end]).split(b"\r\n")
            length = 0
            job_id = ""
            for line in head[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"x-hq-job-id":
                    job_id = value.strip().decode("ascii")
                elif name == b"transfer-encoding":
                    # Neither HQ nor the relay sends chunked bodies to workers.
                    self._fail()
                    return
            total = end + 4 + length
            if total > _MAX_REQUEST:
                self._fail()
                return
            if len(self._buffer) < total:
                return
            body = bytes(self._buffer[end + 4 : total])
            del self._buffer[:total]
            self._answer(head[0], job_id, body)

    def _answer(self, request_line: bytes, job_id: str, body: bytes) -> None:
        assert self._transport is not None
        parts = request_line.split(b" ")
        path = parts[1] if len(parts) > 1 else b"/"
        if path.startswith(b"/_"):
            self._control(parts[0], path, body)
            return
        if job_id:
            self._recorder.record(job_id)
        else:
            self._recorder.errors += 1
        if self._http10:
            self._transport.write(_OK_10)
            self._transport.close()
            self._transport = None
            return
        self._transport.write(_OK)

    def _control(self, method: bytes, path: bytes, body: bytes) -> None:
        assert self._transport is not None
        if path == b"/_stats":
            answer = self._recorder.stats()
        elif path == b"/_dump" and method == b"POST":
            self._recorder.dump(body.decode("utf-8"))
            answer = b"{}"
        elif path == b"/_reset" and method == b"POST":
            self._recorder.reset()
            answer = b"{}"
        else:
            self._transport.write(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
            )
            return
        self._transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(answer)).encode()
            + b"\r\n\r\n"
            + answer
        )

    def _fail(self) -> None:
        self._recorder.errors += 1
        if self._transport is not None:
            self._transport.write(_BAD)
            self._transport.close()
            self._transport = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None


async def serve(port: int, lifetime: float, http10: bool = False) -> None:
    """
    Serve on 127.0.0.1:``port`` for at most ``lifetime`` seconds (jobs
    answered in HTTP/1.0 with ``http10``).
    """
    recorder = Recorder()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: WorkerProtocol(recorder, http10), "127.0.0.1", port, backlog=1024
    )
    bound = server.sockets[0].getsockname()[1]
    print(f"listening on http://127.0.0.1:{bound}", flush=True)
    async with server:
        await asyncio.sleep(lifetime)


def main() -> None:
    """
    Parse the arguments and serve.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--lifetime", type=float, default=3600, help="exit after this many seconds")
    parser.add_argument(
        "--http10",
        action="store_true",
        help="answer jobs in HTTP/1.0 and close each connection (as python -m http.server)",
    )
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.lifetime, args.http10))


if __name__ == "__main__":
    main()
