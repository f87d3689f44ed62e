"""The template set: Jinja2, sandboxed, strict; shipped templates plus the admin's overrides.

Layout: ``<language>/<kind>/<part>.j2`` (HTML parts end in ``.html.j2`` and are autoescaped),
with shared macros in ``<language>/_macros.j2``. A folder named in config
(``messages.templates_dir``) is searched first, so an admin overrides any single file;
the shipped files stay reachable under the ``default/`` prefix for ``{% extends %}``.

The sandbox (:class:`ImmutableSandboxedEnvironment`) refuses attribute access outside what
the context gives (no ``__class__``, no ``__globals__``, no mutating methods), and
:class:`StrictUndefined` turns a misspelt variable into an error instead of a blank. It also
refuses arithmetic that would build a huge value (``"x" * 10**12``, ``9 ** 10**9``): a
typo in an admin's template must not exhaust the daemon's memory or time.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from jinja2 import (
    BaseLoader,
    ChoiceLoader,
    Environment,
    FileSystemLoader,
    PackageLoader,
    PrefixLoader,
    StrictUndefined,
    Template,
    TemplateNotFound,
    pass_eval_context,
)
from jinja2.exceptions import SecurityError
from jinja2.nodes import EvalContext
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import Markup

log = logging.getLogger("broadcaster.compose")

RELOAD_CHECK: Final = 2.0
"""Seconds between looks at the override folder for changed templates."""

KINDS: Final = (
    "first",
    "update",
    "no_news",
    "resolution",
    "followup_announcement",
    "followup_task",
    "incident_step",
)
PARTS: Final = ("sms", "email_subject", "email_text", "email_html", "push_title", "push_body")
FORMS: Final[dict[str, tuple[str, ...]]] = {
    "email": ("email_subject", "email_text", "email_html"),
    "sms": ("sms",),
    "push": ("push_title", "push_body"),
}
SHIPPED_LANGUAGES: Final = ("en", "nl")
MAX_REPEAT: Final = 100_000
"""The longest string or list a template may build with ``*`` (characters or items)."""
MAX_EXPONENT_BITS: Final = 4096
"""The largest number (in bits) a template may compute with ``**``."""


SPAN_MARK: Final = "\ue002"
"""Where a ``shortenable`` span begins (a private-use character, as the renderer's slots)."""
SHORTENABLE: Final = re.compile("\ue002([^\ue002-\ue004]*)\ue003([^\ue002-\ue004]*)\ue004")
"""A span the ``shortenable`` filter marked: its text, then the note to add when cut."""
_NO_MARKS: Final = dict.fromkeys(range(0xE002, 0xE005))


@pass_eval_context
def shortenable(eval_ctx: EvalContext, value: Any, note: str = "") -> str:
    """The ``shortenable`` filter: ``value``, which an SMS too long for its segments gives
    up before what follows it. The renderer cuts it after a whole word, adds ``...`` and
    ``note`` (where the rest is to be read), as far as the whole message then fits
    (:func:`~broadcaster.compose.render.shorten_spans`); in the other parts, and in an SMS
    that fits, it is written whole. A postal address of 500 characters, say, would
    otherwise push the visit's record instruction out (the SMS is cut from its end)."""
    # The marks' own characters in a value (a feed's text, an address) would unmatch the
    # span and leave the marks in the message: they go.
    value = (value if isinstance(value, str) else str(value)).translate(_NO_MARKS)  # Markup stays
    note = str(note).translate(_NO_MARKS)
    if eval_ctx.autoescape:  # the marks are not HTML; the values are escaped as usual
        return Markup("\ue002{}\ue003{}\ue004").format(value, note)
    return f"\ue002{value}\ue003{note}\ue004"


def unmark(text: str) -> str:
    """``text`` with each ``shortenable`` span written whole (its note left out)."""
    return SHORTENABLE.sub(lambda span: span[1], text)


class _Sandbox(ImmutableSandboxedEnvironment):
    """The sandbox, with ``*`` and ``**`` bounded (see the module's docstring)."""

    intercepted_binops = frozenset(["*", "**"])

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*" and any(
            isinstance(seq, str | list | tuple)
            and isinstance(times, int)
            and len(seq) * max(times, 0) > MAX_REPEAT
            for seq, times in ((left, right), (right, left))
        ):
            raise SecurityError(
                f"a template may not repeat a value to more than {MAX_REPEAT} characters or items"
            )
        if (
            operator == "**"
            and isinstance(left, int)
            and isinstance(right, int)
            and right > 0
            and abs(left) > 1
            and abs(left).bit_length() * right > MAX_EXPONENT_BITS
        ):
            raise SecurityError(f"a template may not compute numbers over {MAX_EXPONENT_BITS} bits")
        return super().call_binop(context, operator, left, right)


def part_file(part: str) -> str:
    return f"{part}.html.j2" if part == "email_html" else f"{part}.j2"


def template_name(language: str, kind: str, part: str) -> str:
    return f"{language}/{kind}/{part_file(part)}"


def _autoescape(name: str | None) -> bool:
    return bool(name and name.endswith(".html.j2"))


MACROS: Final = "_macros.j2"
HTML_MACROS: Final = "_macros.html.j2"


class _HtmlMacros(BaseLoader):
    """``<language>/_macros.html.j2`` is ``<language>/_macros.j2`` read under a name that
    autoescapes. Jinja2 marks what a macro returns as safe in an autoescaping template
    whatever the macro's own template, so the plain-text macros' output (a cause an
    operator wrote, with its ``<`` and its links) went into HTML emails unescaped; the HTML
    templates import this copy, in which each value the macros insert is escaped."""

    def __init__(self, inner: BaseLoader) -> None:
        self.inner = inner

    def get_source(
        self, environment: Environment, template: str
    ) -> tuple[str, str | None, Callable[[], bool] | None]:
        if template.endswith("/" + HTML_MACROS) or template == HTML_MACROS:
            template = template[: -len(HTML_MACROS)] + MACROS
        return self.inner.get_source(environment, template)

    def list_templates(self) -> list[str]:
        return self.inner.list_templates()


def available_languages(override_dir: Path | None) -> list[str]:
    """The shipped languages and those an admin's override folder adds."""
    found = set(SHIPPED_LANGUAGES)
    if override_dir is not None and override_dir.is_dir():
        found |= {p.name for p in override_dir.iterdir() if p.is_dir()}
    return sorted(found)


class TemplateSet:
    """Loads and caches templates; resolves a customer's language with fallback."""

    def __init__(self, override_dir: Path | None = None, default_language: str = "en") -> None:
        shipped = PackageLoader("broadcaster", "templates")
        loaders: list[Any] = []
        if override_dir is not None:
            loaders.append(FileSystemLoader(str(override_dir)))
        loaders.append(shipped)
        self.override_dir = override_dir
        self.default_language = default_language
        self.env = _Sandbox(
            loader=_HtmlMacros(ChoiceLoader([*loaders, PrefixLoader({"default": shipped})])),
            undefined=StrictUndefined,
            autoescape=_autoescape,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=False,
            auto_reload=False,
        )
        self.env.filters["shortenable"] = shortenable
        self._warned: set[tuple[str, str, str]] = set()
        self._lock = threading.Lock()
        self.generation = 0
        """Bumped whenever the override folder changed and the templates were read anew (a
        renderer drops what it cached from the old ones)."""
        self._signature = self._scan()
        self._checked = time.monotonic()

    def _scan(self) -> tuple[tuple[str, int, int], ...]:
        """Every override file's path, size and modification time (none without a folder)."""
        if self.override_dir is None or not self.override_dir.is_dir():
            return ()
        found = []
        for path in sorted(self.override_dir.rglob("*")):
            with contextlib.suppress(OSError):
                if path.is_file():
                    stat = path.stat()
                    found.append((str(path), stat.st_size, stat.st_mtime_ns))
        return tuple(found)

    def refresh(self) -> bool:
        """Read the override folder's templates anew if a file was added, changed or removed
        since the last look (looked at every :data:`RELOAD_CHECK` seconds at most): an admin's
        fix reaches the running daemon's next round, and the next attempt of deliveries that
        failed on the old template. Returns whether they were read anew."""
        if self.override_dir is None or time.monotonic() - self._checked < RELOAD_CHECK:
            return False
        with self._lock:
            self._checked = time.monotonic()
            signature = self._scan()
            if signature == self._signature:
                return False
            self._signature = signature
            if self.env.cache is not None:
                self.env.cache.clear()
            self.generation += 1
        log.info("message templates changed; read anew", extra={"folder": str(self.override_dir)})
        return True

    def languages(self) -> list[str]:
        return available_languages(self.override_dir)

    def resolve_language(self, language: str) -> list[str]:
        """Candidates in order: ``en-gb``, ``en``, then the default language."""
        wanted = language.replace("_", "-").lower()
        out = [wanted]
        if "-" in wanted:
            out.append(wanted.split("-")[0])
        if self.default_language not in out:
            out.append(self.default_language)
        return out

    def get(self, language: str, kind: str, part: str) -> tuple[Template, str]:
        """The template for a customer's language and the language actually used."""
        if kind not in KINDS:
            raise ValueError(f"unknown message kind {kind!r}; kinds: {', '.join(KINDS)}")
        if part not in PARTS:
            raise ValueError(f"unknown template part {part!r}; parts: {', '.join(PARTS)}")
        self.refresh()
        candidates = self.resolve_language(language)
        for index, candidate in enumerate(candidates):
            try:
                template = self.env.get_template(template_name(candidate, kind, part))
            except TemplateNotFound:
                continue
            wanted_base = {candidates[0], candidates[0].split("-")[0]}
            if index > 0 and candidate not in wanted_base:
                self._warn_once(language, kind, part, candidate)
            return template, candidate
        raise TemplateNotFound(template_name(candidates[0], kind, part))

    def _warn_once(self, language: str, kind: str, part: str, used: str) -> None:
        key = (language, kind, part)
        with self._lock:
            if key in self._warned:
                return
            self._warned.add(key)
        log.warning(
            "no %s translation of template %s/%s; using %s",
            language,
            kind,
            part,
            used,
            extra={"language": language, "kind": kind, "part": part, "fallback": used},
        )
