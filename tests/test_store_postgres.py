"""
The job store contract on a real PostgreSQL (started by the tests themselves,
see tests/pgserver.py), plus what only a shared database can do: concurrent
pushes from several connections, a server that goes away and comes back.
"""

from __future__ import annotations

import itertools
import random
import socket
import time
from collections.abc import Callable
from typing import Any

import attrs
import psycopg
import re2
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, gatherResults
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from hq.cluster import NotifyListener
from hq.config import ConfigError, config_from_dict
from hq.delivery import Delivery
from hq.model import Attempt, Job, JobState, ListQuery, Outcome
from hq.store import (
    ClaimCaps,
    Claimed,
    IdempotencyConflict,
    JobConflict,
    JobExists,
    JobNotFound,
    NodeInUse,
    StoreError,
    StoreUnavailable,
    open_store,
    postgres,
)
from hq.store.memory import MemoryStore
from hq.store.postgres import (
    SCHEMA_VERSION,
    SERVER_LOCK,
    PostgresStore,
    _AfterCommit,
    _Writer,
    like_prefilter,
    safe_url,
)
from hq.store.sqlite import SQLiteStore
from hq.testing import FakeWorker, WorkerStub
from hq.worker import WorkerClient
from tests import pgserver
from tests.test_store import T0, StoreContractMixin, make_job

SKIP = pgserver.skip_reason()


def keyed(n: int, key: str | None, **kwargs: Any) -> Job:
    """
    Return ``make_job(n)`` with the idempotency key ``key`` and one url for every ``n``.
    """
    job = make_job(n, **kwargs)
    return attrs.evolve(job, url="http://127.0.0.1/same", idempotency_key=key)


class PostgresCase(TestCase):
    """
    A fresh database on the test server for each test, and an open store on it.
    """

    skip = SKIP

    def setUp(self) -> Deferred[None]:
        self.server = pgserver.server()
        self.url = self.server.new_database()
        self.store = self.make_store()
        return self.store.open()

    def make_store(self, **kwargs: Any) -> PostgresStore:
        """
        Return a store on this test's database, closed at the end of the test.
        """
        store = PostgresStore(self.url, reactor, **kwargs)
        self.addCleanup(store.close)
        return store

    def sql(self, statement: str, *args: Any) -> list[tuple[Any, ...]]:
        """
        Run ``statement`` on a connection of its own; return its rows.
        """
        with psycopg.connect(self.url, autocommit=True) as conn:
            cursor = conn.execute(statement, args or None)  # type: ignore[arg-type]
            return cursor.fetchall() if cursor.description else []


class PostgresStoreTests(StoreContractMixin, PostgresCase):
    """
    The contract, on PostgreSQL.
    """


class PostgresOnlyTests(PostgresCase):
    """
    What a PostgreSQL store does beyond the contract.
    """

    async def test_schema_version_and_tables(self) -> None:
        """Open creates the tables and records the schema version in meta."""
        rows = self.sql("SELECT value FROM meta WHERE key = 'schema_version'")
        self.assertEqual(rows, [(str(SCHEMA_VERSION),)])
        tables = {row[0] for row in self.sql("SELECT tablename FROM pg_tables")}
        self.assertLessEqual({"jobs", "attempts", "idempotency_keys", "meta"}, tables)
        indexes = dict(self.sql("SELECT indexname, indexdef FROM pg_indexes"))
        self.assertIn("(run_after, id) WHERE (state = 0)", indexes["jobs_due"])

    async def test_servers_starting_together_create_the_schema_once(self) -> None:
        """Five stores opened at once on an empty database all open (advisory lock)."""
        self.url = self.server.new_database()
        stores = [self.make_store() for _ in range(5)]
        await gatherResults([store.open() for store in stores])
        await stores[0].create(make_job(1))
        self.assertEqual((await stores[4].get(make_job(1).id)).id, make_job(1).id)

    async def test_newer_schema_refused(self) -> None:
        """A database of a newer schema version is refused with a clear message."""
        self.sql("UPDATE meta SET value = %s WHERE key = 'schema_version'", str(SCHEMA_VERSION + 1))
        store = self.make_store()
        with self.assertRaises(StoreError) as e:
            await store.open()
        self.assertIn("newer HQ", str(e.exception))

    async def test_push_idempotency_keys(self) -> None:
        """A recent key replays, a different request conflicts, an old key is taken over."""
        first = keyed(1, "k")
        [pushed] = await self.store.push([first], keys_since=0)
        self.assertFalse(pushed.replayed)
        [again] = await self.store.push([keyed(2, "k")], keys_since=0)
        self.assertEqual((again.job, again.replayed), (first, True))
        with self.assertRaises(IdempotencyConflict) as e:
            await self.store.push([make_job(3), keyed(4, "k", name="other")], keys_since=0)
        self.assertEqual((e.exception.index, e.exception.job_id), (1, first.id))
        with self.assertRaises(JobNotFound):
            await self.store.get(make_job(3).id)  # the whole push was undone
        newer = keyed(5, "k")
        [taken] = await self.store.push([newer], keys_since=newer.created_at)
        self.assertFalse(taken.replayed)
        both = await self.store.push([keyed(6, "j"), keyed(7, "j")], keys_since=0)
        self.assertEqual([p.replayed for p in both], [False, True])
        self.assertEqual(both[1].job.id, make_job(6).id)
        rows = self.sql("SELECT key, job_id FROM idempotency_keys ORDER BY key")
        self.assertEqual(rows, [("j", make_job(6).id), ("k", newer.id)])

    async def test_concurrent_pushes_with_one_key_make_one_job(self) -> None:
        """20 pushes with one key on 20 connections at once store exactly one job."""
        stores = [self.store] + [self.make_store() for _ in range(19)]
        await gatherResults([store.open() for store in stores[1:]])
        pushes = [
            store.push([keyed(n, "same", payload='{"a":1}')], keys_since=0)
            for n, store in enumerate(stores)
        ]
        results = await gatherResults(pushes)
        created = [p.job.id for [p] in results if not p.replayed]
        self.assertEqual(len(created), 1)
        self.assertEqual({p.job.id for [p] in results}, set(created))
        self.assertEqual(self.sql("SELECT count(*) FROM jobs"), [(1,)])

    async def test_retry_keeps_attempts_and_schedules(self) -> None:
        """retry makes a running job scheduled with its history; counts and next_due see it."""
        job = make_job(1, retries=2)
        await self.store.create(job)
        started = await self.store.start(job.id, T0 + 10)
        assert started is not None
        last = Outcome(finished_at=T0 + 20, failure=True, status_code=503, err="no", output="x")
        attempt = Attempt.of(started, last)
        retried = await self.store.retry(job.id, T0 + 1000, last, attempt)
        assert retried is not None
        self.assertEqual(
            (retried.state, retried.run_at, retried.err), (JobState.WAITING, T0 + 1000, "no")
        )
        self.assertEqual(await self.store.attempts(job.id), [attempt])
        self.assertEqual(await self.store.next_due(T0 + 20), T0 + 1000)
        self.assertEqual(await self.store.waiting_jobs((0, 0), T0 + 20, 10), [])
        self.assertEqual(await self.store.waiting_jobs((0, 0), T0 + 1000, 10), [retried])
        counts = await self.store.counts(0, T0 + 20)
        self.assertEqual((counts.waiting, counts.scheduled), (1, 1))
        page = await self.store.list_jobs(ListQuery(status="scheduled", now=T0 + 20))
        self.assertEqual(page.jobs, [retried])
        self.assertIsNone(await self.store.retry(job.id, T0, last, attempt))
        await self.store.stop(job.id, T0 + 30)
        await self.store.restart(job.id)
        self.assertEqual(await self.store.attempts(job.id), [])
        with self.assertRaises(JobNotFound):
            await self.store.attempts(42)

    async def test_same_behaviour_as_sqlite_after_random_operations(self) -> None:
        """300 random operations of every kind answer as on SQLite and leave the same jobs."""
        sqlite = SQLiteStore(self.mktemp(), reactor)
        self.addCleanup(sqlite.close)
        await sqlite.open()
        rng = random.Random(20261129)
        ids: list[int] = []
        for step in range(300):
            target = rng.choice(ids) if ids else 0
            action = rng.choice(
                [
                    *("push", "push", "create", "start", "start", "finish", "retry", "retry"),
                    *("stop", "restart"),
                    *("delete", "expire", "waiting", "list", "attempts", "counts", "recover"),
                ]
            )
            answers = []
            for store in (sqlite, self.store):
                answers.append(await self._answer(store, action, step, target))
            self.assertEqual(answers[1], answers[0], f"step {step}: {action}")
            if action in ("push", "create") and not isinstance(answers[0], tuple):
                ids.append(make_job(step).id)
        full = ListQuery()
        self.assertEqual(await self.store.list_jobs(full), await sqlite.list_jobs(full))
        self.assertEqual(await self.store.max_id(), await sqlite.max_id())

    @staticmethod
    async def _answer(store: Any, action: str, step: int, target: int) -> Any:
        # Both stores get the same arguments: drawn from a generator seeded by the step.
        rng = random.Random(step)
        try:
            if action == "push":
                key = rng.choice([None, "a", "b", "c"])
                job = keyed(step, key, name=rng.choice("xxy")) if key else make_job(step)
                return await store.push([job], keys_since=T0 + step - 30)
            if action == "create":
                return await store.create(make_job(step, comment=f"c{step}"))
            if action == "start":
                return await store.start(target, T0 + step)
            if action == "finish":
                outcome = Outcome(finished_at=T0 + step, success=rng.random() < 0.5, output="o")
                attempt = Attempt(job_id=target, attempt=1, started_at=None, finished_at=T0 + step)
                return await store.finish(target, outcome, attempt)
            if action == "retry":
                last = Outcome(finished_at=T0 + step, failure=True, err="e")
                attempt = Attempt(job_id=target, attempt=2, started_at=T0, finished_at=T0 + step)
                started = await store.start(target, T0 + step)
                return started, await store.retry(target, T0 + step + 5, last, attempt)
            if action == "stop":
                return await store.stop(target, T0 + step)
            if action == "restart":
                return await store.restart(target)
            if action == "delete":
                return await store.delete(target)
            if action == "expire":
                return await store.delete_finished_before(T0 + step - 40, 2)
            if action == "waiting":
                return await store.waiting_jobs((T0, 0), T0 + step, 5), await store.next_due(
                    T0 + step
                )
            if action == "list":
                query = ListQuery(
                    term=rng.choice([None, "x", "2", "wait", "sched", "c1."]),
                    status=rng.choice([None, "waiting", "scheduled", "success", "canceled"]),
                    reverse=rng.random() < 0.5,
                    limit=rng.choice([None, 1, 3]),
                    now=T0 + step,
                )
                return await store.list_jobs(query)
            if action == "attempts":
                return await store.attempts(target)
            if action == "counts":
                return await store.counts(target, T0 + step)
            return await store.recover(T0 + step)
        except (JobConflict, JobNotFound, JobExists, IdempotencyConflict) as e:
            return type(e), str(e)

    async def test_duplicate_in_batch_fails_alone(self) -> None:
        """A duplicate id in one transaction fails that create only; the others commit."""
        job = make_job(1)
        results = await DeferredList(
            [self.store.create(job), self.store.create(job), self.store.create(make_job(2))],
            consumeErrors=True,
        )
        self.assertEqual([ok for ok, _ in results], [True, False, True])
        self.assertTrue(results[1][1].check(JobExists))
        self.assertEqual((await self.store.counts(0, 0)).stored, 2)

    def record_statements(self) -> list[str]:
        """
        Return the list every statement run on a connection of this process
        (the writer's included) is added to from now on.
        """
        statements: list[str] = []
        execute = psycopg.Cursor.execute

        def recording(cursor: psycopg.Cursor[Any], query: Any, *args: Any, **kw: Any) -> Any:
            if query not in (postgres._BEGIN, postgres._COMMIT):  # every batch's, not writes
                statements.append(str(query))
            return execute(cursor, query, *args, **kw)

        self.patch(psycopg.Cursor, "execute", recording)
        return statements

    async def test_a_batch_commits_with_one_sync(self) -> None:
        """
        A batch's ``BEGIN``, writes and ``COMMIT`` go in one pipeline that
        waits for the server once, at its end (psycopg's own ``BEGIN`` and
        ``commit()`` would each sync the pipeline, and its exit syncs again:
        three round trips). A claim within flow limits releases its lock
        with the transaction.
        """
        from psycopg._pipeline_base import BasePipeline

        syncs: list[int] = []
        enqueue = BasePipeline._enqueue_sync

        def counting(pipeline: BasePipeline) -> None:
            syncs.append(1)
            enqueue(pipeline)

        self.patch(BasePipeline, "_enqueue_sync", counting)
        first = make_job(1)
        await self.store.push([first], 0)
        self.assertEqual(len(syncs), 1)
        self.assertEqual(self.sql("SELECT id FROM jobs"), [(first.id,)])
        running = await self.store.start(first.id, T0 + 7, first)
        assert running is not None
        # A finish, a push, a plain claim and a claim within flow limits,
        # asked for in one turn: one transaction, one sync.
        del syncs[:]
        outcome = Outcome(finished_at=T0 + 9, success=True, status_code=200, output="ok")
        now = T0 + 10**6
        finished, pushed, claimed, capped = await gatherResults(
            [
                self.store.finish(first.id, outcome, Attempt.of(running, outcome), None, running),
                self.store.push([make_job(2)], 0),
                self.store.claim(now, 5),
                self.store.claim(now, 5, ClaimCaps(default_parallelism=1)),
            ]
        )
        self.assertEqual(len(syncs), 1)
        self.assertEqual(finished.status, "success")
        self.assertEqual([p.job.id for p in pushed], [make_job(2).id])
        self.assertEqual([job.id for job in claimed], [make_job(2).id])
        self.assertEqual(capped, [])
        self.assertEqual(
            sorted(self.sql("SELECT id, state FROM jobs")),
            [(first.id, int(JobState.FINISHED)), (make_job(2).id, int(JobState.RUNNING))],
        )
        locks = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = %s"
        self.assertEqual(self.sql(locks, self.store.writer_pid()), [(0,)])
        # A batch whose write fails is rolled back whole, the writes before
        # the failing one included, and run again write by write: the other
        # writes commit once (one attempt recorded, not two).
        second = claimed[0]
        results = await DeferredList(
            [
                self.store.finish(second.id, outcome, Attempt.of(second, outcome), None, second),
                self.store.push([make_job(1)], 0),
                self.store.push([make_job(3)], 0),
            ],
            consumeErrors=True,
        )
        self.assertEqual([ok for ok, _ in results], [True, False, True])
        results[1][1].trap(JobExists)
        self.assertEqual(results[0][1].status, "success")
        self.assertEqual(len(await self.store.attempts(second.id)), 1)
        self.assertEqual(len(self.sql("SELECT id FROM jobs")), 3)

    async def test_finishes_of_a_batch_run_as_one_statement_each(self) -> None:
        """
        Finishes of known running jobs asked for together are one statement
        with their attempts, nothing read back, with the results each would
        have alone. When a job is no longer running, the batch runs
        again write by write: that one is not finished again, the others are.
        """
        jobs = [make_job(n) for n in range(1, 5)]
        await self.store.push(jobs, 0)
        started = await gatherResults([self.store.start(job.id, T0 + 7, job) for job in jobs])
        await self.store.finish(jobs[2].id, Outcome(finished_at=T0 + 8, failure=True, err="x"))
        statements = self.record_statements()
        outcome = Outcome(finished_at=T0 + 9, success=True, status_code=200, output="ok\x00")
        finished = await gatherResults(
            [self.store.finish(j.id, outcome, Attempt.of(j, outcome), None, j) for j in started]
        )
        self.assertEqual(statements.count(postgres._FINISH_MANY), 1)
        self.assertEqual(statements.count("SAVEPOINT op"), 4)
        self.assertIsNone(finished[2])  # finished already: not finished again
        for done in finished[:2] + finished[3:]:
            stored = await self.store.get(done.id)
            self.assertEqual(done, stored)
            self.assertEqual((stored.status, stored.output), ("success", "ok\ufffd"))
            attempts = await self.store.attempts(done.id)
            self.assertEqual(
                [(a.attempt, a.status_code, a.output) for a in attempts], [(1, 200, "ok\ufffd")]
            )

        more = [make_job(n) for n in range(5, 8)]
        await self.store.push(more, 0)
        running = await gatherResults([self.store.start(job.id, T0 + 10, job) for job in more])
        del statements[:]
        done = await gatherResults(
            [self.store.finish(j.id, outcome, Attempt.of(j, outcome), None, j) for j in running]
        )
        self.assertEqual(statements.count(postgres._FINISH_MANY), 1)
        self.assertNotIn(postgres._FINISH, statements)
        self.assertNotIn(postgres._INSERT_ATTEMPT, statements)
        self.assertNotIn("SAVEPOINT op", statements)
        for job in done:
            self.assertEqual(job, await self.store.get(job.id))
            self.assertEqual(len(await self.store.attempts(job.id)), 1)
        counts = await self.store.counts(0, 0)
        self.assertEqual((counts.stored, counts.waiting, counts.running), (7, 0, 0))

    async def test_a_job_finished_twice_in_one_batch_is_finished_once(self) -> None:
        """Two finishes of one job asked for together: the first counts, the second finds none."""
        job = make_job(1)
        await self.store.push([job], 0)
        running = await self.store.start(job.id, T0, job)
        assert running is not None
        outcome = Outcome(finished_at=T0 + 1, success=True, status_code=200)
        first, second = await gatherResults(
            [
                self.store.finish(job.id, outcome, Attempt.of(running, outcome), None, running)
                for _ in range(2)
            ]
        )
        self.assertEqual(first, await self.store.get(job.id))
        self.assertIsNone(second)
        self.assertEqual(len(await self.store.attempts(job.id)), 1)

    async def test_pushes_of_a_batch_insert_together_and_a_taken_id_fails_alone(self) -> None:
        """
        Pushes without idempotency keys asked for together insert their jobs
        in one statement and notify once; a push whose id is taken fails alone.
        """
        await self.store.push([make_job(1)], 0)
        listener = psycopg.connect(self.url, autocommit=True)
        self.addCleanup(listener.close)
        listener.execute(f"LISTEN {postgres.PUSH_CHANNEL}")
        statements = self.record_statements()
        first = await DeferredList(
            [self.store.push([make_job(2), make_job(3)], 0), self.store.push([make_job(4)], 0)],
            consumeErrors=True,
        )
        self.assertEqual([ok for ok, _ in first], [True, True])
        # One statement stores them, raises the highest id and notifies the nodes.
        self.assertEqual(statements, [postgres._push_many(3)])
        self.assertEqual([p.job.id for p in first[0][1]], [make_job(2).id, make_job(3).id])
        notes = [n.payload for n in listener.notifies(timeout=2, stop_after=1)]
        self.assertEqual(notes, [""])  # due now
        results = await DeferredList(
            [self.store.push([make_job(5)], 0), self.store.push([make_job(6), make_job(1)], 0)],
            consumeErrors=True,
        )
        self.assertEqual([ok for ok, _ in results], [True, False])
        results[1][1].trap(JobExists)
        stored = [job.id for job in (await self.store.list_jobs(ListQuery())).jobs]
        self.assertEqual(sorted(stored), [make_job(n).id for n in (1, 2, 3, 4, 5)])
        self.assertEqual(
            self.sql("SELECT value FROM meta WHERE key = 'max_id'"), [(str(make_job(5).id),)]
        )

    def terminate_backends(self) -> None:
        """
        End every other session on this test's database (the store's), as a
        restarted server would.
        """
        self.sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )

    async def test_a_write_on_a_connection_the_server_ended_while_idle_succeeds(self) -> None:
        """
        A connection idle for a while is checked before a batch is sent: one
        that the server ended is replaced and the batch goes through.
        """
        self.patch(postgres, "_PROBE_AFTER", 0.0)
        await self.store.push([make_job(1)], 0)
        self.terminate_backends()
        [pushed] = await self.store.push([make_job(2)], 0)
        self.assertEqual(pushed.job.id, make_job(2).id)
        self.assertEqual(self.sql("SELECT count(*) FROM jobs"), [(2,)])

    async def test_a_connection_lost_in_a_batch_fails_it_as_an_unknown_outcome(self) -> None:
        """
        A batch sends its writes and its COMMIT together: when the connection
        goes meanwhile, whether it committed is unknown, so it is not sent
        again; its writes fail as storage unavailable, and the next batch
        opens a new connection.
        """
        self.patch(postgres, "_PROBE_AFTER", 3600.0)
        await self.store.push([make_job(1)], 0)
        self.terminate_backends()
        with self.assertRaises(StoreUnavailable) as e:
            await self.store.push([make_job(2)], 0)
        self.assertIn("outcome is unknown", str(e.exception))
        [pushed] = await self.store.push([make_job(3)], 0)
        self.assertEqual(pushed.job.id, make_job(3).id)
        stored = self.sql("SELECT count(*) FROM jobs WHERE id = %s", make_job(3).id)
        self.assertEqual(stored, [(1,)])

    async def test_writes_of_one_turn_share_a_commit(self) -> None:
        """500 creates asked for in one reactor turn commit in a few transactions."""
        commits: list[tuple[int, bool]] = []
        store = self.make_store(on_commit=lambda s, writes, ok: commits.append((writes, ok)))
        await store.open()
        del commits[:]
        await gatherResults([store.create(make_job(n)) for n in range(500)])
        self.assertEqual(sum(writes for writes, _ in commits), 500)
        self.assertTrue(all(ok for _, ok in commits))
        self.assertLessEqual(len(commits), 2)
        self.assertEqual(self.sql("SELECT count(*) FROM jobs"), [(500,)])

    async def test_nul_characters_are_stored_as_replacement_characters(self) -> None:
        """Text with NUL (which PostgreSQL cannot store) is kept with U+FFFD in its place."""
        job = make_job(1, comment="a\x00b")
        await self.store.create(job)
        await self.store.start(job.id, T0)
        await self.store.finish(job.id, Outcome(finished_at=T0, failure=True, output="\x00"))
        stored = await self.store.get(job.id)
        self.assertEqual((stored.comment, stored.output), ("a\ufffdb", "\ufffd"))

    async def test_unavailable_database_fails_fast_then_reconnects(self) -> None:
        """With PostgreSQL stopped, writes and reads fail at once; once back, both work again."""
        await self.store.create(make_job(1))
        await self.store.get(make_job(1).id)
        await deferToThread(self.server.stop)
        self.addCleanup(self._ensure_running)
        began = time.monotonic()
        with self.assertRaises(StoreUnavailable):
            await self.store.create(make_job(2))
        with self.assertRaises(StoreUnavailable):
            await self.store.get(make_job(1).id)
        with self.assertRaises(StoreUnavailable):
            await self.store.probe_write()
        self.assertLess(time.monotonic() - began, 2.0)
        await deferToThread(self.server.start)
        deadline = time.monotonic() + 10
        while True:
            try:
                await self.store.create(make_job(2))
                break
            except StoreUnavailable:
                if time.monotonic() > deadline:
                    raise
                await deferToThread(time.sleep, 0.1)
        self.assertEqual((await self.store.get(make_job(2).id)).id, make_job(2).id)
        self.assertEqual((await self.store.counts(0, 0)).stored, 2)

    def _ensure_running(self) -> Deferred[None]:
        def start() -> None:
            try:
                self.server.start()
            except RuntimeError:
                pass  # it runs already

        return deferToThread(start)

    async def test_connections_have_timeouts_and_keep_url_parameters(self) -> None:
        """Connections get HQ's statement timeout; the URL's own parameters still apply."""
        url = self.url + "?application_name=mine&options=-c%20work_mem%3D8MB"
        store = PostgresStore(url, reactor, statement_timeout=7)

        def settings() -> tuple[Any, ...]:
            with store.connect() as conn:
                row = conn.execute(
                    "SELECT current_setting('statement_timeout'),"
                    " current_setting('application_name'), current_setting('work_mem')"
                ).fetchone()
                assert row is not None
                return tuple(row)

        self.assertEqual(await deferToThread(settings), ("7s", "mine", "8MB"))

    async def test_closed_store_fails_with_store_unavailable(self) -> None:
        """After close, reads and writes fail with StoreUnavailable."""
        await self.store.close()
        with self.assertRaises(StoreUnavailable):
            await self.store.create(make_job(1))
        with self.assertRaises(StoreUnavailable):
            await self.store.get(1)

    async def test_like_prefilter_never_drops_a_regexp_match(self) -> None:
        """Whenever the RE2 regexp finds a match, PostgreSQL's LIKE matches too."""
        cases: list[tuple[str, str]] = []

        @settings(max_examples=300, deadline=None, database=None)
        @given(
            pattern=st.text(alphabet="ab.%_\\é\n*", min_size=1, max_size=6),
            text=st.text(alphabet="ab.%_\\é\n*c", max_size=12),
        )
        def collect(pattern: str, text: str) -> None:
            like = like_prefilter(pattern)
            options = re2.Options()
            options.log_errors = False
            try:
                regexp = re2.compile(pattern, options)
            except re2.error:
                return
            if like is not None and regexp.search(text):
                cases.append((text, like))

        collect()

        def check() -> list[tuple[str, str]]:
            with psycopg.connect(self.url) as conn:
                return [
                    (text, like)
                    for text, like in cases
                    if not conn.execute("SELECT %s LIKE %s", (text, like)).fetchone()[0]  # type: ignore[index]
                ]

        self.assertEqual(await deferToThread(check), [])
        self.assertGreater(len(cases), 20)


class ClusterStoreTests(PostgresCase):
    """
    What nodes sharing one database do through the store (SPEC §13).
    """

    def node(self, server_id: int, lease_timeout: float = 30.0) -> PostgresStore:
        """
        Return another open store on this database, as node ``server_id``.
        """
        store = self.make_store(server_id=server_id, lease_timeout=lease_timeout)
        return store

    async def test_claim_takes_due_jobs_in_due_time_then_id_order_with_a_lease(self) -> None:
        """A claim marks up to n due jobs running for the node, FIFO by due time; not later ones."""
        jobs = [make_job(n) for n in range(5)]
        jobs[1] = attrs.evolve(jobs[1], run_at=T0 + 100)
        await self.store.push([*jobs, make_job(9, run_at=T0 + 10**9)], 0)
        node = self.node(4)
        await node.open()
        claimed = await node.claim(T0 + 1000, 3)
        self.assertEqual([job.id for job in claimed], [jobs[n].id for n in (0, 2, 3)])
        self.assertEqual({job.state for job in claimed}, {JobState.RUNNING})
        self.assertEqual({job.attempts for job in claimed}, {1})
        rows = self.sql("SELECT node, lease_until > 0 FROM jobs WHERE state = 1")
        self.assertEqual(rows, [(4, True)] * 3)
        again = await node.claim(T0 + 1000, 10)
        self.assertEqual([job.id for job in again], [jobs[4].id, jobs[1].id])

    async def waits(self, *writes: Callable[[], Deferred[Any]]) -> tuple[int, list[Any]]:
        """
        Ask for ``writes`` in one reactor turn (one batch of the writer); return
        how many times the writer's connection waited for the server (in
        libpq's protocol trace, a message sent followed by one received) and
        their results.
        """
        writer = self.store._writer
        assert writer is not None and writer._conn is not None
        trace = self.mktemp()
        with open(trace, "w") as f:
            writer._conn.pgconn.trace(f.fileno())
            try:
                results = await gatherResults([write() for write in writes])
            finally:
                writer._conn.pgconn.untrace()
        with open(trace) as f:
            sides = [line.split("\t")[1] for line in f]
        return sum(1 for pair in itertools.pairwise(sides) if pair == ("F", "B")), results

    async def test_a_claim_costs_its_batch_no_round_trip(self) -> None:
        """
        A claim asked for with other writes runs in their batch's pipeline and
        is read once the batch is committed: the batch need not wait for the
        server more often than without it (the fewest waits of three tries:
        psycopg sometimes reads the last results with a wait of their own).
        It runs after the batch's other writes, even those asked for after
        it, so it sees them: the job pushed with it is claimed too.
        """
        # No check of an idle connection (SELECT 1) before a batch.
        self.patch(postgres, "_PROBE_AFTER", 3600.0)
        waits = []
        for n in range(1, 4):
            first, second, third = (make_job(10 * n + k) for k in range(3))
            await self.store.push([first], 0)
            alone, _ = await self.waits(lambda job=second: self.store.push([job], 0))
            with_claim, (claimed, pushed) = await self.waits(
                lambda: self.store.claim(T0 + 1000, 5),
                lambda job=third: self.store.push([job], 0),
            )
            waits.append((with_claim, alone))
            self.assertEqual([job.id for job in claimed], [first.id, second.id, third.id])
            self.assertEqual([p.job.id for p in pushed], [third.id])
            self.assertEqual(self.sql("SELECT id FROM jobs WHERE state = 0"), [])
        self.assertEqual(min(w for w, _ in waits), min(a for _, a in waits), waits)
        # BEGIN, the writes and COMMIT in one pipeline: one wait (3 when
        # psycopg said BEGIN and commit() itself).
        self.assertEqual(min(a for _, a in waits), 1, waits)

    async def test_a_batch_rolled_back_by_the_server_is_run_again(self) -> None:
        """
        A batch that PostgreSQL rolls back (a deadlock, a serialization
        failure: psycopg's classes for them are not TransactionRollback's
        subclasses) is run again, its writes then committed; the store is not
        taken for unavailable.
        """
        errors = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)
        for n, error in enumerate(errors):
            failed = []

            def once(
                conn: psycopg.Connection[Any],
                error: type[Exception] = error,
                failed: list[Any] = failed,
            ) -> int:
                if not failed:
                    failed.append(error)
                    raise error("rolled back by the server")
                return 7

            pushed, value = await gatherResults(
                [self.store.push([make_job(100 + n)], 0), self.store._write(once)]
            )
            self.assertEqual((value, failed), (7, [error]))
            self.assertEqual(len(pushed), 1)
            self.assertEqual(await self.store.get(pushed[0].job.id), pushed[0].job)

    async def test_a_read_after_commit_that_fails_fails_alone(self) -> None:
        """
        A write's result read after its batch's commit that fails fails that
        write only; the connection is left ready for the next batch.
        """
        await self.store.push([make_job(1)], 0)
        writer = self.store._writer
        assert writer is not None

        def failing(conn: psycopg.Connection[Any]) -> Any:
            return conn.execute("SELECT 1 / 0").fetchone()

        def run() -> list[Any]:
            assert writer._conn is not None
            return _Writer._read_after_commit(
                writer._conn, [("a", _AfterCommit(failing)), ("b", 5)]
            )

        results = await deferToThread(run)
        self.assertEqual([d for d, _ in results], ["a", "b"])
        self.assertTrue(results[0][1].check(psycopg.errors.DivisionByZero))
        self.assertEqual(results[1][1], 5)
        await self.store.push([make_job(2)], 0)
        self.assertEqual(len(self.sql("SELECT id FROM jobs")), 2)

    async def test_concurrent_claims_never_take_a_job_twice(self) -> None:
        """Four nodes claiming at once share 400 jobs: each claimed exactly once."""
        await self.store.push([make_job(n) for n in range(400)], 0)
        nodes = [self.node(n) for n in range(1, 5)]
        for node in nodes:
            await node.open()
        claimed: list[int] = []
        while True:
            batches = await gatherResults([node.claim(T0 + 10**6, 7) for node in nodes])
            got = [job.id for batch in batches for job in batch]
            if not got:
                break
            claimed += got
        self.assertEqual(len(claimed), 400)
        self.assertEqual(len(set(claimed)), 400)

    async def test_renew_extends_leases_and_reports_stops(self) -> None:
        """renew() pushes the leases of the node's jobs later and names those being stopped."""
        await self.store.push([make_job(1), make_job(2)], 0)
        node = self.node(2, lease_timeout=5)
        await node.open()
        await node.register("http://n2", T0)
        first, second = await node.claim(T0 + 10, 2)
        before = self.sql("SELECT id, lease_until FROM jobs ORDER BY id")
        await self.store.stop(second.id, T0 + 20)
        stopped = await node.renew([first.id, second.id])
        self.assertEqual(stopped, [second.id])
        after = self.sql("SELECT id, lease_until FROM jobs ORDER BY id")
        self.assertGreater(after[0][1], before[0][1])
        # Another node's renewal does not touch them.
        self.assertEqual(await self.store.renew([first.id]), [])

    async def test_reap_gives_back_expired_leases_only(self) -> None:
        """Expired leases: the job waits again with an interrupted attempt, or ends canceled."""
        await self.store.push([make_job(n) for n in range(3)], 0)
        node = self.node(2, lease_timeout=30)
        await node.open()
        a, b, live = await node.claim(T0 + 10, 3)
        await self.store.stop(b.id, T0 + 11)
        self.sql("UPDATE jobs SET lease_until = 0 WHERE id = ANY(%s)", [a.id, b.id])
        reaped = await self.store.reap(T0 + 50)
        self.assertEqual((reaped.requeued, reaped.canceled), (1, 1))
        self.assertEqual((await self.store.get(a.id)).status, "waiting")
        self.assertEqual((await self.store.get(b.id)).status, "canceled")
        self.assertEqual((await self.store.get(live.id)).status, "running")
        history = await self.store.attempts(a.id)
        self.assertEqual([attempt.attempt for attempt in history], [1])
        self.assertIn("interrupted", history[0].err)

    async def test_recover_leaves_live_nodes_jobs_alone(self) -> None:
        """recover() at start takes this server_id's jobs and expired ones, not a live node's."""
        await self.store.push([make_job(n) for n in range(3)], 0)
        other, me = self.node(2), self.node(3)
        await other.open()
        await me.open()
        (live,) = await other.claim(T0 + 10, 1)
        (mine,) = await me.claim(T0 + 10, 1)
        (expired,) = await other.claim(T0 + 10, 1)
        self.sql("UPDATE jobs SET lease_until = 0 WHERE id = %s", expired.id)
        recovery = await me.recover(T0 + 20)
        self.assertEqual(recovery.requeued, 2)
        self.assertEqual((await me.get(live.id)).status, "running")
        self.assertEqual((await me.get(mine.id)).status, "waiting")
        self.assertEqual((await me.get(expired.id)).status, "waiting")

    async def test_a_node_does_not_finish_a_job_another_node_claimed(self) -> None:
        """finish() and retry() of a running job count only on the node holding it."""
        await self.store.push([make_job(1)], 0)
        holder, late = self.node(2), self.node(3)
        await holder.open()
        await late.open()
        (job,) = await holder.claim(T0 + 10, 1)
        outcome = Outcome(finished_at=T0 + 20, success=True, status_code=200)
        attempt = Attempt.of(job, outcome)
        self.assertIsNone(await late.finish(job.id, outcome, attempt))
        # With the job known (the finish grouped, nothing read back) as well.
        self.assertIsNone(await late.finish(job.id, outcome, attempt, None, job))
        self.assertIsNone(await late.retry(job.id, T0 + 999, outcome, attempt))
        self.assertEqual((await late.get(job.id)).status, "running")
        self.assertEqual(await late.attempts(job.id), [])
        finished = await holder.finish(job.id, outcome, attempt, None, job)
        assert finished is not None
        self.assertEqual(finished, await holder.get(job.id))
        self.assertEqual(finished.status, "success")

    async def test_second_node_with_a_live_server_id_is_refused(self) -> None:
        """register() refuses a server_id whose node has a fresh heartbeat, naming it."""
        first, second = self.node(5), self.node(5)
        await first.open()
        await second.open()
        await first.register("http://first:19900", T0)
        with self.assertRaises(NodeInUse) as e:
            await second.register("http://second:19900", T0)
        self.assertIn(
            "server_id 5 is in use by the live HQ node at http://first:19900", str(e.exception)
        )
        nodes = await second.nodes()
        self.assertEqual([(n.server_id, n.address) for n in nodes], [(5, "http://first:19900")])
        # A stale heartbeat (a dead node) is taken over; a clean stop leaves.
        self.sql("UPDATE nodes SET heartbeat_at = 0")
        await second.register("http://second:19900", T0)
        await second.unregister()
        self.assertEqual(await first.nodes(), [])

    async def test_one_leader_per_lease(self) -> None:
        """lead() gives a lease to one node until it expires or its holder unregisters."""
        a, b = self.node(1), self.node(2)
        await a.open()
        await b.open()
        await a.register("http://a", T0)
        self.assertEqual([await a.lead("cleanup", 60), await b.lead("cleanup", 60)], [True, False])
        self.assertTrue(await a.lead("cleanup", 60))
        await a.unregister()
        self.assertTrue(await b.lead("cleanup", 60))

    async def test_push_and_stop_notify_the_nodes(self) -> None:
        """A push notifies hq_push (once per transaction); a stop of a running job hq_stop."""
        conn = await deferToThread(self.store.connect)
        self.addCleanup(conn.close)
        conn.execute("LISTEN hq_push")
        conn.execute("LISTEN hq_stop")
        await self.store.push([make_job(n) for n in range(3)], 0)
        (job,) = await self.store.claim(T0 + 10, 1)
        await self.store.stop(job.id, T0 + 20)

        def drain() -> list[tuple[str, str]]:
            return [(n.channel, n.payload) for n in conn.notifies(timeout=0.5)]

        got = await deferToThread(drain)
        self.assertEqual(got, [("hq_push", ""), ("hq_stop", str(job.id))])

    async def test_a_claim_reads_the_next_due_time_with_it(self) -> None:
        """
        A claim answers, with its jobs, the earliest due time after its
        ``now`` of the jobs left waiting, as ``next_due`` would (with or
        without flow limits), so the claim feed need not ask for it.
        """
        later, latest = T0 + 5000, T0 + 9000
        jobs = [make_job(1), make_job(2), make_job(3, run_at=latest), make_job(4, run_at=later)]
        await self.store.push(jobs, 0)
        now = T0 + 1000
        claimed = await self.store.claim(now, 5)
        self.assertEqual([job.id for job in claimed], [jobs[0].id, jobs[1].id])
        assert isinstance(claimed, Claimed)
        self.assertEqual((claimed.due_read, claimed.next_due), (True, later))
        self.assertEqual(await self.store.next_due(now), later)
        capped = await self.store.claim(later, 5, ClaimCaps(default_parallelism=5))
        assert isinstance(capped, Claimed)
        self.assertEqual([job.id for job in capped], [jobs[3].id])
        self.assertEqual((capped.limited, capped.due_read, capped.next_due), (True, True, latest))
        empty = await self.store.claim(latest, 5)
        assert isinstance(empty, Claimed)
        self.assertEqual((len(empty), empty.due_read, empty.next_due), (1, True, None))

    async def test_nodes_share_the_database_but_not_with_a_one_server_release(self) -> None:
        """Nodes share the server lock; an exclusive holder (the one-server HQ) refuses them."""
        a, b = self.node(1), self.node(2)
        a.lock()
        b.lock()
        await a.close()
        await b.close()
        with psycopg.connect(self.url, autocommit=True) as old:
            old.execute("SELECT pg_advisory_lock(%s)", (SERVER_LOCK,))
            with self.assertRaises(StoreError) as e:
                self.node(3).lock()
        self.assertIn("without clustering", str(e.exception))


class ClaimWithPushTests(PostgresCase):
    """
    A node's delivery (a claim feed) on a real PostgreSQL: the claim asked
    for with a push (:meth:`hq.delivery.Delivery.claim_with_push`, as the API
    asks it) shares the push's transaction.
    """

    def delivery(self, store: Any) -> Delivery:
        """
        Return a delivery on ``store`` to a worker that answers 200, not started.
        """
        return Delivery(
            store=store,
            worker=WorkerClient(WorkerStub(FakeWorker()).http, reactor, "HQ/test", 1024),
            clock=reactor,
            dispatchers=1,
            workers_per_dispatcher=2,
            queue_size=10,
            shutdown_timeout=1,
        )

    async def started_delivery(self) -> tuple[Delivery, list[Job]]:
        """
        Return a started delivery on this test's store, idle (its first
        claim answered), and the list its finished jobs go to.
        """
        answered: list[object] = []
        claim = self.store.claim

        def recorded(*args: Any) -> Deferred[list[Job]]:
            def record(jobs: list[Job]) -> list[Job]:
                answered.append(jobs)
                return jobs

            return claim(*args).addCallback(record)

        self.patch(self.store, "claim", recorded)
        dispatch = self.delivery(self.store)
        finished: list[Job] = []
        dispatch.add_observer(finished.append)
        dispatch.startService()
        self.addCleanup(dispatch.stopService)
        for _ in range(1000):
            if answered:
                break
            await deferLater(reactor, 0.01)
        await deferLater(reactor, 0)  # the feed is done with that claim
        return dispatch, finished

    async def test_a_push_is_claimed_in_its_own_transaction(self) -> None:
        """
        With a dispatcher idle, the pushed job is claimed by the time the
        push is committed: no transaction of the claim's own follows (it
        would still be in flight a reactor turn later). A job due later is
        not claimed, and is left to be enqueued.
        """
        dispatch, finished = await self.started_delivery()
        job, later = make_job(1), make_job(2, run_at=T0 + 10**12)
        storing = self.store.push([job, later], 0)
        claimed_until = dispatch.claim_with_push([job, later])
        assert claimed_until is not None
        self.assertLessEqual(job.due_at, claimed_until)
        self.assertGreater(later.due_at, claimed_until)
        await storing
        await deferLater(reactor, 0)
        self.assertEqual(dispatch.held_ids(), [job.id])
        for _ in range(100):
            if finished:
                break
            await deferLater(reactor, 0.01)
        self.assertEqual([each.id for each in finished], [job.id])
        self.assertEqual(finished[0].status, "success")

    async def test_the_embedded_store_claims_nothing_with_a_push(self) -> None:
        """On a store no cluster shares, every pushed job is enqueued as before."""
        dispatch = self.delivery(MemoryStore())
        self.assertIsNone(dispatch.claim_with_push([make_job(1)]))


class NotifyListenerTests(PostgresCase):
    """
    The cluster's listener (hq.cluster.NotifyListener) on a real PostgreSQL.
    """

    async def test_a_nodes_own_pushes_are_not_heard(self) -> None:
        """
        A push this node's store wrote is skipped (its delivery knows of it);
        another node's push is heard, with its due time; stops are heard from
        either.
        """
        other = self.make_store(server_id=2)
        await other.open()
        await self.store.push([make_job(0)], 0)  # the writer is connected
        own_pid = self.store.writer_pid()
        self.assertIsNotNone(own_pid)
        heard: list[tuple[str, Any]] = []
        listener = NotifyListener(
            self.store.connect,
            reactor,
            on_push=lambda due: heard.append(("push", due)),
            on_stop=lambda job_id: heard.append(("stop", job_id)),
            own_pid=self.store.writer_pid,
        )
        listener.startService()
        self.addCleanup(listener.stopService)

        async def until(count: int) -> None:
            for _ in range(500):
                if len(heard) >= count:
                    return
                await deferLater(reactor, 0.01)

        await until(1)
        self.assertEqual(heard, [("push", None)])  # at start: what it may have missed
        own = make_job(1)
        await self.store.push([own], 0)
        await other.push([make_job(2, run_at=T0 + 10**12)], 0)
        await until(2)
        self.assertIn(own.id, [job.id for job in await self.store.claim(T0 + 1000, 5)])
        await self.store.stop(own.id, T0 + 1000)  # running: its node is told
        await until(3)
        await deferLater(reactor, 0.1)
        self.assertEqual(heard[1:], [("push", T0 + 10**12), ("stop", own.id)])


class LikePrefilterTests(SynchronousTestCase):
    """
    The LIKE pattern that lets PostgreSQL skip rows for a plain-string regexp.
    """

    def test_plain_strings_become_like_patterns(self) -> None:
        """Characters stay, '.' is any character, escapes and LIKE wildcards are literal."""
        self.assertEqual(like_prefilter("abc"), "%abc%")
        self.assertEqual(like_prefilter("a.c"), "%a_c%")
        self.assertEqual(like_prefilter(r"a\.c"), "%a.c%")
        self.assertEqual(like_prefilter("a%b_c"), "%a\\%b\\_c%")
        self.assertEqual(like_prefilter(r"a\\b"), "%a\\\\b%")

    def test_other_regexps_have_none(self) -> None:
        """Anchors, classes, repeats, groups and alternations are left to the regexp."""
        for pattern in ("^a", "a$", "a|b", "a*", "a+", "a?", "(a)", "[ab]", "a{2}", r"\d", "a\\"):
            self.assertIsNone(like_prefilter(pattern), pattern)

    def test_safe_url_hides_the_password(self) -> None:
        """Messages show the database URL without its password."""
        self.assertEqual(
            safe_url("postgresql://hq:secret@db:5432/hq"), "postgresql://hq:***@db:5432/hq"
        )
        self.assertEqual(safe_url("postgresql://hq@db/hq"), "postgresql://hq@db/hq")


class ServerHelperTests(SynchronousTestCase):
    """
    The test PostgreSQL server itself.
    """

    skip = SKIP

    def test_server_runs_unprivileged_on_loopback(self) -> None:
        """The test server answers on 127.0.0.1 and does not run as root."""
        server = pgserver.server()
        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            row = conn.execute(
                "SELECT inet_server_addr()::text, current_setting('port')"
            ).fetchone()
        assert row is not None
        self.assertEqual((row[0].split("/")[0], int(row[1])), ("127.0.0.1", server.port))


class StoreConfigTests(SynchronousTestCase):
    """
    The ``store`` key and :func:`hq.store.open_store`.
    """

    def test_sqlite_is_the_default(self) -> None:
        """Without store, or with "sqlite", the store is SQLite in data_dir."""
        for values in ({}, {"store": "sqlite"}, {"store": ""}):
            config = config_from_dict({**values, "data_dir": "/tmp/x"})  # type: ignore[dict-item]
            self.assertIsNone(config.postgres_url)
            store = open_store(config, reactor)
            assert isinstance(store, SQLiteStore)
            self.assertEqual(store.path, "/tmp/x/hq.sqlite3")

    def test_postgresql_url_picks_postgres(self) -> None:
        """A postgresql:// URL picks the PostgreSQL store, naming it without its password."""
        config = config_from_dict({"store": "postgresql://hq:secret@db:5432/hq"})
        store = open_store(config, reactor)
        assert isinstance(store, PostgresStore)
        self.assertEqual(store.where, "postgresql://hq:***@db:5432/hq")

    def test_bad_store_values_name_the_key_and_hide_the_password(self) -> None:
        """Another scheme, a bad port or a bad parameter stop start-up, naming 'store'."""
        for value in (
            "mysql://hq:secret@db/hq",
            "postgresql://hq:secret@db:port/hq",
            "postgresql://hq:secret@db/hq?nonsense=1",
        ):
            with self.assertRaises(ConfigError) as e:
                config_from_dict({"store": value})
            self.assertIn("'store'", str(e.exception))
            self.assertNotIn("secret", str(e.exception))


class UnreachableTests(TestCase):
    """
    A database that cannot be reached.
    """

    skip = SKIP

    async def test_open_fails_at_once_naming_the_database(self) -> None:
        """Open fails with StoreUnavailable naming the URL (not the password), without a hang."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        store = PostgresStore(f"postgresql://hq:secret@127.0.0.1:{port}/hq", reactor)
        began = time.monotonic()
        with self.assertRaises(StoreUnavailable) as e:
            await store.open()
        self.assertLess(time.monotonic() - began, 2.0)
        self.assertIn(
            f"cannot open the PostgreSQL store postgresql://hq:***@127.0.0.1:{port}/hq",
            str(e.exception),
        )
        self.assertNotIn("secret", str(e.exception))
