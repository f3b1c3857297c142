"""
Where a burst's CPU goes, thread by thread: HQ beside the relay baseline.

    python benchmarks/breakdown.py                 # 3 rounds of 3,000 jobs, 32 clients
    python benchmarks/breakdown.py --rounds 6 --jobs 3000
    python benchmarks/breakdown.py --split         # pushes alone, then deliveries alone
    python benchmarks/breakdown.py --instructions  # user-space instructions per job (valgrind)
    python benchmarks/breakdown.py --payload-bytes 10000  # payloads of about 10 KB

The ``throughput`` burst of ``run.py`` (a worker, the load generator, 32
keep-alive clients), taking turns between the relay and HQ. For each, read
from ``/proc`` before and after the burst, per job:

- the CPU of the reactor (main) thread and of all other threads (HQ's store
  writer and readers, and the threads of its sender process), user and system;
- their voluntary context switches (a thread that waits: for the interpreter
  lock, a lock, the disk, work) and the time they spent runnable but waiting
  for a core (``schedstat``);
- the reactor thread's busy share: its CPU over the burst's wall time (what it
  has left over waits for the store or for the other processes);
- for HQ, commits per job and their mean wall time, and the share of the
  requests to workers its sender process made (``/metrics``).

``--split`` takes a burst apart instead: the push baseline answers a
burst, then HQ answers one with its worker's flow key paused (``POST
/flow/{key}/pause``: it stores and answers the pushes and starts nothing),
then delivers them all once the key is resumed. It prints, per push and per
delivered job, the same per-thread figures, and the push rate and reactor
busy share beside the push baseline's (the busy share over the time pushes
were in flight). Pushes alone say what the push path costs; the rest of a
mixed burst's reactor time is the deliveries'.

``--instructions`` runs each server under ``valgrind --tool=callgrind`` (a
burst of ``--jobs`` jobs and one of three times as many, so that start-up
cancels out) and prints the user-space instructions per job and their ratio.
The count does not move with the machine's load, but the servers run about
50 times slower there, so batches are bigger than in a real burst, and the
kernel's work (system calls, ``fsync``, thread switches) is not counted.

Prints the figures; exits 1 when a burst lost or failed a job. Every process
listens on 127.0.0.1, and every wait is bounded.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
from typing import Any

from common import (
    SERVE,
    Baseline,
    BenchmarkError,
    Client,
    HQServer,
    Worker,
    child_pids,
    commit_metrics,
    loadgen,
    median,
    metrics_text,
    sender_requests,
)
from run import settle

TICKS = os.sysconf("SC_CLK_TCK")
VALGRIND = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]


def _tasks(pid: int) -> list[str]:
    try:
        return os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []


def threads(pid: int) -> dict[str, list[float]]:
    """
    Return ``{"main": [...], "others": [...]}``: user s, system s, voluntary
    context switches, s waiting for a core, summed over the threads of each.
    """
    totals = {"main": [0.0, 0.0, 0.0, 0.0], "others": [0.0, 0.0, 0.0, 0.0]}
    # The threads of the server's children (HQ's sender process) count as others.
    tasks = [(each, tid) for each in [pid, *child_pids(pid)] for tid in _tasks(each)]
    for owner, tid in tasks:
        base = f"/proc/{owner}/task/{tid}"
        try:
            with open(f"{base}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
            with open(f"{base}/status") as f:
                switches = next(
                    int(line.split()[1]) for line in f if line.startswith("voluntary_ctxt")
                )
            with open(f"{base}/schedstat") as f:
                waited_ns = int(f.read().split()[1])
        except (OSError, StopIteration):
            continue  # The thread ended meanwhile.
        row = totals["main" if int(tid) == pid else "others"]
        row[0] += int(fields[11]) / TICKS
        row[1] += int(fields[12]) / TICKS
        row[2] += switches
        row[3] += waited_ns / 1e9
    return totals


#: Pad each pushed payload to about this many bytes (``--payload-bytes``; 0: 40 bytes).
PAYLOAD_BYTES = 0


def push_burst(
    server: Any, worker: Worker, directory: str, jobs: int, deadline: float
) -> dict[str, Any]:
    """
    Push ``jobs`` jobs for ``worker`` to ``server`` from 32 clients (``run.py``'s
    throughput burst); return the load generator's result.
    """
    return loadgen(
        "burst",
        server.base,
        worker.base + "/job",
        os.path.join(directory, "loadgen.json"),
        jobs=jobs,
        concurrency=32,
        deadline=deadline,
        payload_bytes=PAYLOAD_BYTES,
    )


def burst(kind: str, worker: Worker, directory: str, jobs: int) -> dict[str, Any]:
    """
    Run one burst of ``jobs`` against a new ``kind`` server (``hq`` or
    ``relay``); return its per-job figures.
    """
    os.makedirs(directory)
    worker.reset()
    server: Any = HQServer(directory) if kind == "hq" else Baseline(directory, "relay")
    server.start()
    try:
        before = threads(server.pid)
        text_before = metrics_text(server.base) if kind == "hq" else ""
        began = time.monotonic()
        result = push_burst(server, worker, directory, jobs, deadline=300)
        received = worker.wait_received(result["ok"], timeout=120)
        wall = time.monotonic() - began
        busy = threads(server.pid)
        if kind == "hq":
            settle(server, timeout=30)
        after = threads(server.pid)
        text_after = metrics_text(server.base) if kind == "hq" else ""
    finally:
        server.stop()
    if result["errors"] or received["unique"] != jobs or received["duplicates"]:
        raise BenchmarkError(f"{kind}: {result['errors']} failed pushes, worker saw {received}")
    figures = per_job(before, after, jobs)
    figures["busy"] = main_seconds(before, busy) / wall
    figures["e2e_per_s"] = jobs / wall
    # The relay has no /metrics: its texts are empty, its figures 0.
    commits_before, commits_after = commit_metrics(text_before), commit_metrics(text_after)
    commits = commits_after[0] - commits_before[0]
    figures["commits_per_job"] = commits / jobs
    figures["commit_ms"] = (commits_after[1] - commits_before[1]) / commits * 1e3 if commits else 0
    sent_before, sent_after = sender_requests(text_before), sender_requests(text_after)
    sent = {p: sent_after[p] - sent_before.get(p, 0.0) for p in sent_after}
    total = sum(sent.values())
    figures["child_share"] = sent.get("sender", 0.0) / total if total else 0.0
    return figures


def main_seconds(before: dict[str, list[float]], after: dict[str, list[float]]) -> float:
    """
    Return the reactor (main) thread's CPU, s, between two readings of :func:`threads`.
    """
    return after["main"][0] + after["main"][1] - before["main"][0] - before["main"][1]


def per_job(
    before: dict[str, list[float]], after: dict[str, list[float]], jobs: int
) -> dict[str, Any]:
    """
    Return the figures per job between two readings of :func:`threads`:
    ``main`` and ``others`` (CPU, system CPU, waits, time runnable) and
    ``cpu_us``, their CPU together.
    """
    figures: dict[str, Any] = {}
    for name in ("main", "others"):
        a, b = after[name], before[name]
        figures[name] = {
            "cpu_us": (a[0] + a[1] - b[0] - b[1]) / jobs * 1e6,
            "sys_us": (a[1] - b[1]) / jobs * 1e6,
            "switches": (a[2] - b[2]) / jobs,
            "runnable_us": (a[3] - b[3]) / jobs * 1e6,
        }
    figures["cpu_us"] = figures["main"]["cpu_us"] + figures["others"]["cpu_us"]
    return figures


def split(kind: str, worker: Worker, directory: str, jobs: int) -> dict[str, Any]:
    """
    Run one burst of ``jobs`` pushes against a new ``kind`` server (``hq`` or
    the ``push`` baseline); HQ with the worker's flow key paused, then
    resumed until it has delivered them all. Return the figures of the
    pushes (``pushes``) and, for HQ, of the deliveries (``deliveries``).
    """
    os.makedirs(directory)
    worker.reset()
    server: Any = HQServer(directory) if kind == "hq" else Baseline(directory, "push")
    server.start()
    client = Client(server.base, timeout=10)
    # The default flow key of a job is its URL's host:port.
    flow = "/flow/" + worker.base.removeprefix("http://")
    try:
        if kind == "hq":
            client.json("POST", flow + "/pause")
        before = threads(server.pid)
        result = push_burst(server, worker, directory, jobs, deadline=300)
        pushed = threads(server.pid)
        if result["errors"]:
            raise BenchmarkError(f"{kind}: {result['errors']} failed pushes")
        seconds = (result["last_done_ns"] - result["first_send_ns"]) / 1e9
        pushes = per_job(before, pushed, jobs)
        pushes["busy"] = main_seconds(before, pushed) / seconds
        pushes["per_s"] = result["pushes_per_s"]
        figures: dict[str, Any] = {"pushes": pushes}
        if kind == "hq":
            began = time.monotonic()
            client.json("POST", flow + "/resume")
            received = worker.wait_received(jobs, timeout=120)
            settle(server, timeout=30)
            wall = time.monotonic() - began
            delivered = threads(server.pid)
            if received["unique"] != jobs or received["duplicates"]:
                raise BenchmarkError(f"hq: the worker saw {received}")
            deliveries = per_job(pushed, delivered, jobs)
            deliveries["busy"] = main_seconds(pushed, delivered) / wall
            deliveries["per_s"] = jobs / wall
            figures["deliveries"] = deliveries
    finally:
        client.close()
        server.stop()
    return figures


def thread_parts(label: str, f: dict[str, Any]) -> list[str]:
    """
    Return the start of a printed line: ``label``, the CPU per job, and each
    of the reactor (main) and other threads' figures (:func:`per_job`).
    """
    parts = [f"{label}  CPU {f['cpu_us']:4.0f} us/job"]
    for name in ("main", "others"):
        t = f[name]
        parts.append(
            f"{name} {t['cpu_us']:3.0f} (sys {t['sys_us']:3.0f}, {t['switches']:.2f} waits,"
            f" {t['runnable_us']:3.0f} us runnable)"
        )
    return parts


def print_split(label: str, f: dict[str, Any]) -> None:
    """
    Print the figures of one part of a split burst on one line.
    """
    parts = thread_parts(f"{label:16}", f)
    parts.append(f"reactor busy {f['busy']:.2f}  {f['per_s']:5.0f}/s")
    print("  ".join(parts), flush=True)


def print_burst(kind: str, f: dict[str, Any]) -> None:
    """
    Print one burst's figures on one line.
    """
    parts = thread_parts(f"{kind:5}", f)
    parts.append(f"reactor busy {f['busy']:.2f}  end-to-end {f['e2e_per_s']:5.0f}/s")
    if kind == "hq":
        parts.append(f"commits {f['commits_per_job']:.3f}/job, {f['commit_ms']:.2f} ms each")
        parts.append(f"sent by the sender process {f['child_share']:.0%}")
    print("  ".join(parts), flush=True)


def instructions(kind: str, directory: str, jobs: int) -> int:
    """
    Return the instructions a ``kind`` server executes under callgrind from
    its start to its stop, through one burst of ``jobs`` jobs.
    """
    os.makedirs(directory)
    worker = Worker(os.path.join(directory)).start()
    try:
        if kind == "hq":
            server: Any = HQServer(directory)
            server.start(timeout=300, command=VALGRIND + SERVE)
            output = os.path.join(directory, "out")
        else:
            server = Baseline(directory, "relay").start(prefix=VALGRIND, timeout=300)
            output = os.path.join(directory, "baseline-relay.out")
        try:
            result = push_burst(server, worker, directory, jobs, deadline=900)
            worker.wait_received(result["ok"], timeout=900)
            if kind == "hq":
                settle(server, timeout=300)
        finally:
            server.stop(timeout=300)
    finally:
        worker.stop()
    with open(output) as f:
        counts = re.findall(r"Collected : (\d+)", f.read())
    if not counts:
        raise BenchmarkError(f"{kind}: no instruction count in {output}")
    return int(counts[-1])


def split_rounds(worker: Worker, directory: str, jobs: int, rounds: int) -> int:
    """
    Run ``rounds`` split bursts (:func:`split`), the push baseline and HQ
    taking turns; print them and the medians.
    """
    bare: list[dict[str, Any]] = []
    pushes: list[dict[str, Any]] = []
    deliveries: list[dict[str, Any]] = []
    for index in range(rounds):
        bare.append(split("push", worker, os.path.join(directory, f"push-{index}"), jobs)["pushes"])
        print_split("push baseline", bare[-1])
        figures = split("hq", worker, os.path.join(directory, f"hq-{index}"), jobs)
        pushes.append(figures["pushes"])
        deliveries.append(figures["deliveries"])
        print_split("hq pushes alone", pushes[-1])
        print_split("hq deliveries", deliveries[-1])

    def rate(runs: list[dict[str, Any]]) -> float:
        return float(median([run["per_s"] for run in runs]))

    def busy(runs: list[dict[str, Any]]) -> float:
        return float(median([run["busy"] for run in runs]))

    def main_us(runs: list[dict[str, Any]]) -> float:
        return float(median([run["main"]["cpu_us"] for run in runs]))

    print(
        f"median: pushes alone {rate(pushes) / rate(bare):.2f} of the push baseline's rate;"
        f" reactor CPU per push {main_us(pushes):.0f} us against {main_us(bare):.0f} us;"
        f" reactor busy {busy(pushes):.2f} against {busy(bare):.2f};"
        f" reactor CPU per delivered job {main_us(deliveries):.0f} us"
    )
    return 0


def main() -> int:
    """
    Run the rounds; print them and the medians.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, help="jobs per burst (3,000; --instructions: 200)")
    parser.add_argument("--instructions", action="store_true", help="count under valgrind")
    parser.add_argument("--split", action="store_true", help="pushes alone, then deliveries alone")
    parser.add_argument(
        "--payload-bytes", type=int, default=0, help="pad each payload to about this size"
    )
    args = parser.parse_args()
    global PAYLOAD_BYTES
    PAYLOAD_BYTES = args.payload_bytes
    directory = tempfile.mkdtemp(prefix="hq-breakdown-")
    try:
        if args.instructions:
            if shutil.which("valgrind") is None:
                print("--instructions needs valgrind (apt-get install valgrind)")
                return 1
            jobs = args.jobs or 200
            per_job = {}
            for kind in ("relay", "hq"):
                few = instructions(kind, os.path.join(directory, f"{kind}-few"), jobs)
                many = instructions(kind, os.path.join(directory, f"{kind}-many"), 3 * jobs)
                per_job[kind] = (many - few) / (2 * jobs)
                print(f"{kind:5}  {per_job[kind]:,.0f} instructions per job", flush=True)
            print(f"HQ / relay: {per_job['hq'] / per_job['relay']:.3f}")
            return 0
        jobs = args.jobs or 3000
        os.makedirs(os.path.join(directory, "worker"))
        worker = Worker(os.path.join(directory, "worker")).start()
        if args.split:
            try:
                return split_rounds(worker, directory, jobs, args.rounds)
            finally:
                worker.stop()
        runs: dict[str, list[dict[str, Any]]] = {"relay": [], "hq": []}
        try:
            for index in range(args.rounds):
                for kind in ("relay", "hq"):
                    figures = burst(kind, worker, os.path.join(directory, f"{kind}-{index}"), jobs)
                    runs[kind].append(figures)
                    print_burst(kind, figures)
        finally:
            worker.stop()
        cpu = {kind: median([run["cpu_us"] for run in runs[kind]]) for kind in runs}
        busy = {kind: median([run["busy"] for run in runs[kind]]) for kind in runs}
        print(
            f"median CPU per job: relay {cpu['relay']:.0f} us, HQ {cpu['hq']:.0f} us"
            f" ({cpu['hq'] / cpu['relay']:.2f} x); reactor busy: relay {busy['relay']:.2f},"
            f" HQ {busy['hq']:.2f}"
        )
        return 0
    except BenchmarkError as e:
        print(f"broke: {e}")
        return 1
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
