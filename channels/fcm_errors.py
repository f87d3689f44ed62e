"""FCM's error answers mapped onto the retry contract (see docs/channels/push-fcm.md).

:func:`fcm_error` reads Google's error document (``error.status``, ``error.message`` and the
``FcmError.errorCode`` / ``BadRequest`` details) and says whether a retry can help and
whether the registration token is dead; :func:`token_error` does the same for the OAuth2
token endpoint. Only FCM's own word condemns a token: ``UNREGISTERED``, or an
``INVALID_ARGUMENT`` whose field violation (or wording) names ``message.token``. A 404
``NOT_FOUND`` without ``UNREGISTERED`` means the project (``project_id``) or ``base_url`` is
wrong: permanent, the token untouched.

``QUOTA_EXCEEDED`` (HTTP 429 ``RESOURCE_EXHAUSTED``) is ambiguous: FCM's error reference
gives three causes, the project's message rate, one device's message rate, and one topic's.
The project's quota (per minute, 600,000 messages by default) is what FCM's throttling page
documents 429 for, and it is the only one a disruption broadcast can reach: the channel sends
to tokens, never to topics, and one incident's rounds reach a device a few times an hour,
far under a device's limit (240 a minute on Android). So a 429 or ``QUOTA_EXCEEDED`` is
``throttled`` (the dispatcher pauses the channel until the quota refills, Retry-After or
:data:`QUOTA_DEFAULT_WAIT`), unless Google's message names a device (its "device message
rate exceeded"): then only that message waits. A 429 from the OAuth2 token endpoint is
``throttled`` too: every send needs the token.

Reasons carry only those structured fields, cut short, or for a body that is not Google's
error document its type and length; they are redacted against the given secrets (the
access token, the signed assertion) in case a proxy echoes the request.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import httpx

from channels.base import ContactPointState, DeliveryError
from channels.http_common import (
    body_summary,
    clip,
    describe_body,
    json_object,
    retryable_status,
    text_field,
)
from channels.redact import redact

QUOTA_DEFAULT_WAIT = 60.0
"""FCM asks for at least a minute of back-off on QUOTA_EXCEEDED without a Retry-After."""
_FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
_BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"


def token_error(
    response: httpx.Response, retry_after: float | None, *, secrets: tuple[str, ...]
) -> DeliveryError:
    """The token endpoint refused: 408/429/5xx may pass, a refused account needs an admin.
    The reason quotes OAuth2's ``error`` and ``error_description`` (RFC 6749), nothing else."""
    payload = json_object(response.content)
    if payload is None:
        detail = f"({describe_body(response)})"
    else:
        error = text_field(payload, "error", limit=64, secrets=secrets)
        description = text_field(payload, "error_description", secrets=secrets)
        detail = ": ".join(filter(None, (error, description)))
    reason = f"OAuth2 token exchange refused: HTTP {response.status_code} {detail}".strip()
    reason = redact(reason, secrets)
    if retryable_status(response.status_code):
        # No send of the channel goes without a token: a 429 here holds them all.
        throttled = response.status_code == 429
        return DeliveryError(reason, retryable=True, retry_after=retry_after, throttled=throttled)
    return DeliveryError(reason + " (check the service account)", retryable=False)


@dataclass(frozen=True)
class GoogleError:
    """The parts of a Google API error body that decide what a failure means."""

    status: str = ""
    """The canonical status, e.g. ``NOT_FOUND``, ``INVALID_ARGUMENT``."""
    error_code: str = ""
    """FCM's own ``FcmError.errorCode``, e.g. ``UNREGISTERED``."""
    message: str = ""
    token_field: bool = False
    """A ``BadRequest`` field violation names ``message.token``."""
    parsed: bool = False
    """The body was a Google API error at all (not, say, a proxy's HTML page)."""


def parse_google_error(body: bytes) -> GoogleError:
    try:
        error = (json_object(body) or {})["error"]
        status, message = str(error.get("status", "")), str(error.get("message", ""))
        details = error.get("details") or []
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return GoogleError()
    code, token_field = "", False
    for detail in details if isinstance(details, list) else []:
        if not isinstance(detail, dict):
            continue
        if detail.get("@type") == _FCM_ERROR_TYPE:
            code = str(detail.get("errorCode", ""))
        elif detail.get("@type") == _BAD_REQUEST_TYPE:
            violations = detail.get("fieldViolations") or []
            token_field = token_field or any(
                isinstance(v, dict) and v.get("field") == "message.token" for v in violations
            )
    return GoogleError(status, code, message, token_field, parsed=True)


def fcm_error(
    status: int,
    body: bytes,
    retry_after: float | None = None,
    *,
    content_type: str | None = None,
    secrets: Iterable[str] = (),
) -> DeliveryError:
    """Map one FCM v1 error response onto the retry contract (docs/channels/push-fcm.md);
    the reason holds only Google's error fields, redacted against ``secrets``."""
    error = parse_google_error(body)
    if error.parsed:
        code = clip(error.error_code or error.status, 64, secrets) or "no error code"
        reason = f"FCM {status} {code}: {clip(error.message, secrets=secrets)}".rstrip(": ")
    else:
        reason = f"FCM {status} without a Google error ({body_summary(body, content_type)})"
    reason = redact(reason, secrets)
    disabled = ContactPointState.DISABLED
    if error.error_code == "UNREGISTERED":
        return DeliveryError(reason, retryable=False, contact_point=disabled)
    if error.error_code in ("SENDER_ID_MISMATCH", "THIRD_PARTY_AUTH_ERROR"):
        return DeliveryError(reason + " (configuration)", retryable=False)
    if status == 404:
        # NOT_FOUND without UNREGISTERED, or a proxy's page: the project or the URL is wrong.
        hint = " (configuration: check project_id and base_url)"
        return DeliveryError(reason + hint, retryable=False)
    if status == 400 or error.status == "INVALID_ARGUMENT":
        # INVALID_ARGUMENT covers both a malformed token and a malformed message; only a
        # field violation on message.token (or FCM's wording for it) condemns the token.
        if error.token_field or "registration token" in error.message.lower():
            return DeliveryError(reason, retryable=False, contact_point=disabled)
        return DeliveryError(reason, retryable=False)
    if status in (401, 403):
        # 401 here came after a fresh token; 403 PERMISSION_DENIED: the account lacks the role.
        return DeliveryError(reason + " (configuration)", retryable=False)
    if status == 429 or error.error_code == "QUOTA_EXCEEDED":
        wait = retry_after if retry_after is not None else QUOTA_DEFAULT_WAIT
        # The project's quota, unless FCM names one device's rate (see the module's text).
        one_device = "device" in error.message.lower()
        return DeliveryError(reason, retryable=True, retry_after=wait, throttled=not one_device)
    if retryable_status(status):
        return DeliveryError(reason, retryable=True, retry_after=retry_after)
    return DeliveryError(reason, retryable=False)
