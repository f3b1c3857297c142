"""
``hq migrate --from-sqlite``: a SQLite store made through the real store API
is copied into PostgreSQL row for row, read back through the PostgreSQL store;
what it refuses; and a server on the copy delivers the copied jobs.
"""

from __future__ import annotations

import io
import os
import sqlite3
import sys
from typing import Any

import attrs
import psycopg
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from hq import migrate_sqlite
from hq.cli import run_cli
from hq.model import Attempt, FlowLimits, Job, JobState, JobTemplate, Outcome, Schedule
from hq.store.postgres import PostgresStore
from hq.store.sqlite import SQLiteStore
from hq.store.sqlitefile import DATABASE_FILE, SCHEMA_VERSION
from tests import pgserver
from tests.serverprocess import RecordingWorker, ServerProcess, wait_for
from tests.test_store import T0, make_job

SKIP = pgserver.skip_reason()


@attrs.frozen
class Snapshot:
    """
    What a store holds, read through its API: every job, its attempts, the
    schedules, the greatest id.
    """

    jobs: dict[int, Job]
    attempts: dict[int, list[Attempt]]
    schedules: list[Schedule]
    max_id: int
    flows: list[FlowLimits]


async def snapshot(store: Any, ids: list[int]) -> Snapshot:
    """
    Return the :class:`Snapshot` of ``store`` for the jobs ``ids``.
    """
    jobs = {job_id: await store.get(job_id) for job_id in ids}
    attempts = {job_id: await store.attempts(job_id) for job_id in ids}
    schedules = sorted(await store.list_schedules(), key=lambda s: s.id)
    flows = await store.flow_limits()
    return Snapshot(jobs, attempts, schedules, await store.max_id(), flows)


async def fill(store: SQLiteStore, url: str) -> list[int]:
    """
    Put jobs in every state (with attempts, keys, a schedule's fire) in
    ``store``, all to ``url``; return the ids of the jobs kept.
    """

    def job(n: int, **kwargs: Any) -> Job:
        return attrs.evolve(make_job(n, **kwargs), url=f"{url}/{n}")

    waiting = job(
        1,
        name="waiting",
        payload='{"a":1}',
        headers={"X-A": "b"},
        timeout=7,
        flow_key="tenant-1",
        callback_url=f"{url}/ok",
        failure_callback_url=f"{url}/ko",
    )
    keyed = job(2, idempotency_key="key-2", retries=3)
    running = job(3, name="running")
    succeeded = job(4, comment="ok")
    retried = job(5, retries=2)
    failed = job(6)
    canceled = job(7)
    deleted = job(99)
    await store.push([waiting, keyed, running, succeeded, retried, failed, canceled], 0)
    await store.create(deleted)

    async def attempt(one: Job, outcome: Outcome) -> Attempt:
        started = await store.start(one.id, T0 + 1)
        assert started is not None
        return Attempt.of(started, outcome)

    await store.start(running.id, T0 + 1)
    ok = Outcome(finished_at=T0 + 2, success=True, status_code=200, output='{"ok":true}')
    await store.finish(succeeded.id, ok, await attempt(succeeded, ok))
    boom = Outcome(finished_at=T0 + 2, failure=True, status_code=500, err="boom", output="o")
    # Retried once, waiting again, due in the past.
    await store.retry(retried.id, T0 + 100, boom, await attempt(retried, boom))
    await store.finish(failed.id, boom, await attempt(failed, boom))
    await store.stop(canceled.id, T0 + 3)
    await store.start(deleted.id, T0 + 1)
    await store.finish(deleted.id, ok)
    await store.delete(deleted.id)

    template = JobTemplate(url=f"{url}/tick", name="tick", payload='{"t":1}', retries=1)
    schedule = Schedule(
        id=make_job(20).id,
        name="every-minute",
        cron="* * * * *",
        timezone="Europe/Paris",
        job=template,
        next_run_at=T0 + 60_000,
    )
    paused = Schedule(
        id=make_job(21).id,
        name="paused",
        cron="0 3 * * *",
        timezone="UTC",
        job=template,
        paused=True,
    )
    await store.add_schedule(schedule)
    await store.add_schedule(paused)
    await store.put_flow(FlowLimits("tenant-1", parallelism=2, rate=10, period=2.5))
    fired = schedule.job_for(make_job(30).id)
    await store.fire(schedule.id, T0 + 60_000, fired, T0 + 120_000)
    return [
        waiting.id,
        keyed.id,
        running.id,
        succeeded.id,
        retried.id,
        failed.id,
        canceled.id,
        fired.id,
    ]


class MigrateFromSQLiteTests(TestCase):
    """
    ``hq migrate --from-sqlite DATA_DIR -c FILE`` into a fresh database.
    """

    skip = SKIP

    async def asyncSetUp(self) -> None:
        self.pg = pgserver.server()
        self.url = self.pg.new_database()
        self.worker = RecordingWorker()
        self.addCleanup(self.worker.close)
        self.data_dir = os.path.abspath(self.mktemp())
        sqlite = SQLiteStore(self.data_dir, reactor)
        await sqlite.open()
        try:
            self.ids = await fill(sqlite, self.worker.url)
            self.expected = await snapshot(sqlite, self.ids)
        finally:
            await sqlite.close()
        self.config = os.path.abspath(self.mktemp())
        with open(self.config, "w") as f:
            f.write(f'store = "{self.url}"\n')

    def setUp(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self.asyncSetUp())

    def migrate(self, *args: str) -> tuple[int, str, str]:
        """
        Run ``hq migrate --from-sqlite`` (data_dir and config of this test
        unless ``args``); return its exit status, stdout and stderr.
        """
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        argv = list(args) or ["--from-sqlite", self.data_dir, "-c", self.config]
        code = run_cli(["migrate", *argv])
        self.patch(sys, "stdout", sys.__stdout__)
        self.patch(sys, "stderr", sys.__stderr__)
        return code, out.getvalue(), err.getvalue()

    def count(self, table: str) -> int:
        with psycopg.connect(self.url, autocommit=True) as conn:
            row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()  # type: ignore[arg-type]
            assert row is not None
            return int(row[0])

    async def test_every_row_is_equal_on_postgresql(self) -> None:
        """Every job, attempt, schedule and the greatest id read back equal via PostgresStore."""
        code, out, err = self.migrate()
        self.assertEqual(code, 0, err)
        self.assertEqual(err, "")
        self.assertIn("copied 8 jobs\n", out)
        self.assertIn(
            "Copied 8 jobs, 3 attempts, 1 idempotency keys and 2 schedules "
            f"(greatest id {self.expected.max_id})",
            out,
        )
        self.assertIn("1 jobs were running on the SQLite server", out)
        store = PostgresStore(self.url, reactor)
        await store.open()
        try:
            got = await snapshot(store, self.ids)
        finally:
            await store.close()
        self.assertEqual(got, self.expected)
        # The fixture does hold every state, a deleted newest id, and a schedule's job.
        states = {job.state for job in got.jobs.values()}
        self.assertEqual(states, {JobState.WAITING, JobState.RUNNING, JobState.FINISHED})
        self.assertEqual(
            {job.status for job in got.jobs.values()},
            {"waiting", "running", "success", "failure", "canceled"},
        )
        self.assertGreater(got.max_id, max(self.ids))
        self.assertEqual((self.count("idempotency_keys"), self.count("attempts")), (1, 3))
        self.assertIsNotNone(got.schedules[0].last_job_id)
        self.assertEqual(got.jobs[self.ids[0]].flow_key, "tenant-1")
        self.assertEqual(len(got.flows), 1)

    async def test_second_run_refuses_a_non_empty_target(self) -> None:
        """Migrating twice is refused, exit 1, and leaves the first copy as it was."""
        self.assertEqual(self.migrate()[0], 0)
        code, _, err = self.migrate()
        self.assertEqual(code, 1)
        self.assertTrue(err.startswith("error: the PostgreSQL store "), err)
        self.assertIn("is not empty (8 jobs, 2 schedules, 1 flow limits)", err)
        self.assertEqual(self.count("jobs"), 8)

    async def test_batches_and_progress(self) -> None:
        """Rows go in batches (here of 3) and a progress line every 6 jobs; all are copied."""
        self.patch(migrate_sqlite, "BATCH_ROWS", 3)
        self.patch(migrate_sqlite, "PROGRESS_EVERY", 6)
        code, out, err = self.migrate()
        self.assertEqual(code, 0, err)
        self.assertIn("copied 6 jobs ...\ncopied 8 jobs\n", out)
        self.assertEqual((self.count("jobs"), self.count("schedules")), (8, 2))

    async def test_data_dir_of_a_running_store_is_refused(self) -> None:
        """A data_dir whose lock an open store holds is refused, exit 1, and nothing is copied."""
        sqlite = SQLiteStore(self.data_dir, reactor)
        await sqlite.open()
        try:
            code, _, err = self.migrate()
        finally:
            await sqlite.close()
        self.assertEqual(code, 1)
        self.assertIn(f"is using data_dir {self.data_dir}: stop it first", err)
        self.assertTrue(err.startswith("error: "), err)
        with psycopg.connect(self.url, autocommit=True) as conn:
            self.assertEqual(conn.execute("SELECT to_regclass('jobs')").fetchone(), (None,))

    async def test_a_failure_half_way_leaves_the_target_unchanged(self) -> None:
        """A row PostgreSQL refuses, after the jobs went in, undoes everything (schema too)."""
        conn = sqlite3.connect(os.path.join(self.data_dir, DATABASE_FILE))
        conn.execute("INSERT INTO attempts VALUES ('not a number', 1, 0, 0, NULL, '', '')")
        conn.commit()
        conn.close()
        code, _, err = self.migrate()
        self.assertEqual(code, 1)
        self.assertIn("failed, nothing was kept", err)
        with psycopg.connect(self.url, autocommit=True) as pg:
            self.assertEqual(pg.execute("SELECT to_regclass('jobs')").fetchone(), (None,))

    async def test_target_with_running_nodes_is_refused(self) -> None:
        """A database a cluster node runs on (its shared lock held) is refused, exit 1."""
        node = PostgresStore(self.url, reactor)
        self.addCleanup(node.close)
        node.lock()
        code, _, err = self.migrate()
        self.assertEqual(code, 1)
        self.assertIn("HQ nodes are running on the PostgreSQL store", err)

    async def test_newer_schema_is_refused(self) -> None:
        """A SQLite file of a newer schema is refused, exit 1, naming its version."""
        conn = sqlite3.connect(os.path.join(self.data_dir, DATABASE_FILE))
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        conn.close()
        code, _, err = self.migrate()
        self.assertEqual(code, 1)
        self.assertIn(f"has schema version {SCHEMA_VERSION + 1}, written by a newer HQ", err)

    async def test_missing_store_and_sqlite_config_are_refused(self) -> None:
        """No hq.sqlite3 in DATA_DIR, or a config without a PostgreSQL store: exit 1, saying so."""
        empty = os.path.abspath(self.mktemp())
        os.makedirs(empty)
        code, _, err = self.migrate("--from-sqlite", empty, "-c", self.config)
        self.assertEqual(code, 1)
        self.assertIn(f"error: no SQLite store in {empty}", err)
        sqlite_config = self.mktemp()
        with open(sqlite_config, "w") as f:
            f.write(f'data_dir = "{empty}"\n')
        code, _, err = self.migrate("--from-sqlite", self.data_dir, "-c", sqlite_config)
        self.assertEqual(code, 1)
        self.assertIn('set store = "postgresql://..."', err)

    async def test_a_server_on_the_copy_delivers_the_waiting_jobs(self) -> None:
        """A node on the copy delivers the copied waiting jobs and gives back the running one."""
        self.assertEqual(self.migrate()[0], 0)
        pending = [
            job.id for job in self.expected.jobs.values() if job.state is not JobState.FINISHED
        ]
        self.assertEqual(len(pending), 5)
        node = ServerProcess(self.mktemp(), store=self.url, server_id=1, lease_timeout=2.0)
        self.addCleanup(node.stop)
        node.start()
        wanted = {str(job_id) for job_id in pending}
        wait_for(lambda: wanted <= set(self.worker.received), 30, "the copied jobs delivered")
        for job_id in pending:
            wait_for(
                lambda job_id=job_id: (
                    node.request("GET", f"/job/{job_id}")[1]["status"] == "success"
                ),
                10,
                "done",
            )
        status, job = node.request("GET", f"/job/{self.ids[1]}")
        self.assertEqual((status, job["idempotencyKey"]), (200, "key-2"))
