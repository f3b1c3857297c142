"""
Bad input, found by a machine: the OpenAPI 3 description of the API, and
property-based fuzz runs (schemathesis) against the real server process with
API tokens configured: with an admin token, no 500 and no response outside
the description; without one, nothing but 401 and 429 (and /health).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from typing import Any

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from hq import __version__
from hq.api import HQApi
from hq.auth import config_entry, new_token
from hq.config import Config
from hq.ids import IdGenerator
from hq.store.memory import MemoryStore
from hq.testing import RecordingDispatch
from tests.serverprocess import ROOT, HangingWorker, report, wait_for
from tests.test_security_e2e import AuthorizedServer

PACKAGED = os.path.join(ROOT, "hq", "openapi.json")
DOCUMENTED = os.path.join(ROOT, "docs", "openapi.json")

#: Test cases per operation and phase, and the seed: a bounded, repeatable run.
MAX_EXAMPLES = 25
SEED = 20240501
#: Test cases per operation of the run without a token (all answered at once).
UNAUTHENTICATED_EXAMPLES = 5

#: Checks run on every response. The last two hold the description to what
#: the server does: a request the schema allows is accepted, one it forbids is
#: refused. (``unsupported_method`` is left out: "/" answers any method, as
#: Go does, including ones OpenAPI 3.1 cannot name, such as QUERY.)
#: Jobs that hold the one delivery slot, one after another.
HOLDERS = 20

CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
    "positive_data_acceptance",
    "negative_data_rejection",
)

#: The checks are set here, not with --checks (which would override the
#: per-operation setting below). Stateful runs follow only the links the
#: description declares: inferred links could pick up the id of the job that
#: holds the only delivery slot.
SCHEMATHESIS_TOML = (
    """
[checks]
enabled = false
"""
    + "".join(f"{check}.enabled = true\n" for check in CHECKS)
    + """
[phases.stateful]
link-calibration = false

[phases.stateful.inference]
algorithms = []

# The list filters are RE2 regexps; the description says "format: regex",
# whose checker reads the ECMA dialect: a lone "{" is invalid there, but a
# literal in RE2 (and in Go), so the server rightly accepts it.
[[operations]]
include-operation-id = "listJobs"
checks.negative_data_rejection.enabled = false

# A bulk action needs one of name, term or status (400 otherwise): a rule
# across parameters that OpenAPI cannot state. Same for the regexp dialect.
# More jobs than max_batch_jobs is 413, as SPEC §15 says.
[[operations]]
include-operation-id = "pushJobs"
checks.negative_data_rejection.expected-statuses = ["400", "409", "413", "415", "422"]

[[operations]]
include-operation-id = ["restartJobs", "deleteJobs"]
checks.negative_data_rejection.enabled = false
checks.positive_data_acceptance.expected-statuses = ["2xx", "400"]

# A cron expression's validity (ranges per field, a date that exists) and the
# IANA zone names are rules OpenAPI cannot state: the fuzzer gets a few valid
# ones (fuzzed_description), and a string outside them may well be valid too.
[[operations]]
include-operation-id = "addSchedule"
checks.positive_data_acceptance.expected-statuses = ["2xx", "422"]
checks.negative_data_rejection.enabled = false

# A bulk stop would stop every holder job at once and let fuzzed jobs be
# delivered; tests/test_bulk.py covers it.
[[operations]]
include-operation-id = "stopJobs"
enabled = false
"""
)


#: The run without a token: the answers may only be 401 and 429 (and /health's),
#: so the checks that want valid data accepted are off; the statuses are
#: checked from the access log.
UNAUTHENTICATED_TOML = """
[checks]
enabled = false
""" + "".join(f"{check}.enabled = true\n" for check in CHECKS[:5])


def fuzzed_description(document: dict[str, Any]) -> dict[str, Any]:
    """
    Return the served description as the fuzzer gets it: without the
    ``Idempotency-Key`` header of ``POST /job``, and with a few valid cron
    expressions and time zones for ``POST /schedule``. A key in both the header and
    the body must be the same (422 otherwise), a rule across parameters that
    OpenAPI cannot state; tests/test_api.py covers the header.
    """
    push = document["paths"]["/job"]["post"]
    push["parameters"] = [p for p in push["parameters"] if p.get("name") != "Idempotency-Key"]
    # Valid cron expressions and zones, which no schema can describe
    # (tests/test_cron.py and tests/test_schedule_api.py cover the rest).
    schedule = document["components"]["schemas"]["ScheduleRequest"]["properties"]
    schedule["cron"] = {"enum": ["* * * * *", "30 2 * * *", "*/20 * * * * *", "0 9 * * MON-FRI"]}
    schedule["timezone"] = {"enum": ["UTC", "Europe/Berlin", "America/New_York", None]}
    return document


def read_json(path: str) -> Any:
    """
    Return the JSON document in ``path``.
    """
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class OpenAPIDocumentTests(SynchronousTestCase):
    """
    The description is served, kept in docs/, and covers every route.
    """

    def setUp(self) -> None:
        clock = Clock()
        clock.advance(1_700_000_000)
        self.api = HQApi(
            store=MemoryStore(),
            dispatch=RecordingDispatch(),
            ids=IdGenerator(0, clock),
            clock=clock,
            config=Config(),
        )

    def get(self, path: str) -> tuple[int, Any]:
        """
        GET ``path`` from the API; return the status and the decoded body.
        """
        client = StubTreq(self.api.resource())
        response = self.successResultOf(client.get("http://hq.test" + path))
        body = self.successResultOf(response.content())
        return response.code, json.loads(body)

    def test_served_document_is_the_packaged_one(self) -> None:
        """GET /openapi.json answers hq/openapi.json with the running version."""
        status, served = self.get("/openapi.json")
        self.assertEqual(status, 200)
        expected = read_json(PACKAGED)
        expected["info"]["version"] = __version__
        self.assertEqual(served, expected)
        self.assertTrue(served["openapi"].startswith("3."))

    def test_docs_copy_is_identical(self) -> None:
        """docs/openapi.json is the same document as hq/openapi.json."""
        self.assertEqual(read_json(DOCUMENTED), read_json(PACKAGED))

    def test_every_route_is_described(self) -> None:
        """Each Klein route and method of the API is an operation of the description."""
        document = read_json(PACKAGED)
        described = {
            (path, method.upper())
            for path, item in document["paths"].items()
            for method in item
            if method != "parameters"
        }
        routes = set()
        for rule in self.api.app.url_map.iter_rules():
            path = rule.rule.replace("<raw_id>", "{id}").replace("<path:raw_key>", "{key}")
            for method in rule.methods or {"GET"}:
                if method not in ("HEAD", "OPTIONS"):
                    routes.add((path, method))
        # "/" answers any method (as Go); the description names each one.
        every = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"}
        routes = {(p, m) for p, m in routes if p != "/"} | {("/", m) for m in every}
        self.assertEqual(routes - described, set())
        self.assertEqual(described - routes, set())

    def test_every_error_response_is_the_error_schema(self) -> None:
        """Every non-2xx response in the description has the {status, error} body."""
        document = read_json(PACKAGED)
        for path, item in document["paths"].items():
            for method, operation in item.items():
                if method == "parameters":
                    continue
                for code, response in operation["responses"].items():
                    if code.startswith("2"):
                        continue
                    schema = response["content"]["application/json"]["schema"]
                    self.assertEqual(
                        schema, {"$ref": "#/components/schemas/Error"}, (path, method, code)
                    )


def schemathesis() -> str:
    """
    Return the path of schemathesis' ``st`` beside this Python.

    :raises SkipTest: if it is not installed.
    """
    st = shutil.which("st", path=os.path.dirname(sys.executable))
    if st is None:
        raise SkipTest("schemathesis is not installed (pip install -e '.[test]')")
    return st


def token_server(directory: str, **config: Any) -> tuple[AuthorizedServer, str]:
    """
    Return a server (not started) with tokens configured: ``fuzz-read``,
    ``setup`` (admin: the test's own calls send it) and ``fuzz-admin``, whose
    token is returned for the fuzzer.
    """
    admin = new_token()
    server = AuthorizedServer(directory, **config)
    server.token = new_token()
    with open(server.config_path, "a") as f:
        f.write("\n" + config_entry("fuzz-read", "read", new_token()))
        f.write("\n" + config_entry("setup", "admin", server.token))
        f.write("\n" + config_entry("fuzz-admin", "admin", admin))
    return server, admin


class FuzzTests(SynchronousTestCase):
    """
    schemathesis against the real server process on 127.0.0.1, tokens on.
    """

    def run_schemathesis(
        self, server: AuthorizedServer, toml: str, *options: str
    ) -> subprocess.CompletedProcess[str]:
        """
        Run schemathesis against ``server`` with the config ``toml``; return the run.
        """
        directory = server.directory
        description = os.path.join(directory, "openapi.json")
        with open(description, "w") as f:
            json.dump(fuzzed_description(server.request("GET", "/openapi.json")[1]), f)
        config = os.path.join(directory, "schemathesis.toml")
        with open(config, "w") as f:
            f.write(toml)
        command = [
            schemathesis(),
            "--config-file",
            config,
            "--no-color",
            "run",
            description,
            "--url",
            server.base,
            "--seed",
            str(SEED),
            "--generation-deterministic",
            "--workers",
            "1",
            "--request-timeout",
            "10",
            *options,
        ]
        return subprocess.run(
            command, cwd=directory, capture_output=True, text=True, timeout=240, check=False
        )

    def test_fuzzing_finds_no_server_error_and_no_schema_violation(self) -> None:
        """A seeded run (all phases) with an admin token: no 500, no off-schema answer."""
        schemathesis()
        directory = os.path.abspath(self.mktemp())
        # One delivery slot, held by jobs to a worker that never answers: the
        # jobs the fuzzer pushes (with made-up URLs) queue behind them (FIFO)
        # and are stored, never sent. The fuzzer may stop a holder job (it
        # learns ids from answers), so there are several in line.
        holder = HangingWorker()
        self.addCleanup(holder.close)
        server, admin = token_server(directory, dispatchers=1, max_workers=1, shutdown_timeout=0)
        self.addCleanup(server.stop)
        server.start()
        held = [server.push(holder.url + "/hold") for _ in range(HOLDERS)]
        wait_for(lambda: holder.connections == 1, 10, "the first holder job to run")
        result = self.run_schemathesis(
            server,
            SCHEMATHESIS_TOML,
            "--header",
            f"Authorization: Bearer {admin}",
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--max-examples",
            str(MAX_EXAMPLES),
        )
        output = result.stdout[-8000:] + result.stderr[-4000:]
        self.assertEqual(result.returncode, 0, output)
        self.assertIn("No issues found", result.stdout, output)
        # The server is healthy, and no fuzzed job was delivered: every job
        # that ever started is a holder job, and one is still running.
        status, stats = server.request("GET", "/stats")
        self.assertEqual((status, stats["numJobsRunning"], stats["numWorkers"]), (200, 1, 1))
        started = [job for job in server.jobs() if job["startedAt"] is not None]
        self.assertTrue(started)
        self.assertEqual({job["id"] for job in started} - set(held), set())
        self.assertTrue(all(job["url"].startswith(holder.url) for job in started))
        self.assertEqual(holder.connections, len(started))
        self.assertNotIn("Unexpected error", server.log_text())
        self.assertNotIn("Traceback", server.log_text())
        # Every fuzzed request carried the token, and none was refused for it.
        lines = access_log(server)
        self.assertEqual({line[-1] for line in lines}, {"token=fuzz-admin"})
        self.assertGreater(len(lines), 100)
        self.assertEqual({"401", "403", "429"} & {line[5] for line in lines}, set())
        self.assertNotIn(admin, access_text(server) + server.log_text())
        generated = re.search(r"(\d+) generated", result.stdout)
        report("fuzz", cases=int(generated.group(1)) if generated else None, server_errors=0)

    def test_fuzzing_without_a_token_meets_only_401_and_429(self) -> None:
        """Without a token every fuzzed request is 401 (429 once over the limit); /health 200."""
        schemathesis()
        server, _ = token_server(os.path.abspath(self.mktemp()))
        self.addCleanup(server.stop)
        server.start()
        result = self.run_schemathesis(
            server,
            UNAUTHENTICATED_TOML,
            "--phases",
            "examples,fuzzing",
            "--max-examples",
            str(UNAUTHENTICATED_EXAMPLES),
        )
        output = result.stdout[-8000:] + result.stderr[-4000:]
        self.assertEqual(result.returncode, 0, output)
        # schemathesis warns (rightly) that it met only 401s and 429s: no failure.
        self.assertRegex(result.stdout, r"(\d+) generated, \1 passed", output)
        lines = access_log(server)
        health = [line for line in lines if line[4].partition("?")[0] == "/health"]
        others = [line for line in lines if line not in health]
        self.assertTrue(health)
        self.assertEqual({line[5] for line in health}, {"200"})
        self.assertGreater(len(others), 50)
        self.assertEqual({line[5] for line in others}, {"401", "429"})
        self.assertTrue(all(line[-1] == "token=-" for line in lines))
        # No job was pushed, nothing was deleted.
        self.assertEqual(server.jobs(), [])
        self.assertNotIn("Traceback", server.log_text())


def access_text(server: AuthorizedServer) -> str:
    """
    Return the server's access log.
    """
    with open(os.path.join(server.directory, "access.log")) as f:
        return f.read()


def access_log(server: AuthorizedServer) -> list[list[str]]:
    """
    Return the server's access log lines, split into fields (time, client,
    host, method, URI, status, ..., token); the lines of the test's own calls
    (token ``setup``) are left out.
    """
    lines = [line.split(" ") for line in access_text(server).splitlines()]
    return [line for line in lines if line[-1] != "token=setup"]
