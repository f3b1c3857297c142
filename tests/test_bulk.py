"""
Bulk actions: ``POST /jobs/restart``, ``/jobs/stop`` and ``/jobs/delete``
through the API (:mod:`hq.api` over :mod:`hq.bulk`), and the paging of
:class:`hq.bulk.BulkActions`.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from hq.bulk import BulkActions
from hq.model import Job, JobPage, ListQuery
from hq.store import StoreUnavailable
from hq.store.memory import MemoryStore
from hq.testing import RecordingDispatch
from tests.test_api import T0, APITestCase


class BulkAPITests(APITestCase):
    """
    The three bulk routes over a MemoryStore.
    """

    def setUp(self) -> None:
        super().setUp()
        # a0 success, a1 failure, a2 waiting, b0 running, b1 failure, b2 scheduled
        self.a = [self.push(name="alpha")["id"] for _ in range(3)]
        self.b = [self.push(name="beta")["id"] for _ in range(2)]
        self.b.append(self.push(name="beta", delay=60)["id"])
        self.finish_job(self.a[0])
        self.finish_job(self.a[1], success=False, failure=True)
        self.finish_job(self.b[1], success=False, failure=True)
        self.start_job(self.b[0])
        self.dispatch.enqueued.clear()

    def bulk(self, action: str, query: str) -> Any:
        reply = self.call("POST", f"/jobs/{action}{query}")
        self.assertEqual(reply.status, 200, reply.body)
        return reply.json

    def statuses(self) -> dict[str, str]:
        listed = self.call("GET", "/job").json["jobs"]
        return {job["id"]: job["status"] for job in listed}

    def test_filters_are_required(self) -> None:
        """Without name, term or status each action is 400 and nothing changes."""
        before = self.statuses()
        for action in ("restart", "stop", "delete"):
            for query in ("", "?limit=5", "?reverse&begin=1", "?name=&status="):
                reply = self.call("POST", f"/jobs/{action}{query}")
                self.assertError(
                    reply,
                    400,
                    "Give at least one of 'name', 'term' or 'status' in the query string: "
                    "a bulk action never acts on every job unasked",
                )
        self.assertEqual(self.statuses(), before)

    def test_bad_filters_are_400(self) -> None:
        """An invalid regexp or status is refused as by GET /job."""
        reply = self.call("POST", "/jobs/stop?status=nope")
        self.assertEqual(reply.status, 400)
        reply = self.call("POST", "/jobs/delete?name=(")
        self.assertEqual(reply.status, 400)

    def test_restart_restarts_finished_matches_in_place(self) -> None:
        """name=alpha restarts a0 and a1 (not waiting a2): count 2, both queued."""
        self.assertEqual(self.bulk("restart", "?name=alpha"), {"count": 2})
        statuses = self.statuses()
        self.assertEqual([statuses[i] for i in self.a], ["waiting"] * 3)
        self.assertEqual([str(j.id) for j in self.dispatch.enqueued], self.a[:2])
        self.assertEqual(statuses[self.b[1]], "failure")

    def test_restart_by_status(self) -> None:
        """status=failure restarts both failures."""
        self.assertEqual(self.bulk("restart", "?status=failure"), {"count": 2})
        self.assertEqual({str(j.id) for j in self.dispatch.enqueued}, {self.a[1], self.b[1]})

    def test_stop_stops_active_matches_through_the_dispatcher(self) -> None:
        """name=beta stops the running and the scheduled job, each canceled in the dispatcher."""
        self.assertEqual(self.bulk("stop", "?name=beta"), {"count": 2})
        statuses = self.statuses()
        self.assertEqual([statuses[i] for i in self.b], ["canceling", "failure", "canceled"])
        self.assertEqual(sorted(self.dispatch.canceled), sorted([int(self.b[0]), int(self.b[2])]))

    def test_stop_scheduled_only(self) -> None:
        """status=scheduled stops the delayed job alone."""
        self.assertEqual(self.bulk("stop", "?status=scheduled"), {"count": 1})
        self.assertEqual(self.dispatch.canceled, [int(self.b[2])])

    def test_delete_deletes_finished_matches(self) -> None:
        """term=. deletes the three finished jobs and keeps the active ones."""
        self.assertEqual(self.bulk("delete", "?term=."), {"count": 3})
        self.assertEqual(set(self.statuses()), {self.a[2], self.b[0], self.b[2]})

    def test_limit_begin_and_reverse_bound_the_matches(self) -> None:
        """limit caps the matches looked at; begin and reverse set where the scan starts."""
        self.assertEqual(self.bulk("delete", "?name=alpha&limit=1"), {"count": 1})
        self.assertNotIn(self.a[0], self.statuses())
        self.assertEqual(self.bulk("delete", f"?term=.&reverse&begin={self.a[2]}"), {"count": 1})
        self.assertNotIn(self.a[1], self.statuses())
        self.assertIn(self.b[1], self.statuses())

    def test_no_match_is_count_zero(self) -> None:
        """Nothing matching: count 0."""
        self.assertEqual(self.bulk("stop", "?name=nobody"), {"count": 0})

    def test_wrong_method_is_405(self) -> None:
        """GET on a bulk route: 405."""
        self.assertEqual(self.call("GET", "/jobs/stop?name=a").status, 405)

    def test_store_unavailable_is_503(self) -> None:
        """A store that cannot write: 503, as for a single job."""
        self.store.writable = False
        reply = self.call("POST", "/jobs/delete?status=failure")
        self.assertError(reply, 503, "storage unavailable, try again later")
        self.flushLoggedErrors(StoreUnavailable)


class CountingStore(MemoryStore):
    """
    A MemoryStore that records the page size of every listing.
    """

    pages: list[int | None]

    def list_jobs(self, query: ListQuery) -> Deferred[JobPage]:
        self.pages.append(query.limit)
        return super().list_jobs(query)


class BulkActionsTests(APITestCase):
    """
    :class:`BulkActions` pages through the matches.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.store = CountingStore()
        self.store.pages = []
        self.dispatch = RecordingDispatch()
        self.bulk = BulkActions(self.store, self.dispatch, self.clock, page_size=10)
        for index in range(45):
            self.successResultOf(self.store.create(Job(id=1000 + index, url="http://w.test/")))

    def run_pumped(self, d: Deferred[int]) -> int:
        """
        Return the result of ``d`` once the clock has given the turns it waits for.
        """
        self.clock.advance(0)
        return self.successResultOf(d)

    def test_every_match_is_acted_on_a_page_at_a_time(self) -> None:
        """45 matches in pages of 10: 45 stopped, 5 listings, a reactor turn between pages."""
        d = Deferred.fromCoroutine(self.bulk.stop(ListQuery(name="default")))
        self.assertNoResult(d)
        # One page done, then the action waits for its turn of the reactor.
        self.assertEqual(len(self.dispatch.canceled), 10)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertEqual(self.run_pumped(d), 45)
        self.assertEqual(self.store.pages, [10] * 5)
        self.assertEqual(self.dispatch.canceled, list(range(1000, 1045)))

    def test_limit_caps_the_matches(self) -> None:
        """limit 25 with pages of 10: pages of 10, 10, 5."""
        d = Deferred.fromCoroutine(self.bulk.stop(ListQuery(name="default", limit=25)))
        self.assertEqual(self.run_pumped(d), 25)
        self.assertEqual(self.store.pages, [10, 10, 5])

    def test_jobs_pushed_meanwhile_are_left_alone(self) -> None:
        """A job stored after the action began is not part of it."""
        d = Deferred.fromCoroutine(self.bulk.stop(ListQuery(name="default")))
        self.successResultOf(self.store.create(Job(id=5000, url="http://w.test/")))
        self.assertEqual(self.run_pumped(d), 45)
        self.assertTrue(self.successResultOf(self.store.get(5000)).waiting)

    def test_reverse_starts_at_the_newest_stored_now(self) -> None:
        """reverse with no begin: from the newest job, downwards."""
        self.successResultOf(self.store.create(Job(id=900, url="http://w.test/", name="x")))
        d = Deferred.fromCoroutine(self.bulk.stop(ListQuery(name="default", reverse=True)))
        self.assertEqual(self.run_pumped(d), 45)
        self.assertEqual(self.dispatch.canceled, list(range(1044, 999, -1)))
