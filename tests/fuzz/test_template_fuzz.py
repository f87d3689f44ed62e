"""Admin template text through the sandbox: ``templates check`` always answers, each of its
errors names the template (and, for a syntax error, the line), and a template it passes
renders. Escapes from the sandbox and values too large to build are refused as errors.

The text is assembled from Jinja's own tokens, the documented variables and their fields,
dunder attributes, filters, operators and plain text, then written as an override of one
template part in a temporary ``messages.templates_dir``.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jinja2 import TemplateError

from broadcaster.compose.check import check_templates
from broadcaster.compose.context import VARIABLES
from broadcaster.compose.forms import form_for
from broadcaster.compose.render import Renderer, RenderRequest
from broadcaster.compose.samples import SAMPLE_NOW, sample_facts, sample_personal
from broadcaster.compose.templates import TemplateSet

FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

FIELDS = [f"{v}.{f}" for v, fields in VARIABLES.items() for f in fields] + list(VARIABLES)
TOKENS = [
    "{{ ",
    " }}",
    "{% ",
    " %}",
    "{# ",
    " #}",
    "if ",
    "else",
    "endif",
    "for x in ",
    "endfor",
    "set y = ",
    "macro m()",
    "endmacro",
    "raw",
    "endraw",
    "include 'x'",
    "extends 'default/en/first/sms.j2'",
    "block b",
    "endblock",
    " | ",
    "upper",
    "length",
    "default('')",
    "join(',')",
    "attr('__class__')",
    "format",
    "safe",
    "e",
    "__class__",
    "__globals__",
    "__mro__",
    "__subclasses__()",
    "mro()",
    "cycler",
    "lipsum",
    "range(10**9)",
    "range(3)",
    "'x' * 10**9",
    "9 ** 9 ** 9",
    "1/0",
    "(",
    ")",
    "[",
    "]",
    ".",
    ",",
    "~",
    "+",
    "-",
    "*",
    "**",
    "%",
    "'",
    '"',
    "\n",
    "\\",
    "0",
    "42",
    "none",
    "true",
    "loop.index",
    "self",
    "caller()",
    "x",
    "y",
    "é",
    "\u202e",
]
template_text = st.lists(
    st.sampled_from(TOKENS) | st.sampled_from(FIELDS) | st.text(max_size=6), max_size=25
).map("".join)

PARTS = {"sms": "sms.j2", "email_text": "email_text.j2", "email_subject": "email_subject.j2"}
LOCATED = re.compile(r"^[^:]*(sms|email_text|email_subject)\.j2(:\d+)?: ")


def _baseline() -> set[str]:
    templates = TemplateSet()
    renderer = Renderer(templates, organisation="Org", public_url="https://status.example")
    return set(check_templates(templates, renderer, 3).errors)


BASELINE = _baseline()


def _check(text: str, kind: str, part: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        target = Path(folder) / "en" / kind / PARTS[part]
        target.parent.mkdir(parents=True)
        target.write_text(text, encoding="utf-8", errors="surrogatepass")
        templates = TemplateSet(Path(folder))
        renderer = Renderer(templates, organisation="Org", public_url="https://status.example")
        report = check_templates(templates, renderer, 3)  # must not raise
        new = [e for e in report.errors if e not in BASELINE]
        for error in new:
            assert LOCATED.match(error), error
        form = "sms" if part == "sms" else "email"
        request = RenderRequest(
            kind=kind,
            form=form_for(form),
            facts=sample_facts(kind),
            language="en",
            timezone="Europe/Amsterdam",
            now=SAMPLE_NOW,
            personal=sample_personal(),
        )
        try:
            renderer.render(request)
        except TemplateError:
            assert new, "the check passed a template that does not render"
            return
        except Exception as exc:  # the dispatcher survives it; the check must have said so
            assert new, f"the check passed a template that raises {exc!r}"


@FUZZ
@given(
    text=template_text,
    kind=st.sampled_from(["first", "no_news", "update"]),
    part=st.sampled_from(sorted(PARTS)),
)
def test_any_template_text_is_checked_and_located(text: str, kind: str, part: str) -> None:
    _check(text, kind, part)


@pytest.mark.parametrize(
    "text",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__.os.system('true') }}",
        "{{ lipsum.__globals__['os'] }}",
        "{{ customer|attr('__class__') }}",
        "{{ '{0.__class__}'.format(customer) }}",
        "{{ 'x' * 10**9 }}",
        "{{ [0] * 10**9 }}",
        "{{ 9 ** (9 ** 9) }}",
        "{% for i in range(10**9) %}{% endfor %}",
        "{% set incident.title = 'x' %}",
        "{{ incident.components.append('x') }}",
    ],
)
def test_sandbox_escapes_and_bombs_are_errors(text: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        target = Path(folder) / "en" / "first" / "sms.j2"
        target.parent.mkdir(parents=True)
        target.write_text(text, encoding="utf-8")
        templates = TemplateSet(Path(folder))
        renderer = Renderer(templates, organisation="Org", public_url="https://status.example")
        report = check_templates(templates, renderer, 3)
        assert [e for e in report.errors if e not in BASELINE and "first/sms.j2" in e], text
