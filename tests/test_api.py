"""
The HTTP API, through a real Site and Request (treq's StubTreq), with the
in-memory store and a recording dispatcher.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import attrs
from treq.client import HTTPClient
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, gatherResults
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.server import Site

from hq.api import HISTORY_INTERVAL, HQApi
from hq.config import Config
from hq.history import HistoryBucket
from hq.ids import IdGenerator, id_to_ms
from hq.model import Attempt, Job, JobState, ListQuery, Outcome, format_time
from hq.store import Pushed, StoreUnavailable
from hq.store.memory import MemoryStore
from hq.store.sqlite import SQLiteStore
from hq.testing import RecordingDispatch

#: The fake clock's start, seconds since the Unix epoch.
T0 = 1_700_000_000
JSON = "application/json"
FORM = "application/x-www-form-urlencoded"

JOB_KEYS = [
    "attempts",
    "callbackJobId",
    "callbackUrl",
    "canceled",
    "comment",
    "createdAt",
    "err",
    "failure",
    "failureCallbackUrl",
    "finishedAt",
    "flowKey",
    "headers",
    "id",
    "idempotencyKey",
    "name",
    "output",
    "outputTruncated",
    "payload",
    "retries",
    "runAt",
    "running",
    "scheduleId",
    "startedAt",
    "status",
    "statusCode",
    "success",
    "timeout",
    "url",
    "waiting",
]
TIME_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\Z")


@attrs.frozen
class Reply:
    """
    One HTTP answer as the client saw it.
    """

    status: int
    headers: Headers
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name.encode("latin-1"))
        return None if values is None else values[0].decode("latin-1")


class APITestCase(SynchronousTestCase):
    """
    An API over a MemoryStore, a RecordingDispatch and a Clock.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.store = MemoryStore()
        self.dispatch = RecordingDispatch()
        self.config = Config(queues=100, dispatchers=2, max_workers=3, max_body_bytes=2048)
        self.client = self.client_for(self.store, self.config)

    def client_for(self, store: Any, config: Config) -> StubTreq:
        self.api = HQApi(
            store=store,
            dispatch=self.dispatch,
            ids=IdGenerator(0, self.clock),
            clock=self.clock,
            config=config,
            version="1.2.3",
            commit_hash="abc123",
        )
        return StubTreq(self.api.resource())

    def call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        """
        Send one request and return the answer.
        """
        sent = dict(headers or {})
        if content_type is not None:
            sent["Content-Type"] = content_type
        d = self.client.request(method, "http://hq.test" + path, data=body, headers=sent)
        self.pump(d)
        response = self.successResultOf(d)
        content = self.successResultOf(response.content())
        return Reply(response.code, response.headers, content)

    def reconfigure(self, **changes: Any) -> None:
        """
        Serve the same store with a changed config (ids go on from the stored ones).
        """
        self.client = self.client_for(self.store, attrs.evolve(self.config, **changes))
        self.api._ids.observe(self.successResultOf(self.store.max_id()))

    def pump(self, d: Deferred[Any]) -> None:
        """
        Deliver the client's bytes, giving the clock's turns (large batches
        and bulk actions yield to the reactor) until ``d`` has fired.
        """
        fired: list[bool] = []

        def note(result: object) -> object:
            fired.append(True)
            return result

        d.addBoth(note)
        self.client.flush()
        for _ in range(100_000):
            if fired:
                return
            self.clock.advance(0)
            self.client.flush()

    def post_json(self, path: str, value: Any) -> Reply:
        return self.call("POST", path, json.dumps(value).encode("utf-8"), JSON)

    def push(self, **fields: Any) -> dict[str, Any]:
        """
        Push a job and return its JSON.
        """
        fields.setdefault("url", "http://worker.test/run")
        reply = self.post_json("/job", fields)
        self.assertEqual(reply.status, 200, reply.body)
        result: dict[str, Any] = reply.json
        return result

    def stored(self, job_id: str) -> Job:
        job: Job = self.successResultOf(self.store.get(int(job_id)))
        return job

    def start_job(self, job_id: str) -> None:
        """
        Make a pushed job running, as a dispatcher would.
        """
        self.successResultOf(self.store.start(int(job_id), T0 * 1000 + 5))

    def finish_job(self, job_id: str, **outcome: Any) -> None:
        """
        Run a pushed job to the end (success unless told otherwise).
        """
        self.start_job(job_id)
        outcome.setdefault("success", True)
        self.successResultOf(
            self.store.finish(int(job_id), Outcome(finished_at=T0 * 1000 + 9, **outcome))
        )

    def assertError(self, reply: Reply, status: int, message: str) -> None:
        """
        The reply is the error body with this status and message.
        """
        self.assertEqual(
            (reply.status, reply.json), (status, {"status": status, "error": message}), reply.body
        )
        self.assertEqual(reply.header("Content-Type"), "application/json; charset=UTF-8")

    def assertErrorStartsWith(self, reply: Reply, status: int, prefix: str) -> None:
        """
        The reply is an error body with this status, its message starting with ``prefix``.
        """
        self.assertEqual(reply.status, status, reply.body)
        body = reply.json
        self.assertEqual(list(body), ["status", "error"])
        self.assertEqual(body["status"], status)
        self.assertTrue(body["error"].startswith(prefix), body["error"])


class ResponseFormatTests(APITestCase):
    """
    The one response writer: content type, newline, pretty, escapes.
    """

    def test_info_answers_any_method(self) -> None:
        """/ answers version and commit hash, compact, for every method."""
        for method in ("GET", "POST", "PUT", "DELETE", "PATCH"):
            reply = self.call(method, "/")
            self.assertEqual(reply.status, 200)
            self.assertEqual(reply.body, b'{"version":"1.2.3","commitHash":"abc123"}\n')
            self.assertEqual(reply.header("Content-Type"), "application/json; charset=UTF-8")

    def test_pretty_indents_two_spaces_whatever_its_value(self) -> None:
        """Any pretty key gives 2-space indented JSON with a trailing newline."""
        for query in ("?pretty", "?pretty=false", "?pretty=0&x=1"):
            reply = self.call("GET", "/" + query)
            self.assertEqual(reply.body, b'{\n  "version": "1.2.3",\n  "commitHash": "abc123"\n}\n')

    def test_pretty_is_case_sensitive(self) -> None:
        """PRETTY is not pretty (as the Go server)."""
        self.assertEqual(
            self.call("GET", "/?PRETTY").body, b'{"version":"1.2.3","commitHash":"abc123"}\n'
        )

    def test_pretty_keeps_job_key_order(self) -> None:
        """Pretty job JSON keeps the alphabetical key order and compact equivalence."""
        job = self.push(payload={"b": 1, "a": [1, {"z": None}]})
        reply = self.call("GET", f"/job/{job['id']}?pretty")
        self.assertIn(b'\n  "canceled": false,\n  "comment": ""', reply.body)
        self.assertEqual(list(reply.json), JOB_KEYS)
        self.assertEqual(reply.json, job)

    def test_error_bodies_honour_pretty(self) -> None:
        """Error bodies are indented too."""
        reply = self.call("GET", "/nothing?pretty")
        self.assertEqual(reply.body, b'{\n  "status": 404,\n  "error": "Not Found"\n}\n')

    def test_error_body_is_compact_status_then_error(self) -> None:
        """An error body is exactly {"status","error"} compact with a newline."""
        self.assertEqual(self.call("GET", "/nothing").body, b'{"status":404,"error":"Not Found"}\n')

    def test_html_characters_are_escaped_like_go(self) -> None:
        """<, >, &, U+2028 and U+2029 are written as \\u escapes."""
        job = self.push(name="<b>&\u2028\u2029", payload={"h": "<i>"})
        reply = self.call("GET", f"/job/{job['id']}")
        self.assertIn(b'"name":"\\u003cb\\u003e\\u0026\\u2028\\u2029"', reply.body)
        self.assertIn(b'"payload":{"h":"\\u003ci\\u003e"}', reply.body)
        self.assertEqual(reply.json["name"], "<b>&\u2028\u2029")

    def test_non_ascii_is_written_as_utf8(self) -> None:
        """Other non-ASCII text is sent as UTF-8, not escaped."""
        job = self.push(comment="caf\u00e9 \u2603")
        reply = self.call("GET", f"/job/{job['id']}")
        self.assertIn('"comment":"caf\u00e9 \u2603"'.encode(), reply.body)


class PushTests(APITestCase):
    """
    POST /job.
    """

    def test_push_answers_the_waiting_job_with_every_key(self) -> None:
        """The push answer is the job, waiting, every key present with its type."""
        reply = self.post_json(
            "/job",
            {
                "url": "http://worker.test/run",
                "name": "mail",
                "comment": "hello",
                "payload": {"to": ["a@b.test"], "n": 1.5},
                "headers": {"X-Token": "t"},
                "timeout": 30,
            },
        )
        self.assertEqual(reply.status, 200)
        self.assertTrue(reply.body.endswith(b"}\n"))
        job = reply.json
        self.assertEqual(list(job), JOB_KEYS)
        self.assertIsInstance(job["id"], str)
        self.assertTrue(TIME_RE.match(job["createdAt"]), job["createdAt"])
        self.assertEqual(id_to_ms(int(job["id"])), T0 * 1000)
        self.assertEqual(
            {k: v for k, v in job.items() if k not in ("id", "createdAt")},
            {
                "attempts": 0,
                "callbackJobId": None,
                "callbackUrl": None,
                "canceled": False,
                "comment": "hello",
                "err": "",
                "failure": False,
                "failureCallbackUrl": None,
                "finishedAt": None,
                "flowKey": "worker.test:80",
                "headers": {"X-Token": "t"},
                "idempotencyKey": None,
                "name": "mail",
                "output": "",
                "outputTruncated": False,
                "payload": {"to": ["a@b.test"], "n": 1.5},
                "retries": 0,
                "runAt": None,
                "running": False,
                "scheduleId": None,
                "startedAt": None,
                "status": "waiting",
                "statusCode": None,
                "success": False,
                "timeout": 30,
                "url": "http://worker.test/run",
                "waiting": True,
            },
        )

    def test_push_stores_and_enqueues_the_job(self) -> None:
        """The pushed job is stored, then handed to the dispatcher."""
        job = self.push(payload={"a": 1})
        stored = self.stored(job["id"])
        self.assertEqual(self.dispatch.enqueued, [stored])
        self.assertEqual(stored.state, JobState.WAITING)

    def test_payload_is_stored_as_compact_json(self) -> None:
        """The payload is kept as compact JSON text, non-ASCII unescaped."""
        reply = self.call(
            "POST",
            "/job",
            b'{"url": "http://w.test/", "payload": {"a" : [1, 2],\n "b": "\\u00e9"}}',
            JSON,
        )
        self.assertEqual(self.stored(reply.json["id"]).payload, '{"a":[1,2],"b":"\u00e9"}')

    def test_payload_of_every_json_type(self) -> None:
        """Any JSON value is a payload; null or absent means none."""
        for value in ("text", 42, -1.25, True, [1, "x"], {}):
            job = self.push(payload=value)
            self.assertEqual(job["payload"], value)
        self.assertIsNone(self.stored(self.push(payload=None)["id"]).payload)
        self.assertIsNone(self.stored(self.push()["id"]).payload)

    def test_name_defaults_to_default(self) -> None:
        """An absent, null or empty name becomes "default"."""
        self.assertEqual(self.push()["name"], "default")
        self.assertEqual(self.push(name="")["name"], "default")
        self.assertEqual(self.push(name=None)["name"], "default")

    def test_null_fields_count_as_absent(self) -> None:
        """null for comment, headers and timeout gives the defaults."""
        job = self.push(comment=None, headers=None, timeout=None)
        self.assertEqual((job["comment"], job["headers"], job["timeout"]), ("", None, 0))

    def test_empty_headers_object_is_kept(self) -> None:
        """headers {} stays {} (as the Go server)."""
        self.assertEqual(self.push(headers={})["headers"], {})

    def test_keys_match_case_insensitively_and_unknown_keys_are_ignored(self) -> None:
        """URL, Name, TIMEOUT bind like Go; unknown keys are ignored."""
        reply = self.post_json(
            "/job", {"URL": "http://w.test/", "Name": "n", "TIMEOUT": 3, "colour": "red"}
        )
        self.assertEqual(reply.status, 200, reply.body)
        job = reply.json
        self.assertEqual((job["url"], job["name"], job["timeout"]), ("http://w.test/", "n", 3))

    def test_later_case_variant_wins(self) -> None:
        """With url and URL both given, the later key wins (as Go)."""
        reply = self.call("POST", "/job", b'{"url":"http://a.test/","URL":"http://b.test/"}', JSON)
        self.assertEqual(reply.json["url"], "http://b.test/")

    def test_json_with_charset_parameter_is_json(self) -> None:
        """application/json; charset=utf-8 is accepted."""
        reply = self.call(
            "POST", "/job", b'{"url":"http://w.test/"}', "application/json; charset=utf-8"
        )
        self.assertEqual(reply.status, 200, reply.body)

    def test_urlencoded_form_body(self) -> None:
        """A form body binds url, name, comment and timeout."""
        body = b"url=http%3A%2F%2Fw.test%2Fa%3Fb%3D1&name=form+job&comment=c&timeout=7"
        job = self.call("POST", "/job", body, FORM).json
        self.assertEqual(
            (job["url"], job["name"], job["comment"], job["timeout"]),
            ("http://w.test/a?b=1", "form job", "c", 7),
        )
        self.assertEqual(len(self.dispatch.enqueued), 1)

    def test_form_keys_case_insensitive_exact_first_and_first_value_wins(self) -> None:
        """Form keys: an exact key is preferred, else any case; the first value wins."""
        body = b"URL=http://upper.test/&url=http://exact.test/&url=http://second.test/&NAME=x"
        job = self.call("POST", "/job", body, FORM).json
        self.assertEqual((job["url"], job["name"]), ("http://exact.test/", "x"))

    def test_multipart_form_body(self) -> None:
        """A multipart/form-data body binds like a urlencoded one."""
        body = (
            b"--XyZ\r\n"
            b'Content-Disposition: form-data; name="url"\r\n\r\n'
            b"http://w.test/m\r\n"
            b"--XyZ\r\n"
            b'Content-Disposition: form-data; name="comment"\r\n\r\n'
            b"caf\xc3\xa9\r\n"
            b"--XyZ--\r\n"
        )
        reply = self.call("POST", "/job", body, "multipart/form-data; boundary=XyZ")
        self.assertEqual(reply.status, 200, reply.body)
        self.assertEqual(
            (reply.json["url"], reply.json["comment"]), ("http://w.test/m", "caf\u00e9")
        )

    def test_form_timeout_must_be_an_integer(self) -> None:
        """timeout=x in a form is a 400 naming the field."""
        reply = self.call("POST", "/job", b"url=http://w.test/&timeout=x", FORM)
        self.assertError(reply, 400, "'timeout' must be an integer, not 'x'")

    def test_form_headers_field_is_refused(self) -> None:
        """headers cannot be a form field (it is an object)."""
        reply = self.call("POST", "/job", b"url=http://w.test/&headers=a", FORM)
        self.assertError(reply, 400, "'headers' can only be given in a JSON body")

    def test_json_sent_as_form_says_url_is_required(self) -> None:
        """curl -d without a JSON content type: the body is a form key, so url is missing."""
        reply = self.call("POST", "/job", b'{"url":"http://w.test/"}', FORM)
        self.assertError(reply, 422, "'url' is required")

    def test_payload_query_parameter_is_the_whole_request(self) -> None:
        """?payload=<JSON> is the whole push request; a body is then ignored."""
        whole = quote(json.dumps({"url": "http://q.test/", "payload": {"k": 1}}))
        reply = self.call("POST", f"/job?payload={whole}", b'{"url":"http://body.test/"}', JSON)
        self.assertEqual(reply.status, 200, reply.body)
        self.assertEqual((reply.json["url"], reply.json["payload"]), ("http://q.test/", {"k": 1}))

    def test_payload_form_field_is_the_whole_request(self) -> None:
        """A form field payload=<JSON> is the whole push request."""
        whole = quote(json.dumps({"url": "http://f.test/", "name": "n"})).encode()
        reply = self.call("POST", "/job", b"payload=" + whole, FORM)
        self.assertEqual((reply.json["url"], reply.json["name"]), ("http://f.test/", "n"))

    def test_payload_parameter_with_bad_json_is_400(self) -> None:
        """Malformed JSON in ?payload= is a 400 (the Go server says 500)."""
        reply = self.call("POST", "/job?payload=%7Bnope")
        self.assertErrorStartsWith(reply, 400, "Malformed JSON in the 'payload' parameter")

    def test_empty_post_says_url_is_required(self) -> None:
        """A POST with no body is a 422 'url' is required."""
        self.assertError(self.call("POST", "/job"), 422, "'url' is required")

    def test_url_is_required(self) -> None:
        """A missing, empty or null url is a 422."""
        for body in ({}, {"url": ""}, {"url": None}, {"name": "x"}):
            self.assertError(self.post_json("/job", body), 422, "'url' is required")
        self.assertEqual(self.dispatch.enqueued, [])

    def test_url_must_be_absolute_http(self) -> None:
        """A url that is not an absolute http(s) URL with a host is a 422 naming it."""
        for url in (
            "/relative",
            "worker.test/run",
            "ftp://w.test/",
            "http://",
            "http:///path",
            "http://w.test:99999/",
            "http://w.test/a b",
            "javascript:alert(1)",
        ):
            reply = self.post_json("/job", {"url": url})
            self.assertError(
                reply, 422, f"'url' must be an absolute http or https URL, not {url!r}"
            )

    def test_https_and_ipv6_urls_are_accepted(self) -> None:
        """https, upper-case schemes, ports and IPv6 hosts are fine."""
        for url in ("https://w.test/", "HTTP://W.TEST:8080/x?y#z", "http://[::1]:9/"):
            self.assertEqual(self.push(url=url)["url"], url)

    def test_negative_timeout_is_422(self) -> None:
        """A negative timeout is refused with a message a person reads easily."""
        reply = self.post_json("/job", {"url": "http://w.test/", "timeout": -1})
        self.assertError(reply, 422, "'timeout' must be 0 or more seconds, not -1")

    def test_integral_number_timeout_is_that_integer(self) -> None:
        """A timeout of 5.0 or 1e3 is an integer in JSON (as in JSON Schema): 5 and 1000."""
        for text, expected in (("5.0", 5), ("1e3", 1000)):
            body = b'{"url": "http://w.test/", "timeout": %s}' % text.encode()
            reply = self.call("POST", "/job", body, JSON)
            self.assertEqual((reply.status, reply.json["timeout"]), (200, expected))

    def test_form_timeout_digits_with_leading_zeros_are_read(self) -> None:
        """A form timeout of "+" and 45 zeros then 5 is 5; an empty one is absent (0)."""
        body = b"url=http%3A%2F%2Fw.test%2F&timeout=%2B" + b"0" * 45 + b"5"
        reply = self.call("POST", "/job", body, FORM)
        self.assertEqual((reply.status, reply.json["timeout"]), (200, 5))
        reply = self.call("POST", "/job", b"url=http%3A%2F%2Fw.test%2F&timeout=", FORM)
        self.assertEqual((reply.status, reply.json["timeout"]), (200, 0))

    def test_huge_timeout_is_422(self) -> None:
        """timeout must fit in a signed 64-bit integer."""
        reply = self.post_json("/job", {"url": "http://w.test/", "timeout": 1 << 63})
        self.assertError(reply, 422, f"'timeout' must be at most {(1 << 63) - 1} seconds")

    def test_wrong_field_types_are_400_naming_the_field(self) -> None:
        """Each field of the wrong JSON type is a 400 that names it."""
        cases = [
            ({"url": 1}, "'url' must be a string, not 1"),
            ({"name": ["a"]}, "'name' must be a string, not an array"),
            ({"comment": {}}, "'comment' must be a string, not an object"),
            ({"timeout": "5"}, "'timeout' must be an integer, not a string"),
            ({"timeout": 1.5}, "'timeout' must be an integer, not 1.5"),
            ({"timeout": True}, "'timeout' must be an integer, not true"),
            ({"timeout": [5]}, "'timeout' must be an integer, not an array"),
            ({"headers": ["a"]}, "'headers' must be an object of strings, not an array"),
            ({"headers": {"X-A": 1}}, "'headers' value for 'X-A' must be a string, not 1"),
        ]
        for fields, message in cases:
            reply = self.post_json("/job", dict({"url": "http://w.test/"}, **fields))
            self.assertError(reply, 400, message)

    def test_invalid_header_names_and_values_are_422(self) -> None:
        """A header name that is not a token, or a value with CR/LF, is refused."""
        reply = self.post_json("/job", {"url": "http://w.test/", "headers": {"X A": "b"}})
        self.assertError(
            reply,
            422,
            "'headers' has an invalid header name 'X A': a name is letters, digits and "
            "!#$%&'*+-.^_`|~ only (no spaces)",
        )
        reply = self.post_json("/job", {"url": "http://w.test/", "headers": {"X-A": "b\r\nX: y"}})
        self.assertError(reply, 422, "'headers' value for 'X-A' must not contain CR, LF or NUL")

    def test_malformed_json_is_400_with_position(self) -> None:
        """Malformed JSON is a 400 saying where."""
        reply = self.call("POST", "/job", b'{"url": x}', JSON)
        self.assertError(
            reply,
            400,
            "Malformed JSON in the request body at line 1, column 9 (offset 8): Expecting value",
        )

    def test_truncated_and_blank_json_are_400(self) -> None:
        """Truncated JSON, blank bodies and trailing data are 400s."""
        for body in (b'{"url": "http://w.test/"', b"   ", b'{"url":"http://w.test/"} {}'):
            reply = self.call("POST", "/job", body, JSON)
            self.assertErrorStartsWith(reply, 400, "Malformed JSON in the request body")

    def test_byte_order_marks(self) -> None:
        """
        One UTF-8 byte order mark before a body is allowed (and dropped); a
        second is a 400 that says so.
        """
        body = b'{"url":"http://w.test/"}'
        self.assertEqual(self.call("POST", "/job", b"\xef\xbb\xbf" + body, JSON).status, 200)
        reply = self.call("POST", "/job", b"\xef\xbb\xbf" * 2 + body, JSON)
        self.assertError(
            reply,
            400,
            "Malformed JSON in the request body at line 1, column 1 (offset 0): "
            "Unexpected UTF-8 BOM (decode using utf-8-sig)",
        )

    def test_top_level_must_be_an_object(self) -> None:
        """A JSON array, string or null body is a 400."""
        for body, kind in ((b"[]", "an array"), (b'"x"', "a string"), (b"null", "null")):
            reply = self.call("POST", "/job", body, JSON)
            self.assertError(reply, 400, f"The request body must be a JSON object, not {kind}")

    def test_nan_infinity_and_overflowing_numbers_are_400(self) -> None:
        """NaN, Infinity and numbers too large for a double are not JSON."""
        for text, message in (
            (b"NaN", "NaN is not a JSON number"),
            (b"-Infinity", "-Infinity is not a JSON number"),
            (b"1e999", "The number 1e999 is too large"),
        ):
            body = b'{"url":"http://w.test/","payload":' + text + b"}"
            self.assertError(self.call("POST", "/job", body, JSON), 400, message)

    def test_huge_integer_is_400(self) -> None:
        """An integer too long to convert is a 400, not a 500."""
        self.client = self.client_for(self.store, Config(max_body_bytes=1 << 20))
        body = b'{"url":"http://w.test/","payload":' + b"9" * 5000 + b"}"
        reply = self.call("POST", "/job", body, "application/json")
        self.assertErrorStartsWith(reply, 400, "Malformed JSON in the request body")

    def test_deep_nesting_is_400(self) -> None:
        """A payload nested deeper than the parser can go is a 400."""
        self.client = self.client_for(self.store, Config(max_body_bytes=1 << 20))
        body = b'{"url":"http://w.test/","payload":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        reply = self.call("POST", "/job", body, JSON)
        self.assertError(reply, 400, "The JSON in the request body is nested too deeply")

    def test_lone_surrogate_is_400_naming_the_field(self) -> None:
        """A string that cannot be UTF-8 (a lone surrogate escape) is refused."""
        for field in ("name", "comment", "payload"):
            body = b'{"url":"http://w.test/","' + field.encode() + b'":"a\\ud800"}'
            reply = self.call("POST", "/job", body, JSON)
            self.assertError(
                reply, 400, f"'{field}' is not valid UTF-8: it contains a lone surrogate escape"
            )
        body = b'{"url":"http://w.test/","headers":{"X-A":"\\udfff"}}'
        self.assertErrorStartsWith(self.call("POST", "/job", body, JSON), 400, "'headers'")

    def test_invalid_utf8_body_is_400(self) -> None:
        """A JSON body that is not UTF-8 is a 400."""
        reply = self.call("POST", "/job", b'{"url":"http://w.test/\xff"}', JSON)
        self.assertError(reply, 400, "The request body is not valid UTF-8 (byte 22)")

    def test_other_media_type_is_415_naming_it(self) -> None:
        """A body of another media type is a 415 naming the type."""
        reply = self.call("POST", "/job", b"url: x", "text/plain; charset=utf-8")
        self.assertError(
            reply, 415, "Unsupported Media Type 'text/plain': send application/json (or form data)"
        )

    def test_body_without_content_type_is_415(self) -> None:
        """A body with no Content-Type is a 415."""
        reply = self.call("POST", "/job", b'{"url":"http://w.test/"}')
        self.assertErrorStartsWith(reply, 415, "Unsupported Media Type: the request body has no")

    def test_body_over_the_limit_is_413(self) -> None:
        """A body larger than max_body_bytes is a 413, and nothing is stored."""
        body = json.dumps({"url": "http://w.test/", "payload": "x" * 3000}).encode()
        reply = self.call("POST", "/job", body, JSON)
        self.assertError(reply, 413, "The request body is larger than the limit of 2048 bytes")
        self.assertEqual(self.successResultOf(self.store.counts(0, 0)).stored, 0)

    def test_body_at_the_limit_is_accepted(self) -> None:
        """A body of exactly max_body_bytes is fine."""
        head = b'{"url":"http://w.test/","comment":"'
        body = head + b"x" * (2048 - len(head) - 2) + b'"}'
        self.assertEqual(len(body), 2048)
        self.assertEqual(self.call("POST", "/job", body, JSON).status, 200)

    def test_store_unavailable_is_503_and_nothing_is_enqueued(self) -> None:
        """A store that cannot write gives 503, logged, and the job is not queued."""
        self.store.writable = False
        with capturedLogs() as events:
            reply = self.post_json("/job", {"url": "http://w.test/"})
        self.assertError(reply, 503, "storage unavailable, try again later")
        self.assertEqual(self.dispatch.enqueued, [])
        logged = [e for e in events if e.get("log_failure") is not None]
        self.assertEqual(len(logged), 1)
        self.assertTrue(logged[0]["log_failure"].check(StoreUnavailable))
        self.assertEqual(logged[0]["log_level"], LogLevel.error)
        self.assertEqual(len(self.flushLoggedErrors(StoreUnavailable)), 1)

    def early_push(self) -> tuple[Deferred[Any], list[str], Deferred[Any]]:
        """
        Push with a dispatcher reserved and a store that says the job is
        committed before its push fires; return the request, what the
        dispatcher was asked, and the Deferred that holds the push.
        """
        held: Deferred[None] = Deferred()
        asked: list[str] = []

        class EarlyStore(MemoryStore):
            def push(
                self, jobs: list[Job], keys_since: int, committed: Any = None
            ) -> Deferred[list[Pushed]]:
                stored = self.successResultOf(super().push(jobs, keys_since))
                assert committed is not None
                committed()
                return held.addCallback(lambda _: stored)

            successResultOf = self.successResultOf

        class Reserving(RecordingDispatch):
            def reserve(self, job: Job) -> object:
                return attrs.make_class("Reservation", ["job"])(job.started(T0))

            def deliver(self, reservation: object) -> None:
                asked.append("deliver")

            def unreserve(self, reservation: object) -> None:
                asked.append("unreserve")

        self.dispatch = Reserving()
        self.client = self.client_for(EarlyStore(), self.config)
        d = self.client.post(
            "http://hq.test/job", data=b'{"url":"http://w.test/"}', headers={"Content-Type": JSON}
        )
        self.client.flush()
        return d, asked, held

    def test_reserved_job_sent_once_committed_answered_once_synced(self) -> None:
        """
        A reserved job is handed to its dispatcher as soon as the store says
        it is committed; the push is answered only once the store's push
        fires (on disk).
        """
        d, asked, held = self.early_push()
        self.assertEqual(asked, ["deliver"])
        self.assertNoResult(d)
        held.callback(None)
        self.client.flush()
        self.assertEqual(self.successResultOf(d).code, 200)
        self.assertEqual(asked, ["deliver"])

    def test_reserved_job_sent_then_sync_failed(self) -> None:
        """
        A committed job whose sync then fails was delivered already: its
        dispatcher keeps it (no unreserve), and the push is answered 503.
        """
        d, asked, held = self.early_push()
        held.errback(StoreUnavailable("storage unavailable: cannot sync the log file"))
        self.client.flush()
        self.assertEqual(self.successResultOf(d).code, 503)
        self.assertEqual(asked, ["deliver"])
        self.flushLoggedErrors(StoreUnavailable)

    def test_push_goes_on_when_the_client_leaves(self) -> None:
        """A client that disconnects mid-push still gets its stored job queued."""
        created: Deferred[None] = Deferred()

        class SlowStore(MemoryStore):
            def push(
                self, jobs: list[Job], keys_since: int, committed: Any = None
            ) -> Deferred[list[Pushed]]:
                stored = super().push(jobs, keys_since)
                return created.addCallback(lambda _: stored)

        self.client = self.client_for(SlowStore(), self.config)
        d = self.client.post(
            "http://hq.test/job", data=b'{"url":"http://w.test/"}', headers={"Content-Type": JSON}
        )
        self.client.flush()
        self.assertNoResult(d)
        d.cancel()
        self.client.flush()
        self.failureResultOf(d)
        self.assertEqual(self.dispatch.enqueued, [])
        created.callback(None)
        self.assertEqual(len(self.dispatch.enqueued), 1)

    def test_a_cluster_node_claims_with_the_push(self) -> None:
        """
        On a cluster node, the dispatcher is asked to claim while the push is
        being stored, so that its claim shares the push's transaction; once
        stored, a job due by the time it answered is not enqueued (claimed
        already), a job due later is, single or in a batch.
        """
        asked: list[Any] = []
        held: list[Deferred[None]] = []

        class HeldStore(MemoryStore):
            def push(
                self, jobs: list[Job], keys_since: int, committed: Any = None
            ) -> Deferred[list[Pushed]]:
                asked.append("push")
                stored = super().push(jobs, keys_since)
                held.append(Deferred())
                return held[-1].addCallback(lambda _: stored)

        class Claiming(RecordingDispatch):
            def claim_with_push(self, jobs: Sequence[Job]) -> int:
                asked.append(("claim", len(jobs), len(held)))
                return T0 * 1000

        self.dispatch = Claiming()
        self.client = self.client_for(HeldStore(), self.config)
        sent = [
            self.client.post("http://hq.test/job", data=body, headers={"Content-Type": JSON})
            for body in (b'{"url":"http://w.test/"}', b'{"url":"http://w.test/","delay":5}')
        ]
        sent.append(
            self.client.post(
                "http://hq.test/jobs",
                data=b'[{"url":"http://w.test/"},{"url":"http://w.test/","delay":5}]',
                headers={"Content-Type": JSON},
            )
        )
        self.client.flush()
        # Each claim is asked for right after its push, before it is stored.
        self.assertEqual(
            asked, ["push", ("claim", 1, 1), "push", ("claim", 1, 2), "push", ("claim", 2, 3)]
        )
        self.assertEqual(self.dispatch.enqueued, [])
        for each in held:
            each.callback(None)
        self.client.flush()
        self.assertEqual([self.successResultOf(d).code for d in sent], [200, 200, 200])
        self.assertEqual([job.run_at for job in self.dispatch.enqueued], [T0 * 1000 + 5000] * 2)

    def test_ids_increase(self) -> None:
        """Each push gets a new, greater id."""
        ids = [int(self.push()["id"]) for _ in range(3)]
        self.assertEqual(ids, sorted(set(ids)))


class GetTests(APITestCase):
    """
    GET /job/<id>.
    """

    def test_get_answers_the_job(self) -> None:
        """A stored job is answered with every key, times as RFC 3339 ms Z."""
        job = self.push(name="n")
        self.finish_job(job["id"], status_code=200, output="done")
        got = self.call("GET", f"/job/{job['id']}").json
        self.assertEqual(list(got), JOB_KEYS)
        self.assertEqual(got["startedAt"], "2023-11-14T22:13:20.005Z")
        self.assertEqual(got["finishedAt"], "2023-11-14T22:13:20.009Z")
        self.assertEqual(
            (got["status"], got["statusCode"], got["output"], got["success"], got["waiting"]),
            ("success", 200, "done", True, False),
        )

    def test_unknown_id_is_404(self) -> None:
        """An id that is not stored is a 404 naming it."""
        self.assertError(self.call("GET", "/job/123"), 404, "The job '123' is not found")

    def test_leading_zeros_are_the_number(self) -> None:
        """The id is a number: 007 is job 7."""
        self.assertError(self.call("GET", "/job/007"), 404, "The job '7' is not found")

    def test_non_numeric_id_is_404(self) -> None:
        """A path id that is not a number is a 404 saying so."""
        for raw in ("abc", "-1", "+1", "1.5", "\u0661", str(1 << 64)):
            reply = self.call("GET", "/job/" + quote(raw))
            self.assertError(reply, 404, f"The job id must be a number but '{raw}'")

    def test_id_that_is_not_utf8_is_a_json_400(self) -> None:
        """A path that is not UTF-8 gets the JSON error body."""
        self.assertError(self.call("GET", "/job/%FF"), 400, "The URL is not valid UTF-8")

    def test_very_long_id_is_404(self) -> None:
        """An id of thousands of digits is a 404, not a 500."""
        raw = "9" * 5000
        self.assertError(
            self.call("GET", "/job/" + raw), 404, f"The job id must be a number but '{raw}'"
        )

    def test_id_above_every_possible_id_is_not_found(self) -> None:
        """A uint64 id above the signed range is simply not found."""
        raw = str((1 << 64) - 1)
        self.assertError(self.call("GET", "/job/" + raw), 404, f"The job '{raw}' is not found")


class ListTests(APITestCase):
    """
    GET /job.
    """

    def setUp(self) -> None:
        super().setUp()
        names = ["alpha", "beta", "alpha", "gamma", "alpha"]
        self.ids = [self.push(name=name, comment=f"c{i}")["id"] for i, name in enumerate(names)]

    def page(self, query: str) -> dict[str, Any]:
        reply = self.call("GET", "/job" + query)
        self.assertEqual(reply.status, 200, reply.body)
        result: dict[str, Any] = reply.json
        return result

    def listed(self, query: str) -> list[str]:
        return [job["id"] for job in self.page(query)["jobs"]]

    def test_list_shape(self) -> None:
        """The list is {jobs, hasNext, next, count} with full jobs."""
        page = self.page("?limit=2")
        self.assertEqual(list(page), ["jobs", "hasNext", "next", "count"])
        self.assertEqual(list(page["jobs"][0]), JOB_KEYS)
        self.assertEqual((page["hasNext"], page["next"], page["count"]), (True, self.ids[2], 2))

    def test_huge_begin_in_payload_parameter_is_not_a_500(self) -> None:
        """A 5,000-digit begin given as a string in ?payload= lists nothing, no 500."""
        query = quote(json.dumps({"begin": "9" * 5000}))
        self.assertEqual(self.page("?payload=" + query)["jobs"], [])

    def test_last_page_has_no_next(self) -> None:
        """With nothing further, hasNext is false and next is absent."""
        page = self.page("")
        self.assertEqual(list(page), ["jobs", "hasNext", "count"])
        self.assertEqual((page["hasNext"], page["count"]), (False, 5))
        self.assertEqual([job["id"] for job in page["jobs"]], self.ids)

    def test_empty_list_is_an_empty_array(self) -> None:
        """No match gives jobs: [] and count 0."""
        self.assertEqual(self.page("?name=zeta"), {"jobs": [], "hasNext": False, "count": 0})

    def test_paging_forward_begin_is_inclusive(self) -> None:
        """begin=<next> continues without gaps or duplicates."""
        first = self.page("?limit=2")
        second = self.page(f"?limit=2&begin={first['next']}")
        third = self.page(f"?limit=2&begin={second['next']}")
        self.assertEqual([j["id"] for j in second["jobs"]], self.ids[2:4])
        self.assertEqual([j["id"] for j in third["jobs"]], self.ids[4:])
        self.assertFalse(third["hasNext"])

    def test_paging_in_reverse(self) -> None:
        """reverse starts at the newest; begin is inclusive going down."""
        first = self.page("?reverse=true&limit=2")
        self.assertEqual([j["id"] for j in first["jobs"]], self.ids[:2:-1])
        self.assertEqual(first["next"], self.ids[2])
        second = self.page(f"?reverse=1&limit=2&begin={first['next']}")
        self.assertEqual([j["id"] for j in second["jobs"]], [self.ids[2], self.ids[1]])
        self.assertEqual(self.listed(f"?reverse&begin={self.ids[0]}"), [self.ids[0]])

    def test_reverse_begin_between_ids_starts_below(self) -> None:
        """A reverse begin that is not an id starts at the greatest id below it."""
        self.assertEqual(
            self.listed(f"?reverse=true&begin={int(self.ids[3]) - 1}"), self.ids[2::-1]
        )

    def test_bare_or_empty_reverse_means_true(self) -> None:
        """?reverse and ?reverse= both reverse the order."""
        self.assertEqual(self.listed("?reverse"), self.ids[::-1])
        self.assertEqual(self.listed("?reverse="), self.ids[::-1])
        self.assertEqual(self.listed("?reverse=F"), self.ids)

    def test_has_next_honours_filters(self) -> None:
        """hasNext is true only if a further matching job exists."""
        page = self.page("?name=alpha&limit=2")
        self.assertEqual((page["hasNext"], page["next"]), (True, self.ids[4]))
        page = self.page(f"?name=alpha&begin={self.ids[1]}&limit=2")
        self.assertEqual([j["id"] for j in page["jobs"]], [self.ids[2], self.ids[4]])
        self.assertFalse(page["hasNext"])
        page = self.page("?name=beta&limit=1")
        self.assertEqual((page["count"], page["hasNext"]), (1, False))

    def test_name_filter_is_an_unanchored_regexp(self) -> None:
        """name is an RE2 search on the name only."""
        self.assertEqual(self.listed("?name=lph"), [self.ids[0], self.ids[2], self.ids[4]])
        self.assertEqual(self.listed("?name=%5E(beta%7Cgamma)%24"), [self.ids[1], self.ids[3]])
        self.assertEqual(self.listed("?name=c1"), [])

    def test_term_matches_name_id_comment_url_or_status(self) -> None:
        """term searches name, id, comment, url and status."""
        self.assertEqual(self.listed("?term=c3"), [self.ids[3]])
        self.assertEqual(self.listed(f"?term={self.ids[1]}"), [self.ids[1]])
        self.assertEqual(self.listed("?term=gam"), [self.ids[3]])
        self.assertEqual(len(self.listed("?term=worker%5C.test")), 5)
        self.finish_job(self.ids[0], success=False, failure=True)
        self.assertEqual(self.listed("?term=fail"), [self.ids[0]])

    def test_status_filter_is_exact(self) -> None:
        """status matches the derived status exactly."""
        self.finish_job(self.ids[1])
        self.start_job(self.ids[2])
        self.assertEqual(self.listed("?status=success"), [self.ids[1]])
        self.assertEqual(self.listed("?status=running"), [self.ids[2]])
        self.assertEqual(self.listed("?status=waiting"), [self.ids[0], self.ids[3], self.ids[4]])
        self.assertEqual(self.listed("?status="), self.ids)

    def test_unknown_status_is_400(self) -> None:
        """A status no job can have is a 400 listing the valid ones."""
        self.assertErrorStartsWith(
            self.call("GET", "/job?status=done"),
            400,
            "'status' must be one of waiting, scheduled, running",
        )

    def test_filters_combine(self) -> None:
        """All filters are ANDed."""
        self.finish_job(self.ids[2])
        self.assertEqual(self.listed("?name=alpha&status=waiting"), [self.ids[0], self.ids[4]])
        self.assertEqual(self.listed("?name=alpha&term=c4"), [self.ids[4]])

    def test_limit_zero_or_absent_uses_the_configured_default(self) -> None:
        """limit 0 or absent means job_list_default_limit."""
        self.client = self.client_for(self.store, Config(job_list_default_limit=2))
        self.assertEqual(self.listed(""), self.ids[:2])
        self.assertEqual(self.listed("?limit=0"), self.ids[:2])
        self.assertEqual(self.listed("?limit="), self.ids[:2])
        self.assertEqual(self.listed("?limit=3"), self.ids[:3])

    def test_negative_limit_means_no_limit(self) -> None:
        """A negative limit lists everything, even with a default limit."""
        self.client = self.client_for(self.store, Config(job_list_default_limit=2))
        self.assertEqual(self.listed("?limit=-1"), self.ids)

    def test_default_limit_zero_means_no_limit(self) -> None:
        """With job_list_default_limit 0, no limit lists everything."""
        self.assertEqual(self.listed("?limit=0"), self.ids)

    def test_huge_limit_and_begin_are_fine(self) -> None:
        """A limit or begin beyond 64 bits is clamped, not an error."""
        self.assertEqual(self.listed("?limit=99999999999999999999"), self.ids)
        self.assertEqual(self.listed("?begin=99999999999999999999"), [])
        self.assertEqual(self.listed("?begin=99999999999999999999&reverse"), self.ids[::-1])

    def test_very_long_numbers_are_clamped(self) -> None:
        """Limits and begins of thousands of digits are clamped, not a 500."""
        self.assertEqual(self.listed("?limit=" + "9" * 5000), self.ids)
        self.assertEqual(self.listed("?limit=-" + "9" * 5000), self.ids)
        self.assertEqual(self.listed("?reverse&begin=" + "9" * 5000), self.ids[::-1])

    def test_empty_begin_means_none(self) -> None:
        """begin= is no begin (reverse then starts at the newest)."""
        self.assertEqual(self.listed("?begin=&reverse=true"), self.ids[::-1])

    def test_query_keys_are_case_insensitive_and_first_value_wins(self) -> None:
        """?LIMIT=1 works; a repeated key takes its first value."""
        self.assertEqual(self.listed("?LIMIT=1"), self.ids[:1])
        self.assertEqual(self.listed("?limit=2&limit=x"), self.ids[:2])
        self.assertEqual(self.listed("?Reverse=true&limit=1"), self.ids[-1:])

    def test_payload_query_parameter_is_the_whole_query(self) -> None:
        """?payload=<JSON> carries the list request (as the Go server)."""
        whole = quote(json.dumps({"limit": 1, "reverse": True, "Name": "alpha"}))
        self.assertEqual(self.listed(f"?payload={whole}"), [self.ids[4]])
        whole = quote(json.dumps({"begin": self.ids[3]}))
        self.assertEqual(self.listed(f"?payload={whole}"), self.ids[3:])

    def test_bad_query_values_are_400_naming_the_parameter(self) -> None:
        """Bad limit, begin and reverse values are 400s that name them."""
        cases = [
            ("?limit=x", "'limit' must be an integer, not 'x'"),
            ("?limit=1.5", "'limit' must be an integer, not '1.5'"),
            ("?limit=1_0", "'limit' must be an integer, not '1_0'"),
            ("?begin=-1", "'begin' must be a job id (a whole number, 0 or more), not '-1'"),
            ("?begin=abc", "'begin' must be a job id (a whole number, 0 or more), not 'abc'"),
            ("?reverse=yes", "'reverse' must be true or false, not 'yes'"),
            ('?payload={"limit":"1"}', "'limit' must be an integer, not a string"),
            ('?payload={"reverse":1}', "'reverse' must be true or false, not 1"),
            (
                '?payload={"begin":-1}',
                "'begin' must be a job id (a whole number, 0 or more), not -1",
            ),
            (
                '?payload={"begin":true}',
                "'begin' must be a job id (a whole number, 0 or more), not true",
            ),
        ]
        for query, message in cases:
            self.assertError(self.call("GET", "/job" + quote(query, safe="?=&")), 400, message)

    def test_invalid_regexp_is_400_naming_the_parameter(self) -> None:
        """An invalid RE2 regexp is a 400 with the parameter and the reason."""
        reply = self.call("GET", "/job?name=" + quote("(?=x)"))
        self.assertErrorStartsWith(reply, 400, "'name' is not a valid regexp: ")
        self.assertIn("perl", reply.json["error"])
        reply = self.call("GET", "/job?term=" + quote("a("))
        self.assertErrorStartsWith(reply, 400, "'term' is not a valid regexp: missing )")

    def test_invalid_regexp_is_400_even_with_no_jobs(self) -> None:
        """The regexp is checked before the store is read."""
        self.store = MemoryStore()
        self.client = self.client_for(self.store, self.config)
        self.assertEqual(self.call("GET", "/job?term=a(").status, 400)

    def test_query_string_that_is_not_utf8_is_400(self) -> None:
        """A percent-escape that is not UTF-8 is a 400."""
        self.assertError(
            self.call("GET", "/job?name=%FF"), 400, "The query string is not valid UTF-8"
        )

    def test_body_of_a_get_is_ignored(self) -> None:
        """A list reads only the query string."""
        reply = self.call("GET", "/job?limit=1", b"junk", "text/plain")
        self.assertEqual(reply.json["count"], 1)


class DeleteTests(APITestCase):
    """
    DELETE /job/<id>.
    """

    def test_delete_finished_job(self) -> None:
        """A finished job is deleted; the answer is its id as a string."""
        job_id = self.push()["id"]
        self.finish_job(job_id, success=False, failure=True)
        reply = self.call("DELETE", f"/job/{job_id}")
        self.assertEqual((reply.status, reply.body), (200, b'{"id":"%s"}\n' % job_id.encode()))
        self.assertError(
            self.call("GET", f"/job/{job_id}"), 404, f"The job '{job_id}' is not found"
        )

    def test_delete_waiting_or_running_job_is_409(self) -> None:
        """A waiting or running job cannot be deleted."""
        job_id = self.push()["id"]
        self.assertError(
            self.call("DELETE", f"/job/{job_id}"), 409, f"The job {job_id} is waiting now"
        )
        self.start_job(job_id)
        self.assertError(
            self.call("DELETE", f"/job/{job_id}"), 409, f"The job {job_id} is running now"
        )
        self.assertEqual(self.stored(job_id).state, JobState.RUNNING)

    def test_delete_unknown_or_bad_id_is_404(self) -> None:
        """Unknown and non-numeric ids are 404s."""
        self.assertError(self.call("DELETE", "/job/5"), 404, "The job '5' is not found")
        self.assertError(self.call("DELETE", "/job/x"), 404, "The job id must be a number but 'x'")


class StopTests(APITestCase):
    """
    POST /job/<id>/stop.
    """

    def test_stop_waiting_job_cancels_it(self) -> None:
        """A waiting job ends canceled, and the dispatcher is told."""
        job_id = self.push()["id"]
        reply = self.call("POST", f"/job/{job_id}/stop")
        self.assertEqual((reply.status, reply.json), (200, {"id": job_id}))
        stored = self.stored(job_id)
        self.assertEqual((stored.status, stored.finished_at), ("canceled", T0 * 1000))
        self.assertEqual(self.dispatch.canceled, [int(job_id)])

    def test_stop_running_job_marks_it_canceling(self) -> None:
        """A running job is marked canceled and its delivery aborted by the dispatcher."""
        job_id = self.push()["id"]
        self.start_job(job_id)
        self.assertEqual(self.call("POST", f"/job/{job_id}/stop").status, 200)
        self.assertEqual(self.stored(job_id).status, "canceling")
        self.assertEqual(self.dispatch.canceled, [int(job_id)])
        # Idempotent while the job is active.
        self.assertEqual(self.call("POST", f"/job/{job_id}/stop").status, 200)
        self.assertEqual(self.dispatch.canceled, [int(job_id)] * 2)

    def test_stop_finished_job_is_409(self) -> None:
        """A job that is not active cannot be stopped; the dispatcher is not called."""
        job_id = self.push()["id"]
        self.finish_job(job_id)
        reply = self.call("POST", f"/job/{job_id}/stop")
        self.assertError(reply, 409, f"The job {job_id} is not active")
        self.assertEqual(self.dispatch.canceled, [])

    def test_stop_unknown_job_is_404(self) -> None:
        """Stopping an unknown id is a 404."""
        self.assertError(self.call("POST", "/job/9/stop"), 404, "The job '9' is not found")
        self.assertEqual(self.dispatch.canceled, [])

    def test_stop_with_store_unavailable_is_503(self) -> None:
        """A stop the store cannot write is a 503; the dispatcher is not called."""
        job_id = self.push()["id"]
        self.store.writable = False
        self.assertError(
            self.call("POST", f"/job/{job_id}/stop"), 503, "storage unavailable, try again later"
        )
        self.assertEqual(self.dispatch.canceled, [])
        self.assertEqual(len(self.flushLoggedErrors(StoreUnavailable)), 1)


class RestartTests(APITestCase):
    """
    POST /job/<id>/restart.
    """

    def test_restart_in_place_resets_the_job(self) -> None:
        """In place: same id and createdAt, outcome cleared, waiting, enqueued."""
        job = self.push(comment="again", payload=[1])
        self.finish_job(
            job["id"], success=False, failure=True, status_code=500, err="boom", output="x"
        )
        self.dispatch.enqueued.clear()
        reply = self.post_json(f"/job/{job['id']}/restart", {"copy": False})
        self.assertEqual(reply.status, 200, reply.body)
        restarted = reply.json
        self.assertEqual(restarted, dict(job))
        self.assertEqual(self.dispatch.enqueued, [self.stored(job["id"])])

    def test_restart_without_body_is_in_place(self) -> None:
        """No body means copy false."""
        job_id = self.push()["id"]
        self.finish_job(job_id)
        reply = self.call("POST", f"/job/{job_id}/restart")
        self.assertEqual((reply.json["id"], reply.json["status"]), (job_id, "waiting"))

    def test_restart_copy_creates_a_new_job(self) -> None:
        """copy: a new id, the same request fields, the original untouched."""
        self.clock.advance(1)
        job = self.push(name="n", comment="c", payload={"p": 1}, headers={"A": "b"}, timeout=4)
        self.finish_job(job["id"])
        original = self.stored(job["id"])
        self.dispatch.enqueued.clear()
        self.clock.advance(2)
        reply = self.post_json(f"/job/{job['id']}/restart", {"copy": True})
        self.assertEqual(reply.status, 200, reply.body)
        copy = reply.json
        self.assertGreater(int(copy["id"]), int(job["id"]))
        self.assertEqual(copy["createdAt"], "2023-11-14T22:13:23.000Z")
        for key in ("name", "comment", "payload", "headers", "timeout", "url"):
            self.assertEqual(copy[key], job[key])
        self.assertEqual(
            (copy["status"], copy["waiting"], copy["finishedAt"], copy["success"]),
            ("waiting", True, None, False),
        )
        self.assertEqual(self.stored(job["id"]), original)
        self.assertEqual(self.dispatch.enqueued, [self.stored(copy["id"])])
        self.assertEqual(self.stored(copy["id"]).attempts, 0)

    def test_restart_copy_of_active_job_is_409(self) -> None:
        """A waiting or running job cannot be copied either."""
        job_id = self.push()["id"]
        self.assertError(
            self.post_json(f"/job/{job_id}/restart", {"copy": True}),
            409,
            f"The job {job_id} is waiting now",
        )
        self.start_job(job_id)
        self.assertError(
            self.post_json(f"/job/{job_id}/restart", {"copy": True}),
            409,
            f"The job {job_id} is running now",
        )
        self.assertEqual(len(self.dispatch.enqueued), 1)

    def test_restart_in_place_of_active_job_is_409(self) -> None:
        """A waiting or running job cannot be restarted in place."""
        job_id = self.push()["id"]
        self.assertError(
            self.call("POST", f"/job/{job_id}/restart"), 409, f"The job {job_id} is waiting now"
        )
        self.start_job(job_id)
        self.assertError(
            self.call("POST", f"/job/{job_id}/restart"), 409, f"The job {job_id} is running now"
        )

    def test_restart_copy_from_form_and_payload_parameter(self) -> None:
        """copy=true as a form field or in ?payload= works."""
        job_id = self.push()["id"]
        self.finish_job(job_id)
        reply = self.call("POST", f"/job/{job_id}/restart", b"copy=true", FORM)
        self.assertNotEqual(reply.json["id"], job_id)
        reply = self.call("POST", f"/job/{job_id}/restart?payload=" + quote('{"Copy":true}'))
        self.assertNotEqual(reply.json["id"], job_id)
        self.assertEqual(self.successResultOf(self.store.counts(0, 0)).stored, 3)

    def test_restart_copy_of_another_type_is_400_naming_the_field(self) -> None:
        """copy "yes", 1 or [] (JSON) and copy=yes (form) are refused, naming 'copy'."""
        job_id = self.push()["id"]
        self.finish_job(job_id)
        enqueued = list(self.dispatch.enqueued)
        for value, given in (("yes", "a string"), (1, "1"), ([], "an array")):
            self.assertError(
                self.post_json(f"/job/{job_id}/restart", {"copy": value}),
                400,
                f"'copy' must be true or false, not {given}",
            )
        self.assertError(
            self.call("POST", f"/job/{job_id}/restart", b"copy=yes", FORM),
            400,
            "'copy' must be true or false, not 'yes'",
        )
        # Nothing was restarted; Go's boolean spellings still work in a form.
        self.assertEqual(self.dispatch.enqueued, enqueued)
        reply = self.call("POST", f"/job/{job_id}/restart", b"copy=T", FORM)
        self.assertNotEqual(reply.json["id"], job_id)

    def test_restart_copy_wrong_type_is_400(self) -> None:
        """copy must be a boolean."""
        job_id = self.push()["id"]
        self.assertError(
            self.post_json(f"/job/{job_id}/restart", {"copy": "yes"}),
            400,
            "'copy' must be true or false, not a string",
        )

    def test_restart_unknown_or_bad_id_is_404(self) -> None:
        """Unknown and non-numeric ids are 404s, in place or as a copy."""
        self.assertError(self.call("POST", "/job/4/restart"), 404, "The job '4' is not found")
        self.assertError(
            self.post_json("/job/4/restart", {"copy": True}), 404, "The job '4' is not found"
        )
        self.assertError(
            self.call("POST", "/job/x/restart"), 404, "The job id must be a number but 'x'"
        )


class StatsTests(APITestCase):
    """
    GET /stats and GET /stats/history.
    """

    def test_stats_keys_in_order_with_values(self) -> None:
        """/stats has the Go keys in order, from the config, dispatcher and store."""
        old = self.push()["id"]
        self.finish_job(old)
        self.clock.advance(61)
        running = self.push()["id"]
        self.start_job(running)
        self.push()
        self.dispatch.num_workers = 1
        self.dispatch.in_queue = 1
        reply = self.call("GET", "/stats")
        self.assertEqual(reply.status, 200)
        self.assertEqual(
            reply.body,
            b'{"queues":100,"dispatchers":2,"maxWorkers":3,"numWorkers":1,"numJobsInQueue":1,'
            b'"numJobsWaiting":1,"numJobsRunning":1,"numStoredJobs":3,"numJobsInLastMinute":2,'
            b'"numJobsScheduled":0}\n',
        )

    def test_stats_history(self) -> None:
        """/stats/history lists the dispatcher's buckets with RFC 3339 starts."""
        self.dispatch.buckets = [
            HistoryBucket(start=T0 * 1000 - 10_000, success=3, failure=1, canceled=0),
            HistoryBucket(start=T0 * 1000, success=0, failure=0, canceled=2),
        ]
        reply = self.call("GET", "/stats/history")
        self.assertEqual(
            reply.json,
            {
                "interval": HISTORY_INTERVAL,
                "buckets": [
                    {
                        "start": "2023-11-14T22:13:10.000Z",
                        "success": 3,
                        "failure": 1,
                        "canceled": 0,
                    },
                    {
                        "start": "2023-11-14T22:13:20.000Z",
                        "success": 0,
                        "failure": 0,
                        "canceled": 2,
                    },
                ],
            },
        )
        self.assertEqual(self.dispatch.history_asked, [T0 * 1000])

    def test_stats_wrong_method_is_405(self) -> None:
        """POST /stats is a 405."""
        self.assertError(self.call("POST", "/stats"), 405, "Method Not Allowed")


class NodesTests(APITestCase):
    """
    GET /nodes.
    """

    def test_nodes_lists_the_servers_with_times(self) -> None:
        """/nodes answers the nodes given, with RFC 3339 times, in the order given."""
        from hq.cluster import local_nodes

        nodes = local_nodes(5, lambda: "http://hq.test:19900", T0 * 1000 - 60_000, self.clock)
        self.api = attrs.evolve(self.api, nodes=nodes)
        self.client = StubTreq(self.api.resource())
        reply = self.call("GET", "/nodes")
        self.assertEqual(reply.status, 200)
        self.assertEqual(
            json.loads(reply.body),
            {
                "nodes": [
                    {
                        "serverId": 5,
                        "address": "http://hq.test:19900",
                        "startedAt": format_time(T0 * 1000 - 60_000),
                        "heartbeatAt": format_time(T0 * 1000),
                    }
                ]
            },
        )

    def test_nodes_without_a_source_is_404(self) -> None:
        """A server built without a node list answers 404 with the JSON error."""
        reply = self.call("GET", "/nodes")
        self.assertEqual(reply.status, 404)
        self.assertIn(b"node list", reply.body)


class RoutingAndFailureTests(APITestCase):
    """
    Unknown paths, wrong methods and unexpected failures.
    """

    def test_unknown_paths_are_404(self) -> None:
        """Unknown paths, trailing slashes and extra segments are 404 Not Found."""
        for path in ("/nothing", "/job/", "/job/1/", "/job/1/stop/x", "/stats/"):
            self.assertError(self.call("GET", path), 404, "Not Found")

    def test_wrong_method_is_405_with_allow(self) -> None:
        """A known path with a wrong method is a 405 with an Allow header."""
        reply = self.call("PUT", "/job")
        self.assertError(reply, 405, "Method Not Allowed")
        self.assertEqual(sorted(reply.header("Allow").split(", ")), ["GET", "HEAD", "POST"])
        self.assertError(self.call("GET", "/job/1/stop"), 405, "Method Not Allowed")
        self.assertError(self.call("PATCH", "/job/1"), 405, "Method Not Allowed")

    def test_unexpected_error_is_a_generic_500_and_logged(self) -> None:
        """An unexpected exception is a 500 with a generic body; the failure is logged."""

        class BrokenStore(MemoryStore):
            def get(self, job_id: int) -> Deferred[Job]:
                return fail(ZeroDivisionError("secret detail"))

        self.client = self.client_for(BrokenStore(), self.config)
        reply = self.call("GET", "/job/1")
        self.assertError(reply, 500, "Internal Server Error")
        self.assertNotIn(b"secret", reply.body)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)


NOW_MS = T0 * 1000


class PushOptionTests(APITestCase):
    """
    POST /job with retries, runAt, delay and an idempotency key (SPEC §11).
    """

    def test_retries_default_to_the_config(self) -> None:
        """Without 'retries' the job gets the configured number; with it, its own."""
        self.assertEqual(self.push()["retries"], 0)
        self.reconfigure(retries=4)
        self.assertEqual(self.push()["retries"], 4)
        self.assertEqual(self.push(retries=0)["retries"], 0)
        job = self.push(retries=1000)
        self.assertEqual((job["retries"], self.stored(job["id"]).retries), (1000, 1000))

    def test_retries_out_of_range_are_422(self) -> None:
        """retries -1 and 1001 are refused naming the field and the range."""
        for value in (-1, 1001):
            reply = self.post_json("/job", {"url": "http://w.test/", "retries": value})
            self.assertError(reply, 422, f"'retries' must be 0 to 1000, not {value}")

    def test_retries_of_a_wrong_type_is_400(self) -> None:
        """retries "3" in JSON is a type error; in a form it is the number."""
        reply = self.post_json("/job", {"url": "http://w.test/", "retries": "3"})
        self.assertError(reply, 400, "'retries' must be an integer, not a string")
        reply = self.call("POST", "/job", b"url=http://w.test/&retries=3", FORM)
        self.assertEqual((reply.status, reply.json["retries"]), (200, 3))

    def test_delay_makes_the_job_scheduled_with_run_at(self) -> None:
        """delay 90 gives status scheduled, waiting true and runAt 90 s after now."""
        job = self.push(delay=90)
        self.assertEqual(
            (job["status"], job["waiting"], job["runAt"]),
            ("scheduled", True, "2023-11-14T22:14:50.000Z"),
        )
        self.assertEqual(self.stored(job["id"]).run_at, NOW_MS + 90_000)
        self.assertEqual(self.dispatch.enqueued[-1].id, int(job["id"]))

    def test_fractional_delay_is_rounded_up_to_the_millisecond(self) -> None:
        """delay 0.0015 is 2 ms."""
        job = self.push(delay=0.0015)
        self.assertEqual(self.stored(job["id"]).run_at, NOW_MS + 2)

    def test_zero_delay_and_past_run_at_are_due_now(self) -> None:
        """delay 0 and a runAt in the past leave the job due at once, in its place in line."""
        for fields in ({"delay": 0}, {"runAt": "2001-01-01T00:00:00Z"}):
            job = self.push(**fields)
            self.assertEqual((job["status"], job["runAt"]), ("waiting", None), fields)
            self.assertIsNone(self.stored(job["id"]).run_at)

    def test_run_at_with_offset_or_z(self) -> None:
        """runAt takes Z or an offset, and fractions of a second."""
        cases = {
            "2023-11-15T00:00:00Z": "2023-11-15T00:00:00.000Z",
            "2023-11-15T09:00:00+09:00": "2023-11-15T00:00:00.000Z",
            "2023-11-14t23:30:00.25-00:30z": None,
            "2023-11-14T23:30:00.25-00:30": "2023-11-15T00:00:00.250Z",
            "2023-11-15t00:00:00.0001z": "2023-11-15T00:00:00.001Z",
        }
        for text, shown in cases.items():
            reply = self.post_json("/job", {"url": "http://w.test/", "runAt": text})
            if shown is None:
                self.assertEqual(reply.status, 422, text)
                continue
            self.assertEqual(reply.status, 200, (text, reply.body))
            self.assertEqual((reply.json["status"], reply.json["runAt"]), ("scheduled", shown))

    def test_bad_run_at_is_422(self) -> None:
        """runAt that is not RFC 3339 with an offset is refused naming the field and value."""
        for text in (
            "tomorrow",
            "2023-11-15T00:00:00",
            "2023-11-15 00:00:00Z",
            "2023-02-30T00:00:00Z",
            "2023-11-15T24:00:00Z",
            "2023-11-15T00:00:00+24:00",
            "",
        ):
            reply = self.post_json("/job", {"url": "http://w.test/", "runAt": text})
            self.assertError(
                reply,
                422,
                "'runAt' must be an RFC 3339 time with an offset or Z "
                f"(2024-05-01T09:30:00Z), not {text!r}",
            )

    def test_bad_delay_is_refused(self) -> None:
        """delay -5 is 422, "x" is 400, a delay beyond 100 years is 422."""
        reply = self.post_json("/job", {"url": "http://w.test/", "delay": -5})
        self.assertError(reply, 422, "'delay' must be 0 or more seconds, not -5")
        reply = self.post_json("/job", {"url": "http://w.test/", "delay": "x"})
        self.assertError(reply, 400, "'delay' must be a number, not a string")
        reply = self.call("POST", "/job", b"url=http://w.test/&delay=x", FORM)
        self.assertError(reply, 400, "'delay' must be a number, not 'x'")
        reply = self.post_json("/job", {"url": "http://w.test/", "delay": 1e10})
        self.assertError(reply, 422, "'delay' must be at most 3155760000 seconds (100 years)")

    def test_form_delay_is_read(self) -> None:
        """delay=1.5 in a form is 1.5 seconds."""
        reply = self.call("POST", "/job", b"url=http://w.test/&delay=1.5", FORM)
        self.assertEqual(reply.status, 200, reply.body)
        self.assertEqual(self.stored(reply.json["id"]).run_at, NOW_MS + 1500)

    def test_run_at_and_delay_together_are_422(self) -> None:
        """Both runAt and delay: 422 naming both."""
        reply = self.post_json(
            "/job", {"url": "http://w.test/", "delay": 1, "runAt": "2030-01-01T00:00:00Z"}
        )
        self.assertError(reply, 422, "'runAt' and 'delay' cannot be given together: give one")

    def test_idempotency_key_is_kept_and_shown(self) -> None:
        """The key from the body or the header is on the job."""
        self.assertEqual(self.push(idempotencyKey="k1")["idempotencyKey"], "k1")
        reply = self.call(
            "POST", "/job", b'{"url":"http://w.test/"}', JSON, {"Idempotency-Key": "k2"}
        )
        self.assertEqual(reply.json["idempotencyKey"], "k2")
        self.assertIsNone(reply.header("Idempotent-Replayed"))
        self.assertIsNone(self.push()["idempotencyKey"])

    def test_empty_or_long_keys_are_422(self) -> None:
        """An empty key or one of 300 characters is refused, in the body and the header."""
        for key, shown in (("", "empty"), ("k" * 300, "300")):
            reply = self.post_json("/job", {"url": "http://w.test/", "idempotencyKey": key})
            self.assertError(
                reply, 422, f"'idempotencyKey' must be 1 to 255 characters, not {shown}"
            )
            reply = self.call(
                "POST", "/job", b'{"url":"http://w.test/"}', JSON, {"Idempotency-Key": key}
            )
            self.assertError(
                reply, 422, f"The Idempotency-Key header must be 1 to 255 characters, not {shown}"
            )
        self.assertEqual(self.push(idempotencyKey="k" * 255)["idempotencyKey"], "k" * 255)

    def test_header_and_body_keys_that_differ_are_422(self) -> None:
        """Both keys, different: 422; the same: fine."""
        body = b'{"url":"http://w.test/","idempotencyKey":"a"}'
        reply = self.call("POST", "/job", body, JSON, {"Idempotency-Key": "b"})
        self.assertError(
            reply,
            422,
            "The Idempotency-Key header and 'idempotencyKey' differ: give one, or the same",
        )
        reply = self.call("POST", "/job", body, JSON, {"Idempotency-Key": "a"})
        self.assertEqual(reply.status, 200)

    def test_replay_answers_the_stored_job_with_the_header(self) -> None:
        """The same key again: 200, the same job, Idempotent-Replayed: true, not queued again."""
        first = self.push(idempotencyKey="order-1", payload={"n": 1}, comment="a")
        reply = self.post_json(
            "/job",
            {"url": "http://worker.test/run", "idempotencyKey": "order-1", "payload": {"n": 1.0}},
        )
        self.assertEqual((reply.status, reply.header("Idempotent-Replayed")), (200, "true"))
        self.assertEqual(reply.json, first)
        self.assertEqual(len(self.dispatch.enqueued), 1)
        self.assertEqual(len(self.successResultOf(self.store.list_jobs(ListQuery())).jobs), 1)

    def test_key_older_than_the_ttl_makes_a_new_job(self) -> None:
        """After idempotency_ttl seconds the key is taken by a new job."""
        first = self.push(idempotencyKey="k")
        self.clock.advance(self.config.idempotency_ttl + 1)
        second = self.push(idempotencyKey="k")
        self.assertNotEqual(first["id"], second["id"])

    def test_conflicting_replay_is_409_naming_the_key(self) -> None:
        """The same key with another url, name or payload: 409, nothing stored."""
        first = self.push(idempotencyKey="k")
        for change in ({"url": "http://other.test/"}, {"name": "n"}, {"payload": 1}):
            fields = {"url": "http://worker.test/run", "idempotencyKey": "k", **change}
            reply = self.post_json("/job", fields)
            self.assertError(
                reply,
                409,
                f"The idempotency key 'k' belongs to the job {first['id']}, "
                "pushed with another url, name or payload",
            )
        self.assertEqual(len(self.successResultOf(self.store.list_jobs(ListQuery())).jobs), 1)

    def test_concurrent_pushes_with_one_key_make_one_job(self) -> None:
        """20 pushes with one key, all in flight at once: one job, 19 replays."""
        gate: Deferred[None] = Deferred()

        class GatedStore(MemoryStore):
            def push(
                self, jobs: list[Job], keys_since: int, committed: Any = None
            ) -> Deferred[list[Pushed]]:
                waited: Deferred[None] = Deferred()
                gate.addCallback(lambda _: waited.callback(None))
                return waited.addCallback(lambda _: super(GatedStore, self).push(jobs, keys_since))

        store = GatedStore()
        self.client = self.client_for(store, self.config)
        body = b'{"url":"http://w.test/","idempotencyKey":"once"}'
        sent = [
            self.client.post("http://hq.test/job", data=body, headers={"Content-Type": JSON})
            for _ in range(20)
        ]
        self.client.flush()
        for d in sent:
            self.assertNoResult(d)
        gate.callback(None)
        self.client.flush()
        responses = [self.successResultOf(d) for d in sent]
        bodies = [json.loads(self.successResultOf(r.content())) for r in responses]
        self.assertEqual({r.code for r in responses}, {200})
        self.assertEqual(len({b["id"] for b in bodies}), 1)
        replayed = [r.headers.getRawHeaders(b"idempotent-replayed") for r in responses]
        self.assertEqual(replayed.count([b"true"]), 19)
        self.assertEqual(len(self.successResultOf(store.list_jobs(ListQuery())).jobs), 1)
        self.assertEqual(len(self.dispatch.enqueued), 1)

    def test_restart_copy_does_not_carry_the_key(self) -> None:
        """A copy made by restart has no idempotency key."""
        job = self.push(idempotencyKey="k")
        self.finish_job(job["id"])
        reply = self.post_json(f"/job/{job['id']}/restart", {"copy": True})
        self.assertIsNone(reply.json["idempotencyKey"])


class BatchTests(APITestCase):
    """
    POST /jobs (SPEC §15).
    """

    def jobs(self) -> list[Job]:
        return self.successResultOf(self.store.list_jobs(ListQuery())).jobs

    def test_json_array_stores_every_job_in_order(self) -> None:
        """A JSON array: {"ids"} in input order, each job stored and queued."""
        batch = [{"url": f"http://w.test/{i}", "name": f"n{i}", "delay": i} for i in range(3)]
        reply = self.post_json("/jobs", batch)
        self.assertEqual(reply.status, 200, reply.body)
        ids = reply.json["ids"]
        self.assertEqual(list(reply.json), ["ids"])
        self.assertEqual(
            [self.stored(i).url for i in ids], [f"http://w.test/{i}" for i in range(3)]
        )
        self.assertEqual([str(job.id) for job in self.dispatch.enqueued], ids)
        self.assertEqual(self.stored(ids[2]).run_at, NOW_MS + 2000)

    def test_ndjson_one_job_a_line_blank_lines_ignored(self) -> None:
        """NDJSON: one job per line, blank lines and CRLF fine."""
        body = b'{"url":"http://w.test/a"}\r\n\n  \n{"url":"http://w.test/b","retries":2}\n'
        reply = self.call("POST", "/jobs", body, "application/x-ndjson")
        self.assertEqual(reply.status, 200, reply.body)
        jobs = [self.stored(i) for i in reply.json["ids"]]
        self.assertEqual(
            [(j.url, j.retries) for j in jobs], [("http://w.test/a", 0), ("http://w.test/b", 2)]
        )

    def test_invalid_job_is_422_naming_its_index_and_nothing_is_stored(self) -> None:
        """One bad job: 422 'job 3: ...', no job stored, none queued."""
        batch = [{"url": "http://w.test/"}] * 3 + [{"name": "x"}] + [{"url": "http://w.test/"}]
        reply = self.post_json("/jobs", batch)
        self.assertError(reply, 422, "job 3: 'url' is required")
        self.assertEqual((self.jobs(), self.dispatch.enqueued), ([], []))

    def test_wrong_types_in_a_job_are_400_naming_its_index(self) -> None:
        """A job that is not an object, or a field of the wrong type: 400 with its index."""
        reply = self.post_json("/jobs", [{"url": "http://w.test/"}, "http://w.test/"])
        self.assertError(reply, 400, "job 1: must be a JSON object, not a string")
        reply = self.post_json("/jobs", [{"url": "http://w.test/", "timeout": "x"}])
        self.assertError(reply, 400, "job 0: 'timeout' must be an integer, not a string")

    def test_ndjson_line_that_is_not_json_is_400_naming_its_index(self) -> None:
        """A broken NDJSON line: 400 naming the job's index and its line."""
        body = b'{"url":"http://w.test/"}\n\n{"url": nope}\n'
        reply = self.call("POST", "/jobs", body, "application/x-ndjson")
        self.assertErrorStartsWith(reply, 400, "Malformed JSON in job 1 (line 3) at line 1")
        self.assertEqual(self.jobs(), [])

    def test_empty_batches_are_422(self) -> None:
        """[], an empty body and blank NDJSON: 422."""
        for body, media in ((b"[]", JSON), (b"", JSON), (b"\n \n", "application/x-ndjson")):
            reply = self.call("POST", "/jobs", body, media)
            self.assertError(reply, 422, "The batch is empty: send at least one job")

    def test_body_that_is_not_an_array_is_400(self) -> None:
        """A JSON object instead of an array: 400."""
        reply = self.post_json("/jobs", {"url": "http://w.test/"})
        self.assertError(reply, 400, "The request body must be a JSON array of jobs, not an object")

    def test_other_media_type_is_415(self) -> None:
        """Form data or no Content-Type: 415."""
        reply = self.call("POST", "/jobs", b"url=x", FORM)
        self.assertError(
            reply,
            415,
            "Unsupported Media Type 'application/x-www-form-urlencoded'; "
            "send application/json or application/x-ndjson",
        )
        reply = self.call("POST", "/jobs", b"[]")
        self.assertEqual(reply.status, 415)

    def test_more_than_max_batch_jobs_is_413(self) -> None:
        """max_batch_jobs + 1 jobs: 413, nothing stored; exactly the limit is fine."""
        self.reconfigure(max_batch_jobs=3)
        reply = self.post_json("/jobs", [{"url": "http://w.test/"}] * 4)
        self.assertError(reply, 413, "The batch has more than 3 jobs (the limit is max_batch_jobs)")
        reply = self.call(
            "POST", "/jobs", b'{"url":"http://w.test/"}\n' * 4, "application/x-ndjson"
        )
        self.assertEqual(reply.status, 413)
        self.assertEqual(self.jobs(), [])
        self.assertEqual(self.post_json("/jobs", [{"url": "http://w.test/"}] * 3).status, 200)

    def test_keys_replay_job_by_job(self) -> None:
        """A job whose key is known gets the existing id and is not queued again."""
        first = self.push(idempotencyKey="k")
        batch = [
            {"url": "http://w.test/new"},
            {"url": "http://worker.test/run", "idempotencyKey": "k"},
        ]
        ids = self.post_json("/jobs", batch).json["ids"]
        self.assertEqual(ids[1], first["id"])
        self.assertEqual(len(self.dispatch.enqueued), 2)

    def test_key_conflict_is_409_naming_the_index(self) -> None:
        """A key used with another url: 409 with the index; nothing stored."""
        first = self.push(idempotencyKey="k")
        batch = [{"url": "http://w.test/new"}, {"url": "http://w.test/x", "idempotencyKey": "k"}]
        reply = self.post_json("/jobs", batch)
        self.assertError(
            reply,
            409,
            f"job 1: The idempotency key 'k' belongs to the job {first['id']}, "
            "pushed with another url, name or payload",
        )
        self.assertEqual(len(self.jobs()), 1)

    def test_large_batch_yields_to_the_reactor(self) -> None:
        """A batch of 1,200 jobs is checked in steps, each a turn of the reactor."""
        self.reconfigure(max_body_bytes=1 << 20)
        d = self.client.post(
            "http://hq.test/jobs",
            data=json.dumps([{"url": "http://w.test/"}] * 1200).encode(),
            headers={"Content-Type": JSON},
        )
        self.client.flush()
        self.assertNoResult(d)
        self.assertEqual(self.jobs(), [])
        self.pump(d)
        self.assertEqual(self.successResultOf(d).code, 200)
        self.assertEqual(len(self.jobs()), 1200)


class AttemptsTests(APITestCase):
    """
    GET /job/{id}/attempts.
    """

    def test_attempts_oldest_first(self) -> None:
        """Each recorded attempt, oldest first, in Attempt.to_json's shape."""
        job_id = int(self.push(retries=1)["id"])
        for n, (code, err) in enumerate(((500, "Internal Server Error"), (200, "")), 1):
            started = self.successResultOf(self.store.start(job_id, NOW_MS + n))
            assert started is not None
            outcome = Outcome(
                finished_at=NOW_MS + 10 + n,
                success=code == 200,
                failure=code != 200,
                status_code=code,
                err=err,
            )
            attempt = Attempt.of(started, outcome)
            if code == 200:
                self.successResultOf(self.store.finish(job_id, outcome, attempt))
            else:
                self.successResultOf(self.store.retry(job_id, NOW_MS, outcome, attempt))
        reply = self.call("GET", f"/job/{job_id}/attempts")
        self.assertEqual(reply.status, 200, reply.body)
        self.assertEqual(
            reply.json,
            {
                "attempts": [
                    {
                        "attempt": 1,
                        "startedAt": "2023-11-14T22:13:20.001Z",
                        "finishedAt": "2023-11-14T22:13:20.011Z",
                        "statusCode": 500,
                        "err": "Internal Server Error",
                        "output": "",
                    },
                    {
                        "attempt": 2,
                        "startedAt": "2023-11-14T22:13:20.002Z",
                        "finishedAt": "2023-11-14T22:13:20.012Z",
                        "statusCode": 200,
                        "err": "",
                        "output": "",
                    },
                ]
            },
        )

    def test_no_attempts_is_an_empty_list(self) -> None:
        """A job never started has no attempts."""
        job_id = self.push()["id"]
        self.assertEqual(self.call("GET", f"/job/{job_id}/attempts").json, {"attempts": []})

    def test_unknown_or_bad_id_is_404(self) -> None:
        """Unknown and non-numeric ids: 404."""
        self.assertError(self.call("GET", "/job/42/attempts"), 404, "The job '42' is not found")
        self.assertEqual(self.call("GET", "/job/x/attempts").status, 404)


class ScheduledListTests(APITestCase):
    """
    status=scheduled and status=waiting in GET /job tell due from later jobs.
    """

    def test_status_scheduled_lists_the_delayed_jobs(self) -> None:
        """A delayed job is listed under scheduled until due, then under waiting."""
        now = self.push()["id"]
        later = self.push(delay=60)["id"]

        def listed(status: str) -> list[str]:
            return [j["id"] for j in self.call("GET", f"/job?status={status}").json["jobs"]]

        self.assertEqual((listed("scheduled"), listed("waiting")), ([later], [now]))
        self.clock.advance(60)
        self.assertEqual((listed("scheduled"), listed("waiting")), ([], [now, later]))


class SQLiteIdempotencyTests(TestCase):
    """
    Idempotent pushes over the real SQLite store and its writer thread, on a
    real loopback socket.
    """

    async def _serve(self) -> tuple[str, SQLiteStore]:
        store = SQLiteStore(self.mktemp(), reactor)
        await store.open()
        self.addCleanup(store.close)
        api = HQApi(
            store=store,
            dispatch=RecordingDispatch(),
            ids=IdGenerator(0, reactor),
            clock=reactor,
            config=Config(),
        )
        port = reactor.listenTCP(0, Site(api.resource()), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return f"http://127.0.0.1:{port.getHost().port}", store

    def test_concurrent_pushes_with_one_key_store_one_job(self) -> Deferred[None]:
        """20 concurrent pushes with one key: one job stored, every answer its id."""

        async def run() -> None:
            base, store = await self._serve()
            pool = HTTPConnectionPool(reactor, persistent=False)
            self.addCleanup(pool.closeCachedConnections)
            client = HTTPClient(Agent(reactor, pool=pool))
            body = {"url": "http://w.test/", "idempotencyKey": "one"}
            responses = await gatherResults(
                [client.post(base + "/job", json=body) for _ in range(20)]
            )
            bodies = await gatherResults([r.json() for r in responses])
            self.assertEqual({r.code for r in responses}, {200})
            self.assertEqual(len({b["id"] for b in bodies}), 1)
            replayed = [r.headers.getRawHeaders(b"idempotent-replayed") for r in responses]
            self.assertEqual(replayed.count([b"true"]), 19)
            self.assertEqual(len((await store.list_jobs(ListQuery())).jobs), 1)

        return Deferred.fromCoroutine(run())
