"""Standard Webhooks signing of callback requests (DESIGN §6): pure functions, no I/O."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence

SECRET_PREFIX = "whsec_"


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_…` secret: the base64-decoded part after the prefix.

    Raises ValueError when the secret is not `whsec_` + standard base64 of a non-empty key.
    """
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("webhook secrets start with 'whsec_'")
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except binascii.Error:
        raise ValueError("the part after 'whsec_' is not standard base64") from None
    if not key:
        raise ValueError("the webhook secret is empty")
    return key


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,` + base64 of HMAC-SHA256 over `{msg_id}.{timestamp}.{body}` keyed by `secret`."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signature_header(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: one signature per secret, space-separated, in order."""
    if not secrets:
        raise ValueError("at least one secret is needed to sign")
    return " ".join(signature(secret, msg_id, timestamp, body) for secret in secrets)


def headers(
    *, msg_id: str, timestamp: int, body: bytes, secrets: Sequence[str], app_version: str
) -> dict[str, str]:
    """Every header of one delivery attempt; `timestamp` is Unix seconds of this attempt."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(secrets, msg_id, timestamp, body),
        "content-type": "application/json",
        "user-agent": f"menos/{app_version}",
    }
