"""
Tests for hq.site: the HTTP server side, here its behaviour at shutdown.
"""

from __future__ import annotations

import http.client
import json

import treq
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource

from hq.site import AccessLogSite


class _Hello(Resource):
    isLeaf = True

    def render_GET(self, request: object) -> bytes:
        return b"hello"


class ShutdownTests(TestCase):
    """
    A stopping site takes no new work, even on connections already open.
    """

    async def test_stopping_site_answers_503_and_closes(self) -> None:
        """Once stopping, a request gets the JSON 503 and Connection: close."""
        site = AccessLogSite(_Hello(), None)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        url = f"http://127.0.0.1:{port.getHost().port}/"
        response = await treq.get(url, persistent=False)
        self.assertEqual((response.code, await response.content()), (200, b"hello"))
        site.stopping = True

        def ask() -> tuple[int, str | None, bytes]:
            # http.client shows the Connection header (Twisted's client keeps it apart).
            connection = http.client.HTTPConnection("127.0.0.1", port.getHost().port, timeout=5)
            try:
                connection.request("GET", "/")
                answer = connection.getresponse()
                return answer.status, answer.getheader("connection"), answer.read()
            finally:
                connection.close()

        status, connection_header, body = await deferToThread(ask)
        self.assertEqual((status, connection_header), (503, "close"))
        self.assertEqual(
            json.loads(body), {"status": 503, "error": "HQ is shutting down; try again later"}
        )
