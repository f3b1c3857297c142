"""
``GET /health``: 200 with what was checked while the store can be written and
the dispatchers run, 503 naming what failed otherwise; and the stores' probe write.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from hq.api import HQApi
from hq.config import Config
from hq.health import PROBE_TIMEOUT, HealthCheck
from hq.ids import IdGenerator
from hq.store import StoreUnavailable
from hq.store.memory import MemoryStore
from hq.store.sqlite import SQLiteStore
from hq.testing import RecordingDispatch

T0 = 1_700_000_000


class HealthEndpointTests(SynchronousTestCase):
    """
    The endpoint over a MemoryStore that can be made unwritable.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.store = MemoryStore()
        self.running = True
        self.probes = 0
        self.probe: Any = self.store.probe_write
        self.health = HealthCheck(self.counted_probe, lambda: self.running, self.clock)
        api = HQApi(
            store=self.store,
            dispatch=RecordingDispatch(),
            ids=IdGenerator(0, self.clock),
            clock=self.clock,
            config=Config(),
            health=self.health,
        )
        self.client = StubTreq(api.resource())

    def counted_probe(self) -> Deferred[None]:
        self.probes += 1
        result: Deferred[None] = self.probe()
        return result

    def get(self, method: str = "GET") -> Deferred[tuple[int, dict[str, Any]]]:
        d = self.client.request(method, "http://hq.test/health")

        async def read() -> tuple[int, dict[str, Any]]:
            response = await d
            body = await response.content()
            return response.code, (json.loads(body) if body else {})

        result = Deferred.fromCoroutine(read())
        self.client.flush()
        return result

    def check(self) -> tuple[int, dict[str, Any]]:
        return self.successResultOf(self.get())

    def test_healthy_says_what_was_checked(self) -> None:
        """A writable store and running dispatchers answer 200 naming both checks."""
        code, body = self.check()
        self.assertEqual(code, 200)
        self.assertIs(body["healthy"], True)
        self.assertEqual(set(body["checks"]), {"store", "dispatchers"})
        self.assertIn("writable", body["checks"]["store"])
        self.assertEqual(body["checks"]["dispatchers"], "running")
        self.assertEqual(self.probes, 1)

    def test_unwritable_store_flips_to_503_and_back(self) -> None:
        """An unwritable store gives 503 naming the store; writable again gives 200."""
        self.assertEqual(self.check()[0], 200)
        self.store.writable = False
        code, body = self.check()
        self.assertEqual(code, 503)
        self.assertEqual(body["status"], 503)
        self.assertEqual(body["error"], "unhealthy: store: storage unavailable: not writable")
        self.store.writable = True
        self.assertEqual(self.check()[0], 200)

    def test_stopped_dispatchers_give_503(self) -> None:
        """Dispatchers not running (shutting down) give 503 naming them, not the store."""
        self.running = False
        code, body = self.check()
        self.assertEqual(code, 503)
        self.assertTrue(body["error"].startswith("unhealthy: dispatchers: not running"))
        self.assertNotIn("store", body["error"])

    def test_head_for_load_balancers(self) -> None:
        """HEAD /health answers the same status without a body."""
        self.store.writable = False
        self.assertEqual(self.successResultOf(self.get("HEAD"))[0], 503)

    def test_hung_probe_times_out_as_503(self) -> None:
        """A probe write that never finishes fails the check after PROBE_TIMEOUT seconds."""
        self.probe = Deferred
        d = self.get()
        self.assertNoResult(d)
        self.clock.advance(PROBE_TIMEOUT)
        self.client.flush()
        code, body = self.successResultOf(d)
        self.assertEqual(code, 503)
        self.assertIn(f"did not finish within {PROBE_TIMEOUT:g} s", body["error"])

    def test_concurrent_checks_share_one_probe(self) -> None:
        """Checks arriving while a probe is in flight wait for it instead of probing again."""
        pending: Deferred[None] = Deferred()
        self.probe = lambda: pending
        first, second = self.get(), self.get()
        self.assertEqual(self.probes, 1)
        pending.errback(StoreUnavailable("storage unavailable: disk full"))
        self.client.flush()
        for d in (first, second):
            code, body = self.successResultOf(d)
            self.assertEqual(
                (code, body["error"]), (503, "unhealthy: store: storage unavailable: disk full")
            )
        self.assertEqual(self.check()[0], 200)
        self.assertEqual(self.probes, 2)

    def test_probe_that_raises_is_a_failed_check(self) -> None:
        """A probe raising instead of failing its Deferred is still a 503, not a 500."""

        def broken() -> Deferred[None]:
            raise StoreUnavailable("storage unavailable: the store is closed")

        self.probe = broken
        code, body = self.check()
        self.assertEqual(code, 503)
        self.assertIn("the store is closed", body["error"])

    def test_without_health_check_is_404(self) -> None:
        """An API built without a health check answers 404, not 500."""
        api = HQApi(
            store=self.store,
            dispatch=RecordingDispatch(),
            ids=IdGenerator(0, self.clock),
            clock=self.clock,
            config=Config(),
        )
        self.client = StubTreq(api.resource())
        self.assertEqual(self.check()[0], 404)


class SQLiteProbeTests(TestCase):
    """
    The SQLite store's probe write is a real committed change.
    """

    def setUp(self) -> Deferred[None]:
        self.store = SQLiteStore(self.mktemp(), reactor)
        self.addCleanup(lambda: self.store.close())
        return self.store.open()

    async def test_probe_commits_a_row(self) -> None:
        """Each probe changes the meta row, so its commit writes a page."""
        await self.store.probe_write()
        await self.store.probe_write()
        conn = sqlite3.connect(self.store.path)
        self.addCleanup(conn.close)
        row = conn.execute("SELECT value FROM meta WHERE key = 'health_probe'").fetchone()
        self.assertEqual(row, ("2",))

    async def test_probe_on_closed_store_fails(self) -> None:
        """A closed store's probe fails with StoreUnavailable."""
        await self.store.close()
        with self.assertRaises(StoreUnavailable):
            await self.store.probe_write()
