"""
API tokens, roles and the resource that checks them (SPEC §12).

- A token is a random URL-safe string (:func:`new_token`); the config holds only
  its SHA-256 (``[[tokens]]`` entries: ``name``, ``sha256``, ``role``), parsed by
  :func:`parse_tokens`.
- :class:`TokenTable` finds the entry of a presented token, comparing digests in
  constant time.
- :func:`required_role` says which role a request needs: ``read`` for GET/HEAD,
  ``push`` for ``POST /job`` and ``POST /jobs``, ``admin`` for everything else.
- :class:`FailureLimiter` counts failed authentications per client address in a
  sliding window.
- :class:`AuthResource` wraps the whole site (API and UI): one place covers
  every route. ``GET /health`` and the UI's static files stay open.

The token itself is never stored nor logged; the access log and the application
log name the token's ``name``. A token is only read from ``Authorization``:
one in the query string (``?token=``, ``?access_token=``, or a valid token
under any name) never authenticates, is answered 401 naming the problem, and is
redacted from the logs (:func:`hq.site.redact_uri`).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, getChildForRequest
from zope.interface import implementer

from hq.site import (
    SECRET_VALUES_ATTRIBUTE,
    error_body,
    is_credential_parameter,
    query_value,
    redact_uri,
)

log = Logger()

#: The roles, weakest first; each may do what the ones before it may.
ROLES = ("read", "push", "admin")
#: Random bytes in a new token (URL-safe base64: 43 characters).
TOKEN_BYTES = 32
#: Failed authentications per client address in :data:`FAILURE_WINDOW` before 429.
FAILURE_LIMIT = 20
#: Seconds of the sliding window of :class:`FailureLimiter`.
FAILURE_WINDOW = 60.0
#: Addresses tracked by the limiter before expired ones are swept.
_SWEEP_AT = 10_000
#: Query values checked against the tokens per request (bounds the work a
#: query of thousands of parameters can cause).
_QUERY_VALUES_CHECKED = 64

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@:-]{0,63}$")
_DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")
_TOKEN_KEYS = {"name", "sha256", "role"}


class TokenError(ValueError):
    """
    A ``[[tokens]]`` entry is malformed; the message names the entry and the problem.
    """


@attrs.frozen
class TokenEntry:
    """
    One ``[[tokens]]`` entry: who (``name``), the token's SHA-256 (hex) and its role.
    """

    name: str
    sha256: str = attrs.field(repr=False)
    role: str

    def allows(self, role: str) -> bool:
        """
        Return whether this entry's role covers ``role``.
        """
        return ROLES.index(self.role) >= ROLES.index(role)


def token_digest(token: str) -> str:
    """
    Return the hex SHA-256 of ``token`` (UTF-8), as ``[[tokens]]`` entries hold it.
    """
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """
    Return a new random token: :data:`TOKEN_BYTES` bytes, URL-safe base64, prefixed ``hq_``.
    """
    return "hq_" + secrets.token_urlsafe(TOKEN_BYTES)


def config_entry(name: str, role: str, token: str) -> str:
    """
    Return the TOML ``[[tokens]]`` entry for ``token`` (its digest, never the token).
    """
    return f'[[tokens]]\nname = "{name}"\nrole = "{role}"\nsha256 = "{token_digest(token)}"\n'


def check_name(name: str) -> str | None:
    """
    Return why ``name`` cannot name a token, or ``None`` if it can.
    """
    if not _NAME_RE.match(name):
        return (
            f"the name {name!r} must be 1-64 letters, digits or _.@:- "
            "(starting with a letter or digit)"
        )
    return None


def parse_tokens(value: Any) -> tuple[TokenEntry, ...]:
    """
    Return the entries of the config's ``tokens`` (a TOML array of tables).

    :raises TokenError: naming the entry (by its name, or index) and the problem:
        a missing or unknown key, a bad role or digest, a duplicate name or digest.
    """
    if not isinstance(value, list):
        raise TokenError(
            f"'tokens' must be an array of tables ([[tokens]]), not {type(value).__name__}"
        )
    entries: list[TokenEntry] = []
    names: set[str] = set()
    digests: set[str] = set()
    for index, item in enumerate(value):
        where = f"'tokens' entry {index}"
        if not isinstance(item, dict):
            raise TokenError(f"{where} must be a table with name, sha256 and role")
        name = item.get("name")
        if isinstance(name, str) and name:
            where = f"'tokens' entry {index} ({name!r})"
        unknown = sorted(set(item) - _TOKEN_KEYS)
        if unknown:
            raise TokenError(f"{where} has the unknown key '{unknown[0]}'")
        for key in sorted(_TOKEN_KEYS):
            if not isinstance(item.get(key), str):
                raise TokenError(f"{where} needs '{key}' as a string")
        problem = check_name(item["name"])
        if problem:
            raise TokenError(f"{where}: {problem}")
        if item["role"] not in ROLES:
            raise TokenError(
                f"{where} has the role {item['role']!r}; it must be one of {', '.join(ROLES)}"
            )
        digest = item["sha256"].lower()
        if not _DIGEST_RE.match(digest):
            raise TokenError(
                f"{where} has a bad 'sha256': it must be 64 hex digits "
                "(the SHA-256 of the token; hq token new prints it)"
            )
        if item["name"] in names:
            raise TokenError(f"{where}: the name {item['name']!r} is used twice")
        if digest in digests:
            raise TokenError(f"{where}: its sha256 is also another entry's")
        names.add(item["name"])
        digests.add(digest)
        entries.append(TokenEntry(item["name"], digest, item["role"]))
    return tuple(entries)


class TokenTable:
    """
    The configured tokens, found by the token a request presents.
    """

    def __init__(self, entries: Iterable[TokenEntry]) -> None:
        self._entries = [(bytes.fromhex(e.sha256), e) for e in entries]

    def __bool__(self) -> bool:
        return bool(self._entries)

    def find(self, token: str) -> TokenEntry | None:
        """
        Return the entry whose digest is the token's, or ``None``.

        Every entry is compared, each in constant time (``hmac.compare_digest``),
        so the time taken does not say how close a guess was.
        """
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        found: TokenEntry | None = None
        for expected, entry in self._entries:
            if hmac.compare_digest(digest, expected):
                found = entry
        return found


def required_role(method: bytes, path: bytes) -> str:
    """
    Return the role a request needs: ``read`` to read (GET, HEAD), ``push`` to
    push (``POST /job``, ``POST /jobs``), ``admin`` for anything else.
    """
    if method in (b"GET", b"HEAD"):
        return "read"
    if method == b"POST" and path.rstrip(b"/") in (b"/job", b"/jobs"):
        return "push"
    return "admin"


class FailureLimiter:
    """
    Failed authentications per client address in a sliding window.

    After ``limit`` failures within ``window`` seconds an address is blocked
    until the oldest of them is ``window`` seconds old. Memory is bounded: each
    address keeps at most ``limit`` times, and addresses with none left in the
    window are swept when many are tracked.
    """

    def __init__(
        self, clock: IReactorTime, limit: int = FAILURE_LIMIT, window: float = FAILURE_WINDOW
    ) -> None:
        self._clock = clock
        self._limit = limit
        self._window = window
        self._failures: dict[str, deque[float]] = {}

    def retry_after(self, address: str) -> int | None:
        """
        Return the seconds until ``address`` may try again, or ``None`` if it may now.
        """
        times = self._failures.get(address)
        if times is None or len(times) < self._limit:
            return None
        wait = times[0] + self._window - self._clock.seconds()
        if wait <= 0:
            return None
        return max(1, math.ceil(wait))

    def failed(self, address: str) -> None:
        """
        Count one failed authentication from ``address``.
        """
        now = self._clock.seconds()
        times = self._failures.get(address)
        if times is None:
            if len(self._failures) >= _SWEEP_AT:
                self._sweep(now)
            times = self._failures[address] = deque(maxlen=self._limit)
        times.append(now)

    def _sweep(self, now: float) -> None:
        expired = [a for a, t in self._failures.items() if not t or t[-1] + self._window <= now]
        for address in expired:
            del self._failures[address]

    def __len__(self) -> int:
        return len(self._failures)


def bearer_token(request: IRequest) -> str | None:
    """
    Return the token of the request's ``Authorization: Bearer <token>``, or ``None``.
    """
    values = request.requestHeaders.getRawHeaders(b"authorization") or []
    if len(values) != 1:
        return None
    scheme, _, token = values[0].strip().partition(b" ")
    token = token.strip()
    if scheme.lower() != b"bearer" or not token:
        return None
    return token.decode("latin-1")


def peer_address(request: IRequest) -> str:
    """
    Return the client's address: the site's ``client_address`` (which honours
    trusted proxies, :class:`hq.site.AccessLogSite`), else the peer's host.
    """
    site: Any = getattr(request, "site", None)
    if site is not None and hasattr(site, "client_address"):
        return str(site.client_address(request))
    return str(getattr(request.getClientAddress(), "host", "-"))


#: The request attribute that names the token for the access log ("-" for none).
TOKEN_NAME_ATTRIBUTE = "hq_token_name"  # noqa: S105 -- an attribute name


@implementer(IResource)
class AuthResource:
    """
    The site's root when tokens are configured: it checks the request's bearer
    token and role, then hands the request to ``wrapped``.

    - ``GET /health`` and, with ``open_prefix`` (the UI's basename), GET/HEAD
      below it are served without a token.
    - No token or an unknown one: 401 with ``WWW-Authenticate: Bearer``, counted
      in ``limiter``; a client over the limit gets 429 with ``Retry-After``
      instead. A valid token is never limited.
    - A role too low: 403 (not a failure).
    - An admin action (any request needing the admin role) is logged with the
      token's name and the answer's status.
    """

    isLeaf = True

    def __init__(
        self,
        wrapped: IResource,
        tokens: TokenTable,
        limiter: FailureLimiter,
        open_prefix: str | None = None,
        client_address: Callable[[IRequest], str] = peer_address,
    ) -> None:
        self._wrapped = wrapped
        self._tokens = tokens
        self._limiter = limiter
        self._open_prefix = open_prefix.rstrip("/").encode("utf-8") if open_prefix else None
        self._client_address = client_address

    def putChild(self, path: bytes, child: IResource) -> None:
        raise NotImplementedError("AuthResource wraps one resource")

    def getChildWithDefault(self, name: bytes, request: IRequest) -> IResource:
        # isLeaf: Site renders this resource itself.
        return self

    def _is_open(self, method: bytes, path: bytes) -> bool:
        if method not in (b"GET", b"HEAD"):
            return False
        if path == b"/health":
            return True
        prefix = self._open_prefix
        return prefix is not None and (path == prefix or path.startswith(prefix + b"/"))

    def render(self, request: Any) -> Any:
        method: bytes = request.method
        path: bytes = request.path
        token = bearer_token(request)
        entry = self._tokens.find(token) if token is not None else None
        setattr(request, TOKEN_NAME_ATTRIBUTE, "-" if entry is None else entry.name)
        in_query = self._query_credential(request)
        if self._is_open(method, path):
            # Open to all; a token sent along is named in the access log, a bad one not counted.
            return self._forward(request)
        if entry is None:
            return self._unauthenticated(request, token is not None, in_query)
        role = required_role(method, path)
        if not entry.allows(role):
            message = (
                f"The token '{entry.name}' has the role '{entry.role}'; "
                f"{method.decode('latin-1')} {path.decode('latin-1', 'replace')} "
                f"needs the role '{role}'"
            )
            return self._error(request, 403, message)
        if role == "admin":
            self._log_admin_action(request, entry, method, path)
        return self._forward(request)

    def _query_credential(self, request: Any) -> str | None:
        """
        Return the name of the first query parameter that carries a credential
        (by its name, or because its value is a valid token), or ``None``.

        Values that are valid tokens are listed on the request for
        :func:`hq.site.redact_uri`, so that no log shows them.
        """
        query = request.uri.partition(b"?")[2]
        if not query:
            return None
        found: str | None = None
        secrets: set[bytes] = set()
        pairs = [p.partition(b"=") for p in re.split(rb"[&;]", query) if p]
        for raw_name, _, raw_value in pairs[:_QUERY_VALUES_CHECKED]:
            value = query_value(raw_value)
            valid = bool(value) and self._tokens.find(value.decode("latin-1")) is not None
            if valid:
                secrets.add(value)
            if found is None and raw_value and (valid or is_credential_parameter(raw_name)):
                found = query_value(raw_name).decode("latin-1", "replace")
        if secrets:
            setattr(request, SECRET_VALUES_ATTRIBUTE, frozenset(secrets))
        return found

    def _forward(self, request: Any) -> Any:
        return getChildForRequest(self._wrapped, request).render(request)

    def _unauthenticated(self, request: Any, presented: bool, in_query: str | None) -> bytes:
        client = self._client_address(request)
        wait = self._limiter.retry_after(client)
        if wait is not None:
            request.setHeader(b"retry-after", str(wait).encode("ascii"))
            return self._error(
                request,
                429,
                f"Too many failed authentications from {client}; try again in {wait} s",
            )
        self._limiter.failed(client)
        if presented:
            reason = "unknown token"
        elif in_query is not None:
            reason = "a token in the query string"
        else:
            reason = "no token"
        log.warn(
            "Failed authentication from {client}: {reason} ({method} {path})",
            client=client,
            reason=reason,
            method=request.method.decode("latin-1"),
            path=_printable_path(
                redact_uri(request.path, getattr(request, SECRET_VALUES_ATTRIBUTE, ()))
            ),
        )
        blocked = self._limiter.retry_after(client)
        if blocked is not None:
            log.warn(
                "Client {client} gets 429 for {seconds} s: too many failed authentications",
                client=client,
                seconds=blocked,
            )
        request.setHeader(b"www-authenticate", b"Bearer")
        if presented:
            message = "The API token is not valid"
        elif in_query is not None:
            shown = _printable_path(in_query.encode("latin-1", "replace")[:40])
            message = (
                f"A token in the query string ('{shown}') "
                "is not accepted, as it would be written to logs: send the header "
                "'Authorization: Bearer <token>'"
            )
        else:
            message = "An API token is required: send the header 'Authorization: Bearer <token>'"
        return self._error(request, 401, message)

    def _error(self, request: Any, status: int, message: str) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json; charset=UTF-8")
        return error_body(status, message, pretty=b"pretty" in request.args)

    def _log_admin_action(
        self, request: Any, entry: TokenEntry, method: bytes, path: bytes
    ) -> None:
        def finished(_: object) -> None:
            log.info(
                "Admin action by token {tokenName}: {method} {uri} -> {status}",
                tokenName=entry.name,
                method=method.decode("latin-1"),
                uri=_printable_path(
                    redact_uri(request.uri, getattr(request, SECRET_VALUES_ATTRIBUTE, ()))
                ),
                status=request.code,
            )

        request.notifyFinish().addBoth(finished)


def _printable_path(path: bytes) -> str:
    return "".join(chr(b) if 0x21 <= b <= 0x7E else f"%{b:02X}" for b in path[:300])


def protect(
    resource: IResource,
    entries: Sequence[TokenEntry],
    clock: IReactorTime,
    open_prefix: str | None = None,
) -> IResource:
    """
    Return ``resource`` behind an :class:`AuthResource` for ``entries``, or
    ``resource`` itself when there are none (the API is open, as Go HQ's).
    """
    if not entries:
        return resource
    return AuthResource(resource, TokenTable(entries), FailureLimiter(clock), open_prefix)
