"""
Tests for hq.auth: token entries, roles, the failure limiter and the resource
that guards every route (through a real Site with StubTreq, and over loopback
for the access log and trusted proxies).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import socket
import time
from typing import Any, cast

import treq
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource

from hq.api import HQApi
from hq.auth import (
    FAILURE_LIMIT,
    AuthResource,
    FailureLimiter,
    TokenEntry,
    TokenError,
    TokenTable,
    config_entry,
    new_token,
    parse_tokens,
    protect,
    required_role,
    token_digest,
)
from hq.client import HQClient, HQError
from hq.config import Config, ConfigError, config_from_dict
from hq.ids import IdGenerator
from hq.logs import ReopenableFile
from hq.site import AccessLogSite, redact_uri
from hq.store.memory import MemoryStore
from hq.testing import RecordingDispatch
from hq.ui import mount, ui_resource
from tests.test_api import Reply
from tests.test_cli import CLITestCase, StubRunner

T0 = 1_700_000_000
READ, PUSH, ADMIN = "read-token-1", "push-token-2", "admin-token-3"
ENTRIES = (
    TokenEntry("dash", token_digest(READ), "read"),
    TokenEntry("ci", token_digest(PUSH), "push"),
    TokenEntry("ops", token_digest(ADMIN), "admin"),
)


def entry_dict(name: str = "ci", role: str = "push", token: str = PUSH) -> dict[str, str]:
    return {"name": name, "role": role, "sha256": token_digest(token)}


class TokenEntryTests(SynchronousTestCase):
    """
    ``[[tokens]]`` entries: what start-up accepts and what it refuses, by name.
    """

    def test_new_token_is_random_url_safe_and_long(self) -> None:
        """A new token carries at least 32 random bytes in URL-safe characters."""
        tokens = {new_token() for _ in range(50)}
        self.assertEqual(len(tokens), 50)
        for token in tokens:
            self.assertRegex(token, r"^hq_[A-Za-z0-9_-]{43}$")

    def test_config_entry_holds_the_digest_never_the_token(self) -> None:
        """The printed entry is valid TOML with the SHA-256, and parses back."""
        import tomllib

        token = new_token()
        text = config_entry("ci", "push", token)
        self.assertNotIn(token, text)
        parsed = tomllib.loads(text)
        self.assertEqual(
            parsed["tokens"],
            [{"name": "ci", "role": "push", "sha256": hashlib.sha256(token.encode()).hexdigest()}],
        )
        config = config_from_dict(parsed)
        self.assertEqual(config.tokens, (TokenEntry("ci", token_digest(token), "push"),))

    def test_bad_role_is_refused_naming_the_entry(self) -> None:
        """A role other than read, push, admin stops start-up, naming the entry."""
        with self.assertRaises(ConfigError) as caught:
            config_from_dict({"tokens": [entry_dict(), entry_dict("deploy", "root", ADMIN)]})
        self.assertEqual(
            str(caught.exception),
            "'tokens' entry 1 ('deploy') has the role 'root'; it must be one of read, push, admin",
        )

    def test_bad_digest_is_refused_naming_the_entry(self) -> None:
        """A sha256 that is not 64 hex digits (e.g. the token itself) is refused."""
        for digest in ("", "abc", "g" * 64, PUSH):
            with self.assertRaises(TokenError) as caught:
                parse_tokens([{"name": "ci", "role": "push", "sha256": digest}])
            self.assertIn("'tokens' entry 0 ('ci') has a bad 'sha256'", str(caught.exception))
            if digest:
                self.assertNotIn(digest, str(caught.exception))

    def test_duplicate_name_is_refused(self) -> None:
        """Two entries with one name are refused, naming it."""
        with self.assertRaises(TokenError) as caught:
            parse_tokens([entry_dict(), entry_dict(token=ADMIN)])
        self.assertEqual(
            str(caught.exception), "'tokens' entry 1 ('ci'): the name 'ci' is used twice"
        )

    def test_missing_and_unknown_keys_are_refused(self) -> None:
        """An entry without role, or with a stray key (a plain 'token'), is refused."""
        with self.assertRaises(TokenError) as caught:
            parse_tokens([{"name": "ci", "sha256": token_digest(PUSH)}])
        self.assertEqual(str(caught.exception), "'tokens' entry 0 ('ci') needs 'role' as a string")
        with self.assertRaises(TokenError) as caught:
            parse_tokens([dict(entry_dict(), token=PUSH)])
        self.assertEqual(
            str(caught.exception), "'tokens' entry 0 ('ci') has the unknown key 'token'"
        )

    def test_tokens_must_be_an_array_of_tables(self) -> None:
        """``tokens = "x"`` is refused by key name."""
        with self.assertRaises(ConfigError) as caught:
            config_from_dict({"tokens": "secret"})
        self.assertIn("'tokens' must be an array of tables", str(caught.exception))

    def test_table_finds_by_digest(self) -> None:
        """The table finds an entry by its token, and nothing for another."""
        table = TokenTable(ENTRIES)
        self.assertEqual(table.find(PUSH), ENTRIES[1])
        self.assertIsNone(table.find("push-token-"))
        self.assertIsNone(table.find(token_digest(PUSH)))
        self.assertFalse(TokenTable(()))

    def test_required_roles(self) -> None:
        """GET/HEAD need read; POST /job and /jobs need push; anything else admin."""
        self.assertEqual(required_role(b"GET", b"/metrics"), "read")
        self.assertEqual(required_role(b"HEAD", b"/job/1"), "read")
        self.assertEqual(required_role(b"POST", b"/job"), "push")
        self.assertEqual(required_role(b"POST", b"/jobs"), "push")
        self.assertEqual(required_role(b"POST", b"/job/1/stop"), "admin")
        self.assertEqual(required_role(b"POST", b"/jobs/delete"), "admin")
        self.assertEqual(required_role(b"DELETE", b"/job/1"), "admin")
        self.assertEqual(required_role(b"PUT", b"/job"), "admin")


class FailureLimiterTests(SynchronousTestCase):
    """
    The sliding window of failed authentications per address.
    """

    def test_blocks_after_limit_within_window_then_slides(self) -> None:
        """The 20th failure in a minute blocks; it lifts when the oldest is a minute old."""
        clock = Clock()
        limiter = FailureLimiter(clock, limit=20, window=60)
        for _ in range(19):
            limiter.failed("10.0.0.1")
            clock.advance(1)
        self.assertIsNone(limiter.retry_after("10.0.0.1"))
        limiter.failed("10.0.0.1")
        self.assertEqual(limiter.retry_after("10.0.0.1"), 41)
        self.assertIsNone(limiter.retry_after("10.0.0.2"))
        clock.advance(41)
        self.assertIsNone(limiter.retry_after("10.0.0.1"))

    def test_memory_is_bounded(self) -> None:
        """Expired addresses are swept as new ones arrive; each keeps at most ``limit`` times."""
        clock = Clock()
        limiter = FailureLimiter(clock, limit=3, window=60)
        for i in range(10_000):
            limiter.failed(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")
        clock.advance(61)
        limiter.failed("192.0.2.1")
        self.assertEqual(len(limiter), 1)


class AuthTestCase(SynchronousTestCase):
    """
    The API and UI behind the token check, over a MemoryStore.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.store = MemoryStore()
        self.dispatch = RecordingDispatch()
        config = Config(queues=100, dispatchers=1, tokens=ENTRIES)
        api = HQApi(
            store=self.store,
            dispatch=self.dispatch,
            ids=IdGenerator(0, self.clock),
            clock=self.clock,
            config=config,
        )
        root = mount(api.resource(), ui_resource("/ui", "1.0", "abc"), "/ui")
        self.resource = protect(root, config.tokens, self.clock, "/ui")
        self.client = StubTreq(self.resource)

    def call(
        self, method: str, path: str, token: str | None = None, body: Any = None, **headers: str
    ) -> Reply:
        sent = dict(headers)
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            sent["Content-Type"] = "application/json"
        d = self.client.request(method, "http://hq.test" + path, data=data, headers=sent)
        self.client.flush()
        response = self.successResultOf(d)
        return Reply(response.code, response.headers, self.successResultOf(response.content()))

    def push(self, token: str = PUSH) -> str:
        reply = self.call("POST", "/job", token, {"url": "http://worker.test/"})
        self.assertEqual(reply.status, 200, reply.body)
        job_id: str = reply.json["id"]
        return job_id


class AuthenticationTests(AuthTestCase):
    """
    401 for no or an unknown token; health and the UI's files stay open.
    """

    def test_no_tokens_configured_leaves_the_api_open(self) -> None:
        """Without [[tokens]] the resource is served as it is."""
        resource = object()
        self.assertIs(protect(cast(Any, resource), (), self.clock), resource)

    def test_missing_token_is_401_with_www_authenticate(self) -> None:
        """Every route needs a token: 401, WWW-Authenticate: Bearer, the JSON error body."""
        for method, path in [("GET", "/job"), ("GET", "/"), ("GET", "/stats"), ("POST", "/job")]:
            reply = self.call(method, path)
            self.assertEqual(reply.status, 401, path)
            self.assertEqual(reply.header("WWW-Authenticate"), "Bearer")
            self.assertEqual(reply.header("Content-Type"), "application/json; charset=UTF-8")
            self.assertEqual(
                reply.json,
                {
                    "status": 401,
                    "error": "An API token is required: send the header "
                    "'Authorization: Bearer <token>'",
                },
            )
        self.assertEqual(self.dispatch.enqueued, [])

    def test_unknown_or_malformed_token_is_401(self) -> None:
        """A wrong token, a Basic header or an empty bearer are all 401."""
        reply = self.call("GET", "/job", "nope")
        self.assertEqual(
            (reply.status, reply.json),
            (401, {"status": 401, "error": "The API token is not valid"}),
        )
        for value in ("Basic " + READ, "Bearer", "Bearer ", READ):
            reply = self.call("GET", "/job", Authorization=value)
            self.assertEqual(reply.status, 401, value)

    def test_bearer_scheme_is_case_insensitive(self) -> None:
        """``bearer <token>`` is accepted as well."""
        self.assertEqual(self.call("GET", "/stats", Authorization="bearer " + READ).status, 200)

    def test_health_stays_open(self) -> None:
        """GET /health needs no token (it answers as without tokens: here 404, no check)."""
        reply = self.call("GET", "/health")
        self.assertNotIn(reply.status, (401, 403, 429))

    def test_ui_files_stay_open_but_not_its_api_calls(self) -> None:
        """The page and its assets load without a token; the API it calls does not."""
        self.assertEqual(self.call("GET", "/ui/").status, 200)
        self.assertEqual(self.call("GET", "/ui/jobs/1").status, 200)
        self.assertEqual(self.call("GET", "/job").status, 401)
        self.assertEqual(self.call("POST", "/ui/").status, 401)

    def test_failed_authentication_is_logged_without_the_token(self) -> None:
        """A 401 is logged with the client address and the reason, never the token."""
        with capturedLogs() as events:
            self.call("GET", "/job", "secret-guess")
        failed = [e for e in events if "client" in e and "reason" in e]
        self.assertEqual(len(failed), 1)
        self.assertEqual(failed[0]["reason"], "unknown token")
        self.assertNotIn("secret-guess", repr(events))


class QueryStringTokenTests(AuthTestCase):
    """
    A token is read from ``Authorization`` only: one in the query string never
    authenticates, is answered 401 naming the problem, and no log shows it.
    """

    def test_token_in_query_never_authenticates(self) -> None:
        """?token=, ?access_token= and a valid token under any name: 401 naming the parameter."""
        for query, name in [
            ("token=" + ADMIN, "token"),
            ("access_token=" + ADMIN, "access_token"),
            ("Access-Token=" + ADMIN, "Access-Token"),
            ("api_key=" + READ, "api_key"),
            ("limit=5&t=" + ADMIN, "t"),
            ("access%5Ftoken=" + ADMIN, "access_token"),
        ]:
            reply = self.call("GET", "/job?" + query)
            self.assertEqual(reply.status, 401, query)
            self.assertEqual(reply.header("WWW-Authenticate"), "Bearer")
            self.assertEqual(
                reply.json["error"],
                f"A token in the query string ('{name}') is not accepted, as it would be "
                "written to logs: send the header 'Authorization: Bearer <token>'",
            )
            self.assertNotIn(ADMIN, reply.body.decode())
        reply = self.call("POST", "/job?token=" + PUSH, body={"url": "http://worker.test/"})
        self.assertEqual(reply.status, 401)
        self.assertEqual(self.dispatch.enqueued, [])

    def test_query_token_failures_count_towards_the_limit(self) -> None:
        """A token in the query is a failed authentication: the limit applies."""
        for _ in range(FAILURE_LIMIT):
            self.assertEqual(self.call("GET", "/stats?token=" + ADMIN).status, 401)
        self.assertEqual(self.call("GET", "/stats?token=" + ADMIN).status, 429)

    def test_query_token_is_ignored_beside_a_valid_header(self) -> None:
        """With a valid header the query parameter is ignored: the header's role decides."""
        job_id = self.push()
        reply = self.call("DELETE", f"/job/{job_id}?token={ADMIN}", READ)
        self.assertEqual(reply.status, 403)
        self.assertEqual(self.call("GET", f"/job/{job_id}?token=x", READ).status, 200)

    def test_logs_never_show_a_query_token(self) -> None:
        """The failure and admin-action log lines show neither the token nor its value."""
        job_id = self.push()
        with capturedLogs() as events:
            self.call("GET", "/job?access_token=" + ADMIN)
            self.call("GET", "/job?t=" + ADMIN)
            reply = self.call("POST", f"/job/{job_id}/stop?t={PUSH}&token=query-secret", ADMIN)
        self.assertEqual(reply.status, 200)
        reasons = [e["reason"] for e in events if "reason" in e]
        self.assertEqual(reasons, ["a token in the query string"] * 2)
        [action] = [e for e in events if "tokenName" in e]
        self.assertEqual(action["uri"], f"/job/{job_id}/stop?t=REDACTED&token=REDACTED")
        # (A secret of hex letters, such as "abc", can be in an object's address.)
        for secret in (ADMIN, PUSH, "query-secret"):
            self.assertNotIn(secret, repr(events))

    def test_logs_never_show_a_token_in_the_path(self) -> None:
        """A token (as `hq token new` makes them) pasted into the path is not in the log line."""
        token = "hq_" + "Ab3-_x" * 7 + "Q"
        with capturedLogs() as events:
            reply = self.call("GET", "/stats/" + token)
        self.assertEqual(reply.status, 401)
        [failed] = [e for e in events if "reason" in e]
        self.assertIn("REDACTED", failed["path"])
        self.assertNotIn(token, repr(events))

    def test_open_routes_answer_with_a_query_token(self) -> None:
        """GET /health and the UI's files stay open (the query is ignored, not refused)."""
        self.assertNotIn(self.call("GET", "/health?token=" + ADMIN).status, (401, 403, 429))
        self.assertEqual(self.call("GET", "/ui/?token=x").status, 200)

    def test_redact_uri(self) -> None:
        """Credential parameters, listed secrets and HQ-shaped tokens become REDACTED."""
        token = new_token()
        cases = {
            b"/job?name=a&token=s3&limit=2": b"/job?name=a&token=REDACTED&limit=2",
            b"/job?API-KEY=s3;password=p&x": b"/job?API-KEY=REDACTED;password=REDACTED&x",
            b"/job?token=&name=token": b"/job?token=&name=token",
            b"/job?q=" + token.encode(): b"/job?q=hq_REDACTED",
            b"/job/" + token.encode() + b"/x": b"/job/hq_REDACTED/x",
            b"/job?n=a%20b&m=c+d": b"/job?n=REDACTED&m=REDACTED",
            b"/job?n=x#token=y": b"/job?n=x#token=REDACTED",
            b"/job": b"/job",
        }
        for uri, expected in cases.items():
            secrets = {b"a b", b"c d"} if b"n=a%20b" in uri else set()
            self.assertEqual(redact_uri(uri, secrets), expected, uri)


class RoleTests(AuthTestCase):
    """
    read < push < admin; a role too low is 403.
    """

    def test_read_token_reads_but_cannot_push_or_act(self) -> None:
        """A read token lists and reads; pushing and acting are 403 naming the role needed."""
        job_id = self.push()
        for path in ("/job", "/stats", "/", f"/job/{job_id}", "/openapi.json"):
            self.assertEqual(self.call("GET", path, READ).status, 200, path)
        reply = self.call("POST", "/job", READ, {"url": "http://worker.test/"})
        self.assertEqual(
            (reply.status, reply.json["error"]),
            (403, "The token 'dash' has the role 'read'; POST /job needs the role 'push'"),
        )
        reply = self.call("DELETE", f"/job/{job_id}", READ)
        self.assertEqual(reply.status, 403)
        self.assertIsNone(reply.header("WWW-Authenticate"))
        self.assertEqual(self.call("POST", f"/job/{job_id}/stop", READ).status, 403)

    def test_push_token_pushes_but_cannot_stop(self) -> None:
        """A push token pushes and reads; stop, restart and delete need admin."""
        job_id = self.push(PUSH)
        self.assertEqual(self.call("GET", f"/job/{job_id}", PUSH).status, 200)
        for method, path in [
            ("POST", f"/job/{job_id}/stop"),
            ("POST", f"/job/{job_id}/restart"),
            ("DELETE", f"/job/{job_id}"),
            ("POST", "/jobs/delete?status=failure"),
        ]:
            reply = self.call(method, path, PUSH)
            self.assertEqual(reply.status, 403, path)
            self.assertIn("needs the role 'admin'", reply.json["error"])

    def test_admin_token_does_everything_and_is_logged_by_name(self) -> None:
        """An admin stop goes through and the app log names the token, not the secret."""
        job_id = self.push(ADMIN)
        with capturedLogs() as events:
            reply = self.call("POST", f"/job/{job_id}/stop", ADMIN)
        self.assertEqual((reply.status, reply.json), (200, {"id": job_id}))
        actions = [e for e in events if "tokenName" in e]
        self.assertEqual(len(actions), 1)
        self.assertEqual(
            (actions[0]["tokenName"], actions[0]["method"], actions[0]["status"]),
            ("ops", "POST", 200),
        )
        self.assertEqual(actions[0]["uri"], f"/job/{job_id}/stop")
        self.assertNotIn(ADMIN, repr(events))


class FailureLimitTests(AuthTestCase):
    """
    After 20 failures in a minute from one address: 429 with Retry-After;
    valid tokens are never slowed; a 403 is no failure.
    """

    def fail_times(self, count: int) -> None:
        for _ in range(count):
            self.assertEqual(self.call("GET", "/job", "wrong").status, 401)

    def test_429_after_limit_then_lifted_after_a_minute(self) -> None:
        """The 21st try within a minute is 429 with Retry-After; a minute on it is 401 again."""
        self.fail_times(FAILURE_LIMIT)
        reply = self.call("GET", "/job", "wrong")
        self.assertEqual(reply.status, 429)
        self.assertEqual(reply.header("Retry-After"), "60")
        self.assertEqual(reply.json["status"], 429)
        self.assertEqual(self.call("GET", "/job").status, 429)
        self.clock.advance(30)
        self.assertEqual(self.call("GET", "/job").header("Retry-After"), "30")
        self.clock.advance(30)
        self.assertEqual(self.call("GET", "/job", "wrong").status, 401)

    def test_valid_token_is_never_limited(self) -> None:
        """From a blocked address, a request with a valid token is answered as usual."""
        self.fail_times(FAILURE_LIMIT)
        self.assertEqual(self.call("GET", "/job", "wrong").status, 429)
        self.assertEqual(self.call("GET", "/job", READ).status, 200)
        self.assertEqual(self.call("POST", "/job", READ, {"url": "http://w.test/"}).status, 403)

    def test_forbidden_is_not_a_failure(self) -> None:
        """Many 403s do not block the address."""
        for _ in range(FAILURE_LIMIT * 2):
            self.assertEqual(self.call("DELETE", "/job/1", READ).status, 403)
        self.assertEqual(self.call("GET", "/job", "wrong").status, 401)

    def test_health_is_never_limited(self) -> None:
        """GET /health answers a blocked address."""
        self.fail_times(FAILURE_LIMIT)
        self.assertNotIn(self.call("GET", "/health").status, (401, 429))


class _Lines:
    def __init__(self) -> None:
        self.text = io.StringIO()

    def write(self, line: str) -> None:
        self.text.write(line)

    def lines(self) -> list[str]:
        return self.text.getvalue().splitlines()


class AccessLogTests(TestCase):
    """
    Over loopback with the real Site: the access log names the token, and the
    limiter counts the client behind a trusted proxy.
    """

    def serve(self, log_format: str = "text", trusted: tuple[str, ...] = ()) -> tuple[str, _Lines]:
        clock = Clock()
        resource = AuthResource(
            _Ok(), TokenTable(ENTRIES), FailureLimiter(clock, limit=3, window=60)
        )
        lines = _Lines()
        site = AccessLogSite(
            resource,
            cast(ReopenableFile, lines),
            trusted_proxies=trusted,
            log_format=log_format,
        )
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return f"http://127.0.0.1:{port.getHost().port}", lines

    async def test_text_access_log_names_the_token_never_the_secret(self) -> None:
        """Each line ends with token=<name>, or token=- when none was valid."""
        base, lines = self.serve()
        response = await treq.get(
            base + "/x", headers={"Authorization": "Bearer " + PUSH}, persistent=False
        )
        await response.content()
        response = await treq.get(
            base + "/x", headers={"Authorization": "Bearer guess"}, persistent=False
        )
        await response.content()
        self.assertRegex(lines.lines()[0], r" GET /x 200 \d+ \S+ 0 2 token=ci$")
        self.assertRegex(lines.lines()[1], r" 401 \d+ \S+ 0 \d+ token=-$")
        self.assertNotIn(PUSH, lines.text.getvalue())

    async def test_open_routes_are_logged_with_their_token_too(self) -> None:
        """GET /health: token=- without one, the name with one; never a failure."""
        base, lines = self.serve()
        for headers in ({}, {"Authorization": "Bearer " + ADMIN}, {"Authorization": "Bearer x"}):
            response = await treq.get(base + "/health", headers=headers, persistent=False)
            self.assertEqual(response.code, 200)
            await response.content()
        self.assertEqual(
            [line.rsplit(" ", 1)[1] for line in lines.lines()], ["token=-", "token=ops", "token=-"]
        )

    async def test_json_access_log_has_a_token_field(self) -> None:
        """The JSON line has ``token``: the entry's name."""
        base, lines = self.serve("json")
        response = await treq.get(
            base + "/x", headers={"Authorization": "Bearer " + ADMIN}, persistent=False
        )
        await response.content()
        self.assertEqual(json.loads(lines.lines()[0])["token"], "ops")

    async def test_access_log_redacts_tokens_in_the_query(self) -> None:
        """Text and JSON lines show REDACTED for credential parameters and valid tokens."""
        for log_format in ("text", "json"):
            base, lines = self.serve(log_format)
            for query in (f"token={ADMIN}", f"Access_Token={PUSH}&limit=2", f"q={READ}"):
                response = await treq.get(base + "/x?" + query, persistent=False)
                self.assertEqual(response.code, 401)
                await response.content()
            response = await treq.get(
                base + f"/x?key={ADMIN}",
                headers={"Authorization": "Bearer " + ADMIN},
                persistent=False,
            )
            self.assertEqual(response.code, 200)
            await response.content()
            text = lines.text.getvalue()
            for secret in (ADMIN, PUSH, READ):
                self.assertNotIn(secret, text)
            uris = [
                json.loads(line)["uri"] if log_format == "json" else line.split(" ")[4]
                for line in lines.lines()
            ]
            self.assertEqual(
                uris,
                [
                    "/x?token=REDACTED",
                    "/x?Access_Token=REDACTED&limit=2",
                    "/x?q=REDACTED",
                    "/x?key=REDACTED",
                ],
            )

    async def test_overlong_authorization_header_is_refused_at_once(self) -> None:
        """Up to the 16 KB header limit: 401 at once; over it (100 KB): a JSON 431, no 5xx."""
        base, lines = self.serve()
        port = int(base.rsplit(":", 1)[1])
        for size, expected in ((15_000, b"HTTP/1.1 401 "), (100_000, b"HTTP/1.1 431 ")):
            began = time.monotonic()
            answer = await deferToThread(_raw_get, port, b"Bearer " + b"a" * size)
            self.assertLess(time.monotonic() - began, 2, size)
            self.assertEqual(answer[:13], expected)
        self.assertIn(b'"error":"The request\'s headers are larger than the limit', answer)
        # Only the 401 was a request; the server still answers.
        self.assertEqual(len(lines.lines()), 1)
        response = await treq.get(base + "/x", persistent=False)
        self.assertEqual(response.code, 401)
        await response.content()

    async def test_limit_is_per_client_behind_a_trusted_proxy(self) -> None:
        """Behind a trusted proxy, failures count against X-Forwarded-For's client."""
        base, _ = self.serve(trusted=("127.0.0.1",))

        async def status(client: str) -> int:
            response = await treq.get(
                base + "/x", headers={"X-Forwarded-For": client}, persistent=False
            )
            await response.content()
            code: int = response.code
            return code

        for _ in range(3):
            self.assertEqual(await status("203.0.113.7"), 401)
        self.assertEqual(await status("203.0.113.7"), 429)
        self.assertEqual(await status("203.0.113.8"), 401)


def _raw_get(port: int, authorization: bytes) -> bytes:
    """
    Send ``GET /x`` with ``authorization`` over a plain socket; return what
    came back before the server closed (``b""`` after a reset).
    """
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        answer = b""
        try:
            sock.sendall(
                b"GET /x HTTP/1.1\r\nHost: hq.test\r\nConnection: close\r\n"
                b"Authorization: " + authorization + b"\r\n\r\n"
            )
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionError:
            pass
        return answer


class _Ok(Resource):
    isLeaf = True

    def render(self, request: Any) -> bytes:
        return b"ok"


class CLITokenTests(CLITestCase):
    """
    ``hq token new``, and ``--token`` / ``HQ_TOKEN`` on the client commands.
    """

    def setUp(self) -> None:
        super().setUp()
        api = HQApi(
            store=self.store,
            dispatch=self.dispatch,
            ids=IdGenerator(0, self.clock),
            clock=self.clock,
            config=Config(queues=100, dispatchers=1, tokens=ENTRIES),
        )
        self.runner = StubRunner(StubTreq(protect(api.resource(), ENTRIES, self.clock)))

    def test_token_new_prints_token_and_entry_with_its_digest(self) -> None:
        """The token (32+ random bytes, URL-safe) and a [[tokens]] entry that loads."""
        import tomllib

        ran = self.hq("token", "new", "--role", "push", "--name", "ci")
        self.assertEqual((ran.code, ran.err), (0, ""))
        token = re.search(r"^  (hq_[A-Za-z0-9_-]{43})$", ran.out, re.M)
        assert token is not None, ran.out
        entry = ran.out[ran.out.index("[[tokens]]") :]
        config = config_from_dict(tomllib.loads(entry))
        self.assertEqual(config.tokens, (TokenEntry("ci", token_digest(token[1]), "push"),))

    def test_token_new_refuses_a_bad_role_or_name(self) -> None:
        """A role outside read/push/admin, or a name with spaces, is a usage error."""
        self.assertEqual(self.hq("token", "new", "--role", "root", "--name", "ci").code, 2)
        ran = self.hq("token", "new", "--role", "read", "--name", "a b")
        self.assertEqual(ran.code, 2)
        self.assertIn("error: Invalid value for '--name'", ran.err)

    def test_without_token_the_cli_says_so(self) -> None:
        """No token: ``error:`` with the server's 401 message, exit 1."""
        ran = self.hq("list")
        self.assertEqual(ran.code, 1)
        self.assertEqual(
            ran.err,
            "error: An API token is required: send the header 'Authorization: Bearer <token>'\n",
        )

    def test_token_option_and_environment(self) -> None:
        """--token and HQ_TOKEN are sent as the bearer token."""
        ran = self.hq("push", "--token", PUSH, "-", input=json.dumps({"url": "http://w.test/"}))
        self.assertEqual((ran.code, ran.err), (0, ""))
        job_id = ran.out.strip()
        ran = self.hq("info", job_id, env={"HQ_TOKEN": READ})
        self.assertEqual(ran.code, 0, ran.err)
        self.assertEqual(json.loads(ran.out)["id"], job_id)

    def test_role_too_low_is_an_error_naming_the_role(self) -> None:
        """A read token cannot stop: ``error:`` naming the role needed."""
        job_id = self.hq("push", "--token", PUSH, "-", input='{"url": "http://w.test/"}').out
        ran = self.hq("stop", "--token", READ, job_id.strip())
        self.assertEqual(ran.code, 1)
        self.assertIn("error: The token 'dash' has the role 'read'", ran.err)
        self.assertIn("needs the role 'admin'", ran.err)
        self.assertEqual(self.hq("stop", "--token", ADMIN, job_id.strip()).code, 0)

    def test_client_library_sends_the_token(self) -> None:
        """HQClient(token=...) authenticates; a wrong token is HQError 401."""
        good = HQClient("http://hq.test", http=self.runner.http, token=READ)
        d = good.stats()
        self.runner.http.flush()
        self.successResultOf(d)
        bad = HQClient("http://hq.test", http=self.runner.http, token="nope")
        d = bad.stats()
        self.runner.http.flush()
        error = self.failureResultOf(d, HQError).value
        self.assertEqual((error.status, error.message), (401, "The API token is not valid"))


class OpenAPITests(SynchronousTestCase):
    """
    The OpenAPI document describes the bearer scheme and its answers.
    """

    def test_bearer_scheme_and_auth_responses(self) -> None:
        """bearerAuth is declared (optional); every route but /health lists 401 and 429."""
        from hq.api import openapi_text

        document = json.loads(openapi_text("1.0"))
        self.assertEqual(
            document["components"]["securitySchemes"]["bearerAuth"]["scheme"], "bearer"
        )
        self.assertEqual(document["security"], [{}, {"bearerAuth": []}])
        self.assertEqual(document["paths"]["/health"]["get"]["security"], [{}])
        for path, operations in document["paths"].items():
            for method, operation in operations.items():
                if path == "/health" or not isinstance(operation, dict):
                    continue
                codes = set(operation["responses"])
                self.assertLessEqual({"401", "429"}, codes, (path, method))
                if method not in ("get", "head"):
                    self.assertIn("403", codes, (path, method))
