"""
``hq flow list|show|set|pause|resume|delete`` and the flow options of ``hq push``, with
exact output and exit statuses: the flow commands against an in-memory stand-in for the
flow routes (tests/flowfake.py), push against the real API over a memory store.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable

from treq.testing import StubTreq
from twisted.internet.error import ConnectionRefusedError
from twisted.trial.unittest import SynchronousTestCase

from hq.testing import FailingHTTP
from tests.flowfake import FlowResource, FlowTable
from tests.serverprocess import ROOT, ServerProcess
from tests.test_cli import WORKER, CLITestCase, CountingHTTP, OldServer, Ran, StubRunner

KEY = "127.0.0.1:9000"
HEADER = "KEY RUNNING WAITING LIMIT PARALLELISM RATE PAUSED"


def words(line: str) -> str:
    """Return ``line`` with each run of spaces made one (table columns are padded)."""
    return " ".join(line.split())


class FlowCommandContract:
    """
    The flow subcommands, against whatever serves the flow routes (mixed into a
    :class:`CLITestCase`).
    """

    hq: Callable[..., Ran]
    assertEqual: Callable[..., None]
    assertIs: Callable[..., None]
    assertIn: Callable[..., None]

    def flow(self, *args: str) -> list[str]:
        """Run ``hq flow ARGS``, which must succeed; return its output lines."""
        ran = self.hq("flow", *args)
        self.assertEqual((ran.code, ran.err), (0, ""), ran)
        return ran.out.splitlines()

    def test_set_prints_the_row_and_show_the_json(self) -> None:
        """set prints the key's row (rate as N/PERIODs); show prints the server's JSON."""
        out = self.flow("set", KEY, "--parallelism", "2", "--rate", "10", "--period", "60")
        self.assertEqual([words(line) for line in out], [HEADER, f"{KEY} 0 0 2 2 10/60s no"])
        shown = json.loads("\n".join(self.flow("show", KEY)))
        self.assertEqual(
            {k: shown[k] for k in ("key", "parallelism", "rate", "period", "paused")},
            {"key": KEY, "parallelism": 2, "rate": 10, "period": 60, "paused": False},
        )
        self.assertIs(shown["configured"], True)

    def test_set_replaces_the_limits(self) -> None:
        """A second set replaces the first: a limit not given is none; paused stays."""
        self.flow("set", KEY, "--parallelism", "2", "--paused")
        out = self.flow("set", KEY, "--rate", "5", "--period", "0.5")
        self.assertEqual(words(out[1]), f"{KEY} 0 0 - - 5/0.5s yes")
        out = self.flow("set", KEY, "--parallelism", "3", "--no-paused")
        self.assertEqual(words(out[1]), f"{KEY} 0 0 3 3 - no")

    def test_list_table_quiet_and_json(self) -> None:
        """list prints a table in key order, keys with -q, the server's JSON with --json."""
        self.flow("set", "b.test:80", "--parallelism", "1")
        self.flow("set", "a.test:443", "--rate", "100", "--period", "60")
        table = self.flow("list")
        self.assertEqual(words(table[0]), HEADER)
        self.assertEqual(
            [words(line) for line in table[1:]],
            ["a.test:443 0 0 - - 100/60s no", "b.test:80 0 0 1 1 - no"],
        )
        self.assertEqual(self.flow("list", "-q"), ["a.test:443", "b.test:80"])
        listed = json.loads("\n".join(self.flow("list", "--json")))
        self.assertEqual([f["key"] for f in listed["flows"]], ["a.test:443", "b.test:80"])

    def test_pause_resume_delete(self) -> None:
        """pause and resume (twice is fine) print the row; delete removes the limits."""
        self.flow("set", KEY, "--parallelism", "4")
        for action, paused in (("pause", "yes"), ("pause", "yes"), ("resume", "no")):
            self.assertEqual(words(self.flow(action, KEY)[1]), f"{KEY} 0 0 4 4 - {paused}")
        self.flow("pause", KEY)
        self.assertEqual(words(self.flow("delete", KEY)[1]), f"{KEY} 0 0 - - - no")
        shown = json.loads("\n".join(self.flow("delete", KEY, "--json")))
        self.assertEqual((shown["key"], shown["configured"], shown["paused"]), (KEY, False, False))

    def test_keys_are_one_path_segment(self) -> None:
        """Keys with '/', ':', '[', ']', '%' and spaces reach their own flow, whole."""
        for key in ("[::1]:8000", "tenant/a b", "50%off", "ünï"):
            out = self.flow("set", key, "--parallelism", "7", "--json")
            self.assertEqual(json.loads("\n".join(out))["key"], key)
            shown = json.loads("\n".join(self.flow("show", key)))
            self.assertEqual((shown["key"], shown["parallelism"]), (key, 7))
        self.assertIn("tenant/a b", self.flow("list", "-q"))

    def test_unknown_key_shows_defaults(self) -> None:
        """show of a key never seen: no limits, nothing running or waiting."""
        shown = json.loads("\n".join(self.flow("show", "never.test:80")))
        self.assertEqual(
            {k: shown[k] for k in ("parallelism", "rate", "running", "waiting", "paused")},
            {"parallelism": 0, "rate": 0, "running": 0, "waiting": 0, "paused": False},
        )


class FlowCommandTests(FlowCommandContract, CLITestCase):
    """
    The flow subcommands against the in-memory flow routes (tests/flowfake.py).
    """

    def setUp(self) -> None:
        super().setUp()
        self.table = FlowTable()
        self.http = CountingHTTP(StubTreq(FlowResource(self.table)))
        self.runner = StubRunner(self.http, self.clock)

    def test_keys_are_percent_encoded(self) -> None:
        """The key is sent percent-encoded whole, '/' and ':' included."""
        self.flow("pause", "[::1]:8000")
        self.flow("show", "tenant/a b")
        self.assertEqual(
            self.table.requests,
            [("POST", "/flow/%5B%3A%3A1%5D%3A8000/pause"), ("GET", "/flow/tenant%2Fa%20b")],
        )

    def test_set_sends_only_what_is_given(self) -> None:
        """set sends the limits given, and paused only with --paused or --no-paused."""
        self.flow("set", KEY, "--rate", "3")
        self.assertEqual(
            self.table.limits[KEY], {"parallelism": 0, "rate": 3, "period": 1, "paused": False}
        )
        self.flow("set", KEY, "--no-paused", "--period", "2.5")
        self.assertEqual(self.table.limits[KEY]["period"], 2.5)

    def test_bad_values_are_usage_errors(self) -> None:
        """Negative limits, a period of 0, an empty or long key, no option: exit 2, no request."""
        for args in (
            ["set", KEY, "--parallelism", "-1"],
            ["set", KEY, "--rate", "1.5"],
            ["set", KEY, "--period", "0"],
            ["set", KEY, "--period", "nan"],
            ["set", KEY],
            ["show", ""],
            ["pause", "k" * 256],
            ["list", "-q", "--json"],
        ):
            ran = self.hq("flow", *args)
            self.assertEqual((ran.code, ran.out), (2, ""), args)
            self.assertIn("error: ", ran.err)
        ran = self.hq("flow", "set", KEY)
        self.assertIn(f"to remove the limits of a key: hq flow delete {KEY}", ran.err)
        self.assertEqual(self.table.requests, [])

    def test_server_errors_print_the_message(self) -> None:
        """A refusal prints the server's message, exit 1, no traceback."""
        self.table.refusal = (403, "this token's role 'read' cannot change flows")
        for args in (["set", KEY, "--rate", "1"], ["pause", KEY], ["delete", KEY], ["list"]):
            ran = self.hq("flow", *args)
            self.assertEqual(
                (ran.code, ran.out, ran.err),
                (1, "", "error: this token's role 'read' cannot change flows\n"),
                args,
            )

    def test_old_server_and_no_server(self) -> None:
        """A server without /flow: its 404, exit 1; no server: one line, exit 1."""
        self.runner = StubRunner(StubTreq(OldServer()), self.clock)
        ran = self.hq("flow", "list", "-a", "http://hq.test:19900")
        self.assertEqual(
            (ran.code, ran.err), (1, "error: 404 Not Found from http://hq.test:19900/flow\n")
        )
        self.runner = StubRunner(FailingHTTP(ConnectionRefusedError()))
        ran = self.hq("flow", "show", KEY, "-a", "http://127.0.0.1:1")
        self.assertEqual(
            (ran.code, ran.err),
            (1, "error: cannot reach HQ at http://127.0.0.1:1: connection refused\n"),
        )

    def test_help(self) -> None:
        """hq help flow lists the subcommands; hq flow set -h every option."""
        ran = self.hq("help", "flow")
        self.assertEqual(ran.code, 0)
        for command in ("list", "show", "set", "pause", "resume", "delete"):
            self.assertRegex(ran.out, rf"\n  {command} +\S")
        ran = self.hq("flow", "set", "-h")
        self.assertEqual(ran.code, 0)
        for flags in ("--parallelism N", "--rate N", "--period SECONDS", "--paused / --no-paused"):
            self.assertIn(flags, ran.out)
        self.assertIn("flow", self.hq("help").out)

    def test_group_alone_and_subcommand_hints(self) -> None:
        """'hq flow' alone prints its help (exit 0); a subcommand's usage error names it."""
        ran = self.hq("flow")
        self.assertEqual((ran.code, ran.err), (0, ""))
        self.assertTrue(ran.out.startswith("Usage: hq flow [OPTIONS] COMMAND"), ran.out)
        ran = self.hq("flow", "set")
        self.assertEqual(ran.code, 2)
        self.assertIn("Try 'hq flow set --help' for help.\n", ran.err)
        self.assertIn("error: Missing argument 'KEY'.", ran.err)


class PushFlowOptionTests(CLITestCase):
    """
    ``hq push --flow-key --callback-url --failure-callback-url`` against the real API.
    """

    def info(self, job_id: str) -> dict[str, object]:
        ran = self.hq("info", job_id)
        self.assertEqual(ran.code, 0, ran)
        shown: dict[str, object] = json.loads(ran.out)
        return shown

    def test_options_set_the_fields_of_every_job(self) -> None:
        """The three options are set on every job, replacing the job's own fields."""
        path = self.write(
            "jobs.jsonl",
            json.dumps({"url": WORKER, "flowKey": "mine"})
            + "\n"
            + json.dumps({"url": WORKER, "callbackUrl": "http://old.test/"})
            + "\n",
        )
        ran = self.hq(
            "push",
            "--flow-key",
            "tenant-7",
            "--callback-url",
            "http://cb.test/ok",
            "--failure-callback-url",
            "https://cb.test/failed",
            path,
        )
        self.assertEqual((ran.code, ran.err), (0, ""), ran)
        for job_id in ran.out.split():
            shown = self.info(job_id)
            self.assertEqual(
                (shown["flowKey"], shown["callbackUrl"], shown["failureCallbackUrl"]),
                ("tenant-7", "http://cb.test/ok", "https://cb.test/failed"),
            )
            self.assertIsNone(shown["callbackJobId"])

    def test_without_options_the_key_is_the_host_and_port(self) -> None:
        """No option: the flow key is the URL's host:port, no callbacks."""
        shown = self.info(self.push())
        self.assertEqual(
            (shown["flowKey"], shown["callbackUrl"], shown["failureCallbackUrl"]),
            ("worker.test:80", None, None),
        )

    def test_bad_option_values_are_usage_errors(self) -> None:
        """A key over 255 characters or a callback that is not http(s): exit 2, nothing sent."""
        path = self.write("job.json", json.dumps({"url": WORKER}))
        for option in (
            ["--flow-key", "k" * 256],
            ["--flow-key", ""],
            ["--callback-url", "ftp://cb.test/"],
            ["--failure-callback-url", "/relative"],
        ):
            ran = self.hq("push", *option, path)
            self.assertEqual((ran.code, ran.out), (2, ""), option)
        self.assertEqual(self.http.requests, [])

    def test_a_bad_field_in_a_job_is_the_server_s_error(self) -> None:
        """A job's own bad callbackUrl is refused by the server, naming the field."""
        ran = self.hq("push", "-", input=json.dumps({"url": WORKER, "callbackUrl": "mailto:x"}))
        self.assertEqual(ran.code, 1)
        self.assertIn(
            "error: <stdin>: 'callbackUrl' must be an absolute http or https URL", ran.err
        )


class RealAPIFlowCommandTests(FlowCommandContract, CLITestCase):
    """
    The flow subcommands against the real API over a memory store.
    """

    def test_list_counts_the_jobs_of_a_key(self) -> None:
        """Jobs pushed with --flow-key show in the key's WAITING; the key is listed for them."""
        path = self.write("job.json", json.dumps({"url": WORKER}))
        for _ in range(2):
            self.assertEqual(self.hq("push", "--flow-key", "tenant-1", path).code, 0)
        table = self.flow("list")
        self.assertEqual([words(line) for line in table[1:]], ["tenant-1 0 2 - - - no"])


class RealServerFlowTests(SynchronousTestCase):
    """
    The installed ``hq`` against a real server process, on the real reactor.
    """

    def setUp(self) -> None:
        directory = tempfile.mkdtemp(prefix="hq-cli-flow-")
        self.addCleanup(shutil.rmtree, directory, ignore_errors=True)
        self.server = ServerProcess(directory).start()
        self.addCleanup(self.server.stop)

    def run_hq(self, *args: str) -> Ran:
        """Run ``hq ARGS`` in a child process against the server."""
        path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
        env = dict(os.environ, HQ_ADDRESS=self.server.base, PYTHONPATH=path, NO_COLOR="1")
        done = subprocess.run(
            [sys.executable, "-c", "from hq.cli import main; main()", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        return Ran(done.returncode, done.stdout, done.stderr)

    def test_set_pause_list_show_delete(self) -> None:
        """The flow commands change and show the server's limits; a refusal is one line."""
        key = "tenant/7 [eu]"
        ran = self.run_hq(
            "flow", "set", key, "--parallelism", "2", "--rate", "30", "--period", "60"
        )
        self.assertEqual((ran.code, ran.err), (0, ""), ran)
        self.assertEqual(words(ran.out.splitlines()[1]), f"{key} 0 0 2 2 30/60s no")
        self.assertEqual(self.run_hq("flow", "pause", key).code, 0)
        ran = self.run_hq("flow", "list")
        self.assertEqual(
            [words(line) for line in ran.out.splitlines()],
            [HEADER, f"{key} 0 0 2 2 30/60s yes"],
        )
        shown = json.loads(self.run_hq("flow", "show", key).out)
        self.assertEqual((shown["key"], shown["paused"], shown["configured"]), (key, True, True))
        ran = self.run_hq("flow", "delete", key)
        self.assertEqual(words(ran.out.splitlines()[1]), f"{key} 0 0 - - - no")
        self.assertEqual(self.run_hq("flow", "list", "-q").out, "")
        ran = self.run_hq("flow", "set", key, "--rate", "1", "--period", "1e9")
        self.assertEqual((ran.code, ran.out), (1, ""))
        self.assertEqual(ran.err.count("\n"), 1)
        self.assertTrue(ran.err.startswith("error: 'period' must be at most"), ran.err)
