"""Inbound incident webhooks: Prometheus Alertmanager and our signed JSON webhook.

Both read the body with the source's parser (:mod:`broadcaster.intake`) and apply the
events (:func:`broadcaster.intake.apply.apply_event`, with the engine's escalation, so a
resolution meets the rules); a replay is harmless: a version already applied to the item is
never applied again. Every source must be configured with a secret in ``webhook_secrets``,
or a list of them while one is rotated (any is accepted); a request for an unknown source
gets 404, so nobody can declare incidents that notify customers through an unconfigured
name:

* ``POST /hooks/alertmanager/{source}``: ``Authorization: Bearer <secret>`` (Alertmanager's
  ``http_config.authorization.credentials``); 401 without it. A body that is not an
  Alertmanager v4 payload gets 400 with the reason.
* ``POST /hooks/incidents/{source}``: signed as docs/intake.md says
  (:func:`signed_webhook.verify`); 401 with the reason on a missing, wrong or stale
  signature, 422 listing the field errors when the body breaks the schema.

200 answers carry the counts by outcome; when an event could not be applied (the store
failed), the answer is 503 so the sender retries. A body over ``http.max_body_bytes`` (1 MiB
by default) gets 413 before it is read; :data:`MAX_BODY` (5 MiB, the parsers' document
limit) bounds it whatever that setting says.

Optional per-source settings (``hooks: {<source>: HookSettings}``) give the mapping, the
first-round hold (default 0: Alertmanager waits ``group_wait`` before sending) and the
reopen window.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Callable
from typing import Final

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import SecretStr

from broadcaster.intake import alertmanager, signed_webhook
from broadcaster.intake.apply import Applied, apply_event
from broadcaster.intake.events import FeedError, ParseResult
from broadcaster.intake.watch import HookSettings
from broadcaster.web.state import WebState, state_of

log = logging.getLogger("broadcaster.web")
router = APIRouter(prefix="/hooks", tags=["intake"])

MAX_BODY: Final = 5 * 1024 * 1024
Parser = Callable[..., ParseResult]


def webhook_secrets(state: WebState, source: str) -> list[str]:
    """The source's secrets (several while one is rotated); none: not configured. An
    empty one never counts (the settings refuse it; this is for settings made in code)."""
    configured: list[SecretStr] = state.settings.webhook_secrets.get(source) or []
    return [s.get_secret_value() for s in configured if s.get_secret_value().strip()]


def hook_settings(state: WebState, source: str) -> HookSettings:
    return state.settings.hooks.get(source) or HookSettings()


def _error(status: int, reason: str, **extra: object) -> JSONResponse:
    return JSONResponse({"error": reason, **extra}, status_code=status)


async def _body(request: Request) -> bytes | JSONResponse:
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_BODY:
        return _error(413, f"body over {MAX_BODY} bytes")
    body = await request.body()
    if len(body) > MAX_BODY:
        return _error(413, f"body over {MAX_BODY} bytes")
    return body


async def _apply(state: WebState, source: str, result: ParseResult) -> JSONResponse:
    config = hook_settings(state, source)
    outcomes: list[Applied] = []
    for event in result.events:
        outcomes.append(
            await apply_event(
                state.database,
                state.clock,
                event,
                hold=config.hold,
                reopen_within=config.reopen_within,
                escalation=state.escalation,
            )
        )
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.kind] = counts.get(outcome.kind, 0) + 1
    for skipped in result.skipped:
        log.warning(
            "webhook item skipped",
            extra={"source": source, "item": skipped.item_id, "reason": skipped.reason},
        )
    state.count(f"hooks_{source}")
    payload = {
        "source": source,
        "counts": counts,
        "skipped": [s.reason for s in result.skipped],
        "results": [
            {
                "kind": o.kind,
                "external_id": o.external_id,
                "incident_id": o.incident_id,
                "reason": o.reason,
            }
            for o in outcomes
        ],
    }
    return JSONResponse(payload, status_code=503 if counts.get("error") else 200)


async def _parse(parser: Parser, state: WebState, source: str, body: bytes) -> ParseResult:
    """The body's events, parsed in a worker thread: a 5 MiB body takes seconds, and the
    event loop serves every other request meanwhile (the parsers keep no shared state)."""
    mapping = hook_settings(state, source).mapping.source_mapping()
    result: ParseResult = await asyncio.to_thread(
        parser, body, mapping, source=source, now=state.clock.now()
    )
    return result


@router.post("/alertmanager/{source}")
async def alertmanager_hook(source: str, request: Request) -> JSONResponse:
    state = state_of(request)
    secrets = webhook_secrets(state, source)
    if not secrets:
        return _error(404, f"no webhook source {source!r} is configured")
    offered = request.headers.get("authorization", "").encode()
    # Compare with every secret, so the time taken does not say which one matched.
    matched = [hmac.compare_digest(offered, f"Bearer {s}".encode()) for s in secrets]
    if not any(matched):
        state.count("hooks_unauthorised")
        return _error(401, "missing or wrong Authorization: Bearer credentials")
    body = await _body(request)
    if isinstance(body, JSONResponse):
        return body
    try:
        result = await _parse(alertmanager.parse, state, source, body)
    except FeedError as exc:
        return _error(400, exc.reason)
    if not result.events and result.skipped:
        return _error(400, "; ".join(s.reason for s in result.skipped))
    return await _apply(state, source, result)


@router.post("/incidents/{source}")
async def incident_hook(source: str, request: Request) -> JSONResponse:
    state = state_of(request)
    secrets = webhook_secrets(state, source)
    if not secrets:
        return _error(404, f"no webhook source {source!r} is configured")
    body = await _body(request)
    if isinstance(body, JSONResponse):
        return body
    try:
        signed_webhook.verify(secrets, dict(request.headers), body, state.clock.now())
    except signed_webhook.SignatureError as exc:
        state.count("hooks_unauthorised")
        return _error(401, exc.reason)
    try:
        result = await _parse(signed_webhook.parse, state, source, body)
    except FeedError as exc:
        return _error(400, exc.reason)
    if not result.events:
        reasons = [s.reason for s in result.skipped] or ["no event in the body"]
        return _error(422, "; ".join(reasons), errors="; ".join(reasons).split("; "))
    return await _apply(state, source, result)
