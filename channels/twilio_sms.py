"""SMS channel over Twilio's Messages API, plus the pure helpers its HTTP endpoints need.

Sending goes through the ``twilio`` library's REST client (``messages.create_async``) on
our :class:`HttpxTwilioClient` (one shared :class:`~channels.http_common.PostClient`: an
httpx-shaped client over pyreqwest's pool), which sends requests for
``https://api.twilio.com`` to ``base_url`` instead (a local fake, in tests).

The body is ``Message.text`` fitted to ``max_segments`` with the incident link from
``Message.headers["X-Broadcaster-Link"]`` (none when absent) by :func:`~channels.sms_segments.fit`,
which is idempotent: text the composer already fitted keeps its one link.

Twilio's answers map onto the retry contract (:func:`twilio_error`): error 21610 (STOP)
is permanent and marks the number ``OPTED_OUT``; 21211 (invalid), 21614 (not a mobile) and
21635 (a landline) mark it ``DISABLED``; HTTP 408, 429 (or error 20429), 5xx, timeouts and
connection errors are retried (after ``Retry-After`` when given); error 21611 (the sender's
queue is full) is retried after :data:`QUEUE_FULL_RETRY_AFTER`; 401/403 and other 4xx fail
the message only.

HTTP 429, error 20429 and error 21611 are ``throttled``: the dispatcher pauses the whole
channel. Twilio documents 20429 (with HTTP 429) as the *account* sending too many concurrent
REST API requests, refused before they are processed and safe to retry after backing off;
21611 is the sender's (the ``from_number``'s or the messaging service's) queue, which every
message of the channel shares. Neither is about the recipient, so every other message of the
channel would meet the same answer until the pause is over. A 5xx or a timeout is not: it
says nothing of our rate.
Reasons: Twilio's code and message, never a raw body; no reason, repr or log has the token.
"""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar
from types import MappingProxyType
from typing import Literal, Protocol

import httpx
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from twilio.base.exceptions import TwilioRestException, TwilioServiceException
from twilio.http import AsyncHttpClient
from twilio.http.response import Response
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from channels import http_common
from channels.base import ContactPointState, DeliveryError, Message, Receipt, Target
from channels.redact import redact
from channels.sms_segments import fit, segments

TWILIO_API = "https://api.twilio.com"
LINK_HEADER = "X-Broadcaster-Link"
"""``Message.headers`` key carrying the incident link appended to every SMS."""

log = logging.getLogger(__name__)

DeliveryState = Literal["queued", "sent", "delivered", "undelivered", "failed"]

STATUS_MAP: Mapping[str, DeliveryState] = MappingProxyType(
    {
        "accepted": "queued",  # a Messaging Service took it, no sender chosen yet
        "scheduled": "queued",
        "queued": "queued",
        "sending": "queued",  # being handed to the carrier, not yet accepted by it
        "sent": "sent",  # the carrier accepted it
        "delivered": "delivered",
        "read": "delivered",  # a read receipt implies delivery (WhatsApp, RCS)
        "partially_delivered": "undelivered",
        "undelivered": "undelivered",
        "failed": "failed",
        "canceled": "failed",  # a scheduled message cancelled before it went out
    }
)
"""Twilio ``MessageStatus`` (status callbacks) to our delivery state. Callbacks can come
out of order (``sent`` after ``delivered``): never move a delivery backwards."""

CONTACT_POINT_ERRORS: Mapping[int, ContactPointState] = MappingProxyType(
    {
        21610: ContactPointState.OPTED_OUT,  # the recipient replied STOP
        21211: ContactPointState.DISABLED,  # the To number is not a valid phone number
        21614: ContactPointState.DISABLED,  # the To number is not a mobile number
        21635: ContactPointState.DISABLED,  # the To number is a landline (refused at the API)
    }
)
"""Twilio error codes that condemn the address itself."""

QUEUE_FULL = 21611
"""Twilio error (with HTTP 400): the sender has more messages queued than Twilio holds for
it. The queue drains at the sender's throughput; the number is not at fault."""
QUEUE_FULL_RETRY_AFTER = 300.0
"""Seconds to wait after error 21611 when Twilio gives no ``Retry-After``. A full queue
holds hours of the sender's throughput (up to 10, says Twilio); retrying sooner would only
meet it full again and use up the delivery's attempts."""

Keyword = Literal["stop", "start", "help"]
_STOP: Keyword = "stop"
_START: Keyword = "start"
_HELP: Keyword = "help"
KEYWORDS: Mapping[str, Keyword] = MappingProxyType(
    dict.fromkeys(
        ("STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"), _STOP
    )
    | dict.fromkeys(("START", "UNSTOP", "YES"), _START)
    | dict.fromkeys(("HELP", "INFO"), _HELP)
)
"""Inbound SMS bodies (upper case) that are opt-out keywords: Twilio's default lists, on
which it blocks or unblocks the number itself (REVOKE and OPTOUT since May 2025)."""
NO_TWILIO_ENVIRONMENT = {"TWILIO_EDGE": "", "TWILIO_REGION": ""}
"""Given to the twilio client so that TWILIO_* variables cannot redirect it: settings rule."""

_responses: ContextVar[list[http_common.HttpAnswer] | None] = ContextVar(
    "twilio_responses", default=None
)
"""Per send, the raw responses (Retry-After, content type): twilio's exceptions lack them."""


class TwilioSettings(BaseModel):
    """Settings of the Twilio SMS channel."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["twilio"] = "twilio"
    contact: str = "sms"
    account_sid: str
    """``AC`` followed by 32 hex digits (Twilio Console, Account Info)."""
    auth_token: SecretStr
    messaging_service_sid: str | None = None
    """``MG…``: Twilio picks the sender from the service's pool. Exclusive with from_number."""
    from_number: str | None = None
    """A Twilio number (E.164), short code or alphanumeric sender ID."""
    base_url: str = TWILIO_API
    """Where ``https://api.twilio.com`` requests go instead (a local fake in tests)."""
    status_callback_url: str | None = None
    """Public URL of the daemon's status-callback endpoint, passed as ``StatusCallback``."""
    max_segments: int = Field(default=3, ge=1, le=10)
    timeout: float = Field(default=10.0, gt=0)

    @field_validator("messaging_service_sid", "from_number", "status_callback_url", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        """``${TWILIO_FROM:-}`` left empty means unset."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("account_sid", "messaging_service_sid")
    @classmethod
    def _sid(cls, value: str | None, info: ValidationInfo) -> str | None:
        prefix = "AC" if info.field_name == "account_sid" else "MG"
        if value is not None and not re.fullmatch(prefix + "[0-9a-fA-F]{32}", value.strip()):
            raise ValueError(f"{info.field_name} must be {prefix!r} followed by 32 hex digits")
        return value.strip() if value is not None else None

    @field_validator("base_url", "status_callback_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/") if value else value

    @model_validator(mode="after")
    def _one_sender(self) -> TwilioSettings:
        if (self.messaging_service_sid is None) == (self.from_number is None):
            got = "both" if self.messaging_service_sid else "neither"
            raise ValueError(
                "set exactly one of 'messaging_service_sid' (MG…, Twilio picks the sender "
                f"from the service's pool) or 'from_number' (a Twilio number); got {got}"
            )
        return self


class HttpxTwilioClient(AsyncHttpClient):
    """The twilio library's async HTTP client interface over one shared pooled client.

    ``https://api.twilio.com`` URLs go to ``base_url``. Only method and URL are logged:
    bodies hold phone numbers and text, the Authorization header the token.
    """

    def __init__(
        self,
        *,
        base_url: str = TWILIO_API,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(log, is_async=True, timeout=timeout)
        self.base_url = base_url.rstrip("/")
        # Straight over pyreqwest's pool (http_common.PostClient): httpx's own
        # pool is CPU-bound with many sends in flight, and its request models cost as much
        # as the send. 100 connections: httpx's default limit.
        self._client = http_common.pooled_client(timeout, 100, transport)

    # twilio's own AsyncHttpClient overrides the sync HttpClient.request with a coroutine;
    # mypy checks us against both. The timeout parameter is twilio's interface.
    async def request(  # type: ignore[override]
        self,
        method: str,
        uri: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
        allow_redirects: bool = False,
    ) -> Response:
        url = self.base_url + uri[len(TWILIO_API) :] if uri.startswith(TWILIO_API + "/") else uri
        log.debug("twilio request", extra={"method": method, "url": url})
        # What httpx did with params, data and auth, done here: the pooled client sends
        # bytes. Redirects are never followed (the library asks for none).
        if params:
            url += ("&" if "?" in url else "?") + form_urlencode(params)
        sent = dict(headers or {})
        body = b""
        if data is not None:
            body = form_urlencode(data).encode("ascii")
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        if auth is not None:
            sent["Authorization"] = _basic(*auth)
        response = await self._client.request(
            method.upper(),
            url,
            content=body,
            headers=sent,
            timeout=timeout,  # None: the client's own, built once (self.timeout)
        )
        sink = _responses.get()
        if sink is not None:
            sink.append(response)
        return Response(response.status_code, response.text, response.headers)

    async def close(self) -> None:
        await self._client.aclose()


def _basic(username: str, password: str) -> str:
    """An HTTP Basic ``Authorization`` value (RFC 7617, UTF-8)."""
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~")
_FORM_BYTES: tuple[str, ...] = tuple(
    chr(b) if b in _UNRESERVED else "+" if b == 0x20 else f"%{b:02X}" for b in range(256)
)
_FORM_ASCII: dict[int, str] = dict(enumerate(_FORM_BYTES[:128]))


def _quote_plus(text: str) -> str:
    """``urllib.parse.quote_plus(text, safe="")`` with its loop in C (``str.translate``
    for ASCII text, a table lookup per UTF-8 byte otherwise): the standard library's is a
    Python list comprehension over the bytes, and an SMS's body and status callback URL
    are quoted for every message (5.2 against 2.3 µs for a body of 140 characters)."""
    if text.isascii():
        return text.translate(_FORM_ASCII)
    return "".join(map(_FORM_BYTES.__getitem__, text.encode("utf-8")))


def form_urlencode(values: Mapping[str, object]) -> str:
    """``urllib.parse.urlencode(values, doseq=True)`` for the twilio library's parameters:
    every value as ``str()``, a list as one pair per item."""
    pairs: list[str] = []
    for key, value in values.items():
        name = _quote_plus(str(key))
        if isinstance(value, list):
            pairs.extend(f"{name}={_quote_plus(str(item))}" for item in value)
        else:
            pairs.append(f"{name}={_quote_plus(str(value))}")
    return "&".join(pairs)


def _new_client(account_sid: str, auth_token: str, http_client: HttpxTwilioClient) -> Client:
    make: Callable[..., Client] = Client  # twilio's Client.__init__ is not annotated
    return make(
        username=account_sid,
        password=auth_token,
        account_sid=account_sid,
        http_client=http_client,
        environment=NO_TWILIO_ENVIRONMENT,
    )


class TwilioSmsChannel:
    """Sends one SMS per call through Twilio; one HTTP connection pool for all sends."""

    def __init__(self, name: str, settings: TwilioSettings) -> None:
        self.name = name
        self.contact = settings.contact
        self._settings = settings
        self._http = HttpxTwilioClient(base_url=settings.base_url, timeout=settings.timeout)
        token = settings.auth_token.get_secret_value()
        client = _new_client(settings.account_sid, token, self._http)
        basic = base64.b64encode(f"{settings.account_sid}:{token}".encode()).decode("ascii")
        self._secrets = (token, basic)  # what no reason may show
        # Resolving the resource now loads twilio's lazily imported modules at startup,
        # not during the first send.
        self._messages = client.messages
        self._closed = False

    def __repr__(self) -> str:
        sender = self._settings.messaging_service_sid or self._settings.from_number
        return (
            f"TwilioSmsChannel(name={self.name!r}, account_sid={self._settings.account_sid!r}, "
            f"sender={sender!r})"
        )

    def body(self, message: Message) -> str:
        """The SMS text for ``message``: shortened to ``max_segments``, ending with the link."""
        return fit(message.text, message.headers.get(LINK_HEADER, ""), self._settings.max_segments)

    def units(self, message: Message) -> int:
        """The segments ``message`` goes out in: what Twilio's throughput counts, and so
        what it costs against ``delivery.rate_limits``."""
        return segments(self.body(message)).segments

    def status_callback(self, message: Message) -> str | None:
        """``status_callback_url?delivery=<idempotency key>``: the callback endpoint finds
        the delivery even when Twilio calls before the daemon has recorded the SID."""
        url = self._settings.status_callback_url
        if url is None or not message.idempotency_key:
            return url
        joiner = "&" if "?" in url else "?"
        return f"{url}{joiner}delivery={_quote_plus(message.idempotency_key)}"

    async def send(self, target: Target, message: Message) -> Receipt:
        if self._closed:
            raise DeliveryError("SMS channel is closed", retryable=True)
        to = target.address.strip()
        if not to:
            raise DeliveryError(
                "no phone number", retryable=False, contact_point=ContactPointState.DISABLED
            )
        try:
            body = self.body(message)
        except ValueError as exc:
            raise DeliveryError(
                f"cannot fit the message into an SMS: {exc}", retryable=False
            ) from exc
        if not body.strip():
            raise DeliveryError("the message is empty", retryable=False)
        s = self._settings
        answers: list[http_common.HttpAnswer] = []
        token = _responses.set(answers)
        try:
            sent = await self._messages.create_async(
                to=to,
                body=body,
                from_=s.from_number,
                messaging_service_sid=s.messaging_service_sid,
                status_callback=self.status_callback(message),
            )
        except (TwilioRestException, TwilioServiceException) as exc:
            last = answers[-1] if answers else None
            code = exc.code if exc.code != exc.status else None  # twilio's "no code" fallback
            detail = _detail(exc, last, self._secrets)
            headers = last.headers if last is not None else None
            raise twilio_error(exc.status, code, detail, headers, secrets=self._secrets) from exc
        except httpx.TimeoutException as exc:
            raise DeliveryError(
                f"Twilio did not answer within {s.timeout:g}s ({type(exc).__name__}); "
                "the message may or may not have been accepted (if it was, its status "
                "callback calls off a retry still to come)",
                retryable=True,
            ) from exc
        except httpx.HTTPError as exc:
            reason = redact(f"cannot reach Twilio: {_describe(exc)}", self._secrets)
            raise DeliveryError(reason, retryable=True) from exc
        except UnicodeEncodeError:
            # Our text, not Twilio's answer: a lone surrogate (JSON input can carry one as
            # \ud800) cannot be encoded, and no retry changes that.
            raise DeliveryError(
                "the message is not Unicode text (a lone surrogate); it cannot be sent",
                retryable=False,
            ) from None
        except (ValueError, TypeError, AttributeError, KeyError, RecursionError) as exc:
            # A 2xx whose body is not Twilio's JSON object (a proxy's page, a list, JSON
            # nested past the parser's depth): the SDK raises whatever its parsing met.
            body = http_common.describe_body(answers[-1]) if answers else type(exc).__name__
            raise DeliveryError(f"unreadable answer from Twilio: {body}", retryable=True) from exc
        finally:
            _responses.reset(token)
        if not sent.sid:
            # Twilio names every message it accepts; an empty 2xx (which the SDK reads as
            # {}) is not its answer, and the message may not have gone.
            body = http_common.describe_body(answers[-1]) if answers else "no answer"
            raise DeliveryError(
                f"unreadable answer from Twilio: {body}: no message SID", retryable=True
            )
        return Receipt(
            provider_message_id=sent.sid,
            detail=f"{sent.status}, {sent.num_segments} segment(s)",
        )

    async def aclose(self) -> None:
        self._closed = True
        await self._http.close()


def _detail(
    exc: TwilioRestException | TwilioServiceException,
    response: http_common.HttpAnswer | None,
    secrets: tuple[str, ...],
) -> str:
    """Twilio's error message (legacy, or RFC 9457), cut short; else the body's type, length."""
    if response is not None and http_common.json_object(response.content) is None:
        return http_common.describe_body(response)
    if isinstance(exc, TwilioRestException):
        text = exc.msg.removeprefix("Unable to create record: ")
    else:  # RFC 9457 bodies
        text = f"{exc.title}: {exc.detail}" if exc.detail else exc.title
    return http_common.clip(text, secrets=secrets)


def _describe(exc: BaseException) -> str:
    """``ReadError: [Errno 104] Connection reset by peer``: httpx's own text is often empty."""
    cause, text = exc.__cause__ or exc.__context__, str(exc)
    while cause is not None and not text:
        text, cause = str(cause), cause.__cause__ or cause.__context__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def twilio_error(
    status: int,
    code: int | None,
    detail: str,
    headers: Mapping[str, str] | None = None,
    *,
    secrets: Iterable[str] = (),
) -> DeliveryError:
    """The :class:`DeliveryError` for one error answer of the Messages API (pure); every
    retryable one carries the answer's ``Retry-After``. Redacted against ``secrets``."""
    reason = f"Twilio HTTP {status}" + (f", error {code}" if code else "") + f": {detail}"
    reason = redact(reason, secrets)
    contact_point = CONTACT_POINT_ERRORS.get(code) if code is not None else None
    if contact_point is not None:
        return DeliveryError(reason, retryable=False, contact_point=contact_point)
    if http_common.retryable_status(status) or code in (20429, QUEUE_FULL):
        retry_after = None
        if headers is not None:
            value, date = headers.get("retry-after"), headers.get("date")
            retry_after = http_common.parse_retry_after(value, date)
        if code == QUEUE_FULL:
            # Twilio queues at most so many messages a sender; new ones are accepted again
            # as the queue drains at the sender's rate. Not the number's fault, not for good.
            if retry_after is None:
                retry_after = QUEUE_FULL_RETRY_AFTER
            reason += " (the sender's queue at Twilio is full; retried once it has drained)"
        # The account's (429, 20429) or the sender's (21611) rate, never the number's.
        throttled = status == 429 or code in (20429, QUEUE_FULL)
        return DeliveryError(reason, retryable=True, retry_after=retry_after, throttled=throttled)
    if status in (401, 403):
        reason += (
            " (Twilio refused our credentials or permissions: check account_sid and auth_token;"
            " not retried, every message fails alike until the settings are fixed; the phone"
            " number is not at fault)"
        )
    return DeliveryError(reason, retryable=False)


class _Validator(Protocol):
    def validate(self, uri: str, params: Mapping[str, str], signature: str) -> bool: ...


def verify_twilio_signature(
    auth_token: str | SecretStr, url: str, params: Mapping[str, str], signature: str | None
) -> bool:
    """Is ``X-Twilio-Signature`` right for this request (HMAC-SHA1 over URL and params)?

    ``url`` is the full URL Twilio requested, query string included (as configured in
    ``status_callback_url``, behind any proxy); ``params`` the form fields of the POST.
    """
    if not signature:
        return False
    token = auth_token.get_secret_value() if isinstance(auth_token, SecretStr) else auth_token
    make: Callable[[str], _Validator] = RequestValidator  # not annotated in twilio
    return bool(make(token).validate(url, params, signature))


def parse_inbound_keyword(body: str) -> Keyword | None:
    """The opt-out keyword an inbound SMS is, if the whole body is one (case-insensitive).

    STOP, STOPALL, UNSUBSCRIBE, CANCEL, END, QUIT, REVOKE, OPTOUT stop; START, UNSTOP, YES
    start again; HELP, INFO ask for help. Only ASCII matches, so look-alike letters never do.
    """
    return KEYWORDS.get(body.strip().upper()) if body.isascii() else None
