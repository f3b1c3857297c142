"""
The SQLite store's CPU per job, alone: pushes, starts and finishes of jobs
through ``SQLiteStore`` and its writer thread, in groups of concurrent writes
as the API and the dispatchers ask for them, without HTTP, a worker or a load
generator on the same cores. Steadier than the throughput benchmark on a
shared machine, so a change to the store can be told apart from noise.

    python benchmarks/store.py                        # this tree
    python benchmarks/store.py --tree /tmp/hq-base    # another checkout, same machine

Prints, per operation, the CPU per job of the reactor thread and of the
writer thread (from ``/proc``), and the wall time per job. Compare trees in
one invocation each, taking turns (``--rounds``).

    python benchmarks/store.py --instructions --group 16   # needs valgrind

``--instructions`` counts instead the machine instructions per job of the
whole process under ``valgrind --tool=callgrind`` (both threads; one run of
``--jobs`` jobs and one of three times as many, so that start-up cancels
out). The count repeats to within 0.1% from run to run whatever else the
machine does, so a change of a few percent to the store's CPU shows.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))


def thread_ticks() -> dict[str, int]:
    """
    Return each thread's user + system CPU ticks, by thread id.
    """
    ticks = {}
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks[tid] = int(fields[11]) + int(fields[12])
    return ticks


def measure(jobs_count: int, group: int) -> dict[str, Any]:
    """
    In this process (``hq`` from ``sys.path``): push, start and finish
    ``jobs_count`` jobs, ``group`` concurrent writes at a time; return the figures.
    """
    import attrs
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred, gatherResults

    from hq.model import Attempt, Job, JobState, Outcome
    from hq.store.sqlite import SQLiteStore

    directory = tempfile.mkdtemp(prefix="hq-store-bench-", dir=os.path.join(HERE, "results"))
    store = SQLiteStore(directory, reactor)
    ticks_per_second = os.sysconf("SC_CLK_TCK")
    main_tid = str(os.getpid())
    figures: dict[str, Any] = {}

    async def run() -> None:
        await store.open()
        now = int(time.time() * 1000)
        jobs = [
            Job(
                id=(now << 22) + n,
                url="http://127.0.0.1:9/job",
                payload=json.dumps({"n": n}),
                flow_key="127.0.0.1:9",
            )
            for n in range(jobs_count)
        ]
        running = [
            attrs.evolve(job, state=JobState.RUNNING, started_at=now, attempts=1) for job in jobs
        ]
        outcome = Outcome(finished_at=now, success=True, status_code=200, output="ok")

        # An older tree's store takes no ``known`` job.
        known = "known" in inspect.signature(store.start).parameters

        def write(kind: str, index: int) -> Deferred[Any]:
            job = jobs[index]
            if kind == "push":
                return store.push([job], 0)
            if kind == "start":
                return store.start(job.id, now, job) if known else store.start(job.id, now)
            attempt = Attempt.of(running[index], outcome)
            if not known:
                return store.finish(job.id, outcome, attempt, None)
            return store.finish(job.id, outcome, attempt, None, running[index])

        for kind in ("push", "start", "finish"):
            before = thread_ticks()
            began = time.perf_counter()
            for first in range(0, jobs_count, group):
                indexes = range(first, min(first + group, jobs_count))
                await gatherResults([write(kind, index) for index in indexes])
            wall = time.perf_counter() - began
            after = thread_ticks()
            used = {tid: after[tid] - before.get(tid, 0) for tid in after}
            per_job = 1e6 / ticks_per_second / jobs_count
            reactor_us = used.get(main_tid, 0) * per_job
            other_us = sum(t for tid, t in used.items() if tid != main_tid) * per_job
            figures[kind] = {
                "reactor_us": round(reactor_us),
                "writer_us": round(other_us),
                "cpu_us": round(reactor_us + other_us),
                "wall_us": round(wall / jobs_count * 1e6),
            }
        await store.close()

    def go() -> None:
        def done(result: object) -> None:
            if result is not None:
                figures["error"] = str(result)
            reactor.stop()

        Deferred.fromCoroutine(run()).addBoth(done)

    reactor.callWhenRunning(go)
    reactor.run()
    shutil.rmtree(directory, ignore_errors=True)
    return figures


def child(args: argparse.Namespace, jobs: int) -> list[str]:
    """
    Return the command of one measuring run of ``jobs`` jobs (``--child``).
    """
    return [sys.executable, __file__, "--child", "--jobs", str(jobs), "--group", str(args.group)]


def run_child(
    args: argparse.Namespace, env: dict[str, str], command: list[str], timeout: float
) -> subprocess.CompletedProcess[str]:
    """
    Run ``command`` (a child run, :func:`child`) in ``--tree``; return it, its output captured.
    """
    return subprocess.run(
        command,
        env=env,
        cwd=os.path.abspath(args.tree),
        check=True,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def instructions(args: argparse.Namespace, env: dict[str, str], jobs: int) -> int:
    """
    Return the instructions a child run of ``jobs`` jobs executes under callgrind.
    """
    valgrind = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    out = run_child(args, env, [*valgrind, *child(args, jobs)], timeout=1200).stderr
    match = re.search(r"Collected : (\d+)", out)
    if match is None:
        raise RuntimeError(f"no instruction count in valgrind's output: {out[-500:]}")
    return int(match.group(1))


def count_instructions(args: argparse.Namespace, env: dict[str, str]) -> int:
    """
    Print the instructions per job: (count for 3 x jobs - count for jobs) / (2 x jobs).
    """
    if shutil.which("valgrind") is None:
        print("--instructions needs valgrind (apt-get install valgrind)")
        return 1
    few = instructions(args, env, args.jobs)
    many = instructions(args, env, 3 * args.jobs)
    per_job = (many - few) / (2 * args.jobs)
    print(
        f"instructions per job: {per_job:,.0f} (push, start and finish in groups of"
        f" {args.group}; {args.tree})"
    )
    return 0


def main() -> int:
    """
    Run the rounds (each in a new process, with ``--tree``'s ``hq``); print them.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", default=os.path.dirname(HERE), help="the checkout to measure")
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--group", type=int, default=32, help="concurrent writes (32)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="count instructions per job under valgrind (callgrind) instead of CPU time",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.jobs, args.group)))
        return 0
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.path.abspath(args.tree))
    if args.instructions:
        return count_instructions(args, env)
    totals: list[int] = []
    for index in range(args.rounds):
        out = run_child(args, env, child(args, args.jobs), timeout=300).stdout
        figures = json.loads(out.strip().splitlines()[-1])
        if "error" in figures:
            print(f"round {index + 1}: {figures['error']}")
            return 1
        line = "  ".join(
            f"{kind} {f['cpu_us']:4d} us (reactor {f['reactor_us']:3d}, writer {f['writer_us']:3d})"
            for kind, f in figures.items()
        )
        total = sum(f["cpu_us"] for f in figures.values())
        totals.append(total)
        print(f"round {index + 1}: {line}  total {total} us/job", flush=True)
    print(f"median total CPU per job: {sorted(totals)[len(totals) // 2]} us ({args.tree})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
