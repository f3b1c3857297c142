"""
The request binding: every API request is checked here, at the edge, before
anything touches the store.

One function, :func:`bind`, reads a request's fields from wherever the Go
server accepts them (a ``payload`` parameter holding the whole request, a
JSON body, a form body, or the query string) and checks their media type,
size, JSON and types; :func:`bind_push`, :func:`bind_restart`,
:func:`bind_list` and :func:`parse_job_id` add each route's own rules. A
refused request raises :class:`APIError`, which :mod:`hq.api` turns into the
error response.

Only the request side is here: the response writer stays with the Klein app
in :mod:`hq.api`, beside the one error path that uses it, so that this module
never touches a response.
"""

from __future__ import annotations

import enum
import functools
import json
import math
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.message import Message
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit

import attrs
from twisted.web.iweb import IRequest

from hq.ids import id_to_ms
from hq.model import (
    MAX_FLOW_KEY_LENGTH,
    STATUSES,
    FlowLimits,
    Job,
    ListQuery,
    check_regexp,
    json_type_name,
)
from hq.store import JobNotFound

#: The largest id (and ``begin``) the stores can hold: a signed 64-bit integer.
MAX_ID = (1 << 63) - 1
_MAX_UINT64 = (1 << 64) - 1
#: A ``limit`` at least this large means "no limit".
_UNLIMITED = 1 << 31
_GO_TRUE = frozenset(("1", "t", "T", "TRUE", "true", "True"))
_GO_FALSE = frozenset(("0", "f", "F", "FALSE", "false", "False"))
_INT_RE = re.compile(r"[+-]?[0-9]+\Z")
_UINT_RE = re.compile(r"[0-9]+\Z")
_NUMBER_RE = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?\Z")
# RFC 9110 token characters, for header names.
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_BAD_VALUE_RE = re.compile(r"[\x00\r\n]")
_BAD_URL_RE = re.compile(r"[\x00-\x20\x7f]")


_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def _make_compact_json() -> Callable[[Any], str]:
    """
    Return a function that writes a decoded JSON value as compact JSON text,
    as ``_COMPACT.encode`` does, with the C encoder made once rather than
    once per call (a third of a small payload's time). No check for
    circular references: the values come from ``json.loads``, which makes
    none; nesting too deep still raises ``RecursionError``.
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    try:
        # The arguments JSONEncoder.iterencode passes (markers None: no check).
        text = json.encoder.encode_basestring
        encoder = make(  # type: ignore[misc]
            None, _COMPACT.default, text, None, ":", ",", False, False, True
        )
    except TypeError:
        # No C encoder, or one that takes other arguments: the encoder's own way.
        return _COMPACT.encode
    join = "".join

    def compact_json(value: Any) -> str:
        if isinstance(value, str):
            return text(value)
        return join(encoder(value, 0))

    return compact_json


_compact_json = _make_compact_json()


class APIError(Exception):
    """
    A request the API refuses: the HTTP status and a message for a person.

    Raised by the binding and by the API's handlers (a route turned off, a
    failed health check); :mod:`hq.api` writes it as the error body.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Kind(enum.Enum):
    """
    The type of a request field: how its JSON value or form string is checked.
    """

    STR = "a string"
    INT = "an integer"
    #: A JSON number (integer or fraction); in a form, decimal digits with an optional fraction.
    NUMBER = "a number"
    UINT = "a job id (a whole number, 0 or more)"
    BOOL = "true or false"
    HEADERS = "an object of strings"
    #: Any JSON value, bound as compact JSON text.
    JSON = "any JSON value"


_PUSH_FIELDS = {
    "url": Kind.STR,
    "name": Kind.STR,
    "comment": Kind.STR,
    "payload": Kind.JSON,
    "headers": Kind.HEADERS,
    "timeout": Kind.INT,
    "retries": Kind.INT,
    "runAt": Kind.STR,
    "delay": Kind.NUMBER,
    "idempotencyKey": Kind.STR,
    "flowKey": Kind.STR,
    "callbackUrl": Kind.STR,
    "failureCallbackUrl": Kind.STR,
}
_RESTART_FIELDS = {"copy": Kind.BOOL}
_LIST_FIELDS = {
    "name": Kind.STR,
    "term": Kind.STR,
    "status": Kind.STR,
    "begin": Kind.UINT,
    "reverse": Kind.BOOL,
    "limit": Kind.INT,
}


def bind(
    request: IRequest, fields: dict[str, Kind], max_body_bytes: int, *, body: bool = True
) -> dict[str, Any]:
    """
    Return the request's values for ``fields`` (name -> kind), checked,
    keyed by the names in ``fields``.

    The values come from, in this order: a ``payload`` query or form
    parameter holding the whole request as a JSON object (the Go server's
    mode); a JSON body; a form body (``application/x-www-form-urlencoded`` or
    ``multipart/form-data``); or, with ``body=False``, the query string. Keys
    match case-insensitively, unknown keys are ignored, and an absent or null
    value is left out of the result. A form or query string value is parsed
    as its kind (``timeout=5``); ``Kind.JSON`` values come back as compact
    JSON text.

    :raises APIError: 413 for a body over ``max_body_bytes``, 415 for a body
        of another media type, 400 for malformed JSON, a value of the wrong
        type or a string that is not valid UTF-8.
    """
    query = query_pairs(request)
    form: list[tuple[str, str]] = []
    json_text: str | None = None
    if body:
        content = _read_body(request, max_body_bytes)
        if content:
            media_type = _media_type(request)
            if media_type == "application/json":
                json_text = _decode_utf8(content, "the request body")
            elif media_type == "application/x-www-form-urlencoded":
                form = _parse_pairs(content, "the form body")
            elif media_type == "multipart/form-data":
                form = _multipart_pairs(request, content)
            elif media_type:
                raise APIError(
                    415,
                    f"Unsupported Media Type '{media_type}': send application/json (or form data)",
                )
            else:
                raise APIError(
                    415,
                    "Unsupported Media Type: the request body has no Content-Type; "
                    "send application/json (or form data)",
                )
    whole = _lookup(form, "payload") or _lookup(query, "payload")
    if whole:
        return _json_fields(_parse_json_object(whole, "the 'payload' parameter"), fields)
    if json_text is not None:
        return _json_fields(_parse_json_object(json_text, "the request body"), fields)
    return _string_fields(form if body else query, fields)


def _read_body(request: IRequest, max_body_bytes: int) -> bytes:
    too_large = APIError(
        413, f"The request body is larger than the limit of {max_body_bytes} bytes"
    )
    length = request.getHeader(b"content-length")
    if length is not None and length.isdigit() and int(length) > max_body_bytes:
        raise too_large
    content = request.content
    if content is None:
        return b""
    content.seek(0)
    data: bytes = content.read(max_body_bytes + 1)
    if len(data) > max_body_bytes:
        raise too_large
    return data


def _media_type(request: IRequest) -> str:
    value = request.getHeader(b"content-type")
    if value is None:
        return ""
    return value.decode("latin-1").split(";", 1)[0].strip().lower()


def _sentence(where: str) -> str:
    return where[:1].upper() + where[1:]


def _decode_utf8(data: bytes, where: str) -> str:
    try:
        # A leading byte order mark is tolerated.
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise APIError(400, f"{_sentence(where)} is not valid UTF-8 (byte {e.start})") from None


def _parse_pairs(data: bytes, where: str) -> list[tuple[str, str]]:
    """
    Parse ``a=1&b=2`` (a query string or a urlencoded body) strictly as UTF-8.
    """
    pairs = []
    for part in data.split(b"&"):
        if not part:
            continue
        key, _, value = part.partition(b"=")
        try:
            pairs.append(
                (
                    unquote_to_bytes(key.replace(b"+", b" ")).decode("utf-8"),
                    unquote_to_bytes(value.replace(b"+", b" ")).decode("utf-8"),
                )
            )
        except UnicodeDecodeError:
            raise APIError(400, f"{_sentence(where)} is not valid UTF-8") from None
    return pairs


def query_pairs(request: IRequest) -> list[tuple[str, str]]:
    """
    Return the query string's ``(key, value)`` pairs in order.

    :raises APIError: 400 when it is not valid UTF-8.
    """
    _, _, query = request.uri.partition(b"?")
    return _parse_pairs(query, "the query string") if query else []


def _multipart_pairs(request: IRequest, content: bytes) -> list[tuple[str, str]]:
    content_type = request.getHeader(b"content-type") or b""
    message = message_from_bytes(
        b"MIME-Version: 1.0\r\nContent-Type: " + content_type + b"\r\n\r\n" + content
    )
    parts = message.get_payload()
    if not message.is_multipart() or not isinstance(parts, list):
        raise APIError(400, "The multipart/form-data body is malformed")
    pairs = []
    for part in parts:
        if not isinstance(part, Message):
            continue
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str) or not name:
            continue
        data = part.get_payload(decode=True)
        if not isinstance(data, bytes):
            data = b""
        pairs.append((name, _decode_utf8(data, f"the form field '{name}'")))
    return pairs


def _lookup(pairs: list[tuple[str, str]], key: str) -> str | None:
    """
    Return the first value of ``key``; failing that, of a key equal but for case (as Go).
    """
    for name, value in pairs:
        if name == key:
            return value
    lowered = key.lower()
    for name, value in pairs:
        if name.lower() == lowered:
            return value
    return None


def _reject_constant(name: str) -> Any:
    raise APIError(400, f"{name} is not a JSON number")


def _parse_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise APIError(400, f"The number {text[:40]} is too large")
    return value


#: ``json.loads`` with these arguments builds a decoder per call.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_parse_float)


def _parse_json(text: str, where: str) -> Any:
    try:
        if text.startswith("\ufeff"):
            # What json.loads says of it (the decoder alone does not look).
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        return _DECODER.decode(text)
    except json.JSONDecodeError as e:
        raise APIError(
            400,
            f"Malformed JSON in {where} at line {e.lineno}, column {e.colno} "
            f"(offset {e.pos}): {e.msg}",
        ) from None
    except RecursionError:
        raise APIError(400, f"The JSON in {where} is nested too deeply") from None
    except ValueError as e:
        # For example an integer with more digits than Python converts.
        raise APIError(400, f"Malformed JSON in {where}: {e}") from None


def _parse_json_object(text: str, where: str) -> dict[str, Any]:
    value = _parse_json(text, where)
    if not isinstance(value, dict):
        raise APIError(
            400, f"{_sentence(where)} must be a JSON object, not {json_type_name(value)}"
        )
    return value


def _check_text(field: str, value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise APIError(
            400, f"'{field}' is not valid UTF-8: it contains a lone surrogate escape"
        ) from None
    return value


def _given(value: Any) -> str:
    """
    Name a wrong JSON value in a message: a number, boolean or null as written
    (``not 1.5``, ``not true``), anything else by its type (``not a string``).
    """
    if value is None or isinstance(value, bool | int | float):
        text = json.dumps(value)
        return text if len(text) <= 40 else text[:37] + "..."
    return json_type_name(value)


#: ``id(fields)`` -> ``(fields, {lowered name: field})``: made once per field
#: table, not once per job of a batch. The table is kept, so its id is not
#: reused while it is here.
_FIELD_NAMES: dict[int, tuple[dict[str, Kind], dict[str, str]]] = {}


def _lowered_names(fields: dict[str, Kind]) -> dict[str, str]:
    entry = _FIELD_NAMES.get(id(fields))
    if entry is not None and entry[0] is fields:
        return entry[1]
    if len(_FIELD_NAMES) >= 64:
        _FIELD_NAMES.clear()
    names = {field.lower(): field for field in fields}
    _FIELD_NAMES[id(fields)] = (fields, names)
    return names


def _json_fields(document: dict[str, Any], fields: dict[str, Kind]) -> dict[str, Any]:
    # Go matches keys case-insensitively, and a later key wins.
    names = _lowered_names(fields)
    values: dict[str, Any] = {}
    for key, value in document.items():
        # A key written as the field is (nearly always) needs no lowering.
        field = key if key in fields else names.get(key.lower())
        if field is not None and value is not None:
            values[field] = _json_value(field, fields[field], value)
    return values


def _json_value(field: str, kind: Kind, value: Any) -> Any:
    if kind is Kind.STR:
        if not isinstance(value, str):
            raise APIError(400, f"'{field}' must be a string, not {_given(value)}")
        return _check_text(field, value)
    if kind is Kind.INT:
        if isinstance(value, float) and value.is_integer():
            # 5.0 is the integer 5 in JSON (and in JSON Schema): what a
            # client that only has floats sends.
            return int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise APIError(400, f"'{field}' must be an integer, not {_given(value)}")
        return value
    if kind is Kind.NUMBER:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise APIError(400, f"'{field}' must be a number, not {_given(value)}")
        return value
    if kind is Kind.UINT:
        if isinstance(value, str) and _UINT_RE.match(value):
            # Ids are strings in every response, so a string of digits is accepted too.
            return _to_int(value)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise APIError(400, f"'{field}' must be {Kind.UINT.value}, not {_given(value)}")
        return value
    if kind is Kind.BOOL:
        if not isinstance(value, bool):
            raise APIError(400, f"'{field}' must be true or false, not {_given(value)}")
        return value
    if kind is Kind.HEADERS:
        if not isinstance(value, dict):
            raise APIError(
                400, f"'{field}' must be an object of strings, not {json_type_name(value)}"
            )
        for name, text in value.items():
            if not isinstance(text, str):
                raise APIError(
                    400,
                    f"'{field}' value for '{name}' must be a string, not {_given(text)}",
                )
            _check_text(field, name)
            _check_text(field, text)
        return value
    try:
        text = _compact_json(value)
    except RecursionError:
        raise APIError(400, f"'{field}' is nested too deeply") from None
    return _check_text(field, text)


def _string_fields(pairs: list[tuple[str, str]], fields: dict[str, Kind]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for field, kind in fields.items():
        text = _lookup(pairs, field)
        if text is None:
            continue
        if kind is Kind.STR:
            values[field] = text
        elif kind is Kind.BOOL:
            # A bare ``?reverse`` (or ``reverse=``) means true.
            if text in _GO_TRUE or text == "":
                values[field] = True
            elif text in _GO_FALSE:
                values[field] = False
            else:
                raise APIError(400, f"'{field}' must be true or false, not '{text}'")
        elif kind in (Kind.INT, Kind.UINT):
            if text == "":
                continue
            if not (_INT_RE if kind is Kind.INT else _UINT_RE).match(text):
                raise APIError(400, f"'{field}' must be {kind.value}, not '{text}'")
            values[field] = _to_int(text)
        elif kind is Kind.NUMBER:
            if text == "":
                continue
            if not _NUMBER_RE.match(text):
                raise APIError(400, f"'{field}' must be a number, not '{text[:40]}'")
            values[field] = _parse_float(text)
        else:
            raise APIError(400, f"'{field}' can only be given in a JSON body")
    return values


def _to_int(text: str) -> int:
    # Far beyond any id or limit; also keeps int() off very long digit strings.
    # Leading zeros do not count: "+000...0005" is 5, however many zeros.
    digits = text.lstrip("+-").lstrip("0")
    if len(digits) > 40:
        return -(10**40) if text.startswith("-") else 10**40
    return int(text[0] + (digits or "0")) if text[0] in "+-" else int(digits or "0")


#: The most extra attempts a job may ask for.
MAX_RETRIES = 1000
#: The longest ``delay``, seconds (100 years): beyond any real use, and far
#: inside the 64-bit milliseconds the stores keep.
MAX_DELAY = 3_155_760_000
#: The longest idempotency key, characters.
MAX_KEY_LENGTH = 255
_RFC3339_RE = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]+)?"
    r"(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))\Z"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@attrs.define
class PushRequest:
    """
    A checked push (``POST /job``, or one job of ``POST /jobs``): the new job's fields.

    Not frozen: it lives only until :meth:`job` makes the job, and a frozen
    class's ``__init__`` costs a microsecond more (a batch makes 10,000).
    """

    url: str
    name: str
    comment: str
    payload: str | None
    headers: dict[str, str] | None
    timeout: int
    retries: int = 0
    #: When the job is due, ms; ``None``: at once.
    run_at: int | None = None
    idempotency_key: str | None = None
    #: The flow key (SPEC §16); empty: the URL's ``host:port``.
    flow_key: str = ""
    callback_url: str | None = None
    failure_callback_url: str | None = None

    def job(self, job_id: int) -> Job:
        """
        Return the new waiting job with id ``job_id``.

        A due time not after the job's creation counts as none: the job is
        due at once, in its place in line (a past ``runAt`` does not jump
        ahead of jobs pushed before it).
        """
        run_at = self.run_at
        if run_at is not None and run_at <= id_to_ms(job_id):
            run_at = None
        return Job(
            id=job_id,
            url=self.url,
            name=self.name,
            comment=self.comment,
            payload=self.payload,
            headers=self.headers,
            timeout=self.timeout,
            retries=self.retries,
            run_at=run_at,
            idempotency_key=self.idempotency_key,
            flow_key=self.flow_key,
            callback_url=self.callback_url,
            failure_callback_url=self.failure_callback_url,
        )


def bind_push(
    request: IRequest, max_body_bytes: int, now: int, default_retries: int = 0
) -> PushRequest:
    """
    Return the checked fields of a push received at ``now`` (ms).

    The idempotency key may also come in the ``Idempotency-Key`` header.

    :raises APIError: as :func:`bind`; 422 for a missing or non-http(s)
        ``url``, a negative or too large ``timeout``, a bad header, ``retries``
        out of 0-1000, a bad ``runAt`` or ``delay`` or both, an empty or too
        long idempotency key, or a header key that differs from the body's.
    """
    values = bind(request, _PUSH_FIELDS, max_body_bytes)
    header = _idempotency_header(request)
    if header is not None:
        key = values.get("idempotencyKey")
        if key is not None and key != header:
            raise APIError(
                422,
                "The Idempotency-Key header and 'idempotencyKey' differ: give one, or the same",
            )
        values["idempotencyKey"] = header
    return push_request(values, now, default_retries)


def _idempotency_header(request: IRequest) -> str | None:
    raw = request.getHeader(b"idempotency-key")
    if raw is None:
        return None
    value = _decode_utf8(raw, "the Idempotency-Key header").strip(" \t")
    _check_key(value, "the Idempotency-Key header")
    return value


def _check_key(key: str, where: str) -> None:
    if not key:
        raise APIError(
            422, f"{_sentence(where)} must be 1 to {MAX_KEY_LENGTH} characters, not empty"
        )
    if len(key) > MAX_KEY_LENGTH:
        raise APIError(
            422, f"{_sentence(where)} must be 1 to {MAX_KEY_LENGTH} characters, not {len(key)}"
        )


def push_request(values: dict[str, Any], now: int, default_retries: int) -> PushRequest:
    """
    Return the push that the bound ``values`` (of :func:`bind` with the push
    fields) ask for at ``now`` (ms).

    :raises APIError: 422 for a value out of its range, as :func:`bind_push`.
    """
    url = values.get("url", "")
    if not url:
        raise APIError(422, "'url' is required")
    _check_url(url)
    timeout = values.get("timeout", 0)
    if timeout < 0:
        raise APIError(422, f"'timeout' must be 0 or more seconds, not {timeout}")
    if timeout > MAX_ID:
        raise APIError(422, f"'timeout' must be at most {MAX_ID} seconds")
    headers = values.get("headers")
    if headers:
        for name, value in headers.items():
            if not _TOKEN_RE.match(name):
                raise APIError(
                    422,
                    f"'headers' has an invalid header name {name!r}: a name is letters, "
                    "digits and !#$%&'*+-.^_`|~ only (no spaces)",
                )
            if _BAD_VALUE_RE.search(value):
                raise APIError(422, f"'headers' value for '{name}' must not contain CR, LF or NUL")
    retries = values.get("retries", default_retries)
    if not 0 <= retries <= MAX_RETRIES:
        raise APIError(422, f"'retries' must be 0 to {MAX_RETRIES}, not {_given(retries)}")
    key = values.get("idempotencyKey")
    if key is not None:
        _check_key(key, "'idempotencyKey'")
    flow_key = values.get("flowKey")
    if flow_key is not None:
        check_flow_key(flow_key, "'flowKey'")
    for field in ("callbackUrl", "failureCallbackUrl"):
        callback = values.get(field)
        if callback is not None and not _url_ok(callback):
            raise APIError(
                422, f"'{field}' must be an absolute http or https URL, not {callback[:200]!r}"
            )
    return PushRequest(
        url=url,
        name=values.get("name") or "default",
        comment=values.get("comment", ""),
        payload=values.get("payload"),
        headers=headers,
        timeout=timeout,
        retries=retries,
        run_at=_due_time(values, now),
        idempotency_key=key,
        flow_key=flow_key or "",
        callback_url=values.get("callbackUrl"),
        failure_callback_url=values.get("failureCallbackUrl"),
    )


def check_flow_key(key: str, where: str) -> None:
    """
    Check a flow key: 1 to 255 characters.

    :raises APIError: 422 naming ``where``.
    """
    if not key:
        raise APIError(
            422, f"{_sentence(where)} must be 1 to {MAX_FLOW_KEY_LENGTH} characters, not empty"
        )
    if len(key) > MAX_FLOW_KEY_LENGTH:
        raise APIError(
            422,
            f"{_sentence(where)} must be 1 to {MAX_FLOW_KEY_LENGTH} characters, not {len(key)}",
        )
    if key in (".", ".."):
        # URLs cannot name them: /flow/.. is /.
        raise APIError(422, f"{_sentence(where)} cannot be {key!r}")


def _due_time(values: dict[str, Any], now: int) -> int | None:
    text = values.get("runAt")
    delay = values.get("delay")
    if text is not None and delay is not None:
        raise APIError(422, "'runAt' and 'delay' cannot be given together: give one")
    if text is not None:
        return parse_time(text, "runAt")
    if delay is not None:
        if delay < 0:
            raise APIError(422, f"'delay' must be 0 or more seconds, not {_given(delay)}")
        if delay > MAX_DELAY:
            raise APIError(422, f"'delay' must be at most {MAX_DELAY} seconds (100 years)")
        return now + math.ceil(delay * 1000)
    return None


def parse_time(text: str, field: str) -> int:
    """
    Return the RFC 3339 time ``text`` (with an offset or ``Z``) in ms since
    the Unix epoch, rounded up to the millisecond.

    :raises APIError: 422 naming ``field`` when ``text`` is not such a time.
    """
    problem = APIError(
        422,
        f"'{field}' must be an RFC 3339 time with an offset or Z "
        f"(2024-05-01T09:30:00Z), not {text[:60]!r}",
    )
    match = _RFC3339_RE.match(text)
    if match is None:
        raise problem
    year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
    fraction, zulu, sign, offset_hours, offset_minutes = match.group(7, 8, 9, 10, 11)
    if zulu is None and (int(offset_hours) > 23 or int(offset_minutes) > 59):
        raise problem
    if hour > 23 or minute > 59 or second > 60:
        raise problem
    try:
        # Year 0 (a leap year) is read as year 4, then moved back 4 years;
        # a leap second (:60) is the first instant of the next minute.
        start = datetime(year or 4, month, day, hour, minute, tzinfo=UTC)
    except ValueError:
        raise problem from None
    ms = (start - _EPOCH) // timedelta(milliseconds=1) + second * 1000
    if year == 0:
        ms -= 1461 * 86_400_000
    if fraction:
        ms += math.ceil(int(fraction[1:10].ljust(9, "0")) / 1_000_000)
    if zulu is None:
        offset = (int(offset_hours) * 60 + int(offset_minutes)) * 60_000
        ms += -offset if sign == "+" else offset
    return ms


def _check_url(url: str) -> None:
    if not _url_ok(url):
        raise APIError(422, f"'url' must be an absolute http or https URL, not {url!r}")


@functools.lru_cache(maxsize=1024)
def _url_ok(url: str) -> bool:
    # Cached: the jobs of a batch mostly share a few URLs.
    if _BAD_URL_RE.search(url):
        return False
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a bad port
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.hostname)


NDJSON = "application/x-ndjson"


def read_batch(request: IRequest, max_body_bytes: int, max_jobs: int) -> list[Any]:
    """
    Return the jobs of a batch push (``POST /jobs``) as decoded JSON values,
    not checked yet (:func:`bind_batch_job` checks each): a JSON array, or
    with the media type ``application/x-ndjson`` one JSON value a line
    (blank lines ignored).

    :raises APIError: 413 for a body over ``max_body_bytes`` or more than
        ``max_jobs`` jobs, 415 for another media type, 400 for malformed JSON
        (naming the job's index in NDJSON) or a body that is not an array,
        422 for an empty batch.
    """
    content = _read_body(request, max_body_bytes)
    media_type = _media_type(request)
    if media_type not in ("application/json", NDJSON):
        named = f" '{media_type}'" if media_type else ": the request body has no Content-Type"
        raise APIError(415, f"Unsupported Media Type{named}; send application/json or {NDJSON}")
    text = _decode_utf8(content, "the request body")
    empty = APIError(422, "The batch is empty: send at least one job")
    too_many = APIError(
        413, f"The batch has more than {max_jobs} jobs (the limit is max_batch_jobs)"
    )
    if media_type == NDJSON:
        lines = [(n, line) for n, line in enumerate(text.split("\n"), 1) if line.strip()]
        if len(lines) > max_jobs:
            raise too_many
        jobs = [
            _parse_json(line, f"job {index} (line {n})") for index, (n, line) in enumerate(lines)
        ]
    else:
        if not text.strip():
            raise empty
        value = _parse_json(text, "the request body")
        if not isinstance(value, list):
            raise APIError(
                400,
                "The request body must be a JSON array of jobs, not " + json_type_name(value),
            )
        jobs = value
        if len(jobs) > max_jobs:
            raise too_many
    if not jobs:
        raise empty
    return jobs


def bind_batch_job(index: int, value: Any, now: int, default_retries: int) -> PushRequest:
    """
    Return the checked push of the job at ``index`` of a batch, received at ``now``.

    :raises APIError: what :func:`bind_push` raises for the same job (400 for
        a wrong type, 422 for a bad value), its message starting with ``job <index>: ``.
    """
    try:
        if not isinstance(value, dict):
            raise APIError(400, f"must be a JSON object, not {json_type_name(value)}")
        return push_request(_json_fields(value, _PUSH_FIELDS), now, default_retries)
    except APIError as e:
        raise APIError(e.status, f"job {index}: {e.message}") from None


def bind_restart(request: IRequest, max_body_bytes: int) -> bool:
    """
    Return the ``copy`` flag of a restart (false when absent).

    :raises APIError: as :func:`bind`.
    """
    copy: bool = bind(request, _RESTART_FIELDS, max_body_bytes).get("copy", False)
    return copy


def bind_list(request: IRequest, default_limit: int) -> ListQuery:
    """
    Return the list query of ``GET /job``.

    ``limit`` absent or 0 means ``default_limit`` (0 there: no limit); a
    negative limit means no limit. An empty ``begin`` counts as absent.

    :raises APIError: 400 for a bad value or an invalid regexp.
    """
    values = bind(request, _LIST_FIELDS, 0, body=False)
    for field in ("name", "term"):
        pattern = values.get(field)
        if pattern:
            reason = check_regexp(pattern)
            if reason is not None:
                raise APIError(400, f"'{field}' is not a valid regexp: {reason}")
    status = values.get("status") or None
    if status is not None and status not in STATUSES:
        raise APIError(400, f"'status' must be one of {', '.join(STATUSES)}, not '{status}'")
    limit: int | None = values.get("limit", 0) or default_limit
    if limit is not None and (limit <= 0 or limit >= _UNLIMITED):
        limit = None
    begin = values.get("begin")
    return ListQuery(
        name=values.get("name") or None,
        term=values.get("term") or None,
        status=status,
        begin=None if begin is None else min(begin, MAX_ID),
        reverse=values.get("reverse", False),
        limit=limit,
    )


def bind_bulk(request: IRequest) -> ListQuery:
    """
    Return the filters of a bulk action (``POST /jobs/restart``, ``/stop``,
    ``/delete``): those of ``GET /job``, every match when ``limit`` is absent.

    :raises APIError: as :func:`bind_list`; 400 when none of ``name``,
        ``term``, ``status`` is given.
    """
    query = bind_list(request, 0)
    if query.name is None and query.term is None and query.status is None:
        raise APIError(
            400,
            "Give at least one of 'name', 'term' or 'status' in the query string: "
            "a bulk action never acts on every job unasked",
        )
    return query


def parse_job_id(raw: str) -> int:
    """
    Return the job id in a path.

    :raises APIError: 404 when ``raw`` is not a number a job id can be.
    """
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 40 or int(raw) > _MAX_UINT64:
        raise APIError(404, f"The job id must be a number but '{raw}'")
    job_id = int(raw)
    if job_id > MAX_ID:
        # A valid id in the Go server's unsigned range, but above every id we make.
        raise APIError(404, str(JobNotFound(job_id)))
    return job_id


_FLOW_FIELDS = {
    "parallelism": Kind.INT,
    "rate": Kind.INT,
    "period": Kind.NUMBER,
    "paused": Kind.BOOL,
}
#: The most a flow limit (parallelism, rate) may be.
MAX_FLOW_LIMIT = 1_000_000
#: The longest rate period, seconds (a year).
MAX_FLOW_PERIOD = 31_536_000


def parse_flow_key(raw: str) -> str:
    """
    Return the flow key of a ``/flow/{key}`` path (decoded by the router).

    :raises APIError: 422 for an empty or over-long key.
    """
    check_flow_key(raw, "the flow key")
    return raw


def bind_flow(
    request: IRequest, key: str, max_body_bytes: int, current: FlowLimits | None
) -> FlowLimits:
    """
    Return the limits a ``PUT /flow/{key}`` sets: ``parallelism`` and
    ``rate`` absent are 0 (no limit), ``period`` absent is 1 s, ``paused``
    absent keeps ``current``'s.

    :raises APIError: as :func:`bind`; 422 for a negative or too large
        ``parallelism`` or ``rate``, or a ``period`` that is not above 0 (or
        over a year).
    """
    values = bind(request, _FLOW_FIELDS, max_body_bytes)
    for field in ("parallelism", "rate"):
        value = values.get(field, 0)
        if not 0 <= value <= MAX_FLOW_LIMIT:
            raise APIError(
                422,
                f"'{field}' must be a whole number from 0 (no limit) to {MAX_FLOW_LIMIT}, "
                f"not {_given(value)}",
            )
    period = values.get("period", 1)
    if not math.isfinite(period) or period <= 0:
        raise APIError(422, f"'period' must be a number of seconds above 0, not {_given(period)}")
    if period > MAX_FLOW_PERIOD:
        raise APIError(422, f"'period' must be at most {MAX_FLOW_PERIOD} seconds (a year)")
    paused = values.get("paused")
    if paused is None:
        paused = current.paused if current is not None else False
    return FlowLimits(
        key=key,
        parallelism=values.get("parallelism", 0),
        rate=values.get("rate", 0),
        period=float(period),
        paused=paused,
    )
