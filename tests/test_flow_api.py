"""
Tests for the flow-control API (SPEC §16): ``/flow``, and the push fields
``flowKey``, ``callbackUrl`` and ``failureCallbackUrl``.
"""

from __future__ import annotations

import json
from typing import Any

from treq.testing import StubTreq

from hq.api import HQApi
from hq.flow import FlowControl
from hq.ids import IdGenerator
from hq.model import FlowLimits
from tests.test_api import JSON, APITestCase


class FlowAPITests(APITestCase):
    def put(self, key: str, value: Any) -> Any:
        return self.call("PUT", "/flow/" + key, json.dumps(value).encode(), JSON)

    def test_push_takes_the_flow_fields(self) -> None:
        """flowKey defaults to host:port; given keys and callback URLs are kept."""
        job = self.push(url="https://Worker.test/run")
        self.assertEqual(job["flowKey"], "worker.test:443")
        self.assertIsNone(job["callbackUrl"])
        self.assertIsNone(job["callbackJobId"])
        job = self.push(
            flowKey="tenant-7",
            callbackUrl="http://app.test/done",
            failureCallbackUrl="https://app.test/failed",
        )
        self.assertEqual(job["flowKey"], "tenant-7")
        self.assertEqual(job["callbackUrl"], "http://app.test/done")
        self.assertEqual(job["failureCallbackUrl"], "https://app.test/failed")
        stored = self.stored(job["id"])
        self.assertEqual(stored.flow_key, "tenant-7")
        self.assertEqual(stored.failure_callback_url, "https://app.test/failed")

    def test_push_refuses_bad_flow_fields(self) -> None:
        """A flowKey over 255 characters or empty, a callback URL that is not http(s): 422."""
        reply = self.post_json("/job", {"url": "http://w.test/", "flowKey": "k" * 256})
        self.assertError(reply, 422, "'flowKey' must be 1 to 255 characters, not 256")
        reply = self.post_json("/job", {"url": "http://w.test/", "flowKey": ""})
        self.assertError(reply, 422, "'flowKey' must be 1 to 255 characters, not empty")
        reply = self.post_json("/job", {"url": "http://w.test/", "callbackUrl": "ftp://x/"})
        self.assertError(
            reply, 422, "'callbackUrl' must be an absolute http or https URL, not 'ftp://x/'"
        )
        reply = self.post_json("/job", {"url": "http://w.test/", "failureCallbackUrl": "/rel"})
        self.assertEqual(reply.status, 422)
        self.assertIn("'failureCallbackUrl'", reply.json["error"])
        reply = self.post_json("/jobs", [{"url": "http://w.test/", "flowKey": "k" * 300}])
        self.assertEqual(reply.status, 422)
        self.assertIn("flowKey", reply.json["error"])
        self.assertEqual(self.successResultOf(self.store.max_id()), 0)

    def test_put_get_list_delete(self) -> None:
        """PUT sets limits (stored), GET shows them, DELETE removes them."""
        reply = self.put("example.com%3A443", {"parallelism": 2, "rate": 10, "period": 60})
        self.assertEqual(reply.status, 200, reply.body)
        flow = reply.json
        self.assertEqual(flow["key"], "example.com:443")
        self.assertEqual(
            (flow["parallelism"], flow["rate"], flow["period"], flow["paused"]), (2, 10, 60, False)
        )
        self.assertEqual(flow["limit"], 2)
        self.assertTrue(flow["configured"])
        stored = self.successResultOf(self.store.flow_limits())
        self.assertEqual(stored, [FlowLimits("example.com:443", 2, 10, 60.0, False)])
        self.push(url="http://other.test:8080/x")
        listed = self.call("GET", "/flow").json["flows"]
        self.assertEqual([f["key"] for f in listed], ["example.com:443", "other.test:8080"])
        self.assertEqual(listed[1]["waiting"], 1)
        self.assertFalse(listed[1]["configured"])
        reply = self.call("DELETE", "/flow/example.com:443")
        self.assertEqual(reply.status, 200)
        self.assertFalse(reply.json["configured"])
        self.assertEqual(self.successResultOf(self.store.flow_limits()), [])

    def test_put_replaces_and_keeps_paused(self) -> None:
        """Absent limits are none; absent paused stays as it was."""
        self.call("POST", "/flow/k/pause")
        self.put("k", {"parallelism": 3})
        flow = self.put("k", {"rate": 5}).json
        self.assertEqual((flow["parallelism"], flow["rate"], flow["paused"]), (0, 5, True))
        flow = self.call("POST", "/flow/k/resume").json
        self.assertFalse(flow["paused"])

    def test_bad_limits_are_refused_naming_the_field(self) -> None:
        """Negative or non-integer limits, period <= 0, a key over 255 characters: 4xx."""
        self.assertError(
            self.put("k", {"parallelism": -1}),
            422,
            "'parallelism' must be a whole number from 0 (no limit) to 1000000, not -1",
        )
        self.assertError(self.put("k", {"rate": 2.5}), 400, "'rate' must be an integer, not 2.5")
        self.assertError(
            self.put("k", {"rate": 3, "period": 0}),
            422,
            "'period' must be a number of seconds above 0, not 0",
        )
        reply = self.put("k", {"parallelism": "2"})
        self.assertError(reply, 400, "'parallelism' must be an integer, not a string")
        reply = self.put("k" * 256, {"parallelism": 1})
        self.assertError(reply, 422, "The flow key must be 1 to 255 characters, not 256")
        self.assertEqual(self.successResultOf(self.store.flow_limits()), [])

    def test_key_with_a_slash(self) -> None:
        """A key with '/' (percent-encoded or not) is one key."""
        flow = self.put("tenant%2F7", {"parallelism": 1}).json
        self.assertEqual(flow["key"], "tenant/7")
        self.assertEqual(self.call("GET", "/flow/tenant/7").json["parallelism"], 1)
        self.assertTrue(self.call("POST", "/flow/tenant/7/pause").json["paused"])

    def test_unknown_key_has_defaults(self) -> None:
        """GET of a key never seen: no limits, nothing running or waiting."""
        flow = self.call("GET", "/flow/nothing:80").json
        self.assertEqual(
            (flow["parallelism"], flow["running"], flow["waiting"], flow["limit"]), (0, 0, 0, 0)
        )

    def test_changes_reach_the_delivery_engine(self) -> None:
        """The API tells the engine's flow limits at once."""
        flow = FlowControl(self.clock)
        api = HQApi(
            store=self.store,
            dispatch=self.dispatch,
            ids=IdGenerator(0, self.clock),
            clock=self.clock,
            config=self.config,
            flow=flow,
        )
        self.client = StubTreq(api.resource())
        self.put("w.test:80", {"parallelism": 1, "paused": True})
        self.assertEqual(flow.limit("w.test:80"), 1)
        self.assertFalse(flow.has_room("w.test:80"))
        self.call("POST", "/flow/w.test:80/resume")
        self.assertTrue(flow.has_room("w.test:80"))
