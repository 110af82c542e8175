"""Standard Webhooks signatures of callbacks, checked with the independent `standardwebhooks`."""

from __future__ import annotations

import base64
import json
import os
import time

import pytest
import standardwebhooks

from menos.queue import signing

BODY = json.dumps({"schema_version": "1", "type": "job.completed", "data": {"note": "café"}})


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def signed(secrets: list[str], body: bytes, *, timestamp: int | None = None) -> dict[str, str]:
    return signing.headers(
        msg_id="0190a0b8-1234-7abc-8def-0123456789ab",
        timestamp=int(time.time()) if timestamp is None else timestamp,
        body=body,
        secrets=secrets,
        app_version="1.2.3",
    )


def test_published_test_vector_matches() -> None:
    """The signature equals the Standard Webhooks reference example, byte for byte."""
    assert (
        signing.signature(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            b'{"test": 2432232314}',
        )
        == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )


def test_receiver_verifies_with_the_owner_secret() -> None:
    """A receiver using the standardwebhooks library accepts the request and reads the body."""
    secret = new_secret()
    body = BODY.encode()
    headers = signed([secret], body)
    assert standardwebhooks.Webhook(secret).verify(body, headers) == json.loads(BODY)
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"] == "menos/1.2.3"
    assert headers["webhook-id"] == "0190a0b8-1234-7abc-8def-0123456789ab"


def test_wrong_secret_or_altered_body_is_rejected() -> None:
    """Another secret, a changed body or a changed id make verification fail."""
    secret = new_secret()
    body = BODY.encode()
    headers = signed([secret], body)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(new_secret()).verify(body, headers)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(secret).verify(body.replace(b"completed", b"failed"), headers)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(secret).verify(body, {**headers, "webhook-id": "other"})


def test_rotation_signs_with_both_secrets() -> None:
    """During a rotation both the new and the previous secret verify the same request."""
    new, previous = new_secret(), new_secret()
    body = BODY.encode()
    headers = signed([new, previous], body)
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (new, previous):
        standardwebhooks.Webhook(secret).verify(body, headers)


def test_timestamp_is_signed() -> None:
    """Replaying a signature under another timestamp fails; the header carries Unix seconds."""
    secret = new_secret()
    body = BODY.encode()
    now = int(time.time())
    headers = signed([secret], body, timestamp=now)
    assert headers["webhook-timestamp"] == str(now)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(secret).verify(
            body, {**headers, "webhook-timestamp": str(now - 1)}
        )


@pytest.mark.parametrize("bad", ["", "secret", "whsec_", "whsec_not base64!"])
def test_malformed_secret_is_refused(bad: str) -> None:
    """A secret that is not `whsec_` + base64 cannot sign anything."""
    with pytest.raises(ValueError, match=r"secret|base64"):
        signing.signature(bad, "id", 1, b"{}")


def test_signing_needs_a_secret() -> None:
    """An owner without any secret gets no signature header rather than an unsigned one."""
    with pytest.raises(ValueError, match="at least one secret"):
        signing.signature_header([], "id", 1, b"{}")
