"""``templates check``: lint every template before customers read it.

For each language × kind × part it reports, as ``template:line: problem``:
- a template that does not parse, or fails to render with typical values;
- variables and fields that are not in the documented context (``VARIABLES``);
- a resolution template that leaves out one of the five apology elements;
- an SMS template that cannot fit the segment limit with typical values;
- output that still contains template syntax or an unfilled placeholder;
- an HTML part that imports the plain-text macros (``_macros.j2``, which do not escape);
and, as warnings, parts missing in a language (they fall back to the default language), and
a resolution part that tells the operator's ``resolution.compensation`` but not the rules'
``resolution.offers`` (the compensation the rules grant would not be told).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jinja2 import TemplateNotFound, TemplateSyntaxError, meta, nodes

from broadcaster.compose.context import APOLOGY_ELEMENTS, VARIABLES
from broadcaster.compose.render import Renderer, RenderRequest
from broadcaster.compose.samples import (
    SAMPLE_FOLLOWUP,
    SAMPLE_NOW,
    SAMPLE_TASKS,
    sample_facts,
    sample_personal,
)
from broadcaster.compose.templates import (
    FORMS,
    KINDS,
    PARTS,
    TemplateSet,
    template_name,
    unmark,
)
from channels.sms_segments import gsm7_punctuation, segments

APOLOGY_PARTS = ("email_text", "email_html", "sms", "push_body")


@dataclass
class CheckReport:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    checked: int = 0


def _fields_used(tree: nodes.Template) -> list[tuple[str, str, int]]:
    """(variable, field, line) for every ``variable.field`` / ``variable["field"]``."""
    used: list[tuple[str, str, int]] = []
    for node in tree.find_all(nodes.Getattr):
        if isinstance(node.node, nodes.Name):
            used.append((node.node.name, node.attr, node.lineno))
    for item in tree.find_all(nodes.Getitem):
        if isinstance(item.node, nodes.Name) and isinstance(item.arg, nodes.Const):
            used.append((item.node.name, str(item.arg.value), item.lineno))
    return used


def _lint_source(
    templates: TemplateSet,
    name: str,
    part: str,
    kind: str,
    warnings: list[str] | None = None,
) -> list[str]:
    env = templates.env
    loader = env.loader
    if loader is None:
        return [f"{name}: the template environment has no loader"]
    source, filename, _ = loader.get_source(env, name)
    where = filename or name
    try:
        tree = env.parse(source, name, filename)
    except TemplateSyntaxError as exc:
        return [f"{where}:{exc.lineno}: syntax error: {exc.message}"]
    problems = []
    for variable in sorted(meta.find_undeclared_variables(tree)):
        if variable not in VARIABLES:
            problems.append(f"{where}: unknown variable {variable!r}")
    for variable, attr, line in _fields_used(tree):
        allowed = VARIABLES.get(variable)
        if allowed is not None and attr not in allowed:
            problems.append(f"{where}:{line}: unknown field {variable}.{attr}")
    if part == "email_html":
        for node in tree.find_all(nodes.Import):
            target = node.template
            if isinstance(target, nodes.Const) and str(target.value).endswith("/_macros.j2"):
                # Jinja2 marks a macro's output safe in an HTML template: through the
                # plain-text macros an operator's cause would reach the email as markup.
                problems.append(
                    f"{where}:{node.lineno}: import {str(target.value)[: -len('.j2')]}.html.j2 "
                    "in an HTML part (its macros escape what they insert)"
                )
    if kind == "resolution" and part in APOLOGY_PARTS:
        mentioned = {attr for variable, attr, _ in _fields_used(tree) if variable == "resolution"}
        for element in APOLOGY_ELEMENTS:
            if element not in mentioned:
                problems.append(
                    f"{where}: the apology lacks its {element} (use resolution.{element})"
                )
        if warnings is not None and "compensation" in mentioned and "offers" not in mentioned:
            # Written before the rules' compensation was data: it was in the text then.
            warnings.append(
                f"{where}: tells resolution.compensation but not resolution.offers: the "
                "compensation the rules grant is not told (see the shipped template)"
            )
    return problems


def check_templates(templates: TemplateSet, renderer: Renderer, max_segments: int) -> CheckReport:
    report = CheckReport()
    for language in templates.languages():
        for kind in KINDS:
            for part in PARTS:
                name = template_name(language, kind, part)
                try:
                    templates.env.get_template(name)
                except TemplateNotFound:
                    report.warnings.append(
                        f"{name}: missing; {language} customers get the "
                        f"{templates.default_language} version"
                    )
                    continue
                except TemplateSyntaxError as exc:
                    report.errors.append(f"{exc.filename or name}:{exc.lineno}: {exc.message}")
                    continue
                except UnicodeDecodeError as exc:  # the daemon would fail every send with it
                    report.errors.append(f"{name}: not UTF-8 (byte at offset {exc.start})")
                    continue
                report.checked += 1
                report.errors += _lint_source(templates, name, part, kind, report.warnings)
        for kind in KINDS:
            _render_check(templates, renderer, language, kind, max_segments, report)
    return report


def _render_check(
    templates: TemplateSet,
    renderer: Renderer,
    language: str,
    kind: str,
    max_segments: int,
    report: CheckReport,
) -> None:
    # A task's notice is checked as a call and as a visit (which says where to go too).
    tasks: tuple[dict[str, Any] | None, ...] = SAMPLE_TASKS if kind == "followup_task" else (None,)
    seen: set[str] = set()
    for form, parts in FORMS.items():
        for task in tasks:
            request = RenderRequest(
                kind=kind,
                form=form,
                facts=sample_facts(kind),
                language=language,
                timezone="Europe/Amsterdam",
                now=SAMPLE_NOW,
                personal=sample_personal(),
                # Typical: a follow-up is announced to few customers; the check of the
                # announcement kind itself has it.
                followup=SAMPLE_FOLLOWUP if kind == "followup_announcement" else None,
                task=task,
            )
            _check_parts(templates, renderer, request, parts, max_segments, report, seen)


def _check_parts(
    templates: TemplateSet,
    renderer: Renderer,
    request: RenderRequest,
    parts: tuple[str, ...],
    max_segments: int,
    report: CheckReport,
    seen: set[str],
) -> None:
    """Render ``request``'s parts and report what is wrong with them, each finding once
    (``seen``: those already reported, for a part rendered with several samples)."""
    language, kind = request.language, request.kind
    errors: list[str] = []
    for part in parts:
        try:
            template, used = templates.get(language, kind, part)
        except (TemplateSyntaxError, UnicodeDecodeError):
            continue  # reported by the source lint
        label = template.filename or template_name(used, kind, part)
        try:
            # Its ``shortenable`` spans whole: typical values must fit without cutting them.
            raw = unmark(template.render(renderer.context(request)))
        except Exception as exc:  # any render failure is a finding, not a crash
            errors.append(f"{label}: fails to render with typical values: {exc}")
            continue
        for marker in ("{{", "{%", "\ue000"):
            if marker in raw:
                errors.append(f"{label}: output contains {marker!r}")
        if part == "sms":
            # As the message is sent: typography (the no-break space Babel writes in
            # "€ 5,00") the GSM-7 way when that keeps it GSM-7 (``fit``).
            text = gsm7_punctuation(raw.strip())
            info = segments(text + "\n" + renderer.incident_link(request))
            if info.segments > max_segments:
                errors.append(
                    f"{label}: {info.segments} {info.encoding} segments with typical "
                    f"values; the limit is {max_segments} (it would be shortened)"
                )
    for error in errors:
        if error not in seen:
            seen.add(error)
            report.errors.append(error)
