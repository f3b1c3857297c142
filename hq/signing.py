"""
Signed deliveries: the Standard Webhooks headers (https://www.standardwebhooks.com/).

Every request to a worker carries

- ``webhook-id``: the job id,
- ``webhook-timestamp``: the Unix time in seconds when the attempt began,
- ``webhook-signature``: ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``
  for each configured secret, space-separated (so a worker verifies with any of
  them while secrets rotate).

Secrets are written ``whsec_<base64 of the key>``, as Standard Webhooks libraries
take them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence
from typing import Any

#: The prefix of a secret's text.
SECRET_PREFIX = "whsec_"  # noqa: S105 -- a prefix, not a secret
#: Fewer key bytes than this are refused (the spec asks for 24 to 64).
MIN_SECRET_BYTES = 24
MAX_SECRET_BYTES = 64

#: The headers HQ signs with; a job's own headers of these names are dropped.
SIGNATURE_HEADERS = frozenset({"webhook-id", "webhook-timestamp", "webhook-signature"})


class SecretError(ValueError):
    """
    A ``signing_secrets`` entry is malformed; the message names it by index.
    """


def secret_key(text: str) -> bytes:
    """
    Return the key bytes of the secret ``text`` (``whsec_<base64>``).

    :raises ValueError: if it is not such a text, or the key is too short or long.
    """
    if not text.startswith(SECRET_PREFIX):
        raise ValueError(f"a secret must start with {SECRET_PREFIX!r}")
    try:
        key = base64.b64decode(text[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"the part after {SECRET_PREFIX!r} must be base64") from None
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise ValueError(
            f"the key must be {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes, not {len(key)}"
        )
    return key


def parse_secrets(value: Any) -> tuple[str, ...]:
    """
    Check the config's ``signing_secrets`` (an array of ``whsec_`` strings); return it.

    :raises SecretError: naming the entry by index (never showing the secret).
    """
    if not isinstance(value, list):
        raise SecretError(
            f"'signing_secrets' must be an array of strings, not {type(value).__name__}"
        )
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise SecretError(f"'signing_secrets' entry {index} must be a string")
        try:
            secret_key(item)
        except ValueError as e:
            raise SecretError(f"'signing_secrets' entry {index} is not valid: {e}") from None
    if len(set(value)) != len(value):
        raise SecretError("'signing_secrets' lists a secret twice")
    return tuple(value)


def new_secret() -> str:
    """
    Return a new random secret (32 bytes) as ``whsec_<base64>``.
    """
    import secrets

    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


class Signer:
    """
    Signs deliveries with one or more secrets (the first is the current one).
    """

    def __init__(self, secrets: Sequence[str]) -> None:
        if not secrets:
            raise ValueError("a Signer needs at least one secret")
        self._keys = [secret_key(s) for s in secrets]

    def signature(self, msg_id: str, timestamp: int, body: bytes) -> str:
        """
        Return the ``webhook-signature`` value: ``v1,<base64>`` per secret, space-separated.
        """
        content = f"{msg_id}.{timestamp}.".encode() + body
        return " ".join(
            "v1," + base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()
            for key in self._keys
        )

    def headers(self, msg_id: str, timestamp: int, body: bytes) -> list[tuple[bytes, bytes]]:
        """
        Return the three Standard Webhooks headers for one request.
        """
        return [
            (b"webhook-id", msg_id.encode("ascii")),
            (b"webhook-timestamp", str(timestamp).encode("ascii")),
            (b"webhook-signature", self.signature(msg_id, timestamp, body).encode("ascii")),
        ]


def signer_for(secrets: Sequence[str]) -> Signer | None:
    """
    Return a :class:`Signer` for the configured ``secrets``, or ``None`` for none.
    """
    return Signer(secrets) if secrets else None
