"""
Flow control in the stores beyond the contract (SPEC §16): schema upgrades
that give old jobs their flow key, the indexes that keep per-key reads and
counts off the finished jobs, and the PostgreSQL claim that holds each key's
limits across the nodes of a cluster (two stores, two ``server_id``, one
database). The contract itself is in tests/test_store.py.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

import attrs
import psycopg
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from hq.model import FlowLimits, Job, Outcome
from hq.store import ClaimCaps, Claimed, FlowCounts, sql
from hq.store import postgres as pg_store
from hq.store.postgres import PostgresStore
from hq.store.sqlite import SQLiteStore
from hq.store.sqlitefile import _SCHEMA, SCHEMA_VERSION
from tests import pgserver
from tests.schema_v1 import T0_MS
from tests.schema_v4 import V4_STATEMENTS, make_v4_data_dir, sample_rows
from tests.test_store import LATER, T0, make_job
from tests.test_store_postgres import PostgresCase

#: Rows of finished jobs the index tests put under the active ones.
FINISHED_ROWS = 1_000_000


def _normalised(statement: Any) -> str:
    return " ".join(str(statement).split())


def keyed(n: int, key: str, **kwargs: Any) -> Job:
    """
    Return ``make_job(n)`` of the flow key ``key``.
    """
    return make_job(n, flow_key=key, **kwargs)


class SQLiteUpgradeFromV4Tests(TestCase):
    """
    A data_dir of the fourth schema (schedules), opened by this HQ: upgraded
    in place to version 5 (flow keys, callbacks, flow limits).
    """

    def setUp(self) -> None:
        self.data_dir = self.mktemp()
        self.rows = sample_rows("http://127.0.0.1:9")
        self.path = make_v4_data_dir(self.data_dir, self.rows)

    def sql(self, query: str) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.path)
        try:
            return conn.execute(query).fetchall()
        finally:
            conn.close()

    def test_versions_1_to_4_are_frozen(self) -> None:
        """The store's versions 1 to 4 are still the frozen statements."""
        self.assertEqual(
            [_normalised(s) for version in _SCHEMA[:4] for s in version],
            [_normalised(s) for s in V4_STATEMENTS],
        )

    async def test_upgrade_gives_active_jobs_their_urls_flow_key_in_batches(self) -> None:
        """
        Opening a version-4 file fills the flow key of its waiting and running
        jobs from their URL (batch by batch), leaves finished rows alone (read
        as their URL's key), and adds the flow index and limits table.
        """
        self.patch(sql, "FILL_BATCH", 1)
        store = SQLiteStore(self.data_dir, reactor)
        await store.open()
        try:
            done, keyed_job, later, running, v6 = [await store.get(r["id"]) for r in self.rows]
            self.assertEqual(
                [j.flow_key for j in (done, keyed_job, later, running, v6)],
                ["127.0.0.1:9", "127.0.0.1:9", "127.0.0.1:9", "worker.example:443", "[::1]:8080"],
            )
            self.assertEqual(
                [j.id for j in await store.waiting_jobs_of("127.0.0.1:9", (0, 0), LATER, 10)],
                [keyed_job.id, later.id],
            )
            self.assertEqual(
                await store.flow_counts(),
                {
                    "127.0.0.1:9": FlowCounts(waiting=2),
                    "[::1]:8080": FlowCounts(waiting=1),
                    "worker.example:443": FlowCounts(running=1),
                },
            )
            self.assertIsNone(done.callback_url)
            await store.put_flow(FlowLimits("127.0.0.1:9", parallelism=1))
            self.assertEqual(await store.flow_limits(), [FlowLimits("127.0.0.1:9", 1)])
        finally:
            await store.close()
        self.assertEqual(self.sql("PRAGMA user_version"), [(SCHEMA_VERSION,)])
        stored = dict(self.sql("SELECT id, flow_key FROM jobs"))
        self.assertIsNone(stored[done.id])
        indexes = {row[0] for row in self.sql("SELECT name FROM sqlite_master WHERE type='index'")}
        self.assertIn("jobs_flow", indexes)
        self.assertEqual(self.sql("PRAGMA integrity_check"), [("ok",)])


class SQLiteFlowIndexTests(TestCase):
    """
    The per-key reads and counts on SQLite under a million finished jobs.
    """

    def setUp(self) -> Any:
        self.data_dir = self.mktemp()
        self.store = SQLiteStore(self.data_dir, reactor)
        self.addCleanup(lambda: self.store.close())
        return self.store.open()

    async def test_counts_and_per_key_reads_never_scan_finished_jobs(self) -> None:
        """flow_counts and waiting_jobs_of use the state indexes: no scan of finished rows."""
        await self.store.push([keyed(1, "a"), keyed(2, "a"), keyed(3, "b")], 0)
        await self.store.start(keyed(3, "b").id, T0 + 5)

        def fill() -> list[list[str]]:
            conn = sqlite3.connect(self.store.path, timeout=30)
            try:
                conn.execute(
                    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
                    " INSERT INTO jobs (id, name, comment, url, timeout, state, status,"
                    " finished_at, success, failure, canceled, err, output, output_truncated,"
                    " attempts, run_after, flow_key) SELECT i, 'old', '', 'http://h/', 0, 2,"
                    " 'success', i, 1, 0, 0, '', '', 0, 1, i, 'k' || (i % 1000) FROM n",
                    (FINISHED_ROWS,),
                )
                conn.commit()
                plans = []
                for statement, args in (
                    (sql.FLOW_COUNTS, ()),
                    (sql.WAITING_OF, ("a", 0, 0, 0, LATER, 10)),
                ):
                    rows = conn.execute(f"EXPLAIN QUERY PLAN {statement}", args).fetchall()
                    plans.append([row[3] for row in rows])
                return plans
            finally:
                conn.close()

        plans = await deferToThread(fill)
        for plan in plans:
            scans = [step for step in plan if step.startswith(("SCAN", "SEARCH"))]
            self.assertTrue(scans)
            self.assertTrue(all("USING" in step for step in scans), plan)
        started = time.monotonic()
        counts = await self.store.flow_counts()
        self.assertLess(time.monotonic() - started, 1.0)
        self.assertEqual(counts, {"a": FlowCounts(waiting=2), "b": FlowCounts(running=1)})
        got = await self.store.waiting_jobs_of("a", (0, 0), LATER, 10)
        self.assertEqual([j.id for j in got], [keyed(1, "a").id, keyed(2, "a").id])


class PostgresUpgradeFromV3Tests(PostgresCase):
    """
    A database of PostgreSQL schema 3 (schedules), opened by this HQ.
    """

    def setUp(self) -> Any:
        self.server = pgserver.server()
        self.url = self.server.new_database()
        self.rows = sample_rows("http://127.0.0.1:9")
        columns = (
            "id, name, comment, url, payload, headers, timeout, state, status, started_at,"
            " finished_at, success, failure, canceled, status_code, err, output,"
            " output_truncated, attempts, run_after, retries, idempotency_key, schedule_id,"
            " fire_at"
        )
        names = [c.strip() for c in columns.split(",")]
        with psycopg.connect(self.url) as conn:
            for version in pg_store._SCHEMA[:3]:
                for statement in version:
                    assert isinstance(statement, str)
                    conn.execute(statement)  # type: ignore[arg-type]
            conn.execute("INSERT INTO meta VALUES ('schema_version', '3')")
            for row in self.rows:
                conn.execute(
                    f"INSERT INTO jobs ({columns}) VALUES ({', '.join(['%s'] * len(names))})",  # type: ignore[arg-type]
                    [row[name] for name in names],
                )
        self.store = self.make_store()
        return self.store.open()

    async def test_upgrade_gives_active_jobs_their_urls_flow_key(self) -> None:
        """The waiting and running jobs get their URL's flow key; the flow tables exist."""
        jobs = [await self.store.get(row["id"]) for row in self.rows]
        self.assertEqual(
            [j.flow_key for j in jobs],
            ["127.0.0.1:9", "127.0.0.1:9", "127.0.0.1:9", "worker.example:443", "[::1]:8080"],
        )
        self.assertEqual(
            [j.id for j in await self.store.waiting_jobs_of("127.0.0.1:9", (0, 0), LATER, 10)],
            [jobs[1].id, jobs[2].id],
        )
        self.assertEqual(self.sql("SELECT flow_key FROM jobs WHERE state = 2"), [(None,)])
        self.assertEqual(
            self.sql("SELECT value FROM meta WHERE key = 'schema_version'"),
            [(str(pg_store.SCHEMA_VERSION),)],
        )
        tables = {row[0] for row in self.sql("SELECT tablename FROM pg_tables")}
        self.assertLessEqual({"flows", "flow_starts"}, tables)
        indexes = dict(self.sql("SELECT indexname, indexdef FROM pg_indexes"))
        self.assertIn("(flow_key, run_after, id) WHERE (state = 0)", indexes["jobs_flow"])
        self.assertEqual(self.rows[0]["finished_at"], T0_MS + 20)


class PostgresFlowTests(PostgresCase):
    """
    Flow control on PostgreSQL: callbacks reach the nodes, counts stay off
    the finished rows, and claims hold the limits across nodes.
    """

    async def node(self, server_id: int) -> PostgresStore:
        """
        Return another open store on this database, as node ``server_id``.
        """
        store = self.make_store(server_id=server_id)
        await store.open()
        return store

    async def two_nodes(self) -> tuple[PostgresStore, PostgresStore]:
        return await self.node(1), await self.node(2)

    def running(self, key: str) -> int:
        """
        Return how many jobs of ``key`` run, on any node.
        """
        rows = self.sql("SELECT count(*) FROM jobs WHERE state = 1 AND flow_key = %s", key)
        return int(rows[0][0])

    async def claim_round(
        self, nodes: tuple[PostgresStore, ...], limit: int = 5, caps: ClaimCaps | None = None
    ) -> list[Job]:
        """
        Let every node claim at once, twice each; return what they claimed.
        """
        now = T0 + 10**6
        batches = await gatherResults([n.claim(now, limit, caps) for n in nodes + nodes])
        return [job for batch in batches for job in batch]

    async def test_callback_jobs_notify_the_nodes(self) -> None:
        """A finish that pushes a callback job notifies hq_push, as a push does."""
        job = make_job(1, callback_url="http://cb.example/done")
        await self.store.push([job], 0)
        (claimed,) = await self.store.claim(T0 + 10, 1)
        conn = await deferToThread(self.store.connect)
        self.addCleanup(conn.close)
        conn.execute("LISTEN hq_push")
        outcome = Outcome(finished_at=T0 + 20, success=True)
        finished = await self.store.finish(claimed.id, outcome, None, make_job(9).id)
        assert finished is not None
        self.assertEqual(finished.callback_job_id, make_job(9).id)

        def drain() -> list[tuple[str, str]]:
            return [(n.channel, n.payload) for n in conn.notifies(timeout=0.5)]

        self.assertEqual(await deferToThread(drain), [("hq_push", "")])
        (callback,) = await self.store.claim(T0 + 30, 5)
        self.assertEqual(callback.url, "http://cb.example/done")

    async def test_counts_and_per_key_reads_never_scan_finished_jobs(self) -> None:
        """Under a million finished jobs, flow_counts and waiting_jobs_of use the indexes."""
        await self.store.push([keyed(1, "a"), keyed(2, "a"), keyed(3, "b")], 0)
        await self.store.start(keyed(3, "b").id, T0 + 5)
        self.sql(
            "INSERT INTO jobs (id, name, comment, url, timeout, state, status, finished_at,"
            " success, failure, canceled, err, output, output_truncated, attempts, run_after,"
            " flow_key) SELECT i, 'old', '', 'http://h/', 0, 2, 'success', i, 1, 0, 0, '', '',"
            " 0, 1, i, 'k' || (i %% 1000) FROM generate_series(1, %s) AS i",
            FINISHED_ROWS,
        )
        self.sql("ANALYZE jobs")
        for statement, args in (
            (sql.FLOW_COUNTS, ()),
            (sql.placeholders(sql.WAITING_OF), ("a", 0, 0, 0, LATER, 10)),
        ):
            plan = "\n".join(row[0] for row in self.sql(f"EXPLAIN {statement}", *args))
            self.assertNotIn("Seq Scan", plan)
        counts = await self.store.flow_counts()
        self.assertEqual(counts, {"a": FlowCounts(waiting=2), "b": FlowCounts(running=1)})

    async def test_parallelism_holds_across_two_nodes_claiming_at_once(self) -> None:
        """
        A key limited to 2: two nodes claiming at once, many times, never run
        more than 2 together; a finish lets exactly one more be claimed.
        """
        await self.store.put_flow(FlowLimits("k", parallelism=2))
        await self.store.push([keyed(n, "k") for n in range(10)], 0)
        nodes = await self.two_nodes()
        held: list[Job] = []
        for _ in range(5):
            held += await self.claim_round(nodes)
            self.assertLessEqual(self.running("k"), 2)
        self.assertEqual(sorted(j.id for j in held), [keyed(0, "k").id, keyed(1, "k").id])
        [(server_id,)] = self.sql("SELECT node FROM jobs WHERE id = %s", held[0].id)
        owner = {1: nodes[0], 2: nodes[1]}[server_id]
        await owner.finish(held[0].id, Outcome(finished_at=T0 + 50, success=True))
        more: list[Job] = []
        for _ in range(3):
            more += await self.claim_round(nodes)
        self.assertEqual([j.id for j in more], [keyed(2, "k").id])
        self.assertEqual(self.running("k"), 2)

    async def test_a_claim_sees_the_finishes_of_its_batch(self) -> None:
        """
        A claim asked for in the same reactor turn as a finish, even before
        it, runs after it in the writer's transaction: the finished job no
        longer counts against its key's limit (here a node's cap, which the
        claim applies in the batch), so the key's next job is claimed there
        and then.
        """
        caps = ClaimCaps(default_parallelism=1)
        await self.store.push([keyed(n, "k") for n in range(3)], 0)
        now = T0 + 10**6
        (first,) = await self.store.claim(now, 5, caps)
        self.assertEqual(await self.store.claim(now, 5, caps), [])
        outcome = Outcome(finished_at=now + 1, success=True)
        claimed, finished = await gatherResults(
            [
                self.store.claim(now + 2, 5, caps),
                self.store.finish(first.id, outcome, None, None, first),
            ]
        )
        self.assertIsNotNone(finished)
        self.assertEqual([job.id for job in claimed], [keyed(1, "k").id])
        self.assertEqual(self.running("k"), 1)

    async def test_a_claim_says_whether_limits_applied(self) -> None:
        """
        A claim under limits (stored ones or a node's caps) says so, even when
        it took nothing, so the claim feed claims again if a job ended while
        it was read; a claim without limits does not.
        """
        await self.store.push([keyed(n, "k") for n in range(3)] + [keyed(9, "other")], 0)
        now = T0 + 10**6
        plain = await self.store.claim(now, 1)
        self.assertEqual([job.id for job in plain], [keyed(0, "k").id])
        self.assertFalse(isinstance(plain, Claimed) and plain.limited)
        capped = await self.store.claim(now, 5, ClaimCaps(default_parallelism=1))
        self.assertEqual([job.id for job in capped], [keyed(9, "other").id])
        self.assertTrue(isinstance(capped, Claimed) and capped.limited)
        await self.store.put_flow(FlowLimits("k", parallelism=1))
        full = await self.store.claim(now, 5)
        self.assertEqual(full, [])
        self.assertTrue(isinstance(full, Claimed) and full.limited)

    async def test_rate_holds_across_two_nodes(self) -> None:
        """
        A rate of 3 per period: no more than 3 starts in the period across
        both nodes, finished or not; after the period, 3 more.
        """
        await self.store.put_flow(FlowLimits("k", rate=3, period=1.5))
        await self.store.push([keyed(n, "k") for n in range(10)], 0)
        nodes = await self.two_nodes()
        started = time.monotonic()
        first = await self.claim_round(nodes)
        for job in first:
            await self.store.finish(job.id, Outcome(finished_at=T0 + 50, success=True))
        first += await self.claim_round(nodes)
        claimed = time.monotonic()
        if claimed - started < 1.4:  # else the window may have moved on meanwhile
            self.assertEqual(len(first), 3)
        await deferToThread(time.sleep, max(0.0, 1.6 - (time.monotonic() - claimed)))
        second = await self.claim_round(nodes)
        self.assertEqual(len(second), 3)
        self.assertEqual(len({j.id for j in first + second}), 6)

    async def test_a_paused_key_starts_nothing_and_holds_back_no_other_key(self) -> None:
        """A paused key's jobs are not claimed; other keys' jobs are, even if due later."""
        await self.store.put_flow(FlowLimits("p", paused=True))
        await self.store.push([keyed(n, "p") for n in range(3)] + [keyed(10, "q")], 0)
        nodes = await self.two_nodes()
        claimed = await self.claim_round(nodes)
        self.assertEqual([j.id for j in claimed], [keyed(10, "q").id])
        await self.store.put_flow(FlowLimits("p"))
        claimed = await self.claim_round(nodes, limit=10)
        self.assertEqual(len(claimed), 3)

    async def test_no_head_of_line_blocking_behind_a_thousand_limited_jobs(self) -> None:
        """
        With 1,000 due jobs of a key limited to 1 ahead of them, other keys'
        jobs are claimed at once, in due time then id order.
        """
        await self.store.put_flow(FlowLimits("busy", parallelism=1))
        busy = [keyed(n, "busy") for n in range(1000)]
        others = [keyed(2000 + n, f"other-{n % 2}") for n in range(4)]
        await self.store.push(busy + others, 0)
        nodes = await self.two_nodes()
        claimed = await nodes[0].claim(T0 + 10**6, 10)
        self.assertEqual([j.id for j in claimed], [busy[0].id] + [j.id for j in others])
        self.assertEqual(await nodes[1].claim(T0 + 10**6, 10), [])

    async def test_default_parallelism_limits_every_key_without_its_own(self) -> None:
        """
        ClaimCaps.default_parallelism caps each key with no stored limits;
        a key's own row wins; a node's local cap lowers a key further.
        """
        await self.store.put_flow(FlowLimits("own", parallelism=3))
        jobs = (
            [keyed(n, "a") for n in range(3)]
            + [keyed(10 + n, "b") for n in range(3)]
            + [keyed(20 + n, "own") for n in range(4)]
            + [keyed(30 + n, "c") for n in range(2)]
        )
        await self.store.push(jobs, 0)
        nodes = await self.two_nodes()
        caps = ClaimCaps(default_parallelism=1, local={"c": 0})
        claimed = await self.claim_round(nodes, limit=10, caps=caps)
        self.assertEqual(
            sorted(j.id for j in claimed),
            [jobs[0].id, jobs[3].id, jobs[6].id, jobs[7].id, jobs[8].id],
        )
        self.assertEqual(await self.claim_round(nodes, limit=10, caps=caps), [])
        # A local cap is this node's: one claim of one node.
        claimed = await nodes[0].claim(T0 + 10**6, 10, ClaimCaps(local={"a": 1}))
        self.assertEqual(
            [j.id for j in claimed],
            [jobs[1].id, jobs[4].id, jobs[5].id, jobs[10].id, jobs[11].id],
        )

    async def test_a_limited_claim_rolled_back_is_run_again(self) -> None:
        """
        A claim that finds a key's limits claims within them after its batch,
        in a transaction of its own; one that PostgreSQL rolls back (a
        serialization failure) is run again rather than failed.
        """
        await self.store.put_flow(FlowLimits("k", parallelism=1))
        await self.store.push([keyed(n, "k") for n in range(3)], 0)
        real = pg_store.pgflow.claim_limited
        calls = []

        def once_rolled_back(*args: Any) -> Any:
            calls.append(args)
            if len(calls) == 1:
                raise psycopg.errors.SerializationFailure("could not serialize access")
            return real(*args)

        self.patch(pg_store.pgflow, "claim_limited", once_rolled_back)
        claimed = await self.store.claim(T0 + 10**6, 5)
        self.assertEqual(len(calls), 2)
        self.assertEqual([job.id for job in claimed], [keyed(0, "k").id])
        self.assertEqual(self.running("k"), 1)

    async def test_claims_without_limits_stay_the_plain_statement(self) -> None:
        """With no limiting row and no caps the claim takes jobs in due order, as before."""
        await self.store.put_flow(FlowLimits("k"))
        jobs = [keyed(n, "k") for n in range(3)]
        jobs[0] = attrs.evolve(jobs[0], run_at=T0 + 100)
        await self.store.push(jobs, 0)
        claimed = await self.store.claim(T0 + 1000, 5, ClaimCaps())
        self.assertEqual([j.id for j in claimed], [jobs[1].id, jobs[2].id, jobs[0].id])
        self.assertEqual(self.sql("SELECT count(*) FROM flow_starts"), [(0,)])
