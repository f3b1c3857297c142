"""
The HTTP server side: the Site that serves the API and UI, with the limits a
public server needs and the access log.

- :class:`AccessLogSite` writes one access-log line per request (text or JSON)
  and believes ``X-Forwarded-For`` only from ``trusted_proxies``.
- :class:`TimedRequest` refuses a body over ``max_body_bytes`` as soon as its
  size is known (413), before Twisted buffers it.
- :class:`LimitedChannel` gives a client ``request_timeout`` seconds to send a
  whole request (408), so slow clients cannot hold connections open.
- :func:`redact_uri` keeps credentials a client put in the query string out of
  the access log (HQ never reads them there: tokens go in ``Authorization``).
"""

from __future__ import annotations

import io
import ipaddress
import json
import re
import time
from collections.abc import Collection, Sequence
from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.internet.interfaces import IAddress, IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.http import HTTPChannel
from twisted.web.server import Request, Site

from hq.logs import ReopenableFile, utc_stamp
from hq.turnio import settle_per_turn

#: Query parameter names that carry credentials in other APIs (compared in
#: lower case, ``-`` read as ``_``). HQ reads none of them: a token is only
#: accepted in ``Authorization``; their values are never written to a log.
CREDENTIAL_PARAMETERS = frozenset(
    {
        "token",
        "access_token",
        "accesstoken",
        "auth",
        "auth_token",
        "authorization",
        "bearer",
        "api_key",
        "apikey",
        "api_token",
        "key",
        "hq_token",
        "id_token",
        "refresh_token",
        "jwt",
        "password",
        "passwd",
        "secret",
        "client_secret",
        "session",
    }
)
#: What a redacted value is written as.
REDACTED = b"REDACTED"
#: The request attribute listing further query values to redact (raw bytes as
#: decoded from the query), set by :class:`hq.auth.AuthResource` for values
#: that are valid tokens under any parameter name.
SECRET_VALUES_ATTRIBUTE = "hq_secret_values"  # noqa: S105 -- an attribute name

_QUERY_PAIR = re.compile(rb"([^&;=#]*)=([^&;#]*)")
# The shape of a token made by ``hq token new`` (hq.auth.new_token), anywhere in a URI.
_HQ_TOKEN = re.compile(rb"hq_[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])")


def query_value(raw: bytes) -> bytes:
    """
    Return a query string's name or value as Twisted's ``request.args`` holds
    it: ``+`` read as a space, percent-escapes decoded.
    """
    return unquote_to_bytes(raw.replace(b"+", b" "))


def is_credential_parameter(raw_name: bytes) -> bool:
    """
    Return whether the query parameter ``raw_name`` (as sent) is one of
    :data:`CREDENTIAL_PARAMETERS`.
    """
    name = query_value(raw_name).lower().replace(b"-", b"_")
    return name.decode("latin-1") in CREDENTIAL_PARAMETERS


def redact_uri(uri: bytes, secrets: Collection[bytes] = ()) -> bytes:
    """
    Return ``uri`` as a log may show it: the value of each credential parameter
    (:data:`CREDENTIAL_PARAMETERS`), each value in ``secrets`` (decoded, as
    :func:`query_value` gives it), and anything shaped like an HQ token
    replaced by :data:`REDACTED`.
    """
    path, mark, query = uri.partition(b"?")

    def pair(match: re.Match[bytes]) -> bytes:
        name, value = match.group(1), match.group(2)
        if value and (is_credential_parameter(name) or query_value(value) in secrets):
            return name + b"=" + REDACTED
        return match.group(0)

    if mark:
        query = _QUERY_PAIR.sub(pair, query)
    return _HQ_TOKEN.sub(b"hq_" + REDACTED, path + mark + query)


def _escape(text: str) -> str:
    # As Go's encoder: these never occur outside JSON strings, so this is safe.
    return (
        text.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def json_body(text: str, pretty: bool = False) -> bytes:
    """
    Return the response body for the JSON ``text``: UTF-8, the HTML-safe
    escapes of Go's encoder, indented by 2 spaces if ``pretty``, and a
    trailing newline. Every JSON answer of the API and the UI is written by it.
    """
    if pretty:
        try:
            text = json.dumps(json.loads(text), ensure_ascii=False, indent=2)
        except RecursionError:
            pass
    return (_escape(text) + "\n").encode("utf-8", "replace")


def error_body(status: int, message: str, pretty: bool = False) -> bytes:
    """
    Return the error body ``{"status": status, "error": message}``, as
    :func:`json_body` writes it.

    The one error body: the API's error path (:func:`hq.api.write_error`), the
    UI and the answers written before the API sees a request all use it.
    """
    text = json.dumps(
        {"status": status, "error": message}, ensure_ascii=False, separators=(",", ":")
    )
    return json_body(text, pretty)


def too_large_message(limit: int) -> str:
    """
    Return the message of a 413 for a body over ``limit`` bytes (the API's own).
    """
    return f"The request body is larger than the limit of {limit} bytes"


def _raw_response(status: int, phrase: bytes, message: str) -> bytes:
    body = error_body(status, message)
    return (
        b"HTTP/1.1 %d %s\r\n"
        b"Content-Type: application/json; charset=UTF-8\r\n"
        b"Content-Length: %d\r\n"
        b"Connection: close\r\n\r\n" % (status, phrase, len(body))
    ) + body


class TimedRequest(Request):
    """
    A request that remembers when it began, for the access log's latency, and
    refuses a body over the site's ``max_body_bytes`` as soon as that is known:
    from ``Content-Length`` before any of the body is read, or as a chunked
    body passes the limit.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.began_ns = time.monotonic_ns()
        self._body_bytes = 0
        self._refused = False

    def _body_limit(self) -> int | None:
        # Only a LimitedChannel can answer early; elsewhere the API refuses.
        if not isinstance(self.channel, LimitedChannel):
            return None
        limit = getattr(getattr(self.channel, "site", None), "max_body_bytes", None)
        return limit if isinstance(limit, int) else None

    def gotLength(self, length: int | None) -> None:
        limit = self._body_limit()
        if limit is not None and length is not None and length > limit:
            self._refuse(limit)
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._body_bytes += len(data)
        limit = self._body_limit()
        if limit is not None and self._body_bytes > limit:
            self._refuse(limit)
            return
        super().handleContentChunk(data)

    def _refuse(self, limit: int) -> None:
        self._refused = True
        # Whatever arrives of the body is dropped, and no "100 Continue" asks for it.
        self.content = io.BytesIO()
        self.requestHeaders.removeHeader(b"expect")
        assert isinstance(self.channel, LimitedChannel)
        self.channel.refuse(
            self, _raw_response(413, b"Payload Too Large", too_large_message(limit))
        )

    def process(self) -> None:
        if self._refused:
            return
        if getattr(getattr(self.channel, "site", None), "stopping", False):
            # Shutting down: no new work, even on a connection opened before.
            self.channel.persistent = False  # type: ignore[union-attr]
            self.setResponseCode(503)
            self.setHeader(b"content-type", b"application/json; charset=UTF-8")
            self.setHeader(b"connection", b"close")
            self.setHeader(b"retry-after", b"5")
            self.write(error_body(503, "HQ is shutting down; try again later"))
            self.finish()
            return
        super().process()


class LimitedChannel(HTTPChannel):
    """
    An HTTP channel that bounds how long a client may take to send a request
    and how much body it may send.

    A request must arrive whole (request line, headers and body) within the
    site's ``request_timeout`` seconds of the connection becoming ready for it
    (accepted, or the previous response sent): otherwise a request begun gets a
    ``408`` and the connection is closed (an idle connection is just closed).
    Slow clients (slowloris) thus hold a connection for a bounded time.

    :meth:`refuse` answers a request early (a body over the limit): the answer
    is written, the sending side closed, and what the client still sends is
    read and dropped for :data:`LINGER_SECONDS` so that it can read the answer.
    """

    _deadline: IDelayedCall | None = None
    _linger: IDelayedCall | None = None
    _host: IAddress | None = None
    _begun = False
    _refused = False

    def _request_timeout(self) -> float | None:
        timeout = getattr(getattr(self, "site", None), "request_timeout", None)
        return timeout if isinstance(timeout, int | float) and timeout > 0 else None

    def _arm(self) -> None:
        self._disarm()
        self._begun = False
        timeout = self._request_timeout()
        if timeout is not None and not self._refused:
            self._deadline = self.callLater(timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self.transport is None:
            return
        if self._begun:
            timeout = self._request_timeout()
            self.transport.write(
                _raw_response(
                    408,
                    b"Request Timeout",
                    f"The request was not received within {timeout:g} s",
                )
            )
        self.timeoutConnection()

    def connectionMade(self) -> None:
        super().connectionMade()
        settle_per_turn(self.transport)
        self._arm()

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return
        if self._deadline is not None:
            self._begun = True
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        # Twisted answers a request line plus headers over totalHeadersSize
        # with a bare "400" and an abrupt close (the client often sees only a
        # reset); answer the API's JSON 431 instead, readable before the close.
        # ``_receivedHeaderSize`` is HTTPChannel's own count of those bytes.
        if self._receivedHeaderSize + len(line) > self.totalHeadersSize:
            self._headers_too_large()
            return
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        # One line over LineReceiver's MAX_LENGTH (16 KiB): the request line
        # (a URI too long) or a single header; Twisted would just close.
        if self._receivedHeaderSize == 0:
            self._refuse_raw(414, b"URI Too Long", "The request line is too long")
        else:
            self._headers_too_large()

    def _headers_too_large(self) -> None:
        limit = self.totalHeadersSize
        message = f"The request's headers are larger than the limit of {limit} bytes"
        self._refuse_raw(431, b"Request Header Fields Too Large", message)

    def _refuse_raw(self, status: int, phrase: bytes, message: str) -> None:
        """
        Answer ``status`` with the API's error body before any request exists,
        then close as :meth:`refuse` does (the rest the client sends is dropped).
        """
        self._answer_and_close(_raw_response(status, phrase, message))

    def _answer_and_close(self, response: bytes) -> None:
        """
        Write ``response``, close the sending side, and drop what the client
        still sends for :data:`LINGER_SECONDS` so that it can read the answer.
        """
        self._refused = True
        self._disarm()
        self.persistent = False
        transport: Any = self.transport
        transport.write(response)
        if hasattr(transport, "loseWriteConnection"):
            transport.loseWriteConnection()
            self._linger = self.callLater(LINGER_SECONDS, transport.abortConnection)
        else:
            transport.loseConnection()

    def allContentReceived(self) -> None:
        self._disarm()
        super().allContentReceived()

    def requestDone(self, request: Request) -> None:
        # Armed first: a pipelined request already buffered is parsed (and
        # disarms the deadline) inside requestDone. A connection that closes
        # after this response is left to the idle timeout while it flushes.
        if self.persistent:
            self._arm()
        super().requestDone(request)

    def getHost(self) -> IAddress:
        # Every Request asks for it (Request.__init__); a TCP transport answers
        # with a getsockname() system call each time. The local address of a
        # connection does not change, so the first answer is kept.
        host = self._host
        if host is None:
            host = self._host = super().getHost()
        return host

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._disarm()
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        super().connectionLost(reason)

    def refuse(self, request: Request, response: bytes) -> None:
        """
        Answer ``request`` with the raw ``response`` now, before its body is
        read, and close the connection after a short linger.
        """
        site = getattr(self, "site", None)
        if isinstance(site, AccessLogSite):
            site.log_refused(request, self._command_and_path(), 413, len(response))
        self._answer_and_close(response)

    def _command_and_path(self) -> tuple[bytes, bytes]:
        # The request line is parsed, but Request gets it only with the whole body.
        return getattr(self, "_command", b"-"), getattr(self, "_path", b"-")


#: Seconds a connection refused early is still read (and dropped) before it is closed.
LINGER_SECONDS = 2.0


def _human(ns: int) -> str:
    if ns < 1_000_000:
        return f"{ns / 1000:.3f}µs"
    if ns < 1_000_000_000:
        return f"{ns / 1_000_000:.3f}ms"
    return f"{ns / 1_000_000_000:.3f}s"


class AccessLogSite(Site):
    """
    A Site that writes one access-log line per request, in the Go server's
    fields: time, client address, host, method, URI, status, latency in ns,
    latency for people, bytes in, bytes out.

    :param request_timeout: seconds a client may take to send a request
        (:class:`LimitedChannel`); ``None`` for no limit.
    :param max_body_bytes: the largest request body; a larger one is answered
        ``413`` as soon as its size is known (:class:`TimedRequest`).
    :param trusted_proxies: addresses or networks of reverse proxies: for a
        request from one of them, the client address logged is taken from
        ``X-Forwarded-For`` (the nearest address that is not a trusted proxy).
        From anyone else, ``X-Forwarded-For`` is ignored.
    :param log_format: ``"json"`` writes each line as a JSON object with the
        same fields, named as the Go server's JSON access log (``remote_ip``,
        ``uri``, ``status``, ``latency``, ``bytes_out``...).
    """

    requestFactory = TimedRequest
    protocol = LimitedChannel  # type: ignore[assignment]
    #: No "Starting factory" / "Stopping factory" lines in the log.
    noisy = False
    #: Set at shutdown: every request still arriving is answered 503 and its
    #: connection closed (keep-alive connections outlive the listening port).
    stopping = False

    def __init__(
        self,
        resource: Any,
        access_log: ReopenableFile | None,
        *,
        request_timeout: float | None = None,
        max_body_bytes: int | None = None,
        trusted_proxies: Sequence[str] = (),
        log_format: str = "text",
        **kwargs: Any,
    ) -> None:
        super().__init__(resource, **kwargs)
        self._access_log = access_log
        self._json = log_format == "json"
        self.request_timeout = request_timeout
        self.max_body_bytes = max_body_bytes
        self._trusted = [ipaddress.ip_network(p, strict=False) for p in trusted_proxies]

    def _is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._trusted)

    def client_address(self, request: http.Request) -> str:
        """
        Return the client's address for the log: the peer, or for a trusted
        proxy the nearest untrusted address in ``X-Forwarded-For``.
        """
        peer = request.getClientAddress()
        client = str(getattr(peer, "host", "-"))
        if not self._trusted or not self._is_trusted(client):
            return client
        values = request.requestHeaders.getRawHeaders(b"x-forwarded-for") or []
        hops = b",".join(values).decode("latin-1").split(",")
        for hop in reversed(hops):
            hop = hop.strip()
            try:
                ipaddress.ip_address(hop)
            except ValueError:
                break  # not an address: trust nothing beyond it
            client = hop
            if not self._is_trusted(hop):
                break
        return client

    def log(self, request: http.Request) -> None:
        if self._access_log is None:
            return
        secrets = getattr(request, SECRET_VALUES_ATTRIBUTE, ())
        self._write_line(
            request,
            request.method,
            redact_uri(request.uri, secrets),
            request.code,
            (request.getHeader(b"content-length") or b"0").decode("latin-1"),
            request.sentLength,
        )

    def log_refused(
        self, request: http.Request, command_and_path: tuple[bytes, bytes], code: int, sent: int
    ) -> None:
        """
        Log a request answered before it was read whole (413).
        """
        if self._access_log is None:
            return
        method, uri = command_and_path
        uri = redact_uri(uri)
        length = (request.getHeader(b"content-length") or b"-").decode("latin-1")
        self._write_line(request, method, uri, code, length, sent)

    def _write_line(
        self,
        request: http.Request,
        method: bytes,
        uri: bytes,
        code: int,
        bytes_in: str,
        bytes_out: int,
    ) -> None:
        assert self._access_log is not None
        latency = time.monotonic_ns() - getattr(request, "began_ns", time.monotonic_ns())
        host = _printable(request.getHeader(b"host") or b"-")
        if self._json:
            self._access_log.write(
                json.dumps(
                    {
                        "time": utc_stamp(time.time()),
                        "remote_ip": self.client_address(request),
                        "host": host,
                        "method": _printable(method),
                        "uri": _printable(uri),
                        "status": code,
                        "latency": latency,
                        "latency_human": _human(latency),
                        "bytes_in": int(bytes_in) if bytes_in.isdigit() else None,
                        "bytes_out": bytes_out,
                        **_token_field(request),
                    },
                    ensure_ascii=False,
                )
                + "\n"
            )
            return
        stamp = _local_stamp()
        self._access_log.write(
            f"{stamp} {self.client_address(request)} {host} {_printable(method)} "
            f"{_printable(uri)} {code} {latency} {_human(latency)} {_printable(bytes_in)} "
            f"{bytes_out}{_token_suffix(request)}\n"
        )


def _token_name(request: http.Request) -> str | None:
    # Set by hq.auth.AuthResource when tokens are configured ("-" for none).
    name = getattr(request, "hq_token_name", None)
    return name if isinstance(name, str) else None


def _token_field(request: http.Request) -> dict[str, str]:
    name = _token_name(request)
    return {} if name is None else {"token": name}


def _token_suffix(request: http.Request) -> str:
    name = _token_name(request)
    return "" if name is None else f" token={_printable(name)}"


#: Bytes a log line shows as they are: printable ASCII but for ``\\`` (no spaces).
_PLAIN = re.compile(rb"[\x21-\x5b\x5d-\x7e]*")


def _printable(value: bytes | str) -> str:
    """
    Return ``value`` for a log line: bytes outside printable ASCII (spaces and
    control characters included) as ``\\xNN``, so a client cannot forge lines
    or fields.
    """
    if isinstance(value, str):
        value = value.encode("latin-1", "replace")
    if _PLAIN.fullmatch(value):
        return value.decode("ascii")
    return "".join(chr(b) if 0x21 <= b <= 0x7E and b != 0x5C else f"\\x{b:02x}" for b in value)


class _LocalStamp:
    """
    The access log's local time stamp, formatted once per second.
    """

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def __call__(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._text = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(second))
            self._second = second
        return self._text


_local_stamp = _LocalStamp()
