"""
What every benchmark needs: the processes (HQ, the worker, the baselines, the
load generator), a small blocking HTTP client, memory readings and statistics.

Everything runs on 127.0.0.1; every wait is bounded in time.
"""

from __future__ import annotations

import http.client
import json
import os
import platform
import re
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PYTHON = sys.executable

# Every benchmark script imports this module first (its own folder is on the
# path when it runs), and so imports this tree's ``hq`` before any installed one.
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

#: ``hq serve -c FILE`` through its Python entry point (no console script needed).
SERVE = [
    PYTHON,
    "-c",
    "import sys; from hq.cli.serve import run_server; sys.exit(run_server(sys.argv[1], None))",
]

_LISTENING = re.compile(r"listening on http://([\d.]+):(\d+)")


class BenchmarkError(Exception):
    """
    A benchmark broke (a crash, a timeout, lost or duplicated jobs): not slowness.
    """


def free_port() -> int:
    """
    Return a TCP port on 127.0.0.1 that was free a moment ago.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.02) -> Any:
    """
    Call ``predicate`` until it returns something true; raise after ``timeout`` s.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise BenchmarkError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


# -- Measurements ------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    """
    Return the resident memory of ``pid`` and its children in MB (VmRSS,
    added up: pages they share count twice), 0 if it is gone. HQ's sender
    process (``hq.sender``) is part of the server.
    """
    return sum(_vm_rss_mb(each) for each in [pid, *child_pids(pid)])


def _vm_rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cpu_seconds(pid: int) -> float:
    """
    Return the CPU time (user + system) ``pid`` has used so far, in seconds.
    """
    fields = _stat(pid)
    if fields is None:
        return 0.0
    # utime and stime are fields 14 and 15 of stat(5); [0] here is field 3.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_cpu_seconds(pid: int) -> float:
    """
    Return the CPU time ``pid`` and its children have used so far, in
    seconds: HQ's sender process (``hq.sender``) is part of the server, and so
    is one that ended (counted once the server reaped it).
    """
    fields = _stat(pid)
    if fields is None:
        return 0.0
    # cutime and cstime (fields 16 and 17): the children it reaped.
    ticks = sum(int(f) for f in fields[11:15])
    for child in child_pids(pid):
        child_fields = _stat(child)
        if child_fields is not None:
            ticks += int(child_fields[11]) + int(child_fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()
    except OSError:
        return None


def child_pids(pid: int) -> list[int]:
    """
    Return the ids of ``pid``'s live children.
    """
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            # The parent's id is field 4 of stat(5): [1] here.
            if fields is not None and fields[1] == str(pid):
                children.append(int(entry))
    return children


class CpuShare:
    """
    How busy the machine was with work other than this benchmark, between
    :meth:`start` and :meth:`stop`: all CPU time (``/proc/stat``) less what
    this process and its finished children used, as a share of all cores.
    """

    def __init__(self, running_children: Any = None) -> None:
        self._began = (0.0, 0.0, 0.0)
        #: Returns the CPU seconds of children still running (not yet in rusage).
        self._running_children = running_children or (lambda: 0.0)

    def _now(self) -> tuple[float, float, float]:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        # user nice system idle iowait irq softirq steal ...
        busy = (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
        own = resource.getrusage(resource.RUSAGE_SELF)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        mine = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
        return time.monotonic(), busy, mine + self._running_children()

    def start(self) -> None:
        """
        Take the first reading.
        """
        self._began = self._now()

    def stop(self) -> float:
        """
        Return the share (0 to 1) of the cores that other work used meanwhile.
        """
        t0, busy0, mine0 = self._began
        t1, busy1, mine1 = self._now()
        wall = max(1e-9, t1 - t0) * (os.cpu_count() or 1)
        return round(max(0.0, (busy1 - busy0) - (mine1 - mine0)) / wall, 3)


class RssSampler:
    """
    Samples a process's RSS in a thread; ``peak`` is the largest seen.
    """

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self._pid = pid
        self._interval = interval
        self._stop = threading.Event()
        self.peak = 0.0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb(self._pid))
            self._stop.wait(self._interval)

    def stop(self) -> float:
        """
        Stop sampling; return the peak in MB.
        """
        self._stop.set()
        self._thread.join(5)
        self.peak = max(self.peak, rss_mb(self._pid))
        return round(self.peak, 1)


def percentiles(values: list[float]) -> dict[str, float]:
    """
    Return p50, p90, p99 and max of ``values`` (0 when empty), rounded to 0.001.
    """
    if not values:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0, "n": 0}
    ordered = sorted(values)

    def at(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 3)

    return {
        "p50": at(0.50),
        "p90": at(0.90),
        "p99": at(0.99),
        "max": round(ordered[-1], 3),
        "n": len(ordered),
    }


def median(values: list[float]) -> float:
    """
    Return the median of ``values`` (0 when empty).
    """
    ordered = sorted(values)
    if not ordered:
        return 0.0
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def machine() -> dict[str, Any]:
    """
    Describe the machine and the software versions.
    """
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory_mb = 0
    try:
        with open("/proc/meminfo") as f:
            memory_mb = int(f.readline().split()[1]) // 1024
    except OSError:
        pass
    import twisted

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_mb": memory_mb,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "twisted": twisted.__version__,
        "sqlite": sqlite3.sqlite_version,
    }


# -- A small blocking HTTP client -----------------------------------------------------


class Client:
    """
    One keep-alive connection to a server, for control calls and timed queries.
    """

    def __init__(self, base: str, timeout: float = 30) -> None:
        host, _, port = base.removeprefix("http://").rpartition(":")
        self._host = host
        self._port = int(port)
        self._timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def request(
        self, method: str, path: str, body: bytes | None = None, json_body: Any = None
    ) -> tuple[int, bytes, float]:
        """
        Return the status, the body and the round trip in ms.
        """
        headers = {}
        if json_body is not None:
            body = json.dumps(json_body).encode()
            headers["Content-Type"] = "application/json"
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(
                    self._host, self._port, timeout=self._timeout
                )
            began = time.perf_counter()
            try:
                self._conn.request(method, path, body=body, headers=headers)
                response = self._conn.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt == 2:
                    raise
                continue
            elapsed = (time.perf_counter() - began) * 1000
            if response.will_close:
                self.close()
            return response.status, data, elapsed
        raise AssertionError("unreachable")

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        """
        Return the decoded JSON body of a 200 answer; raise BenchmarkError otherwise.
        """
        status, data, _ = self.request(method, path, **kwargs)
        if status != 200:
            raise BenchmarkError(f"{method} {path}: HTTP {status}: {data[:300]!r}")
        return json.loads(data)

    def close(self) -> None:
        """
        Close the connection (the next request opens a new one).
        """
        if self._conn is not None:
            self._conn.close()
            self._conn = None


# -- Processes ------------------------------------------------------------------------


class Process:
    """
    A child process that prints (or logs) ``listening on http://127.0.0.1:PORT``.
    """

    name = "process"

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.base = ""
        self.started_at = 0.0
        self.listening_after = 0.0

    @property
    def pid(self) -> int:
        """
        The process id.
        """
        assert self.process is not None
        return self.process.pid

    @property
    def port(self) -> int:
        """
        The port it listens on.
        """
        return int(self.base.rpartition(":")[2])

    def rss(self) -> float:
        """
        Its resident memory now, in MB.
        """
        return round(rss_mb(self.pid), 1)

    def cpu(self) -> float:
        """
        The CPU seconds it (and its children) have used so far.
        """
        return server_cpu_seconds(self.pid)

    def _spawn(self, command: list[str], output: str) -> None:
        self.started_at = time.monotonic()
        with open(output, "ab") as out:
            self.process = subprocess.Popen(
                command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=_env()
            )
        self._output = output

    def _wait_listening(self, path: str, timeout: float) -> None:
        def address() -> str | None:
            assert self.process is not None
            if self.process.poll() is not None:
                raise BenchmarkError(
                    f"{self.name} exited with {self.process.returncode}: {self.output()[-2000:]}"
                )
            try:
                with open(path) as f:
                    match = _LISTENING.search(f.read())
            except FileNotFoundError:
                return None
            return f"http://{match.group(1)}:{match.group(2)}" if match else None

        self.base = wait_for(address, timeout, f"{self.name} to listen", interval=0.005)
        self.listening_after = time.monotonic() - self.started_at

    def output(self) -> str:
        """
        What it printed (stdout and stderr).
        """
        try:
            with open(self._output, errors="replace") as f:
                return f.read()
        except (OSError, AttributeError):
            return ""

    def alive(self) -> bool:
        """
        Whether it is still running.
        """
        return self.process is not None and self.process.poll() is None

    def signal(self, signum: int) -> None:
        """
        Send ``signum`` if it is still running.
        """
        if self.alive():
            assert self.process is not None
            self.process.send_signal(signum)

    def stop(self, timeout: float = 20) -> int | None:
        """
        Stop with SIGTERM (SIGKILL after ``timeout`` s); return the exit status.
        """
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("HQ_CONFIG", None)
    env.pop("HQ_LOG_LEVEL", None)
    return env


class HQServer(Process):
    """
    An HQ server process (``hq serve -c``) with its own directory.

    ``config`` overrides the benchmark defaults: 127.0.0.1 on a free port,
    ``dispatchers = 2``, ``max_workers = 8``, ``log_level = "warn"``, the app
    and access logs in files (not stdout), durable storage as shipped.
    """

    name = "HQ"

    def __init__(self, directory: str, **config: Any) -> None:
        super().__init__()
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        self.log_path = os.path.join(directory, "hq.log")
        self.config_path = os.path.join(directory, "hq.toml")
        self.data_dir = os.path.join(directory, "data")
        port = free_port()
        values: dict[str, Any] = {
            "addr": f"127.0.0.1:{port}",
            "data_dir": self.data_dir,
            "log_level": "warn",
            "log_file": self.log_path,
            "access_log_file": os.path.join(directory, "access.log"),
            "dispatchers": 2,
            "max_workers": 8,
            "shutdown_timeout": 5,
        }
        values.update(config)
        with open(self.config_path, "w") as f:
            for key, value in values.items():
                f.write(f"{key} = {json.dumps(value)}\n")
        values["port"] = port
        self.values = values

    def start(self, timeout: float = 60, command: list[str] | None = None) -> HQServer:
        """
        Start the server and wait until it answers ``GET /`` (it accepts
        requests only once its store is open and jobs are recovered).
        """
        self._spawn((command or SERVE) + [self.config_path], os.path.join(self.directory, "out"))
        self.base = f"http://127.0.0.1:{self.values['port']}"
        client = Client(self.base, timeout=timeout)
        deadline = time.monotonic() + timeout
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise BenchmarkError(
                    f"HQ exited with {self.process.returncode}: {self.output()[-2000:]}"
                )
            try:
                status, _, _ = client.request("GET", "/")
            except OSError:
                status = 0
            if status == 200:
                break
            if time.monotonic() > deadline:
                raise BenchmarkError(f"HQ did not answer within {timeout} s")
            time.sleep(0.005)
        client.close()
        self.listening_after = time.monotonic() - self.started_at
        return self


class Worker(Process):
    """
    The fast worker (``worker.py``); with ``http10``, it answers in HTTP/1.0
    and closes each connection (a new connection per job).
    """

    name = "worker"

    def __init__(self, directory: str, port: int = 0, http10: bool = False) -> None:
        super().__init__()
        self.directory = directory
        self._port = port
        self._http10 = http10

    def start(self) -> Worker:
        """
        Start the worker and wait until it listens.
        """
        out = os.path.join(self.directory, "worker.out")
        command = [PYTHON, os.path.join(HERE, "worker.py"), "--port", str(self._port)]
        if self._http10:
            command.append("--http10")
        self._spawn(command, out)
        self._wait_listening(out, 20)
        self.client = Client(self.base)
        return self

    def stats(self) -> dict[str, int]:
        """
        Return the worker's counters (``received``, ``unique``, ``duplicates``, ``errors``).
        """
        result: dict[str, int] = self.client.json("GET", "/_stats")
        return result

    def reset(self) -> None:
        """
        Make the worker forget every job it received.
        """
        self.client.json("POST", "/_reset")

    def arrivals(self, path: str) -> list[tuple[str, int]]:
        """
        Return every ``(job_id, monotonic_ns)`` received, through a dump to ``path``.
        """
        self.client.json("POST", "/_dump", body=path.encode())
        with open(path) as f:
            return [(job_id, ns) for job_id, ns in json.load(f)["arrivals"]]

    def wait_received(self, count: int, timeout: float) -> dict[str, int]:
        """
        Wait until ``count`` distinct jobs arrived; return the worker's stats.
        """
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            if stats["unique"] >= count or time.monotonic() > deadline:
                return stats
            time.sleep(0.01)


class Baseline(Process):
    """
    A bare baseline (``baseline.py push`` or ``relay``).
    """

    def __init__(self, directory: str, mode: str, workers: int = 16) -> None:
        super().__init__()
        self.name = f"baseline {mode}"
        self.directory = directory
        self.mode = mode
        self.workers = workers

    def start(self, prefix: list[str] | None = None, timeout: float = 30) -> Baseline:
        """
        Start the baseline (its command after ``prefix``, such as valgrind's)
        and wait until it listens.
        """
        out = os.path.join(self.directory, f"baseline-{self.mode}.out")
        command = [
            *(prefix or []),
            PYTHON,
            os.path.join(HERE, "baseline.py"),
            self.mode,
            "--workers",
            str(self.workers),
        ]
        self._spawn(command, out)
        self._wait_listening(out, timeout)
        return self


def loadgen(
    mode: str,
    target: str,
    worker_url: str,
    out: str,
    jobs: int,
    concurrency: int = 32,
    rate: float = 100.0,
    deadline: float = 600.0,
    payload_bytes: int = 0,
) -> dict[str, Any]:
    """
    Run the load generator (``loadgen.py``) to its end; return its result.
    With ``payload_bytes``, each payload is padded to about that size (the
    jobs' own are 40 bytes).
    """
    command = [
        PYTHON,
        os.path.join(HERE, "loadgen.py"),
        mode,
        "--target",
        target.removeprefix("http://"),
        "--url",
        worker_url,
        "--jobs",
        str(jobs),
        "--concurrency",
        str(concurrency),
        "--rate",
        str(rate),
        "--deadline",
        str(deadline),
        "--out",
        out,
        "--payload-bytes",
        str(payload_bytes),
    ]
    completed = subprocess.run(
        command, cwd=ROOT, env=_env(), capture_output=True, timeout=deadline + 60
    )
    if not os.path.exists(out):
        raise BenchmarkError(
            f"the load generator failed ({completed.returncode}): "
            f"{completed.stderr.decode(errors='replace')[-2000:]}"
        )
    with open(out) as f:
        result: dict[str, Any] = json.load(f)
    return result


def delivery(
    sends: dict[str, int], arrivals: list[tuple[str, int]]
) -> tuple[int, int, list[float], int]:
    """
    Compare pushed ids with the worker's arrivals.

    Return the misses, the duplicates, each job's push-to-arrival latency in ms
    (first arrival) and the last first-arrival time (monotonic ns).
    """
    first: dict[str, int] = {}
    duplicates = 0
    for job_id, ns in arrivals:
        if job_id in first:
            duplicates += 1
        else:
            first[job_id] = ns
    misses = sum(1 for job_id in sends if job_id not in first)
    latencies = [(first[j] - sent) / 1e6 for j, sent in sends.items() if j in first]
    last = max((first[j] for j in sends if j in first), default=0)
    return misses, duplicates, latencies, last


def metrics_text(base: str) -> str:
    """
    Return HQ's ``/metrics`` page.
    """
    client = Client(base, timeout=10)
    try:
        _, body, _ = client.request("GET", "/metrics")
    finally:
        client.close()
    return body.decode()


def commit_metrics(text: str) -> tuple[float, float]:
    """
    Return HQ's commit count and their summed seconds so far, from the text
    of ``/metrics`` (:func:`metrics_text`; ``(0, 0)`` for an empty text).
    """
    found = dict(re.findall(r"^hq_store_commit_duration_seconds_(count|sum) (\S+)$", text, re.M))
    return float(found.get("count", 0)), float(found.get("sum", 0))


def sender_requests(text: str) -> dict[str, float]:
    """
    Return the requests to workers each process made so far, from the text of
    ``/metrics``: ``{"server": n, "sender": m}`` (empty without a sender process).
    """
    found = re.findall(r'^hq_sender_requests_total\{process="(\w+)"\} (\S+)$', text, re.M)
    return {process: float(count) for process, count in found}
