"""
The ``hq`` command line: every client command run through ``run_cli`` against the real API
(HQApi over the memory store, through StubTreq), with exact output and exit statuses; plus
its pieces (job input, the table, the progress bar) and one run on the real reactor.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import attrs
from click.testing import CliRunner
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Request

import hq.cli.serve
from hq import __version__
from hq.api import HQApi
from hq.cli import main, run_cli
from hq.cli.jobinput import JobInputError, parse_jobs
from hq.cli.runtime import CliRuntime
from hq.cli.table import go_duration, relative_time, render_table
from hq.cli.terminal import Output, ProgressBar
from hq.client import HQClient
from hq.config import Config
from hq.ids import IdGenerator, now_ms
from hq.model import Attempt, ListQuery, Outcome, job_dict
from hq.store.memory import MemoryStore
from hq.testing import FailingHTTP, RecordingDispatch

#: The fake clock's start, seconds since the Unix epoch.
T0 = 1_700_000_000
#: "Now" as the CLI sees it: three minutes after the jobs were made.
NOW = datetime.fromtimestamp(T0, UTC) + timedelta(minutes=3)
WORKER = "http://worker.test/run"


@attrs.define
class StubRunner:
    """
    Runs client commands synchronously over ``http`` (a StubTreq or a FailingHTTP) and
    records the address each was run against.
    """

    http: Any
    clock: Clock | None = None
    addresses: list[str] = attrs.Factory(list)

    def __call__(self, address: str, command: Callable[[HQClient], Awaitable[int]]) -> int:
        self.addresses.append(address)
        client = HQClient(address, http=self.http)

        async def run() -> int:
            return await command(client)

        d = Deferred.fromCoroutine(run())
        flush = getattr(self.http, "flush", None)
        for _ in range(1000):
            if d.called or flush is None:
                break
            flush()
            if self.clock is not None:
                # The API lets other requests in between steps of large batches and bulk
                # actions (zero-delay calls on its clock).
                self.clock.advance(0)
        outcome: list[Any] = []
        d.addBoth(outcome.append)
        assert outcome, "the command did not finish"
        if isinstance(outcome[0], Failure):
            outcome[0].raiseException()
        code: int = outcome[0]
        return code


@attrs.define
class CountingHTTP:
    """
    Passes requests to ``http`` (a StubTreq) and records each one's method and path.
    """

    http: StubTreq
    requests: list[tuple[str, str]] = attrs.Factory(list)

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
        self.requests.append((method, urlsplit(url).path))
        return self.http.request(method, url, **kwargs)

    def flush(self) -> None:
        self.http.flush()


class OldServer(Resource):
    """
    A server from before batch pushes: ``POST /jobs`` is 404 (with Echo's body, as Go HQ
    answers), ``POST /job`` answers ids 1, 2, ...
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.paths: list[bytes] = []

    def render(self, request: Request) -> bytes:
        assert request.path is not None
        self.paths.append(request.path)
        if request.path != b"/job":
            request.setResponseCode(404)
            return b'{"message":"Not Found"}\n'
        return json.dumps({"id": str(self.paths.count(b"/job"))}).encode()


@attrs.frozen
class Ran:
    """
    What one ``hq`` run did.
    """

    code: int
    out: str
    err: str


class CLITestCase(SynchronousTestCase):
    """
    ``hq`` against the real API over a memory store, at a fixed "now".
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.store = MemoryStore()
        self.dispatch = RecordingDispatch()
        api = HQApi(
            store=self.store,
            dispatch=self.dispatch,
            ids=IdGenerator(0, self.clock),
            clock=self.clock,
            config=Config(queues=100, dispatchers=2, max_workers=3),
            version="1.2.3",
            commit_hash="abc123",
        )
        self.http = CountingHTTP(StubTreq(api.resource()))
        self.runner = StubRunner(self.http, self.clock)
        self.tty = False
        self.tmp = self.mktemp()
        os.mkdir(self.tmp)

    def hq(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        input: str | bytes | None = None,
        runner: Any = None,
    ) -> Ran:
        """
        Run ``hq ARGS`` with ``env`` (HQ_ADDRESS and NO_COLOR unset unless given) and
        ``input`` as stdin; return the exit status and the output.
        """
        runtime = CliRuntime(
            run=runner or self.runner, now=lambda: NOW, isatty=lambda stream: self.tty
        )
        environ: dict[str, str | None] = {"HQ_ADDRESS": None, "NO_COLOR": None}
        environ.update(env or {})
        with CliRunner().isolation(input=input, env=environ) as (out, err, _):
            code = run_cli(list(args), runtime)
        return Ran(code, out.getvalue().decode(), err.getvalue().decode())

    def write(self, name: str, text: str) -> str:
        """
        Write ``text`` to the file ``name`` in a temporary folder; return its path.
        """
        path = os.path.join(self.tmp, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def push(self, **fields: Any) -> str:
        """
        Push one job through the CLI; return its id.
        """
        fields.setdefault("url", WORKER)
        ran = self.hq("push", "-", input=json.dumps(fields))
        self.assertEqual((ran.code, ran.err), (0, ""))
        return ran.out.strip()

    def finish(self, job_id: str, success: bool = True, ms: int = 1500) -> None:
        """
        Run the stored job to its end, as a dispatcher would, taking ``ms``.
        """
        start = T0 * 1000 + 10_000
        self.successResultOf(self.store.start(int(job_id), start))
        outcome = Outcome(finished_at=start + ms, success=success, failure=not success)
        self.successResultOf(self.store.finish(int(job_id), outcome))

    def stored_ids(self) -> list[str]:
        page = self.successResultOf(self.store.list_jobs(ListQuery()))
        return [str(job.id) for job in page.jobs]


class HelpTests(CLITestCase):
    """
    Help, version, and usage errors.
    """

    COMMANDS = (
        "serve",
        "push",
        "info",
        "list",
        "attempts",
        "delete",
        "stop",
        "restart",
        "stats",
        "help",
    )

    def test_no_arguments_prints_help(self) -> None:
        """
        ``hq`` alone prints the help, listing every command, and exits 0.
        """
        ran = self.hq()
        self.assertEqual(ran.code, 0)
        self.assertTrue(ran.out.startswith("NAME:\n   hq - "))
        for section in ("USAGE:", "VERSION:", "COMMANDS:", "GLOBAL OPTIONS:"):
            self.assertIn(section, ran.out)
        for command in self.COMMANDS:
            self.assertRegex(ran.out, rf"\n   {command} +\S")

    def test_help_command_and_flag_agree(self) -> None:
        """
        ``hq help``, ``hq --help`` and ``hq -h`` print the same help.
        """
        outs = {self.hq(*args).out for args in (["help"], ["--help"], ["-h"])}
        self.assertEqual(len(outs), 1)
        self.assertIn("HQ_ADDRESS", outs.pop())

    def test_command_help_lists_every_flag(self) -> None:
        """
        ``hq help list`` and ``hq list --help`` list every flag, short and long.
        """
        ran = self.hq("help", "list")
        self.assertEqual(ran.code, 0)
        self.assertEqual(ran.out, self.hq("list", "--help").out)
        self.assertTrue(ran.out.startswith("NAME:\n   hq list - "))
        self.assertIn("hq list [command options] [JOB_ID...]", ran.out)
        for flags in (
            "-a, --address URL",
            "-q, --quiet",
            "-d, --detail",
            "--json",
            "-n, --name REGEXP",
            "-t, --term REGEXP",
            "-s, --status STATUS",
            "-b, --begin ID",
            "-r, --reverse",
            "-l, --limit N",
        ):
            self.assertIn(flags, ran.out)
        self.assertIn("[$HQ_ADDRESS]", ran.out)
        self.assertIn("(default: http://127.0.0.1:19900)", " ".join(ran.out.split()))

    def test_every_command_has_help(self) -> None:
        """
        Each command's help has its own usage line; serve lists its flags and variables.
        """
        for command in self.COMMANDS:
            ran = self.hq(command, "-h")
            self.assertEqual(ran.code, 0, command)
            self.assertIn(f"hq {command} [command options]", ran.out)
        serve = self.hq("help", "serve").out
        for text in (
            "-c, --config-file FILE",
            "-l, --log-level LEVEL",
            "$HQ_CONFIG",
            "$HQ_LOG_LEVEL",
        ):
            self.assertIn(text, serve)

    def test_version(self) -> None:
        """
        ``hq --version`` and ``hq -v`` print the version.
        """
        self.assertEqual(self.hq("--version"), Ran(0, f"hq version {__version__}\n", ""))
        self.assertEqual(self.hq("-v").out, f"hq version {__version__}\n")

    def test_unknown_command_gives_hint_and_exit_2(self) -> None:
        """
        An unknown command prints usage, a hint and ``error: ...``, and exits 2.
        """
        ran = self.hq("frobnicate")
        self.assertEqual((ran.code, ran.out), (2, ""))
        self.assertEqual(
            ran.err,
            "Usage: hq [global options] command [command options] [arguments...]\n"
            "Try 'hq help' for help.\n"
            "error: No such command 'frobnicate'.\n",
        )
        self.assertEqual(self.hq("help", "frobnicate").code, 2)

    def test_unknown_flag_and_bad_value_exit_2(self) -> None:
        """
        An unknown flag or a bad flag value is a usage error naming it, exit 2.
        """
        ran = self.hq("list", "--frob")
        self.assertEqual(ran.code, 2)
        self.assertIn("Try 'hq help list' for help.", ran.err)
        self.assertIn("error: No such option '--frob'.", ran.err)
        ran = self.hq("list", "-l", "many")
        self.assertEqual(ran.code, 2)
        self.assertIn("'many' is not a valid integer", ran.err)
        ran = self.hq("list", "-s", "done")
        self.assertEqual(ran.code, 2)
        self.assertIn("'done' is not one of", ran.err)
        self.assertEqual(self.runner.addresses, [])

    def test_missing_arguments_exit_2(self) -> None:
        """
        Commands that need ids or files say so, exit 2, and send nothing.
        """
        for command in ("push", "info", "attempts"):
            ran = self.hq(command)
            self.assertEqual(ran.code, 2, command)
            self.assertIn("error: Missing argument", ran.err)
        for command in ("delete", "stop", "restart"):
            ran = self.hq(command)
            self.assertEqual(ran.code, 2, command)
            self.assertIn(
                f"error: give job ids, or filters (--name, --term, --status) to {command} "
                "every job that matches\n",
                ran.err,
            )
        self.assertEqual(self.runner.addresses, [])

    def test_main_exits_with_the_status(self) -> None:
        """
        The console script entry point exits with run_cli's status.
        """
        with CliRunner().isolation():
            with self.assertRaises(SystemExit) as caught:
                main(["--version"])
        self.assertEqual(caught.exception.code, 0)


class AddressTests(CLITestCase):
    """
    -a/--address, HQ_ADDRESS and unreachable servers.
    """

    def test_default_address(self) -> None:
        """
        Without -a or HQ_ADDRESS, commands talk to http://127.0.0.1:19900.
        """
        self.assertEqual(self.hq("stats").code, 0)
        self.assertEqual(self.runner.addresses, ["http://127.0.0.1:19900"])

    def test_environment_variable_then_flag(self) -> None:
        """
        HQ_ADDRESS sets the address; -a and --address win over it; one trailing / is cut.
        """
        env = {"HQ_ADDRESS": "http://hq.example:8080/"}
        self.hq("stats", env=env)
        self.hq("list", "-a", "http://other.example:1", env=env)
        self.hq("info", "--address", "https://third.example", "1", env=env)
        self.assertEqual(
            self.runner.addresses,
            ["http://hq.example:8080", "http://other.example:1", "https://third.example"],
        )

    def test_bad_address_is_a_usage_error(self) -> None:
        """
        An address that is not an http(s) URL is refused before anything is sent.
        """
        ran = self.hq("stats", "-a", "localhost:19900")
        self.assertEqual(ran.code, 2)
        self.assertIn("invalid address 'localhost:19900'", ran.err)
        self.assertEqual(self.runner.addresses, [])

    def test_connection_refused_is_one_line(self) -> None:
        """
        A refused connection prints one clear error line, no traceback, exit 1.
        """
        runner = StubRunner(FailingHTTP(ConnectionRefusedError()))
        for args in (["stats"], ["list"], ["info", "1"], ["stop", "1"]):
            ran = self.hq(*args, runner=runner)
            self.assertEqual(
                ran,
                Ran(
                    1, "", "error: cannot reach HQ at http://127.0.0.1:19900: connection refused\n"
                ),
            )


class PushTests(CLITestCase):
    """
    ``hq push``.
    """

    def test_push_file_prints_id(self) -> None:
        """
        Pushing a file with one job prints the new id and stores the job.
        """
        path = self.write("job.json", json.dumps({"url": WORKER, "name": "mail"}, indent=2))
        ran = self.hq("push", path)
        self.assertEqual((ran.code, ran.err), (0, ""))
        self.assertEqual(ran.out, f"{self.stored_ids()[0]}\n")
        job = self.successResultOf(self.store.get(int(ran.out)))
        self.assertEqual((job.name, job.url), ("mail", WORKER))

    def test_push_stdin(self) -> None:
        """
        ``hq push -`` reads one job from stdin.
        """
        ran = self.hq("push", "-", input=json.dumps({"url": WORKER, "payload": [1, 2]}))
        self.assertEqual(ran.code, 0)
        job = self.successResultOf(self.store.get(int(ran.out)))
        self.assertEqual(job.payload, "[1,2]")

    def test_push_json_lines_and_several_files(self) -> None:
        """
        A JSON-lines file pushes one job per line and several files are pushed in order,
        one id per line.
        """
        lines = self.write(
            "jobs.jsonl",
            "".join(json.dumps({"url": WORKER, "name": f"n{i}"}) + "\n" for i in range(3)) + "\n",
        )
        single = self.write("one.json", json.dumps({"url": WORKER, "name": "last"}))
        ran = self.hq("push", lines, single)
        self.assertEqual((ran.code, ran.err), (0, ""))
        ids = ran.out.splitlines()
        self.assertEqual(ids, self.stored_ids())
        names = [self.successResultOf(self.store.get(int(i))).name for i in ids]
        self.assertEqual(names, ["n0", "n1", "n2", "last"])

    def test_bad_json_line_sends_nothing(self) -> None:
        """
        Invalid JSON on one line is an error naming the file and line; nothing is pushed.
        """
        path = self.write("jobs.jsonl", json.dumps({"url": WORKER}) + "\n" + '{"url": "x",}\n')
        ran = self.hq("push", self.write("ok.json", json.dumps({"url": WORKER})), path)
        self.assertEqual((ran.code, ran.out), (1, ""))
        self.assertEqual(
            ran.err,
            f"error: {path}:2: invalid JSON: Expecting property name enclosed in double "
            "quotes (column 13); in JSON lines each job must be on one line\n",
        )
        self.assertEqual(self.stored_ids(), [])
        self.assertEqual(self.runner.addresses, [])

    def test_a_number_too_large_for_json_is_refused_before_sending(self) -> None:
        """
        1e400 (infinity to Python) is an error naming the file, not a traceback.
        """
        path = self.write("big.json", '{"url": "http://w/", "timeout": 1e400}')
        ran = self.hq("push", path)
        self.assertEqual(
            (ran.code, ran.err),
            (1, f"error: {path}: invalid JSON: the number 1e400 is too large\n"),
        )
        self.assertEqual(self.stored_ids(), [])

    def test_bad_json_document_names_the_line(self) -> None:
        """
        A job spread over lines with a syntax error is reported at its line.
        """
        path = self.write("job.json", '{\n  "url": "' + WORKER + '"\n  "name": "x"\n}\n')
        ran = self.hq("push", path)
        self.assertEqual(ran.code, 1)
        self.assertEqual(
            ran.err, f"error: {path}:3: invalid JSON: Expecting ',' delimiter (column 3)\n"
        )

    def test_input_that_is_not_a_job(self) -> None:
        """
        Empty input, an array, a missing file and stdin twice are errors, nothing pushed.
        """
        self.assertEqual(
            self.hq("push", "-", input="  \n").err,
            "error: <stdin>: no job in it (the input is empty)\n",
        )
        self.assertEqual(
            self.hq("push", "-", input="[]").err,
            "error: <stdin>: a job must be a JSON object, not an array "
            "(to push many, write one job per line)\n",
        )
        missing = os.path.join(self.tmp, "missing.json")
        self.assertEqual(
            self.hq("push", missing).err,
            f"error: cannot read {missing}: No such file or directory\n",
        )
        ran = self.hq("push", "-", "-", input="{}")
        self.assertEqual((ran.code, ran.err), (1, "error: '-' (stdin) can be given only once\n"))
        self.assertEqual(self.stored_ids(), [])

    def test_refused_job_in_first_batch_pushes_nothing(self) -> None:
        """
        When the server refuses a job of the only batch, nothing is pushed and the error
        names the job's file and line.
        """
        jobs = [{"url": WORKER}, {"url": WORKER}, {"name": "no url"}, {"url": WORKER}]
        path = self.write("jobs.jsonl", "\n".join(json.dumps(j) for j in jobs))
        ran = self.hq("push", path)
        self.assertEqual(
            ran,
            Ran(
                1,
                "",
                f"error: {path}:3: 'url' is required\n"
                "no job was pushed (a batch is stored whole or not at all)\n",
            ),
        )
        self.assertEqual(self.stored_ids(), [])

    def test_refused_later_batch_keeps_earlier_ones(self) -> None:
        """
        A job refused in a later batch is named by file and line; the batches before it
        stay pushed (ids printed) and stderr says which jobs were not pushed.
        """
        jobs: list[dict[str, Any]] = [{"url": WORKER} for _ in range(5)]
        jobs[3] = {"url": WORKER, "timeout": -1}
        path = self.write("jobs.jsonl", "\n".join(json.dumps(j) for j in jobs))
        ran = self.hq("push", "--batch-size", "2", path)
        self.assertEqual(ran.code, 1)
        self.assertEqual(ran.out.splitlines(), self.stored_ids())
        self.assertEqual(len(self.stored_ids()), 2)
        self.assertEqual(
            ran.err,
            f"error: {path}:4: 'timeout' must be 0 or more seconds, not -1\n"
            f"2 of 5 jobs were pushed (ids above); {path}:3 and the 2 jobs after it "
            "were not pushed\n",
        )

    def test_single_refused_job_has_no_summary(self) -> None:
        """
        One refused job gives just the error line.
        """
        ran = self.hq("push", "-", input='{"url": "ftp://x"}')
        self.assertEqual((ran.code, ran.out), (1, ""))
        self.assertEqual(
            ran.err,
            "error: <stdin>: 'url' must be an absolute http or https URL, not 'ftp://x'\n",
        )

    def test_progress_bar_on_terminal_for_large_input(self) -> None:
        """
        100 jobs or more with stderr on a terminal draw a progress bar on stderr; stdout
        still has exactly the ids.
        """
        self.tty = True
        path = self.write("many.jsonl", (json.dumps({"url": WORKER}) + "\n") * 120)
        ran = self.hq("push", path)
        self.assertEqual(ran.code, 0)
        self.assertEqual(ran.out.splitlines(), self.stored_ids())
        self.assertEqual(len(self.stored_ids()), 120)
        self.assertIn("\rpushing [", ran.err)
        self.assertIn("120/120", ran.err)
        self.assertTrue(ran.err.endswith("\r\x1b[K"))

    def test_no_progress_bar_off_terminal(self) -> None:
        """
        Without a terminal, large pushes write nothing to stderr.
        """
        path = self.write("many.jsonl", (json.dumps({"url": WORKER}) + "\n") * 120)
        self.assertEqual(self.hq("push", path).err, "")


class ShowTests(CLITestCase):
    """
    ``hq info`` and ``hq stats``.
    """

    def test_info_prints_indented_job(self) -> None:
        """
        ``hq info ID`` prints the job as 2-space indented JSON, keys as the server sends.
        """
        job_id = self.push(name="mail", payload={"a": [1]})
        ran = self.hq("info", job_id)
        self.assertEqual((ran.code, ran.err), (0, ""))
        expected = job_dict(self.successResultOf(self.store.get(int(job_id))), now_ms(self.clock))
        self.assertEqual(ran.out, json.dumps(expected, indent=2) + "\n")
        self.assertTrue(ran.out.startswith('{\n  "attempts": 0,\n  "callbackJobId": null,\n'))

    def test_info_unknown_job(self) -> None:
        """
        An unknown id prints the server's message and exits 1.
        """
        self.assertEqual(self.hq("info", "42"), Ran(1, "", "error: The job '42' is not found\n"))

    def test_stats_prints_indented_counters(self) -> None:
        """
        ``hq stats`` prints the counters as indented JSON in the server's key order.
        """
        self.push()
        ran = self.hq("stats")
        self.assertEqual((ran.code, ran.err), (0, ""))
        stats = json.loads(ran.out)
        self.assertEqual(
            list(stats)[:9],
            [
                "queues",
                "dispatchers",
                "maxWorkers",
                "numWorkers",
                "numJobsInQueue",
                "numJobsWaiting",
                "numJobsRunning",
                "numStoredJobs",
                "numJobsInLastMinute",
            ],
        )
        self.assertTrue(ran.out.startswith('{\n  "queues": 100,\n  "dispatchers": 2,\n'))
        self.assertEqual(stats["numStoredJobs"], 1)


class ListTests(CLITestCase):
    """
    ``hq list``.
    """

    def setUp(self) -> None:
        super().setUp()
        self.a = self.push(name="default", comment="weekly\nreport")
        self.b = self.push(name="mail", url="http://mail.test/send")
        self.finish(self.a, ms=1500)

    def test_table(self) -> None:
        """
        The table has the header and one row per job: relative time, duration, status.
        """
        ran = self.hq("list")
        pad = " " * (len(self.a) - 2)
        self.assertEqual((ran.code, ran.err), (0, ""))
        self.assertEqual(
            ran.out,
            f"ID{pad}  NAME     CREATED        DURATION  STATUS\n"
            f"{self.a}  default  3 minutes ago  1.5s      success\n"
            f"{self.b}  mail     3 minutes ago            waiting\n",
        )

    def test_detail_table(self) -> None:
        """
        --detail adds COMMENT (newlines as spaces), URL, RUN AT, STARTED and FINISHED.
        """
        ran = self.hq("list", "--detail")
        pad = " " * (len(self.a) - 2)
        self.assertEqual(
            ran.out,
            f"ID{pad}  NAME     COMMENT        URL                     CREATED        "
            "RUN AT  STARTED        FINISHED       DURATION  STATUS\n"
            f"{self.a}  default  weekly report  http://worker.test/run  3 minutes ago  "
            "        2 minutes ago  2 minutes ago  1.5s      success\n"
            f"{self.b}  mail                    http://mail.test/send   3 minutes ago  "
            + " " * (8 + 15 + 15 + 10)  # empty RUN AT, STARTED, FINISHED and DURATION
            + "waiting\n",
        )

    def test_quiet_prints_only_ids(self) -> None:
        """
        --quiet and -q print the ids, one per line, nothing else.
        """
        expected = Ran(0, f"{self.a}\n{self.b}\n", "")
        self.assertEqual(self.hq("list", "--quiet"), expected)
        self.assertEqual(self.hq("list", "-q"), expected)

    def test_json_prints_the_raw_list(self) -> None:
        """
        --json prints the server's list object, indented.
        """
        ran = self.hq("list", "--json")
        self.assertEqual(ran.code, 0)
        self.assertTrue(ran.out.startswith('{\n  "jobs": [\n'))
        page = json.loads(ran.out)
        self.assertEqual([j["id"] for j in page["jobs"]], [self.a, self.b])
        self.assertEqual((page["count"], page["hasNext"]), (2, False))

    def test_short_flags_reach_the_api(self) -> None:
        """
        -n, -t (which the Go tool dropped), -s, -r, -b and -l all filter.
        """

        def ids(*args: str) -> list[str]:
            ran = self.hq("list", "-q", *args)
            self.assertEqual(ran.code, 0, ran.err)
            return ran.out.splitlines()

        self.assertEqual(ids("-n", "^mail$"), [self.b])
        self.assertEqual(ids("-t", "weekly"), [self.a])
        self.assertEqual(ids("--term", "mail.test"), [self.b])
        self.assertEqual(ids("-s", "waiting"), [self.b])
        self.assertEqual(ids("-r"), [self.b, self.a])
        self.assertEqual(ids("-b", self.b), [self.b])
        self.assertEqual(ids("-l", "1"), [self.a])

    def test_more_jobs_hint_on_stderr(self) -> None:
        """
        When a further job exists, stderr says which --begin shows it; stdout stays clean.
        """
        ran = self.hq("list", "-q", "--limit", "1")
        self.assertEqual(
            ran,
            Ran(0, f"{self.a}\n", f"more jobs follow: add --begin {self.b} to see the next page\n"),
        )

    def test_ids_list_those_jobs(self) -> None:
        """
        With ids, list prints those jobs; filters cannot be added.
        """
        self.assertEqual(self.hq("list", "-q", self.b, self.a).out, f"{self.b}\n{self.a}\n")
        ran = self.hq("list", "-n", "x", "-r", self.a)
        self.assertEqual(ran.code, 2)
        self.assertIn("error: --name, --reverse cannot be used with job ids", ran.err)
        self.assertEqual(self.hq("list", self.a, "99").err, "error: The job '99' is not found\n")

    def test_status_colours_only_on_a_terminal(self) -> None:
        """
        Statuses are coloured when stdout is a terminal, unless NO_COLOR is set.
        """
        self.assertNotIn("\x1b[", self.hq("list").out)
        self.tty = True
        out = self.hq("list").out
        self.assertIn("  \x1b[32msuccess\x1b[0m\n", out)
        self.assertIn("  waiting\n", out)
        self.assertNotIn("\x1b[", self.hq("list", env={"NO_COLOR": "1"}).out)

    def test_bad_regexp_is_an_error(self) -> None:
        """
        An invalid regexp gives the server's 400 message and exit 1.
        """
        ran = self.hq("list", "--name", "(?=x)")
        self.assertEqual((ran.code, ran.out), (1, ""))
        self.assertTrue(ran.err.startswith("error: 'name' is not a valid regexp"), ran.err)

    def test_empty_list_prints_header(self) -> None:
        """
        No matching job: the table is just its header; --quiet prints nothing.
        """
        self.assertEqual(
            self.hq("list", "-s", "failure").out, "ID  NAME  CREATED  DURATION  STATUS\n"
        )
        self.assertEqual(self.hq("list", "-q", "-s", "failure"), Ran(0, "", ""))


class ActionTests(CLITestCase):
    """
    ``hq delete``, ``hq stop`` and ``hq restart`` with several ids.
    """

    def test_delete_prints_each_id(self) -> None:
        """
        Each deleted id is printed, in order.
        """
        ids = [self.push(), self.push()]
        for job_id in ids:
            self.finish(job_id)
        self.assertEqual(self.hq("delete", *ids), Ran(0, f"{ids[0]}\n{ids[1]}\n", ""))
        self.assertEqual(self.stored_ids(), [])

    def test_first_error_stops_and_says_what_was_done(self) -> None:
        """
        Ids done before an error are printed; the error and which ids were not tried go to
        stderr; exit 1; later ids are untouched.
        """
        done, waiting, later = self.push(), self.push(), self.push()
        self.finish(done)
        self.finish(later)
        ran = self.hq("delete", done, waiting, later)
        self.assertEqual((ran.code, ran.out), (1, f"{done}\n"))
        self.assertEqual(
            ran.err,
            f"error: The job {waiting} is waiting now\n"
            f"1 of 3 jobs done before job {waiting} failed (deleted: {done}); "
            f"not tried: {later}\n",
        )
        self.assertEqual(self.stored_ids(), [waiting, later])

    def test_error_on_first_id(self) -> None:
        """
        An error on the first of several ids says none were done.
        """
        job = self.push()
        ran = self.hq("stop", "77", job)
        self.assertEqual(
            ran,
            Ran(
                1,
                "",
                "error: The job '77' is not found\n"
                f"0 of 2 jobs done before job 77 failed (stopped: none); not tried: {job}\n",
            ),
        )
        self.assertEqual(self.dispatch.canceled, [])

    def test_single_id_error_is_one_line(self) -> None:
        """
        With one id, an error is just ``error: <server message>``.
        """
        self.assertEqual(self.hq("delete", "5"), Ran(1, "", "error: The job '5' is not found\n"))

    def test_stop_prints_ids_and_cancels(self) -> None:
        """
        ``hq stop`` prints each stopped id and the dispatcher is asked to cancel it.
        """
        ids = [self.push(), self.push()]
        self.assertEqual(self.hq("stop", *ids), Ran(0, f"{ids[0]}\n{ids[1]}\n", ""))
        self.assertEqual(self.dispatch.canceled, [int(i) for i in ids])

    def test_restart_in_place_prints_same_ids(self) -> None:
        """
        ``hq restart`` prints the same ids and the jobs wait again.
        """
        ids = [self.push(), self.push()]
        for job_id in ids:
            self.finish(job_id, success=False)
        self.assertEqual(self.hq("restart", *ids), Ran(0, f"{ids[0]}\n{ids[1]}\n", ""))
        self.assertEqual(self.hq("list", "-q", "-s", "waiting").out.split(), ids)

    def test_restart_copy_prints_new_ids(self) -> None:
        """
        ``hq restart --copy`` (and ``-c``) prints the new jobs' ids.
        """
        original = self.push(name="mail")
        self.finish(original)
        self.clock.advance(1)
        first = self.hq("restart", "--copy", original)
        second = self.hq("restart", "-c", original)
        self.assertEqual((first.code, second.code), (0, 0))
        new_ids = [first.out.strip(), second.out.strip()]
        self.assertEqual(self.stored_ids(), [original, *new_ids])
        self.assertNotIn(original, new_ids)

    def test_restart_copy_error_names_the_copies(self) -> None:
        """
        After an error, ``--copy`` says which originals were copied to which new ids.
        """
        original = self.push()
        self.finish(original)
        ran = self.hq("restart", "-c", original, "88")
        new_id = ran.out.strip()
        self.assertEqual(ran.code, 1)
        self.assertEqual(
            ran.err.splitlines()[1],
            f"1 of 2 jobs done before job 88 failed (restarted as copies: {original} as {new_id})",
        )


class PushOptionTests(CLITestCase):
    """
    ``hq push`` with --retries, --delay, --run-at, --idempotency-key and batches.
    """

    def stored(self, job_id: str) -> Any:
        return self.successResultOf(self.store.get(int(job_id)))

    def test_retries_and_delay_set_the_job(self) -> None:
        """
        --retries and --delay reach the job: it is scheduled SECONDS after the push.
        """
        ran = self.hq(
            "push", "--retries", "3", "--delay", "90.5", "-", input=json.dumps({"url": WORKER})
        )
        self.assertEqual((ran.code, ran.err), (0, ""))
        job = self.stored(ran.out.strip())
        self.assertEqual((job.retries, job.run_at), (3, T0 * 1000 + 90_500))
        self.assertEqual(self.http.requests, [("POST", "/job")])

    def test_run_at_with_an_offset(self) -> None:
        """
        --run-at takes RFC 3339 with an offset (or Z) and any digits of a second.
        """
        for text in ("2023-11-15T00:13:20+01:00", "2023-11-14t23:13:20.0000001z"):
            ran = self.hq("push", "--run-at", text, "-", input=json.dumps({"url": WORKER}))
            self.assertEqual((ran.code, ran.err), (0, ""), text)
            self.assertEqual(self.stored(ran.out.strip()).run_at, (T0 + 3600) * 1000, text)

    def test_bad_run_at_is_refused_before_sending(self) -> None:
        """
        A --run-at that is not RFC 3339 with an offset is a usage error; nothing is sent.
        """
        for text in ("tomorrow", "2024-05-01T09:30:00", "2024-05-01", "2024-13-01T00:00:00Z"):
            ran = self.hq("push", "--run-at", text, "-", input=json.dumps({"url": WORKER}))
            self.assertEqual((ran.code, ran.out), (2, ""), text)
            self.assertIn(
                f"error: Invalid value for '--run-at': {text!r} is not an RFC 3339 time with "
                "an offset or Z, such as 2024-05-01T09:30:00Z or 2024-05-01T11:30:00+02:00\n",
                ran.err,
            )
        self.assertEqual(self.runner.addresses, [])

    def test_bad_delay_retries_and_both_due_times(self) -> None:
        """
        A negative or infinite --delay, --retries out of 0-1000, and --delay with --run-at
        are usage errors; nothing is sent.
        """
        cases = [
            (
                ["--delay", "-1"],
                "error: Invalid value for '--delay': it must be 0 or more seconds, not -1\n",
            ),
            (
                ["--delay", "inf"],
                "error: Invalid value for '--delay': it must be 0 or more seconds, not inf\n",
            ),
            (
                ["--retries", "1001"],
                "error: Invalid value for '--retries': 1001 is not in the range 0<=x<=1000.\n",
            ),
            (
                ["--delay", "1", "--run-at", "2024-05-01T09:30:00Z"],
                "error: --delay and --run-at cannot be used together\n",
            ),
            (
                ["--idempotency-key", ""],
                "error: Invalid value for '--idempotency-key': it must "
                "be 1 to 255 characters, not 0\n",
            ),
        ]
        for args, message in cases:
            ran = self.hq("push", *args, "-", input=json.dumps({"url": WORKER}))
            self.assertEqual(ran.code, 2, args)
            self.assertTrue(ran.err.endswith(message), ran.err)
        self.assertEqual(self.runner.addresses, [])

    def test_options_replace_the_fields_of_every_job(self) -> None:
        """
        With many jobs, the options are set on each, replacing the job's own fields
        (--run-at replaces a "delay" of the job).
        """
        lines = [{"url": WORKER, "retries": 9, "delay": 5}, {"url": WORKER}]
        path = self.write("jobs.jsonl", "\n".join(json.dumps(j) for j in lines))
        ran = self.hq("push", "--retries", "1", "--run-at", "2023-11-14T23:13:20Z", path)
        self.assertEqual((ran.code, ran.err), (0, ""))
        for job_id in ran.out.split():
            job = self.stored(job_id)
            self.assertEqual((job.retries, job.run_at), (1, (T0 + 3600) * 1000))
        self.assertEqual(self.http.requests, [("POST", "/jobs")])

    def test_idempotency_key_replay_says_so(self) -> None:
        """
        A second push with the same --idempotency-key prints the first job's id and says
        on stderr that nothing new was pushed.
        """
        job = json.dumps({"url": WORKER})
        first = self.hq("push", "--idempotency-key", "order-7", "-", input=job)
        again = self.hq("push", "--idempotency-key", "order-7", "-", input=job)
        self.assertEqual((first.code, first.err), (0, ""))
        self.assertEqual(
            again,
            Ran(
                0,
                first.out,
                "the idempotency key 'order-7' was used before: nothing new was pushed; "
                f"{first.out.strip()} is the job pushed then\n",
            ),
        )
        self.assertEqual(self.stored_ids(), [first.out.strip()])

    def test_idempotency_key_conflict(self) -> None:
        """
        The same key with another payload is the server's 409 message, exit 1.
        """
        self.hq("push", "--idempotency-key", "k", "-", input=json.dumps({"url": WORKER}))
        ran = self.hq(
            "push", "--idempotency-key", "k", "-", input=json.dumps({"url": WORKER, "payload": 1})
        )
        self.assertEqual((ran.code, ran.out), (1, ""))
        self.assertTrue(ran.err.startswith("error: <stdin>: The idempotency key 'k'"), ran.err)

    def test_idempotency_key_needs_one_job(self) -> None:
        """
        --idempotency-key with several jobs is a usage error; nothing is sent.
        """
        path = self.write("jobs.jsonl", (json.dumps({"url": WORKER}) + "\n") * 2)
        ran = self.hq("push", "--idempotency-key", "k", path)
        self.assertEqual(ran.code, 2)
        self.assertTrue(
            ran.err.endswith(
                "error: --idempotency-key is for one job, but the input has 2: give each job "
                'its own "idempotencyKey" field instead\n'
            ),
            ran.err,
        )
        self.assertEqual(self.runner.addresses, [])

    def test_nodes_prints_the_cluster(self) -> None:
        """
        ``hq nodes`` prints GET /nodes as indented JSON; a server without it exits 1.
        """
        from hq.cluster import local_nodes

        api = HQApi(
            store=self.store,
            dispatch=self.dispatch,
            ids=IdGenerator(0, self.clock),
            clock=self.clock,
            config=Config(),
            nodes=local_nodes(4, lambda: "http://hq-4:19900", 0, self.clock),
        )
        runner = StubRunner(StubTreq(api.resource()), self.clock)
        ran = self.hq("nodes", runner=runner)
        self.assertEqual((ran.code, ran.err), (0, ""))
        nodes = json.loads(ran.out)["nodes"]
        self.assertEqual([(n["serverId"], n["address"]) for n in nodes], [(4, "http://hq-4:19900")])
        self.assertTrue(ran.out.startswith('{\n  "nodes": [\n'))
        self.assertEqual(self.hq("nodes").code, 1)

    def test_batch_too_large_for_the_server(self) -> None:
        """
        A batch over the server's max_batch_jobs is its 413 message and a hint.
        """
        api = HQApi(
            store=self.store,
            dispatch=self.dispatch,
            ids=IdGenerator(0, self.clock),
            clock=self.clock,
            config=Config(max_batch_jobs=2),
        )
        runner = StubRunner(StubTreq(api.resource()), self.clock)
        path = self.write("jobs.jsonl", (json.dumps({"url": WORKER}) + "\n") * 3)
        ran = self.hq("push", path, runner=runner)
        self.assertEqual(
            ran,
            Ran(
                1,
                "",
                "error: The batch has more than 2 jobs (the limit is max_batch_jobs)\n"
                "no job was pushed (a batch is stored whole or not at all)\n"
                "the batch is too large for this server: try a smaller --batch-size\n",
            ),
        )
        self.assertEqual(self.hq("push", "--batch-size", "2", path, runner=runner).code, 0)
        self.assertEqual(len(self.stored_ids()), 3)

    def test_server_without_batches_gets_jobs_one_by_one(self) -> None:
        """
        A server without POST /jobs (an older HQ, or Go HQ) gets the jobs one by one.
        """
        server = OldServer()
        path = self.write("jobs.jsonl", (json.dumps({"url": WORKER}) + "\n") * 3)
        ran = self.hq("push", path, runner=StubRunner(StubTreq(server)))
        self.assertEqual(ran, Ran(0, "1\n2\n3\n", ""))
        self.assertEqual(server.paths, [b"/jobs", b"/job", b"/job", b"/job"])

    def test_25000_json_lines_go_in_three_requests(self) -> None:
        """
        25,000 JSON lines are pushed in three POST /jobs of at most 10,000; one id per line.
        """
        path = self.write("many.jsonl", (json.dumps({"url": WORKER}) + "\n") * 25_000)
        ran = self.hq("push", path)
        self.assertEqual((ran.code, ran.err), (0, ""))
        self.assertEqual(self.http.requests, [("POST", "/jobs")] * 3)
        ids = ran.out.splitlines()
        self.assertEqual(len(ids), 25_000)
        self.assertEqual(ids, self.stored_ids())


class AttemptsTests(CLITestCase):
    """
    ``hq attempts``.
    """

    def setUp(self) -> None:
        super().setUp()
        self.job = self.push(retries=2)
        start = T0 * 1000 + 10_000
        for n, (code, err) in enumerate([(500, "Internal Server Error"), (None, "timed out")]):
            started = self.successResultOf(self.store.start(int(self.job), start + n * 5000))
            assert started is not None
            outcome = Outcome(
                finished_at=start + n * 5000 + 250,
                failure=True,
                status_code=code,
                err=err,
                output="oops\nmore",
            )
            attempt = Attempt.of(started, outcome)
            self.successResultOf(self.store.retry(int(self.job), start + 60_000, outcome, attempt))

    def test_table(self) -> None:
        """
        The table lists each attempt: number, start, duration, HTTP status, error.
        """
        self.assertEqual(
            self.hq("attempts", self.job),
            Ran(
                0,
                "ATTEMPT  STARTED        DURATION  STATUS  ERR\n"
                "1        2 minutes ago  250ms     500     Internal Server Error\n"
                "2        2 minutes ago  250ms             timed out\n",
                "",
            ),
        )

    def test_json(self) -> None:
        """
        --json prints the server's object, indented.
        """
        ran = self.hq("attempts", "--json", self.job)
        self.assertEqual(ran.code, 0)
        attempts = json.loads(ran.out)["attempts"]
        self.assertEqual([a["attempt"] for a in attempts], [1, 2])
        self.assertEqual(attempts[0]["output"], "oops\nmore")
        self.assertTrue(ran.out.startswith('{\n  "attempts": [\n    {\n      "attempt": 1,'))

    def test_no_attempts_and_unknown_job(self) -> None:
        """
        A job never tried has just the header; an unknown job is the server's 404.
        """
        fresh = self.push()
        self.assertEqual(
            self.hq("attempts", fresh), Ran(0, "ATTEMPT  STARTED  DURATION  STATUS  ERR\n", "")
        )
        self.assertEqual(
            self.hq("attempts", "42"), Ran(1, "", "error: The job '42' is not found\n")
        )


class ScheduledListTests(CLITestCase):
    """
    ``hq list`` with scheduled jobs.
    """

    def test_scheduled_status_run_at_column_and_colour(self) -> None:
        """
        A delayed job is listed as scheduled (blue on a terminal); --detail shows RUN AT.
        """
        job = self.hq("push", "--delay", "600", "-", input=json.dumps({"url": WORKER})).out.strip()
        ran = self.hq("list", "--detail", "-s", "scheduled")
        self.assertEqual(ran.code, 0)
        header, row = ran.out.splitlines()
        self.assertEqual(header.split()[5:7], ["RUN", "AT"])
        self.assertTrue(row.startswith(job))
        self.assertIn("  3 minutes ago  7 minutes from now  ", row)
        self.assertTrue(row.endswith("  scheduled"))
        self.tty = True
        self.assertIn("  \x1b[34mscheduled\x1b[0m\n", self.hq("list").out)


class BulkTests(CLITestCase):
    """
    ``hq delete``, ``stop`` and ``restart`` with filters instead of ids.
    """

    def setUp(self) -> None:
        super().setUp()
        self.failed = [self.push(name="mail"), self.push(name="mail")]
        for job_id in self.failed:
            self.finish(job_id, success=False)
        self.waiting = self.push(name="other")
        self.runner.addresses.clear()
        self.http.requests.clear()

    def test_restart_with_yes(self) -> None:
        """
        ``restart --status failure --yes`` restarts the matches in one request.
        """
        ran = self.hq("restart", "--status", "failure", "--yes")
        self.assertEqual(ran, Ran(0, "restarted 2 jobs\n", ""))
        self.assertEqual(self.http.requests, [("POST", "/jobs/restart")])
        self.assertEqual(self.hq("list", "-q", "-s", "waiting").out.split(), self.stored_ids())

    def test_stop_and_delete_with_limit(self) -> None:
        """
        -y, -n and -l reach the API; the count is printed with the right noun.
        """
        self.assertEqual(self.hq("stop", "-n", "^other$", "-y"), Ran(0, "stopped 1 job\n", ""))
        self.assertEqual(
            self.hq("delete", "-s", "failure", "-l", "1", "-y"), Ran(0, "deleted 1 job\n", "")
        )
        self.assertEqual(self.hq("delete", "-t", "nothing", "-y"), Ran(0, "deleted 0 jobs\n", ""))
        self.assertEqual(self.stored_ids(), [self.failed[1], self.waiting])

    def test_confirmation_yes_on_a_terminal(self) -> None:
        """
        On a terminal, the filter is stated and the action done after "y".
        """
        self.tty = True
        ran = self.hq("delete", "--status", "failure", "--name", "^mail$", input="y\n")
        self.assertEqual(ran.code, 0)
        self.assertEqual(ran.out, "deleted 2 jobs\n")
        self.assertEqual(
            ran.err,
            # CliRunner echoes the answer, as a terminal would.
            "Delete all finished jobs matching --name '^mail$' --status failure? [y/N]: y\n",
        )
        self.assertEqual(self.stored_ids(), [self.waiting])

    def test_confirmation_no_does_nothing(self) -> None:
        """
        Answering "n" (or nothing) sends nothing and exits 1.
        """
        self.tty = True
        for answer in ("n\n", "\n"):
            ran = self.hq("restart", "-s", "failure", "-l", "5", input=answer)
            self.assertEqual((ran.code, ran.out), (1, ""))
            self.assertEqual(
                ran.err,
                "Restart up to 5 finished jobs matching --status failure? [y/N]: "
                f"{answer}nothing restarted\n",
            )
        self.assertEqual(self.runner.addresses, [])

    def test_no_terminal_and_no_yes_is_refused(self) -> None:
        """
        Without a terminal to ask on and without --yes, a bulk action is refused.
        """
        ran = self.hq("stop", "--term", "mail")
        self.assertEqual((ran.code, ran.out), (2, ""))
        self.assertTrue(
            ran.err.endswith(
                "error: not confirmed: Stop all active jobs matching --term mail? "
                "(stdin is not a terminal to ask on; add --yes)\n"
            ),
            ran.err,
        )
        self.assertEqual(self.runner.addresses, [])

    def test_usage_errors(self) -> None:
        """
        Ids with filters, paging flags alone, and --copy with filters are usage errors.
        """
        cases = [
            (["delete", "-s", "failure", self.failed[0]], "--status cannot be used with job ids"),
            (
                ["stop", "--limit", "3", "--reverse", "-y"],
                "--reverse, --limit also need --name, --term or --status: hq stop never acts "
                "on every job",
            ),
            (
                ["restart", "--copy", "-s", "failure", "-y"],
                "--copy cannot be used with filters: matching jobs are restarted in place",
            ),
        ]
        for args, message in cases:
            ran = self.hq(*args)
            self.assertEqual(ran.code, 2, args)
            self.assertTrue(ran.err.endswith(f"error: {message}\n"), ran.err)
        self.assertEqual(self.runner.addresses, [])

    def test_server_error_is_reported(self) -> None:
        """
        An invalid regexp is the server's 400 message, exit 1.
        """
        ran = self.hq("delete", "--name", "(?=x)", "--yes")
        self.assertEqual((ran.code, ran.out), (1, ""))
        self.assertTrue(ran.err.startswith("error: 'name' is not a valid regexp"), ran.err)


class ServeTests(CLITestCase):
    """
    ``hq serve`` hands over to hq.cli.serve.run_server.
    """

    def test_serve_passes_flags_and_exit_status(self) -> None:
        """
        -c and -l reach run_server (level normalised); its return value is the exit status.
        """
        calls: list[tuple[str | None, str | None]] = []

        def run_server(config_file: str | None, log_level: str | None) -> int:
            calls.append((config_file, log_level))
            return 3

        self.patch(hq.cli.serve, "run_server", run_server)
        self.assertEqual(self.hq("serve", "-c", "hq.toml", "-l", "DEBUG").code, 3)
        self.hq("serve", env={"HQ_CONFIG": "/etc/hq.toml", "HQ_LOG_LEVEL": "warn"})
        self.hq("serve", "--config-file", "x.toml", env={"HQ_CONFIG": "/etc/hq.toml"})
        self.assertEqual(calls, [("hq.toml", "debug"), ("/etc/hq.toml", "warn"), ("x.toml", None)])
        ran = self.hq("serve", "-l", "loud")
        self.assertEqual(ran.code, 2)
        self.assertEqual(len(calls), 3)


class JobInputTests(SynchronousTestCase):
    """
    Reading jobs: one object or JSON lines.
    """

    def test_one_object_over_many_lines(self) -> None:
        """
        A pretty-printed object is one job, named after the file.
        """
        sources = parse_jobs("a.json", b'\xef\xbb\xbf{\n "url": "x"\n}\n')
        self.assertEqual([(s.job, s.origin) for s in sources], [({"url": "x"}, "a.json")])

    def test_json_lines_skip_blank_lines(self) -> None:
        """
        JSON lines give one job per non-blank line, each named file:line.
        """
        sources = parse_jobs("j", b'{"n": 1}\n\n  \n{"n": 2}\n')
        self.assertEqual([(s.job["n"], s.origin) for s in sources], [(1, "j:1"), (2, "j:4")])

    def test_bad_inputs(self) -> None:
        """
        NaN, non-objects on a line and non-UTF-8 bytes are errors naming the place.
        """
        cases = [
            (b'{"timeout": NaN}', "j: invalid JSON: NaN is not valid JSON"),
            (b'{"a": 1}\n{"b": Infinity}', "j:2: invalid JSON: Infinity is not valid JSON"),
            (b'{"a": 1}\n3\n', "j:2: a job must be a JSON object, not a number"),
            (b'"url"', "j: a job must be a JSON object, not a string"),
            (b"\xff{}", "j: not UTF-8 text (byte 0)"),
        ]
        for data, message in cases:
            with self.assertRaises(JobInputError, msg=data) as caught:
                parse_jobs("j", data)
            self.assertEqual(str(caught.exception), message)


class TableTests(SynchronousTestCase):
    """
    Relative times, Go durations and the table layout.
    """

    def test_relative_times(self) -> None:
        """
        Times read like go-humanize's: now, seconds, minutes, ..., from now.
        """
        now = datetime(2024, 1, 1, tzinfo=UTC)
        cases = [
            (timedelta(milliseconds=400), "now"),
            (timedelta(seconds=1), "1 second ago"),
            (timedelta(seconds=59), "59 seconds ago"),
            (timedelta(seconds=90), "1 minute ago"),
            (timedelta(minutes=3), "3 minutes ago"),
            (timedelta(hours=1, minutes=59), "1 hour ago"),
            (timedelta(hours=5), "5 hours ago"),
            (timedelta(days=1), "1 day ago"),
            (timedelta(days=6), "6 days ago"),
            (timedelta(days=10), "1 week ago"),
            (timedelta(days=21), "3 weeks ago"),
            (timedelta(days=45), "1 month ago"),
            (timedelta(days=200), "6 months ago"),
            (timedelta(days=400), "1 year ago"),
            (timedelta(days=600), "2 years ago"),
            (timedelta(days=3650), "10 years ago"),
            (timedelta(days=20000), "a long while ago"),
            (-timedelta(seconds=5), "5 seconds from now"),
        ]
        for age, text in cases:
            self.assertEqual(relative_time(now - age, now), text, age)
        self.assertEqual(relative_time(None, now), "")

    def test_go_durations(self) -> None:
        """
        Durations are written as Go writes them.
        """
        cases = [
            (timedelta(0), "0s"),
            (timedelta(microseconds=5), "5µs"),
            (timedelta(milliseconds=296), "296ms"),
            (timedelta(microseconds=1500), "1.5ms"),
            (timedelta(seconds=1, milliseconds=234), "1.234s"),
            (timedelta(seconds=1, milliseconds=500), "1.5s"),
            (timedelta(minutes=2, seconds=3, milliseconds=500), "2m3.5s"),
            (timedelta(hours=1, seconds=5), "1h0m5s"),
            (timedelta(minutes=2), "2m0s"),
            (-timedelta(seconds=2), "-2s"),
        ]
        for duration, text in cases:
            self.assertEqual(go_duration(duration), text)
        self.assertEqual(go_duration(None), "")

    def test_table_pads_columns_by_two(self) -> None:
        """
        Columns are padded to their widest cell plus two spaces; the last is not padded.
        """
        lines = render_table(("A", "BB", "C"), [("xxx", "", "ok"), ("y", "zzzz", "failure")])
        self.assertEqual(lines, ["A    BB    C", "xxx        ok", "y    zzzz  failure"])


class ProgressBarTests(SynchronousTestCase):
    """
    The progress bar keeps out of stdout.
    """

    def test_bar_is_cleared_around_lines_on_a_shared_terminal(self) -> None:
        """
        When stdout is a terminal too, the bar is cleared before each line and drawn after.
        """
        out, err = io.StringIO(), io.StringIO()
        bar = ProgressBar(Output(out, err, out_is_tty=True, err_is_tty=True), total=2)
        bar.start()
        bar.line("11")
        bar.line("12")
        bar.finish()
        self.assertEqual(out.getvalue(), "11\n12\n")
        blank = "-" * ProgressBar.WIDTH
        half = "#" * (ProgressBar.WIDTH // 2) + "-" * (ProgressBar.WIDTH // 2)
        full = "#" * ProgressBar.WIDTH
        self.assertEqual(
            err.getvalue(),
            f"\rpushing [{blank}]  0/2\x1b[K"
            f"\r\x1b[K\rpushing [{half}]  1/2\x1b[K"
            f"\r\x1b[K\rpushing [{full}]  2/2\x1b[K"
            "\r\x1b[K",
        )


class RealReactorTests(SynchronousTestCase):
    """
    The installed entry point on the real reactor, in a child process.
    """

    def test_connection_refused_in_a_real_process(self) -> None:
        """
        ``hq list`` against a closed 127.0.0.1 port prints one error line and exits 1.
        """
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        address = f"http://127.0.0.1:{port}"
        top = os.path.dirname(os.path.dirname(os.path.abspath(hq.__file__)))
        path = os.pathsep.join(p for p in (top, os.environ.get("PYTHONPATH")) if p)
        env = dict(os.environ, HQ_ADDRESS=address, PYTHONPATH=path)
        done = subprocess.run(
            [sys.executable, "-c", "from hq.cli import main; main()", "list"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        self.assertEqual(
            (done.returncode, done.stdout, done.stderr),
            (1, "", f"error: cannot reach HQ at {address}: connection refused\n"),
        )
