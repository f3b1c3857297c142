"""
Real processes for end-to-end tests: an HQ server started as users start it,
and a recording worker, both on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: How the server is started: ``hq serve`` through its Python entry point.
SERVE = [
    sys.executable,
    "-c",
    "import sys; from hq.cli.serve import run_server; sys.exit(run_server(sys.argv[1], None))",
]

#: The same through twistd and the plugin.
TWISTD = [
    sys.executable,
    "-c",
    "import sys; from twisted.scripts.twistd import run; sys.exit(run())",
    "-n",
    "--pidfile=",
    "hq",
    "-c",
]

#: The venv's real ``twistd`` script (beside this Python), as users run it;
#: followed by twistd's options, then ``hq -c FILE``.
TWISTD_SCRIPT = os.path.join(os.path.dirname(sys.executable), "twistd")

_LISTENING = re.compile(r"listening on http://([\d.]+):(\d+)")


def report(test: str, **numbers: Any) -> None:
    """
    Append the numbers of a reliability test run to ``$HQ_RELIABILITY_REPORT``
    (JSON lines), if set; docs/reliability.md quotes them.
    """
    path = os.environ.get("HQ_RELIABILITY_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"test": test, **numbers}) + "\n")


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    """
    Call ``predicate`` until it returns something true; fail after ``timeout`` s.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class ServerProcess:
    """
    One HQ server process with its own config file, data_dir and log file.
    """

    def __init__(
        self,
        directory: str,
        command: list[str] | None = None,
        cwd: str = ROOT,
        **config: Any,
    ) -> None:
        self.cwd = cwd
        self.directory = os.path.abspath(directory)
        os.makedirs(self.directory, exist_ok=True)
        self.log_path = os.path.join(self.directory, "hq.log")
        self.config_path = os.path.join(self.directory, "hq.toml")
        values: dict[str, Any] = {
            "addr": "127.0.0.1:0",
            "data_dir": os.path.join(self.directory, "data"),
            "log_file": self.log_path,
            "access_log_file": os.path.join(self.directory, "access.log"),
            "dispatchers": 1,
            "max_workers": 4,
            "shutdown_timeout": 2,
        }
        values.update(config)
        with open(self.config_path, "w") as f:
            for key, value in values.items():
                f.write(f"{key} = {json.dumps(value)}\n")
        self.command = (command or SERVE) + [self.config_path]
        self.process: subprocess.Popen[bytes] | None = None
        self.base = ""

    def start(self, wait: bool = True) -> ServerProcess:
        """
        Start the process; with ``wait``, until it logs its address.
        """
        if os.path.exists(self.log_path):
            os.rename(self.log_path, self.log_path + f".{time.monotonic_ns()}")
        self.process = subprocess.Popen(
            self.command,
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        if wait:
            host, port = wait_for(self._address, 20, "the server to listen")
            self.base = f"http://{host}:{port}"
        return self

    def _address(self) -> tuple[str, str] | None:
        assert self.process is not None
        if self.process.poll() is not None:
            output = self.process.stdout.read().decode() if self.process.stdout else ""
            raise AssertionError(f"server exited with {self.process.returncode}: {output}")
        try:
            with open(self.log_path) as f:
                match = _LISTENING.search(f.read())
        except FileNotFoundError:
            return None
        return (match.group(1), match.group(2)) if match else None

    def log_text(self) -> str:
        try:
            with open(self.log_path) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def wait_exit(self, timeout: float = 20) -> tuple[int, str]:
        """
        Wait for the process to end; return its status and its console output.
        """
        assert self.process is not None
        output, _ = self.process.communicate(timeout=timeout)
        return self.process.returncode, output.decode("utf-8", "replace")

    def kill(self, signum: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)
            if signum == signal.SIGKILL:
                self.process.wait(10)

    def stop(self) -> None:
        """
        Stop gracefully if still running (for cleanups).
        """
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()

    def request(
        self, method: str, path: str, body: Any = None, timeout: float = 10
    ) -> tuple[int, Any]:
        """
        Call the API; return the status and the decoded JSON body.
        """
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def push(self, url: str, **fields: Any) -> str:
        status, job = self.request("POST", "/job", {"url": url, **fields})
        assert status == 200, job
        return str(job["id"])

    def jobs(self) -> list[dict[str, Any]]:
        status, page = self.request("GET", "/job?limit=-1")
        assert status == 200, page
        return list(page["jobs"])


class ConsoleServer(ServerProcess):
    """
    A server whose console (stdout and stderr) is read as it comes, by a
    thread; its address is found in ``watch`` (a log file) or else in the
    console. For servers that log to the console, and daemons.
    """

    def __init__(self, directory: str, watch: str | None = None, **kwargs: Any) -> None:
        super().__init__(directory, **kwargs)
        self.watch = watch
        self.output: list[str] = []
        self._reader: threading.Thread | None = None

    def start(self, wait: bool = True) -> ConsoleServer:
        self.process = subprocess.Popen(
            self.command, cwd=self.cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        stdout = self.process.stdout
        assert stdout is not None

        def read() -> None:
            for line in iter(stdout.readline, b""):
                self.output.append(line.decode("utf-8", "replace"))

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        if wait:
            host, port = wait_for(self._address, 20, "the server to listen")
            self.base = f"http://{host}:{port}"
        return self

    def console(self) -> str:
        return "".join(self.output)

    def watched(self) -> str:
        if self.watch is None:
            return self.console()
        try:
            with open(self.watch) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def _address(self) -> tuple[str, str] | None:
        assert self.process is not None
        match = _LISTENING.search(self.watched())
        if match:
            return (match.group(1), match.group(2))
        if self.process.poll() is not None and (self.watch is None or self.process.returncode):
            time.sleep(0.2)
            raise AssertionError(f"exited with {self.process.returncode}: {self.console()}")
        return None

    def wait_exit(self, timeout: float = 20) -> tuple[int, str]:
        assert self.process is not None and self._reader is not None
        code = self.process.wait(timeout)
        self._reader.join(timeout)
        return code, self.console()


class _QuietHTTPServer(ThreadingHTTPServer):
    """
    A threading HTTP server that does not print a traceback when a client
    (a killed HQ server) resets its connection.
    """

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


class RecordingWorker:
    """
    A worker on 127.0.0.1 that records every job id it receives.

    Paths starting with ``/hold`` wait until ``release()`` (or 30 s); paths
    ``/sleep/<ms>...`` wait that many milliseconds; others answer 200 at once.
    The answer is ``{"ok":true}``, or ``size`` bytes with a ``?size=N`` query.
    """

    def __init__(self) -> None:
        self.received: Counter[str] = Counter()
        self.requests: list[dict[str, Any]] = []
        self.gate = threading.Event()
        self.holding = 0
        self._lock = threading.Lock()
        worker = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with worker._lock:
                    worker.received[self.headers.get("X-Hq-Job-Id", "")] += 1
                    worker.requests.append(
                        {"path": self.path, "headers": dict(self.headers), "body": body}
                    )
                if self.path.startswith("/sleep/"):
                    delay = self.path.split("/")[2]
                    time.sleep(int(delay) / 1000 if delay.isdigit() else 0)
                if self.path.startswith("/hold"):
                    with worker._lock:
                        worker.holding += 1
                    worker.gate.wait(30)
                    with worker._lock:
                        worker.holding -= 1
                answer = b'{"ok":true}'
                size = re.search(r"[?&]size=(\d+)", self.path)
                if size:
                    answer = b"b" * int(size.group(1))
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                except OSError:
                    pass

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = _QuietHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def release(self) -> None:
        self.gate.set()

    def close(self) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()


class HangingWorker:
    """
    A worker on 127.0.0.1 that accepts connections and never answers (until
    :meth:`close`); :attr:`connections` counts the connections accepted.
    """

    def __init__(self) -> None:
        self.connections = 0
        self._open: list[socket.socket] = []
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self._open.append(conn)
            self.connections += 1

    def close(self) -> None:
        self._sock.close()
        for conn in self._open:
            conn.close()
