"""
Compare two HQ trees in one run: the baselines, HQ from ``--base`` (another
checkout, e.g. ``git worktree add /tmp/hq-base main``) and HQ from this tree
take turns, so that other work on the machine falls on all of them alike.

    python benchmarks/compare.py --base /tmp/hq-base              # throughput and latency
    python benchmarks/compare.py --base /tmp/hq-base --what l     # latency only
    python benchmarks/compare.py --base /tmp/hq-base --what p     # pushes alone
    python benchmarks/compare.py --base /tmp/hq-base --http10     # a connection per job
    python benchmarks/compare.py --base /tmp/hq-base --payload-bytes 10000  # large payloads

``p`` measures pushes alone: the worker is stopped (SIGSTOP) while the push
baseline and the two trees each answer ``--jobs`` pushes, so HQ only stores
and answers them (its dispatchers wait on the stopped worker). It says what a
change does to the push path itself, apart from the deliveries that share the
reactor thread in the throughput rounds.

``--http10`` makes the worker answer in HTTP/1.0 and close each connection,
as a plain HTTP/1.0 server does, so that HQ opens a connection per job. The
relay baseline is left out then: Twisted's stock connection pool, which it
uses, sends the next request on a connection such a worker closed, and about
half of its jobs fail (HQ's pool does not keep such a connection).

``--payload-bytes`` pads every pushed payload with a list of small records
(ids, names, tags, prices) to about that size; the jobs' own are 40 bytes.

The two trees take turns at going first in each round. Prints each round
and, at the end, each tree's ratios to the baselines (medians of the rounds;
latency pooled over all jobs) and, for the push and end-to-end rates, the
median over rounds of this tree's rate over the other's in the same round,
with the number of rounds in which this tree was faster. Not part of ``run.py``:
a tool for changes to the push and delivery path.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

import common
import run
from common import HERE, median, percentiles


def main() -> int:
    """
    Run the rounds; return the exit status (1 when a benchmark broke).
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the other tree (its hq/ and ui/)")
    parser.add_argument(
        "--what", default="tl", help="t: throughput, l: latency, p: pushes alone (default tl)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=3000, help="throughput jobs per round")
    parser.add_argument("--latency-jobs", type=int, default=600, help="latency jobs per block")
    parser.add_argument(
        "--http10", action="store_true", help="an HTTP/1.0 worker: a connection per job"
    )
    parser.add_argument(
        "--payload-bytes", type=int, default=0, help="pad each payload to about this size"
    )
    args = parser.parse_args()
    ctx = run.Context(
        argparse.Namespace(
            quick=False,
            results_dir=os.path.join(HERE, "results"),
            keep=False,
            profile=False,
            jobs=args.jobs,
            rounds=args.rounds,
            http10=args.http10,
            payload_bytes=args.payload_bytes,
        )
    )
    trees = {"base": os.path.abspath(args.base), "this": common.ROOT}
    baselines = () if args.http10 else ("relay",)
    throughput: dict[str, list[dict[str, Any]]] = {k: [] for k in ("push", "relay", *trees)}
    latency: dict[str, list[float]] = {k: [] for k in ("relay", *trees)}
    pushes: dict[str, list[dict[str, Any]]] = {k: [] for k in ("push", *trees)}
    try:
        for index in range(args.rounds):
            # The two trees take turns at going first, so that neither always
            # runs right after the other (a disk busy with its last commits,
            # caches it warmed).
            order = list(trees) if index % 2 == 0 else list(reversed(trees))
            if "t" in args.what:
                for kind in ("push", *baselines, *order):
                    # HQServer runs ``hq`` from common.ROOT (cwd and PYTHONPATH).
                    common.ROOT = trees.get(kind, trees["this"])
                    result = run.throughput_round(ctx, "hq" if kind in trees else kind, args.jobs)
                    throughput[kind].append(result)
                    print(
                        f"round {index + 1} {kind:5} CPU {result['cpu_us_per_job']:5d} us/job"
                        f"  push {result['push_per_s']:7.0f}/s"
                        f"  end-to-end {result.get('e2e_per_s', 0):7.0f}/s",
                        flush=True,
                    )
            if "p" in args.what:
                for kind in ("push", *order):
                    common.ROOT = trees.get(kind, trees["this"])
                    result = push_only_round(ctx, "hq" if kind in trees else kind, args.jobs)
                    pushes[kind].append(result)
                    print(
                        f"round {index + 1} {kind:5} pushes alone: CPU"
                        f" {result['cpu_us_per_job']:5d} us/push  {result['push_per_s']:7.0f}/s",
                        flush=True,
                    )
            if "l" in args.what:
                for kind in (*baselines, *order):
                    common.ROOT = trees.get(kind, trees["this"])
                    block = run.latency_run(
                        ctx, "hq" if kind in trees else kind, args.latency_jobs, 100.0
                    )
                    latency[kind].extend(block["latencies"])
                    lat = block["push_to_worker_ms"]
                    print(
                        f"round {index + 1} {kind:5} push -> worker p50 {lat['p50']:6.2f} ms"
                        f"  p99 {lat['p99']:7.2f} ms",
                        flush=True,
                    )
    finally:
        common.ROOT = trees["this"]
        ctx.close()
    if "t" in args.what:

        def med(kind: str, key: str) -> float:
            return float(median([r[key] for r in throughput[kind]]))

        for tree in trees:
            to_relay = (
                f", end-to-end / relay {med(tree, 'e2e_per_s') / med('relay', 'e2e_per_s'):.2f},"
                f" CPU per job / relay"
                f" {med(tree, 'cpu_us_per_job') / med('relay', 'cpu_us_per_job'):.2f}"
                if baselines
                else f", end-to-end {med(tree, 'e2e_per_s'):.0f}/s,"
                f" CPU per job {med(tree, 'cpu_us_per_job'):.0f} us"
            )
            print(
                f"{tree}: push / push baseline"
                f" {med(tree, 'push_per_s') / med('push', 'push_per_s'):.2f}{to_relay}"
            )
        # Paired by round: the two trees ran back to back, under the same load.
        pairs = list(zip(throughput["base"], throughput["this"], strict=True))
        for key, name in (("push_per_s", "push"), ("e2e_per_s", "end-to-end")):
            ratios = [this[key] / base[key] for base, this in pairs if base[key]]
            above = sum(ratio > 1 for ratio in ratios)
            print(
                f"this / base, {name}: median of the rounds {median(ratios):.3f}"
                f" (this higher in {above} of {len(ratios)})"
            )
    if "p" in args.what:
        bare = {key: median([r[key] for r in pushes["push"]]) for key in pushes["push"][0]}
        for tree in trees:
            rate = median([r["push_per_s"] for r in pushes[tree]])
            cpu = median([r["cpu_us_per_job"] for r in pushes[tree]])
            print(
                f"{tree}: pushes alone {rate / bare['push_per_s']:.2f} of the push baseline,"
                f" CPU per push {cpu:.0f} us ({cpu / bare['cpu_us_per_job']:.2f} x)"
            )
    if "l" in args.what:
        pooled = {kind: percentiles(values) for kind, values in latency.items() if values}
        relay = pooled.get("relay")
        if relay is not None:
            print(f"relay: pooled p50 {relay['p50']:.2f} ms, p99 {relay['p99']:.2f} ms")
        for tree in trees:
            lat = pooled[tree]
            print(
                f"{tree}: pooled p50 {lat['p50']:.2f} ms"
                + (f" ({lat['p50'] / relay['p50']:.2f} x relay)" if relay else "")
                + f", p99 {lat['p99']:.2f} ms"
                + (f" ({lat['p99'] / relay['p99']:.2f} x relay)" if relay else "")
            )
    for text in ctx.problems:
        print(f"PROBLEM: {text}")
    return 1 if ctx.problems else 0


def push_only_round(ctx: run.Context, kind: str, jobs: int) -> dict[str, Any]:
    """
    Push ``jobs`` with 32 clients to ``kind`` (``hq`` or ``push``) while the
    worker is stopped; return the push rate and the server's CPU per push.
    """
    worker = ctx.worker
    directory = ctx.directory(f"pushes-{kind}")
    server = run.server_for(kind, directory)
    with run.running(server.start()):
        worker.signal(signal.SIGSTOP)
        try:
            cpu_before = server.cpu()
            result = run.burst(ctx, kind, server, directory, jobs)
            cpu_used = server.cpu() - cpu_before
        finally:
            worker.signal(signal.SIGCONT)
    return {
        "push_per_s": result["pushes_per_s"],
        "cpu_us_per_job": round(cpu_used / jobs * 1e6),
    }


if __name__ == "__main__":
    sys.exit(main())
