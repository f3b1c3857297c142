"""
The worker side: take one delivery from HQ (its headers and body), check its Standard
Webhooks signature (SPEC §12), and give the job; then answer HQ.

Framework-neutral: :meth:`Receiver.receive` takes any headers (a dict, Flask's, Django's or
Starlette's ``request.headers``, or ASGI's raw ``(bytes, bytes)`` pairs) and the body bytes,
and returns a :class:`ReceivedJob` or raises :class:`ReceiveError`.
:meth:`Receiver.handle` (and :meth:`Receiver.handle_async`) runs the whole exchange around
your function: verify, skip a job already done (:mod:`hq_sdk.dedup`), call it, and return
the :class:`Answer` to send: 200 with its result, 401/400 for a refused delivery, 429 with
``Retry-After`` when it raised :class:`TryLater`. :mod:`hq_sdk.wsgi` and :mod:`hq_sdk.asgi`
serve that as WSGI and ASGI applications.

Standard library only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import inspect
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import attrs

from hq_sdk.dedup import Claim, DedupStore

#: Seconds a delivery's ``webhook-timestamp`` may be from now, either way.
DEFAULT_TOLERANCE = 5 * 60

#: The prefix of a secret's text.
SECRET_PREFIX = "whsec_"  # noqa: S105 -- a prefix, not a secret

#: The header that carries the attempt number, when the sender says it (HQ 0.1 does not:
#: ``ReceivedJob.attempt`` is then ``None``).
ATTEMPT_HEADER = "x-hq-attempt"

#: What a job function may take: the job; it returns a JSON value, an :class:`Answer` or
#: ``None``, or raises :class:`TryLater`.
Work = Callable[["ReceivedJob"], Any]
AsyncWork = Callable[["ReceivedJob"], Awaitable[Any] | Any]

HeadersLike = Mapping[str, str] | Iterable[tuple[str | bytes, str | bytes]] | Any


class ReceiveError(Exception):
    """
    A delivery was refused: ``status`` is the HTTP status to answer (400 malformed, 401 not
    signed by a known secret or outside the time tolerance), ``message`` says why, for a
    person (it never shows a secret or the expected signature).
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message

    def __str__(self) -> str:
        return self.message


class TryLater(Exception):
    """
    Raised by a job function that cannot do the job now (a rate limit, a dependency down):
    the answer is 429 with ``Retry-After``, and HQ tries again after at least that long
    (if the job has retries left; HQ caps the wait at its ``retry_max_backoff``).

    ``retry_after`` is seconds (rounded up to a whole second) or an aware datetime.
    """

    def __init__(self, retry_after: float | datetime = 60, message: str = "try later") -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.message = message


@attrs.frozen
class ReceivedJob:
    """
    One verified delivery.

    ``id`` is the job id (a string; ``webhook-id``, which HQ sets to the job id, or
    ``X-Hq-Job-Id`` for an unsigned delivery); ``attempt`` the attempt number when the
    sender says it (``None`` otherwise); ``payload`` the body decoded as JSON (``None``
    for an empty body); ``body`` the bytes; ``timestamp`` the signed ``webhook-timestamp``
    (``None`` when unsigned); ``headers`` every header, names in lower case.
    """

    id: str
    attempt: int | None
    payload: Any
    body: bytes = attrs.field(repr=False)
    timestamp: int | None
    headers: Mapping[str, str] = attrs.field(repr=False)


@attrs.frozen
class Answer:
    """
    What to send back to HQ: ``status``, ``headers`` (name, value pairs) and ``body``.

    Flask takes ``(answer.body, answer.status, answer.headers)`` as a view's result;
    Django ``HttpResponse(answer.body, status=answer.status, headers=dict(answer.headers))``;
    Starlette and FastAPI ``Response(answer.body, answer.status, dict(answer.headers))``.
    """

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    @classmethod
    def json(cls, status: int, value: Any, headers: Iterable[tuple[str, str]] = ()) -> Answer:
        """
        Return an answer with ``value`` as its JSON body.
        """
        body = json.dumps(value, separators=(",", ":")).encode() + b"\n"
        return cls(status, (("Content-Type", "application/json"), *headers), body)


def try_later(retry_after: float | datetime = 60, message: str = "try later") -> Answer:
    """
    Return the "try later" answer: 429 with ``Retry-After`` (whole seconds, rounded up; or
    an HTTP date for a datetime) and ``{"error": message}``. HQ waits at least that long
    before the next attempt (capped at its ``retry_max_backoff``).
    """
    if isinstance(retry_after, datetime):
        if retry_after.tzinfo is None:
            raise ValueError("retry_after must be timezone-aware")
        value = format_datetime(retry_after.astimezone(UTC), usegmt=True)
    else:
        value = str(max(0, -int(-retry_after // 1)))
    return Answer.json(429, {"error": message}, [("Retry-After", value)])


def decode_secret(secret: str | bytes) -> bytes:
    """
    Return the key of ``secret``: ``whsec_<base64>`` (as HQ's ``signing_secrets`` and the
    Standard Webhooks libraries write it) or the raw key bytes.

    :raises ValueError: for an empty key or a text that is not such base64.
    """
    if isinstance(secret, bytes):
        key = secret
    else:
        text = secret.removeprefix(SECRET_PREFIX)
        try:
            key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("a secret must be whsec_ followed by base64") from None
    if not key:
        raise ValueError("a secret must not be empty")
    return key


def lower_headers(headers: HeadersLike) -> dict[str, str]:
    """
    Return ``headers`` as a dict with lower-case names (the last value of a repeated
    one wins). Takes a mapping (anything with ``items()``) or ``(name, value)`` pairs of
    text or bytes (ASGI's ``scope["headers"]``).
    """
    pairs = headers.items() if hasattr(headers, "items") else headers
    out: dict[str, str] = {}
    for name, value in pairs:
        key = name.decode("latin-1") if isinstance(name, bytes) else str(name)
        text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
        out[key.lower()] = text
    return out


def _signatures(header: str) -> list[bytes]:
    found = []
    for item in header.split():
        version, _, encoded = item.partition(",")
        if version != "v1":
            continue
        try:
            found.append(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError):
            continue
    return found


class Receiver:
    """
    Verifies deliveries signed with any of ``secrets`` (list every secret HQ's
    ``signing_secrets`` has while they rotate) and, with a ``dedup`` store, does each job
    once.

    ``tolerance`` is how many seconds ``webhook-timestamp`` may be from now (default 5
    minutes, as Standard Webhooks); ``now`` returns the Unix time (injectable for tests).
    With no secrets, deliveries are taken unsigned: only with ``allow_unsigned=True`` (for
    development; anyone who can reach the worker can then post jobs).

    :raises ValueError: for a malformed secret, or no secrets without ``allow_unsigned``.
    """

    def __init__(
        self,
        secrets: Sequence[str | bytes],
        *,
        dedup: DedupStore | None = None,
        tolerance: float = DEFAULT_TOLERANCE,
        allow_unsigned: bool = False,
        now: Callable[[], float] = time.time,
    ) -> None:
        if isinstance(secrets, str | bytes):
            raise ValueError("secrets must be a list of secrets, not one")
        if not secrets and not allow_unsigned:
            raise ValueError("a Receiver needs a secret (or allow_unsigned=True)")
        self._keys = [decode_secret(s) for s in secrets]
        self._dedup = dedup
        self._tolerance = tolerance
        self._now = now

    def receive(self, headers: HeadersLike, body: bytes) -> ReceivedJob:
        """
        Return the job of the delivery with ``headers`` and ``body``, verified.

        :raises ReceiveError: 401 for a missing or wrong signature or a timestamp outside
            the tolerance; 400 for a malformed header or a body that is not JSON.
        """
        named = lower_headers(headers)
        timestamp: int | None = None
        if self._keys:
            job_id, timestamp = self._verify(named, body)
        else:
            job_id = named.get("webhook-id") or named.get("x-hq-job-id") or ""
            if not job_id:
                raise ReceiveError(400, "no X-Hq-Job-Id header: this endpoint is for HQ jobs")
        attempt: int | None = None
        if ATTEMPT_HEADER in named:
            raw = named[ATTEMPT_HEADER].strip()
            if not (raw.isascii() and raw.isdigit()) or len(raw) > 9:
                raise ReceiveError(400, f"the {ATTEMPT_HEADER} header must be a number")
            attempt = int(raw)
        payload: Any = None
        if body.strip():
            try:
                payload = json.loads(body)
            except (ValueError, RecursionError):
                raise ReceiveError(400, "the body is not JSON") from None
        return ReceivedJob(
            id=job_id,
            attempt=attempt,
            payload=payload,
            body=body,
            timestamp=timestamp,
            headers=named,
        )

    def _verify(self, named: Mapping[str, str], body: bytes) -> tuple[str, int]:
        msg_id = named.get("webhook-id", "")
        stamp = named.get("webhook-timestamp", "")
        signature = named.get("webhook-signature", "")
        if not (msg_id and stamp and signature):
            raise ReceiveError(
                401,
                "the delivery is not signed: webhook-id, webhook-timestamp and "
                "webhook-signature are needed",
            )
        if not stamp.isascii() or not stamp.isdigit() or len(stamp) > 12:
            raise ReceiveError(400, "webhook-timestamp must be Unix seconds")
        timestamp = int(stamp)
        if abs(self._now() - timestamp) > self._tolerance:
            raise ReceiveError(
                401,
                f"webhook-timestamp is more than {self._tolerance:g} s from now: "
                "a replayed delivery, or a clock is wrong",
            )
        signed = f"{msg_id}.{timestamp}.".encode() + body
        given = _signatures(signature)
        for key in self._keys:
            expected = hmac.new(key, signed, hashlib.sha256).digest()
            if any(hmac.compare_digest(expected, sig) for sig in given):
                job_id = named.get("x-hq-job-id", msg_id)
                if job_id != msg_id:
                    raise ReceiveError(400, "X-Hq-Job-Id and webhook-id differ")
                return msg_id, timestamp
        raise ReceiveError(401, "no signature matches: wrong secret, or the body was changed")

    def _begin(self, headers: HeadersLike, body: bytes) -> ReceivedJob | Answer:
        try:
            job = self.receive(headers, body)
        except ReceiveError as e:
            return Answer.json(e.status, {"error": e.message})
        if self._dedup is not None:
            claim = self._dedup.claim(job.id)
            if claim is Claim.DONE:
                return Answer.json(200, {"id": job.id, "duplicate": True})
            if claim is Claim.BUSY:
                return try_later(5, f"job {job.id} is being done by another delivery")
        return job

    def _end(self, job: ReceivedJob, result: Any) -> Answer:
        if self._dedup is not None:
            self._dedup.complete(job.id)
        if isinstance(result, Answer):
            return result
        return Answer.json(200, {"id": job.id, "ok": True} if result is None else result)

    def _abandon(self, job: ReceivedJob) -> None:
        if self._dedup is not None:
            self._dedup.release(job.id)

    def handle(self, headers: HeadersLike, body: bytes, work: Work) -> Answer:
        """
        Verify the delivery, call ``work(job)`` unless the job was done already, and return
        the answer for HQ:

        - 200 with ``work``'s result as JSON (``{"id", "ok": true}`` for ``None``; an
          :class:`Answer` is sent as is) and the job marked done in the dedup store;
        - 200 ``{"id", "duplicate": true}`` without calling ``work`` for a job done before;
        - 429 with ``Retry-After`` when ``work`` raised :class:`TryLater`, or while another
          delivery of the job is being done;
        - 400/401 ``{"error"}`` for a refused delivery (:class:`ReceiveError`).

        Any other exception of ``work`` propagates (your framework answers 500 and HQ
        retries the job if it has retries left); the job is not marked done.
        """
        begun = self._begin(headers, body)
        if isinstance(begun, Answer):
            return begun
        try:
            result = work(begun)
        except TryLater as e:
            self._abandon(begun)
            return try_later(e.retry_after, e.message)
        except BaseException:
            self._abandon(begun)
            raise
        return self._end(begun, result)

    async def handle_async(self, headers: HeadersLike, body: bytes, work: AsyncWork) -> Answer:
        """
        :meth:`handle` for asyncio code: ``work`` may be a coroutine function. (The dedup
        store is called directly: keep it fast, or run a database-backed one in a thread.)
        """
        begun = self._begin(headers, body)
        if isinstance(begun, Answer):
            return begun
        try:
            result = work(begun)
            if inspect.isawaitable(result):
                result = await result
        except TryLater as e:
            self._abandon(begun)
            return try_later(e.retry_after, e.message)
        except BaseException:
            self._abandon(begun)
            raise
        return self._end(begun, result)
