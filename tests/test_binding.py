"""
Tests for hq.binding on its own, for what a request through a socket cannot
easily carry (the API tests in test_api cover the binding through HTTP).
"""

from __future__ import annotations

import json
from io import BytesIO
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from hq.binding import APIError, Kind, _compact_json, bind, parse_time

#: JSON values as json.loads returns them (floats finite: NaN is refused before).
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


class CompactJSONTests(SynchronousTestCase):
    """
    The payload's compact JSON text, written by an encoder made once.
    """

    @given(_JSON)
    def test_same_text_as_json_dumps(self, value: Any) -> None:
        """Any decoded JSON value is written exactly as json.dumps writes it compactly."""
        expected = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        self.assertEqual(_compact_json(value), expected)

    def test_nesting_too_deep_raises_recursion_error(self) -> None:
        """The binding turns this into a 400 ("nested too deeply")."""
        value: Any = []
        for _ in range(100_000):
            value = [value]
        self.assertRaises(RecursionError, _compact_json, value)


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


class ParseTimeTests(SynchronousTestCase):
    """
    parse_time: RFC 3339 with an offset or Z, to ms since the Unix epoch.
    """

    def test_times(self) -> None:
        """Z, offsets, fractions (rounded up), a leap second, the years 0 and 9999."""
        cases = {
            "1970-01-01T00:00:00Z": 0,
            "1970-01-01T01:00:00+01:00": 0,
            "1969-12-31T23:30:00-00:30": 0,
            "1970-01-01t00:00:00.0005z": 1,
            "1970-01-01T00:00:00.123456789123Z": 124,
            "1970-01-01T00:00:60Z": 60_000,
            "2024-02-29T12:00:00Z": 1_709_208_000_000,
            "0000-01-01T00:00:00Z": -62_167_219_200_000,
            "9999-12-31T23:59:59.999Z": 253_402_300_799_999,
        }
        for text, ms in cases.items():
            self.assertEqual(parse_time(text, "runAt"), ms, text)

    def test_not_rfc3339_is_422_naming_the_field(self) -> None:
        """No offset, a space, a bad date or field: 422 naming the field."""
        for text in (
            "2024-01-01T00:00:00",
            "2024-01-01 00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2024-13-01T00:00:00Z",
            "2024-01-01T00:60:00Z",
            "2024-01-01T00:00:61Z",
            "2024-01-01T00:00:00+01:60",
            "2024-01-01T00:00:00.Z",
            "+2024-01-01T00:00:00Z",
            "2024-01-01T00:00:00Z\n",
            "\uff12\uff10\uff12\uff14-01-01T00:00:00Z",
        ):
            error = self.assertRaises(APIError, parse_time, text, "runAt")
            self.assertEqual(error.status, 422, text)
            self.assertIn("'runAt' must be an RFC 3339 time", error.message)
