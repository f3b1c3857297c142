"""
The schedule routes of the HTTP API (SPEC §14), through StubTreq over the
in-memory store.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from hq.auth import required_role
from hq.ids import IdGenerator
from tests.test_api import JSON, TIME_RE, APITestCase

SCHEDULE_KEYS = [
    "id",
    "name",
    "cron",
    "timezone",
    "job",
    "paused",
    "nextRunAt",
    "lastRunAt",
    "lastJobId",
]
JOB = {"url": "http://worker.test/tick"}


class ScheduleAPITests(APITestCase):
    """
    POST/GET/DELETE /schedule, pause and resume, and every refusal.
    """

    def setUp(self) -> None:
        super().setUp()
        self.woken = 0

        def wake() -> None:
            self.woken += 1

        self.api._schedules_changed = wake

    def add(self, **fields: Any) -> dict[str, Any]:
        fields.setdefault("cron", "30 2 * * *")
        fields.setdefault("job", JOB)
        reply = self.post_json("/schedule", fields)
        self.assertEqual(reply.status, 200, reply.body)
        result: dict[str, Any] = reply.json
        return result

    def refused(self, status: int, body: Any, *words: str) -> None:
        reply = self.post_json("/schedule", body)
        self.assertEqual(reply.status, status, reply.body)
        self.assertEqual(reply.json["status"], status)
        for word in words:
            self.assertIn(word, reply.json["error"])

    def test_add_answers_the_schedule(self) -> None:
        """A new schedule: all keys, string id, defaults filled, next run computed."""
        schedule = self.add(name="nightly", timezone="Europe/Berlin")
        self.assertEqual(list(schedule), SCHEDULE_KEYS)
        self.assertTrue(schedule["id"].isdigit())
        self.assertEqual(schedule["cron"], "30 2 * * *")
        self.assertEqual(schedule["timezone"], "Europe/Berlin")
        self.assertEqual(
            schedule["job"],
            {
                "url": "http://worker.test/tick",
                "name": "nightly",
                "comment": "",
                "payload": None,
                "headers": None,
                "timeout": 0,
                "retries": 0,
                "flowKey": "worker.test:80",
                "callbackUrl": None,
                "failureCallbackUrl": None,
            },
        )
        self.assertFalse(schedule["paused"])
        # T0 = 2023-11-14T22:13:20Z: the next 02:30 in Berlin is 01:30 UTC the next day.
        self.assertEqual(schedule["nextRunAt"], "2023-11-15T01:30:00.000Z")
        self.assertIsNone(schedule["lastRunAt"])
        self.assertIsNone(schedule["lastJobId"])
        self.assertEqual(self.woken, 1)

    def test_job_flow_fields_reach_the_jobs(self) -> None:
        """A schedule's job may have flowKey and callback URLs; its jobs get them."""
        schedule = self.add(
            job={
                "url": "http://worker.test/tick",
                "flowKey": "reports",
                "callbackUrl": "http://app.test/done",
            }
        )
        self.assertEqual(schedule["job"]["flowKey"], "reports")
        stored = self.successResultOf(self.store.get_schedule(int(schedule["id"])))
        job = stored.job_for(1 << 30)
        self.assertEqual((job.flow_key, job.callback_url), ("reports", "http://app.test/done"))
        reply = self.post_json(
            "/schedule",
            {"cron": "* * * * *", "job": {"url": "http://w.test/", "flowKey": "k" * 256}},
        )
        self.assertEqual(reply.status, 422)
        self.assertIn("'job.flowKey'", reply.json["error"])

    def test_defaults(self) -> None:
        """No name or time zone: 'default' and UTC; the job keeps its own name and fields."""
        job = dict(JOB, name="own", payload={"a": 1}, headers={"X-A": "b"}, timeout=5, retries=3)
        schedule = self.add(job=job)
        self.assertEqual((schedule["name"], schedule["timezone"]), ("default", "UTC"))
        self.assertEqual(schedule["job"]["name"], "own")
        self.assertEqual(schedule["job"]["payload"], {"a": 1})
        self.assertEqual((schedule["job"]["timeout"], schedule["job"]["retries"]), (5, 3))

    def test_six_fields_and_paused(self) -> None:
        """Six fields are accepted; a paused schedule has no next run."""
        schedule = self.add(cron="*/5 * * * * *", paused=True)
        self.assertTrue(schedule["paused"])
        self.assertIsNone(schedule["nextRunAt"])

    def test_list_and_get(self) -> None:
        """GET /schedule lists in id order; GET /schedule/{id} answers one."""
        first, second = self.add(name="a"), self.add(name="b")
        reply = self.call("GET", "/schedule")
        self.assertEqual(reply.status, 200)
        self.assertEqual(reply.json, {"schedules": [first, second]})
        one = self.call("GET", f"/schedule/{second['id']}")
        self.assertEqual(one.json, second)
        self.assertTrue(TIME_RE.match(second["nextRunAt"]))

    def test_delete(self) -> None:
        """DELETE answers {"id"}; the schedule is gone (404 after)."""
        schedule = self.add()
        reply = self.call("DELETE", f"/schedule/{schedule['id']}")
        self.assertEqual((reply.status, reply.json), (200, {"id": schedule["id"]}))
        again = self.call("DELETE", f"/schedule/{schedule['id']}")
        self.assertEqual(again.status, 404)
        self.assertEqual(again.json["error"], f"The schedule '{schedule['id']}' is not found")

    def test_pause_and_resume_are_idempotent(self) -> None:
        """Pause twice: paused, no next run; resume twice: the same next run."""
        schedule = self.add(cron="* * * * *")
        for _ in range(2):
            reply = self.call("POST", f"/schedule/{schedule['id']}/pause")
            self.assertEqual(reply.status, 200)
            self.assertEqual((reply.json["paused"], reply.json["nextRunAt"]), (True, None))
        self.clock.advance(600)
        resumed = [self.call("POST", f"/schedule/{schedule['id']}/resume").json for _ in range(2)]
        self.assertEqual(resumed[0], resumed[1])
        self.assertFalse(resumed[0]["paused"])
        # Resumed from now, not from the time it was paused.
        self.assertEqual(resumed[0]["nextRunAt"], "2023-11-14T22:24:00.000Z")

    def test_unknown_ids_are_404(self) -> None:
        """Unknown or non-numeric ids answer 404 naming the schedule, on every route."""
        for method, path in [
            ("GET", "/schedule/123"),
            ("DELETE", "/schedule/123"),
            ("POST", "/schedule/123/pause"),
            ("POST", "/schedule/123/resume"),
            ("GET", "/schedule/abc"),
            ("POST", "/schedule/abc/pause"),
        ]:
            reply = self.call(method, path)
            self.assertEqual(reply.status, 404, (method, path))
            self.assertIn("schedule", reply.json["error"])

    def test_bad_cron_is_422_naming_cron(self) -> None:
        """'* * *', '61 * * * *', a missing cron, one that never fires: 422 naming 'cron'."""
        for cron in ("* * *", "61 * * * *", "0 0 31 2 *", "", "* * * * * * *"):
            self.refused(422, {"cron": cron, "job": JOB}, "'cron'")
        self.refused(422, {"job": JOB}, "'cron' is required")

    def test_unknown_timezone_is_422_naming_timezone(self) -> None:
        """An unknown zone: 422 naming 'timezone'."""
        self.refused(422, {"cron": "* * * * *", "timezone": "Mars/Base", "job": JOB}, "'timezone'")

    def test_job_is_checked_like_a_push(self) -> None:
        """The job's errors are a push's, named job.<field>."""
        cron = "* * * * *"
        self.refused(422, {"cron": cron, "job": {}}, "'job.url' is required")
        self.refused(422, {"cron": cron, "job": {"url": "ftp://x"}}, "'job.url' must be")
        self.refused(422, {"cron": cron, "job": dict(JOB, timeout=-1)}, "'job.timeout'")
        self.refused(422, {"cron": cron, "job": dict(JOB, retries=5000)}, "'job.retries'")
        self.refused(400, {"cron": cron, "job": dict(JOB, timeout="x")}, "'job.timeout' must be")
        self.refused(400, {"cron": cron, "job": dict(JOB, headers=[1])}, "'job.headers'")
        self.refused(422, {"cron": cron, "job": "http://w.test"}, "'job' must be a JSON object")
        self.refused(422, {"cron": cron, "job": [JOB]}, "'job' must be a JSON object")
        self.refused(422, {"cron": cron}, "'job' is required")

    def test_wrong_types_and_media_are_refused(self) -> None:
        """A non-object body or a non-string cron: 400; a text body: 415."""
        self.refused(400, [1], "JSON object")
        self.refused(400, {"cron": 5, "job": JOB}, "'cron' must be a string")
        reply = self.call("POST", "/schedule", b"x", "text/plain")
        self.assertEqual(reply.status, 415)

    def test_nothing_is_stored_on_refusal(self) -> None:
        """A refused schedule leaves nothing behind."""
        self.refused(422, {"cron": "* * *", "job": JOB})
        self.assertEqual(self.call("GET", "/schedule").json, {"schedules": []})
        self.assertEqual(self.woken, 0)

    def test_fired_job_shows_schedule_id(self) -> None:
        """A job a fire made has scheduleId; a pushed one has null."""
        pushed = self.push()
        self.assertIsNone(pushed["scheduleId"])
        schedule = self.add(cron="* * * * * *")
        from hq.scheduler import Scheduler

        scheduler = Scheduler(self.store, IdGenerator(1, self.clock), self.clock, lambda job: None)
        self.clock.advance(0.0005)
        scheduler.startService()
        self.clock.advance(1)
        after = self.call("GET", f"/schedule/{schedule['id']}").json
        job = self.call("GET", f"/job/{after['lastJobId']}").json
        self.assertEqual(job["scheduleId"], schedule["id"])
        self.assertEqual(job["name"], "default")
        self.assertEqual(after["lastRunAt"], "2023-11-14T22:13:21.000Z")
        scheduler.stopService()

    def test_pretty(self) -> None:
        """?pretty indents the schedule list like every answer."""
        self.add()
        reply = self.call("GET", "/schedule?pretty")
        self.assertTrue(reply.body.startswith(b'{\n  "schedules"'))
        self.assertEqual(reply.header("content-type"), JSON + "; charset=UTF-8")

    def test_restart_keeps_or_drops_the_schedule_id(self) -> None:
        """Restart in place keeps scheduleId; restart as a copy makes a job with null."""
        schedule = self.add(cron="* * * * * *")
        from hq.scheduler import Scheduler

        scheduler = Scheduler(self.store, IdGenerator(1, self.clock), self.clock, lambda job: None)
        scheduler.startService()
        self.clock.advance(1)
        scheduler.stopService()
        job_id = self.call("GET", f"/schedule/{schedule['id']}").json["lastJobId"]
        self.assertEqual(self.call("POST", f"/job/{job_id}/stop").status, 200)
        in_place = self.post_json(f"/job/{job_id}/restart", {"copy": False}).json
        self.assertEqual(in_place["scheduleId"], schedule["id"])
        self.call("POST", f"/job/{job_id}/stop")
        copy = self.post_json(f"/job/{job_id}/restart", {"copy": True}).json
        self.assertNotEqual(copy["id"], job_id)
        self.assertIsNone(copy["scheduleId"])


class ScheduleRoleTests(SynchronousTestCase):
    """
    With tokens configured, reading schedules needs ``read`` and changing them ``admin``.
    """

    def test_roles(self) -> None:
        """GET is read; POST /schedule, pause, resume and DELETE are admin."""
        for method, path in [("GET", b"/schedule"), ("GET", b"/schedule/1")]:
            self.assertEqual(required_role(method.encode(), path), "read")
        for method, path in [
            ("POST", b"/schedule"),
            ("POST", b"/schedule/1/pause"),
            ("POST", b"/schedule/1/resume"),
            ("DELETE", b"/schedule/1"),
        ]:
            self.assertEqual(required_role(method.encode(), path), "admin")
