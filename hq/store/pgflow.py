"""
Flow control on PostgreSQL (SPEC §16): the claim that holds each flow key's
limits across all the nodes of a cluster, and the schema step that gives the
jobs of an older database their flow key.

A claim when no key has a limit (and the node has no caps of its own) is the
plain one statement of :mod:`hq.store.postgres`. Otherwise the claims of all
nodes take turns on one transaction-level advisory lock: each reads the
limits, what runs and what started lately, then picks, per limited key, at
most its room from the ``jobs_flow`` index, and the other keys' jobs in due
order, so a key at its limit holds back no other key's jobs. The lock is held
until the claim's commit, so the next claim counts this one's jobs running.
"""

from __future__ import annotations

from typing import Any, cast

import psycopg

from hq.model import FlowLimits
from hq.store import ClaimCaps, Claimed, sql

#: Key of the advisory lock that claims under flow limits take ("HQ" 3).
FLOW_LOCK = 0x4851_0003

#: The database's clock in ms (as :mod:`hq.store.postgres`'s leases use).
DB_NOW = "CAST(extract(epoch FROM clock_timestamp()) * 1000 AS BIGINT)"

#: Whether any key has a limit or is paused: if not, the plain claim serves.
ANY_LIMITS = "SELECT EXISTS (SELECT 1 FROM flows WHERE parallelism > 0 OR rate > 0 OR paused <> 0)"
_FLOWS = f"SELECT {sql.FLOW_COLUMNS} FROM flows"
_RUNNING = "SELECT flow_key, count(*) FROM jobs WHERE state = 1 GROUP BY flow_key"
#: Forget the starts older than their key's window, and those of keys without a rate.
_PRUNE_STARTS = (
    "DELETE FROM flow_starts s WHERE NOT EXISTS (SELECT 1 FROM flows f WHERE f.key = s.flow_key"
    " AND f.rate > 0 AND s.at > %s - f.period * 1000)"
)
_RECENT_STARTS = "SELECT flow_key, count(*) FROM flow_starts GROUP BY flow_key"
_RECORD_STARTS = "INSERT INTO flow_starts (flow_key, at) SELECT unnest(%s::text[]), %s"
#: The flow keys of the waiting jobs, one index probe each (a loose index scan
#: of ``jobs_flow``), however many jobs each key has.
_WAITING_KEYS = """
    WITH RECURSIVE keys(key) AS (
        (SELECT flow_key FROM jobs WHERE state = 0 ORDER BY flow_key LIMIT 1)
        UNION ALL
        SELECT (SELECT flow_key FROM jobs WHERE state = 0 AND flow_key > keys.key
                ORDER BY flow_key LIMIT 1)
        FROM keys WHERE keys.key IS NOT NULL
    )
    SELECT key FROM keys WHERE key IS NOT NULL
"""
#: Up to n due jobs of each key (keys, ns, now), through ``jobs_flow``; rows
#: another transaction holds are skipped.
_DUE_OF_KEYS = """
    SELECT j.id, j.run_after FROM unnest(%s::text[], %s::int[]) AS k(key, n)
    CROSS JOIN LATERAL (
        SELECT id, run_after FROM jobs
        WHERE state = 0 AND canceled = 0 AND flow_key = k.key AND run_after <= %s
        ORDER BY run_after, id LIMIT k.n FOR UPDATE SKIP LOCKED
    ) AS j
"""
#: Up to n due jobs of the keys not named (limited keys, now, n), in due order.
_DUE_OF_OTHERS = (
    "SELECT id, run_after FROM jobs WHERE state = 0 AND canceled = 0 AND run_after <= %s"
    " AND flow_key <> ALL(%s::text[]) ORDER BY run_after, id LIMIT %s FOR UPDATE SKIP LOCKED"
)
#: Mark the picked jobs running for a node (started_at, node, lease ms, ids).
_TAKE = (
    "UPDATE jobs SET state = 1, status = 'running', started_at = %s, attempts = attempts + 1,"
    f" node = %s, lease_until = {DB_NOW} + %s"
    f" WHERE id = ANY(%s) AND state = 0 AND canceled = 0 RETURNING {sql.COLUMNS}"
)


def _limits(limits: FlowLimits) -> bool:
    return limits.paused or limits.parallelism > 0 or limits.rate > 0


def plain(caps: ClaimCaps | None) -> bool:
    """
    Whether ``caps`` ask for nothing beyond the stored limits.
    """
    return caps is None or (caps.default_parallelism <= 0 and not caps.local)


def _room(
    key: str,
    own: FlowLimits | None,
    running: int,
    started: int,
    caps: ClaimCaps,
) -> int | None:
    """
    Return how many more jobs of ``key`` may start now, ``None`` for no limit:
    the least of its parallelism less ``running``, its rate less the
    ``started`` in its window and this node's own cap. A key with no stored
    limits of its own has ``caps.default_parallelism`` (0: none).
    """
    rooms: list[int] = []
    if own is not None:
        if own.paused:
            return 0
        if own.parallelism > 0:
            rooms.append(own.parallelism - running)
        if own.rate > 0:
            rooms.append(own.rate - started)
    elif caps.default_parallelism > 0:
        rooms.append(caps.default_parallelism - running)
    if key in caps.local:
        rooms.append(caps.local[key])
    return max(0, min(rooms)) if rooms else None


def claim_limited(
    conn: psycopg.Connection[Any],
    now: int,
    limit: int,
    caps: ClaimCaps | None,
    server_id: int,
    lease_ms: int,
) -> Claimed | None:
    """
    Claim up to ``limit`` due jobs for the node ``server_id`` within every
    key's limits and ``caps`` (on the writer's connection, in its
    transaction); return them in due time, then id order, as a
    :class:`hq.store.Claimed` under limits. Return ``None`` when no limit
    applies, for the caller's plain claim.
    """
    caps = caps or ClaimCaps()
    if plain(caps):
        row = conn.execute(ANY_LIMITS).fetchone()
        if row is not None and not row[0]:
            return None
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (FLOW_LOCK,))
    row = conn.execute(f"SELECT {DB_NOW}").fetchone()
    assert row is not None
    db_now = int(row[0])
    flows = {limits.key: limits for limits in map(sql.row_flow, conn.execute(_FLOWS))}
    running = dict(cast(list[tuple[str, int]], conn.execute(_RUNNING).fetchall()))
    started: dict[str, int] = {}
    rated = {key for key, limits in flows.items() if limits.rate > 0 and not limits.paused}
    conn.execute(_PRUNE_STARTS, (db_now,))
    if rated:
        started = dict(cast(list[tuple[str, int]], conn.execute(_RECENT_STARTS).fetchall()))

    def room(key: str) -> int | None:
        return _room(key, flows.get(key), running.get(key, 0), started.get(key, 0), caps)

    if caps.default_parallelism > 0:
        # Every key has a limit: ask each key with waiting jobs for its room.
        keys = [key for (key,) in conn.execute(_WAITING_KEYS)]
        rooms = {key: room(key) for key in keys}
        others: list[str] | None = None
    else:
        named = {key for key, limits in flows.items() if _limits(limits)}
        named |= set(caps.local)
        rooms = {key: room(key) for key in sorted(named)}
        others = sorted(named)
    wanted = {key: min(limit, n if n is not None else limit) for key, n in rooms.items()}
    wanted = {key: n for key, n in wanted.items() if n > 0}
    picked: list[tuple[int, int]] = []
    if wanted:
        args = (list(wanted), list(wanted.values()), now)
        picked += [(r[1], r[0]) for r in conn.execute(cast(Any, _DUE_OF_KEYS), args)]
    if others is not None:
        due = conn.execute(_DUE_OF_OTHERS, (now, others, limit))
        picked += [(r[1], r[0]) for r in due]
    ids = [job_id for _, job_id in sorted(picked)[:limit]]
    if not ids:
        return Claimed(limited=True)
    taken = conn.execute(_TAKE, (now, server_id, lease_ms, ids)).fetchall()
    jobs = Claimed(sql.jobs_in_due_order(taken), limited=True)
    starts = [job.flow_key for job in jobs if job.flow_key in rated]
    if starts:
        conn.execute(_RECORD_STARTS, (starts, db_now))
    return jobs


def fill_flow_keys(conn: psycopg.Connection[Any]) -> None:
    """
    The schema step that gives the waiting and running jobs of an older
    database their URL's flow key, in batches (:func:`hq.store.sql.flow_key_batches`).
    """

    def fetch(statement: str, args: tuple[Any, ...]) -> list[Any]:
        return conn.execute(cast(Any, sql.placeholders(statement)), args).fetchall()

    for batch in sql.flow_key_batches(fetch):
        keys, ids = [key for key, _ in batch], [job_id for _, job_id in batch]
        conn.execute(
            "UPDATE jobs SET flow_key = v.key FROM unnest(%s::text[], %s::bigint[]) AS v(key, id)"
            " WHERE jobs.id = v.id",
            (keys, ids),
        )
