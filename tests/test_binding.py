"""
Tests for hq.binding on its own, for what a request through a socket cannot
easily carry (the API tests in test_api cover the binding through HTTP).
"""

from __future__ import annotations

from io import BytesIO
from typing import Any

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from hq.binding import APIError, Kind, bind


class BindTests(SynchronousTestCase):
    """
    The binding function on its own, for what a socket cannot easily send.
    """

    def request(self, body: bytes, headers: dict[bytes, bytes]) -> Any:
        """
        Return a ``POST /job`` request with ``body`` and ``headers``.
        """
        request = DummyRequest([b"job"])
        request.method = b"POST"
        request.uri = b"/job"
        request.content = BytesIO(body)
        for name, value in headers.items():
            request.requestHeaders.setRawHeaders(name, [value])
        return request

    def test_body_over_the_limit_without_content_length_is_413(self) -> None:
        """A chunked body (no Content-Length) over the limit is refused after reading."""
        request = self.request(
            b'{"url":"' + b"x" * 100 + b'"}', {b"content-type": b"application/json"}
        )
        error = self.assertRaises(APIError, bind, request, {"url": Kind.STR}, 50)
        self.assertEqual(error.status, 413)

    def test_content_length_over_the_limit_is_413_before_reading(self) -> None:
        """A declared Content-Length over the limit is refused without reading the body."""
        request = self.request(
            b"", {b"content-length": b"51", b"content-type": b"application/json"}
        )
        error = self.assertRaises(APIError, bind, request, {"url": Kind.STR}, 50)
        self.assertEqual(error.status, 413)
