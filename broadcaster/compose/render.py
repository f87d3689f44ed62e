"""Rendering a round's messages: once per (round, kind, form, language, zone), then personalised.

The expensive part (Jinja2 in the sandbox) runs with placeholders in place of the personal
values (the customer's name and their signed links), and each rendered part is kept cut at
its placeholders; each customer's copy is then one join of those pieces and their values.
A template that transforms a personal value (``name|upper``) cannot be personalised that
way: that is detected once per template, by rendering it both ways with a probe customer,
and such templates are rendered in full for every customer.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from datetime import datetime
from operator import itemgetter
from pathlib import Path
from typing import Any, Final, NamedTuple

import markupsafe
from jinja2 import TemplateError

from broadcaster.compose.context import IncidentFacts, Personal, build_context, incident_url
from broadcaster.compose.templates import (
    FORMS,
    SHORTENABLE,
    SPAN_MARK,
    TemplateSet,
    template_name,
    unmark,
)
from channels.base import Message
from channels.sms_segments import fit, fits, gsm7_fold, is_gsm7

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


_WORD = re.compile(r"\S+")


def _fits_whole(text: str, link: str, max_segments: int) -> bool:
    """Whether :func:`~channels.sms_segments.fit` keeps ``text`` whole (as it measures)."""
    link = link.strip()
    body = (gsm7_fold if is_gsm7(link) else str)(text.rstrip())
    return fits(f"{body}\n{link}" if body and link else body or link, max_segments)


def shorten_spans(text: str, link: str, max_segments: int) -> str:
    """The SMS ``text`` with its ``shortenable`` spans (the filter of that name) written
    whole when the message then fits ``max_segments`` with ``link``; else each, from the
    last, cut after its last whole word that lets the message fit, with ``...`` and its
    note; within its first word when even that leaves no room; never made longer (the rest
    is then :func:`~channels.sms_segments.fit`'s to cut). So what follows the span, the
    record instruction after a visit's postal address, is kept rather than cut from the
    end."""
    while (span := next(reversed(list(SHORTENABLE.finditer(text))), None)) is not None:
        before, after = text[: span.start()], text[span.end() :]
        whole, note = span[1], span[2]
        if _fits_whole(unmark(before + whole + after), link, max_segments):
            text = before + whole + after
            continue

        def cut(end: int) -> str:
            return before + whole[:end].rstrip(",;:- ") + "..." + note + after  # noqa: B023

        def fits(end: int) -> bool:
            return _fits_whole(unmark(cut(end)), link, max_segments)

        words = [word.end() for word in _WORD.finditer(whole)][:-1]
        end = next((end for end in reversed(words) if fits(end)), None)
        if end is None:
            # Not even its first word leaves room (one long word, a long first word): cut
            # within it, as far as needed (the longest start that fits, by bisection; none
            # fits, its first character: the rest is fit's to cut).
            low, high = 1, len(whole) - 1
            while low < high:
                middle = (low + high + 1) // 2
                if fits(middle):
                    low = middle
                else:
                    high = middle - 1
            end = max(low, 1)
        shortened, written = cut(end), before + whole + after
        text = shortened if len(shortened) < len(written) else written  # never longer
    return text


_SLOT = re.compile("\ue000(name|unsubscribe|preferences)\ue001")
_SLOT_INDEX: Final = {"name": 0, "unsubscribe": 1, "preferences": 2}

Pieces = tuple[str | int, ...]
"""A rendered part cut at its placeholders: text, or the index of a personal value (name,
unsubscribe link, preferences link)."""


def _pieces(text: str) -> Pieces | None:
    """``text`` cut at its placeholders; None when a placeholder was transformed (a mark
    is left over), so the part needs a full render per customer."""
    cut = _SLOT.split(text)
    pieces: list[str | int] = []
    for index, piece in enumerate(cut):
        if index % 2:
            pieces.append(_SLOT_INDEX[piece])
        elif piece:
            if _MARK in piece:
                return None
            pieces.append(piece)
    return tuple(pieces)


class Filler:
    """Fills a rendered part's placeholders with one customer's values: one ``%``
    formatting of the part's text, with the values picked in the order they appear."""

    __slots__ = ("_format", "_pick")

    def __init__(self, pieces: Pieces) -> None:
        self._format = "".join(
            "%s" if isinstance(piece, int) else piece.replace("%", "%%") for piece in pieces
        )
        slots = [piece for piece in pieces if isinstance(piece, int)]
        # itemgetter of one index returns the value itself, not a 1-tuple.
        self._pick: Callable[[tuple[str, str, str]], tuple[str, ...]] = (
            itemgetter(*slots) if len(slots) > 1 else lambda values: tuple(values[i] for i in slots)
        )

    def __call__(self, values: tuple[str, str, str]) -> str:
        return self._format % self._pick(values)


def _filler(text: str) -> Filler | None:
    """The :class:`Filler` of a part rendered with placeholders; None when it needs a full
    render per customer (see :func:`_pieces`)."""
    pieces = _pieces(text)
    return None if pieces is None else Filler(pieces)


_HTML_SPECIAL = re.compile(r"[&<>\"']")


def _escaped(value: str) -> str:
    """``value`` escaped for HTML as Jinja2's autoescape does (markupsafe); most names and
    every signed link have nothing to escape, and are returned as they are."""
    return str(markupsafe.escape(value)) if _HTML_SPECIAL.search(value) else value


def _personalise(text: str, personal: Personal, *, escape: bool) -> str:
    for placeholder, value in (
        (_PLACEHOLDERS.name, personal.name),
        (_PLACEHOLDERS.unsubscribe_url, personal.unsubscribe_url),
        (_PLACEHOLDERS.preferences_url, personal.preferences_url),
    ):
        text = text.replace(placeholder, str(markupsafe.escape(value)) if escape else value)
    return text


class RenderRequest(NamedTuple):
    """What to render: one customer's message of a kind, in a form, from facts.

    Immutable, and built once per delivery: a named tuple costs a fifth of a frozen
    dataclass, which sets each field through ``object.__setattr__``."""

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


class RenderError(Exception):
    """A message could not be made: a template failed, or rendered an empty subject or
    text. The text says which template, and where when it can tell."""


_REQUIRED: dict[str, tuple[str, ...]] = {
    "email": ("email_subject", "email_text"),
    "sms": ("sms",),
    "push": ("push_title", "push_body"),
}
"""Parts that must not be empty, per form: a message without them is not one to send."""


def describe_template_error(exc: BaseException) -> str:
    """``template /srv/templates/en/first/email_text.j2 line 3: UndefinedError: …``: the
    innermost frame of the traceback in a template file (Jinja runs templates as code whose
    file is the template's; a shipped one is named from its language folder), else the
    error alone."""
    where = ""
    frame = exc.__traceback__
    while frame is not None:
        filename = frame.tb_frame.f_code.co_filename
        if filename.endswith(".j2"):
            where = f"template {_short(filename)} line {frame.tb_lineno}: "
        frame = frame.tb_next
    name, lineno = getattr(exc, "name", None), getattr(exc, "lineno", None)
    if not where and name and lineno:  # a syntax error: Jinja names the template and line
        where = f"template {name} line {lineno}: "
    return f"{where}{type(exc).__name__}: {exc}"


def _short(filename: str) -> str:
    parts = Path(filename).parts
    if "templates" in parts:
        return "/".join(parts[len(parts) - parts[::-1].index("templates") :])
    return filename


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
        self._cache: OrderedDict[Hashable, dict[str, Filler | None]] = OrderedDict()
        self._cache_size = cache_size
        self._cacheable: dict[tuple[str, str, str], bool] = {}
        self._lock = threading.Lock()
        self.full_renders = 0
        self._generation = templates.generation

    def incident_link(self, request: RenderRequest) -> str:
        return incident_url(self.public_url, request.facts.incident_id)

    def context(self, request: RenderRequest) -> dict[str, Any]:
        """The full (personal) template variables of a request."""
        return self._context(request, request.personal)

    def _context(self, request: RenderRequest, personal: Personal) -> dict[str, Any]:
        # Times read in the language the message is written in: a customer whose language
        # has no templates gets the fallback's words, and its dates ("Wed 7 Jan"), not a
        # mix ("by Mi. 7 Jan.").
        try:
            _template, written_in = self.templates.get(
                request.language, request.kind, FORMS[request.form][0]
            )
        except TemplateError:  # that part is broken: its own render says so, and where
            written_in = request.language
        return build_context(
            request.kind,
            request.facts,
            organisation=self.organisation,
            public_url=self.public_url,
            language=written_in,
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
        self.templates.refresh()
        if self._generation != self.templates.generation:  # an admin edited the templates
            with self._lock:
                self._cache.clear()
                self._cacheable.clear()
                self._generation = self.templates.generation
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
                part: _filler(self._render_part(request, part, placeholder_context))
                if self._is_cacheable(request, part)
                else None
                for part in parts
            }
            if key is not None:
                with self._lock:
                    self._cache[key] = skeleton
                    if len(self._cache) > self._cache_size:
                        self._cache.popitem(last=False)
        out: dict[str, str] = {}
        full_context: dict[str, Any] | None = None
        personal = request.personal
        values = (personal.name, personal.unsubscribe_url, personal.preferences_url)
        escaped: tuple[str, str, str] | None = None
        for part in parts:
            fill = skeleton[part]
            if fill is None:  # a template that transforms a personal value
                full_context = full_context or self._context(request, personal)
                out[part] = self._render_part(request, part, full_context)
            elif part == "email_html":
                if escaped is None:
                    escaped = (_escaped(values[0]), _escaped(values[1]), _escaped(values[2]))
                out[part] = fill(escaped)
            else:
                out[part] = fill(values)
        for part, text in out.items():  # a look for a span's mark: each message goes here
            if part == "sms":
                link, limit = self.incident_link(request), self.sms_max_segments
                if SPAN_MARK in text:
                    text = shorten_spans(text, link, limit)
                out[part] = fit(text, link, limit)
            elif SPAN_MARK in text:
                out[part] = unmark(text)
        return out

    def message(
        self,
        request: RenderRequest,
        *,
        idempotency_key: str = "",
        thread: str = "",
        posted_at: datetime | None = None,
    ) -> Message:
        """The channel-ready message for the request's form, in conversation ``thread``
        (:attr:`Message.thread`; ``posted_at``: :attr:`Message.posted_at`). Raises
        :class:`RenderError` naming the template file and line when a template fails, or
        when it renders an empty subject or text (a condition no sample met in ``templates
        check``)."""
        try:
            parts = self.render(request)
        except Exception as exc:
            raise RenderError(f"{describe_template_error(exc)}") from exc
        for part in _REQUIRED[request.form]:
            if not parts[part].strip():
                _template, used = self.templates.get(request.language, request.kind, part)
                name = template_name(used, request.kind, part)
                raise RenderError(f"template {name} rendered nothing")
        headers = {"X-Broadcaster-Link": self.incident_link(request)}
        if request.form == "email":
            if request.personal.unsubscribe_url:  # staff notices have none: no empty <>
                headers["List-Unsubscribe"] = f"<{request.personal.unsubscribe_url}>"
                headers["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
            return Message(
                subject=parts["email_subject"],
                text=parts["email_text"],
                html=parts["email_html"],
                idempotency_key=idempotency_key,
                headers=headers,
                created_at=request.now,
                thread=thread,
                posted_at=posted_at,
            )
        if request.form == "sms":
            return Message(
                subject="",
                text=parts["sms"],
                idempotency_key=idempotency_key,
                headers=headers,
                created_at=request.now,
                thread=thread,
                posted_at=posted_at,
            )
        return Message(
            subject=parts["push_title"],
            text=parts["push_body"],
            idempotency_key=idempotency_key,
            headers=headers,
            created_at=request.now,
            thread=thread,
            posted_at=posted_at,
        )
