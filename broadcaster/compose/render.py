"""Rendering a round's messages: once per (round, kind, form, language, zone), then personalised.

The expensive part (Jinja2 in the sandbox) runs with placeholders in place of the personal
values (the customer's name and their signed links); each customer's copy is then a few
string replacements. A template that transforms a personal value (``name|upper``) cannot be
personalised that way: that is detected once per template, by rendering it both ways with a
probe customer, and such templates are rendered in full for every customer.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import markupsafe

from broadcaster.compose.context import IncidentFacts, Personal, build_context, incident_url
from broadcaster.compose.templates import FORMS, TemplateSet
from channels.base import Message
from channels.sms_segments import fit

_PLACEHOLDERS: Final = Personal(
    name="\ue000name\ue001",
    unsubscribe_url="\ue000unsubscribe\ue001",
    preferences_url="\ue000preferences\ue001",
)
_PROBE: Final = Personal(
    name="Zoë O'Brien-Ütest <probe>",
    unsubscribe_url="https://probe.invalid/u/tok?a=1&b=2",
    preferences_url="https://probe.invalid/preferences/tok",
)
_MARK = "\ue000"
_BLANK_LINES = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)+")
_SPACES = re.compile(r"\s+")


def tidy(part: str, text: str) -> str:
    """Whitespace a template's optional sections leave behind: one blank line at most;
    subjects and titles on one line."""
    if part in ("email_subject", "push_title"):
        return _SPACES.sub(" ", text).strip()
    if part == "email_html":
        return text.strip() + "\n"
    text = _BLANK_LINES.sub("\n\n", text).strip()
    return text if part in ("sms", "push_body") else text + "\n"


def _personalise(text: str, personal: Personal, *, escape: bool) -> str:
    for placeholder, value in (
        (_PLACEHOLDERS.name, personal.name),
        (_PLACEHOLDERS.unsubscribe_url, personal.unsubscribe_url),
        (_PLACEHOLDERS.preferences_url, personal.preferences_url),
    ):
        text = text.replace(placeholder, str(markupsafe.escape(value)) if escape else value)
    return text


@dataclass(frozen=True)
class RenderRequest:
    kind: str
    form: str
    facts: IncidentFacts
    language: str
    timezone: str
    now: datetime
    personal: Personal
    cache_key: Hashable = None
    """Identifies the facts (a round id); None disables the cache for this request."""
    followup: dict[str, Any] | None = None
    task: dict[str, Any] | None = None


class Renderer:
    def __init__(
        self,
        templates: TemplateSet,
        *,
        organisation: str,
        public_url: str,
        sms_max_segments: int = 3,
        cache_size: int = 2048,
    ) -> None:
        self.templates = templates
        self.organisation = organisation
        self.public_url = public_url
        self.sms_max_segments = sms_max_segments
        self._cache: OrderedDict[Hashable, dict[str, str]] = OrderedDict()
        self._cache_size = cache_size
        self._cacheable: dict[tuple[str, str, str], bool] = {}
        self._lock = threading.Lock()
        self.full_renders = 0

    def incident_link(self, request: RenderRequest) -> str:
        return incident_url(self.public_url, request.facts.incident_id)

    def context(self, request: RenderRequest) -> dict[str, Any]:
        """The full (personal) template variables of a request."""
        return self._context(request, request.personal)

    def _context(self, request: RenderRequest, personal: Personal) -> dict[str, Any]:
        return build_context(
            request.kind,
            request.facts,
            organisation=self.organisation,
            public_url=self.public_url,
            language=request.language,
            timezone=request.timezone,
            now=request.now,
            personal=personal,
            followup=request.followup,
            task=request.task,
        )

    def _render_part(self, request: RenderRequest, part: str, context: dict[str, Any]) -> str:
        template, _ = self.templates.get(request.language, request.kind, part)
        self.full_renders += 1
        return tidy(part, template.render(context))

    def _is_cacheable(self, request: RenderRequest, part: str) -> bool:
        _template, used = self.templates.get(request.language, request.kind, part)
        key = (used, request.kind, part)
        verdict = self._cacheable.get(key)
        if verdict is None:
            escape = part == "email_html"
            fast = _personalise(
                self._render_part(request, part, self._context(request, _PLACEHOLDERS)),
                _PROBE,
                escape=escape,
            )
            slow = self._render_part(request, part, self._context(request, _PROBE))
            verdict = fast == slow
            self._cacheable[key] = verdict
        return verdict

    def render(self, request: RenderRequest) -> dict[str, str]:
        """The parts of the request's form (``email``, ``sms`` or ``push``), personalised."""
        parts = FORMS[request.form]
        key = None
        if request.cache_key is not None:
            key = (
                request.cache_key,
                request.kind,
                request.form,
                request.language,
                request.timezone,
                request.now.date(),
            )
        with self._lock:
            skeleton = self._cache.get(key) if key is not None else None
            if skeleton is not None and key is not None:
                self._cache.move_to_end(key)
        if skeleton is None:
            placeholder_context = self._context(request, _PLACEHOLDERS)
            skeleton = {
                part: self._render_part(request, part, placeholder_context)
                if self._is_cacheable(request, part)
                else ""
                for part in parts
            }
            if key is not None:
                with self._lock:
                    self._cache[key] = skeleton
                    if len(self._cache) > self._cache_size:
                        self._cache.popitem(last=False)
        out: dict[str, str] = {}
        full_context: dict[str, Any] | None = None
        for part in parts:
            text = skeleton[part]
            personalised = (
                _personalise(text, request.personal, escape=part == "email_html") if text else ""
            )
            if not text or _MARK in personalised:
                full_context = full_context or self._context(request, request.personal)
                personalised = self._render_part(request, part, full_context)
            out[part] = personalised
        if "sms" in out:
            out["sms"] = fit(out["sms"], self.incident_link(request), self.sms_max_segments)
        return out

    def message(self, request: RenderRequest, *, idempotency_key: str = "") -> Message:
        """The channel-ready message for the request's form."""
        parts = self.render(request)
        headers = {"X-Broadcaster-Link": self.incident_link(request)}
        if request.form == "email":
            headers["List-Unsubscribe"] = f"<{request.personal.unsubscribe_url}>"
            headers["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
            return Message(
                subject=parts["email_subject"],
                text=parts["email_text"],
                html=parts["email_html"],
                idempotency_key=idempotency_key,
                headers=headers,
                created_at=request.now,
            )
        if request.form == "sms":
            return Message(
                subject="",
                text=parts["sms"],
                idempotency_key=idempotency_key,
                headers=headers,
                created_at=request.now,
            )
        return Message(
            subject=parts["push_title"],
            text=parts["push_body"],
            idempotency_key=idempotency_key,
            headers=headers,
            created_at=request.now,
        )
