"""
``hq schedule add|list|show|delete|pause|resume`` against the real API over a memory
store (through StubTreq), with exact output and exit statuses.
"""

from __future__ import annotations

import json

from tests.test_cli import CLITestCase


class ScheduleCommandTests(CLITestCase):
    """
    The schedule subcommands.
    """

    def add(self, *args: str) -> str:
        ran = self.hq("schedule", "add", *args)
        self.assertEqual((ran.code, ran.err), (0, ""), ran)
        return ran.out.strip()

    def test_add_prints_the_id_and_sends_every_field(self) -> None:
        """add sends cron, zone, name and the job's fields; prints the new id."""
        schedule_id = self.add(
            "30 2 * * *",
            "http://worker.test/nightly",
            "-n",
            "nightly",
            "-z",
            "Europe/Berlin",
            "--payload",
            '{"a":1}',
            "-H",
            "X-A: b",
            "--timeout",
            "5",
            "--retries",
            "2",
            "--comment",
            "c",
        )
        self.assertTrue(schedule_id.isdigit())
        shown = json.loads(self.hq("schedule", "show", schedule_id).out)
        self.assertEqual(
            (shown["name"], shown["cron"], shown["timezone"], shown["paused"]),
            ("nightly", "30 2 * * *", "Europe/Berlin", False),
        )
        self.assertEqual(
            shown["job"],
            {
                "url": "http://worker.test/nightly",
                "name": "nightly",
                "comment": "c",
                "payload": {"a": 1},
                "headers": {"X-A": "b"},
                "timeout": 5,
                "retries": 2,
                "flowKey": "worker.test:80",
                "callbackUrl": None,
                "failureCallbackUrl": None,
            },
        )

    def test_add_flow_key_and_callbacks(self) -> None:
        """--flow-key and the callback URLs go in the schedule's job."""
        schedule_id = self.add(
            "* * * * *",
            "http://worker.test/",
            "--flow-key",
            "nightly-jobs",
            "--callback-url",
            "http://cb.test/ok",
            "--failure-callback-url",
            "http://cb.test/failed",
        )
        job = json.loads(self.hq("schedule", "show", schedule_id).out)["job"]
        self.assertEqual(
            (job["flowKey"], job["callbackUrl"], job["failureCallbackUrl"]),
            ("nightly-jobs", "http://cb.test/ok", "http://cb.test/failed"),
        )
        ran = self.hq("schedule", "add", "* * * * *", "http://w.test/", "--callback-url", "x")
        self.assertEqual(ran.code, 2)

    def test_add_refused_prints_the_server_error(self) -> None:
        """A bad cron: exit 1 with the server's message naming 'cron'."""
        ran = self.hq("schedule", "add", "61 * * * *", "http://worker.test/")
        self.assertEqual(ran.code, 1)
        self.assertIn("error: 'cron' is not a valid cron expression", ran.err)
        ran = self.hq("schedule", "add", "* * * * *", "http://w.test/", "-z", "Mars/Base")
        self.assertIn("'timezone'", ran.err)

    def test_bad_header_or_payload_is_a_usage_error(self) -> None:
        """--header without ':' and --payload that is not JSON: exit 2, nothing sent."""
        for option in (["-H", "nocolon"], ["--payload", "{x"]):
            ran = self.hq("schedule", "add", "* * * * *", "http://w.test/", *option)
            self.assertEqual(ran.code, 2, ran)
        self.assertEqual(self.http.requests, [])

    def test_list_table_quiet_and_json(self) -> None:
        """list prints a table (next run relative), ids with -q, the server's JSON with --json."""
        first = self.add("*/5 * * * *", "http://worker.test/a", "-n", "five")
        second = self.add("0 3 * * *", "http://worker.test/b", "--paused")
        table = self.hq("schedule", "list").out.splitlines()
        header = "ID NAME CRON TIMEZONE NEXT RUN LAST RUN LAST JOB STATUS"
        self.assertEqual(" ".join(table[0].split()), header)
        self.assertIn(first, table[1])
        self.assertIn("*/5 * * * *", table[1])
        # The API's clock is 3 minutes behind the CLI's "now" here.
        self.assertIn("1 minute ago", table[1])
        self.assertTrue(table[1].endswith("active"))
        self.assertTrue(table[2].endswith("paused"))
        self.assertEqual(self.hq("schedule", "list", "-q").out.split(), [first, second])
        listed = json.loads(self.hq("schedule", "list", "--json").out)
        self.assertEqual([s["id"] for s in listed["schedules"]], [first, second])

    def test_pause_resume_delete_print_ids(self) -> None:
        """pause, resume and delete print each id; twice is fine for pause and resume."""
        schedule_id = self.add("* * * * *", "http://worker.test/")
        for action in ("pause", "pause", "resume", "resume", "delete"):
            ran = self.hq("schedule", action, schedule_id)
            self.assertEqual((ran.code, ran.out), (0, schedule_id + "\n"), action)
        self.assertEqual(self.hq("schedule", "list", "-q").out, "")

    def test_unknown_id_stops_and_names_the_rest(self) -> None:
        """An unknown id: exit 1, the server's 404 message, the ids not tried."""
        schedule_id = self.add("* * * * *", "http://worker.test/")
        ran = self.hq("schedule", "delete", schedule_id, "42", "43")
        self.assertEqual(ran.code, 1)
        self.assertEqual(ran.out, schedule_id + "\n")
        self.assertIn("error: The schedule '42' is not found", ran.err)
        self.assertIn("not tried: 43", ran.err)
        ran = self.hq("schedule", "show", "abc")
        self.assertEqual((ran.code, ran.err), (1, "error: The schedule 'abc' is not found\n"))
