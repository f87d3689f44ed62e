"""``POST /api/v1/rules/check`` agrees with a reload; a bad edit never answers 500."""

from __future__ import annotations

import os
from pathlib import Path

from broadcaster.store import Database
from tests.api.support import api_client, settings

GOOD = """\
policies:
  standard:
    steps:
      - {after: 0m, every: 30m, channels: [console]}
rules:
  - name: everything
    policy: standard
"""
BAD_REGEX = """\
  - name: bad-regex
    match: {incident: {source: {matches: 'a{4294967296}'}}}
"""
EMPTY = (
    "the file is empty (no policies, no rules); to run without rules, "
    "leave rules.path out of the configuration"
)


def _save(path: Path, text: str) -> None:
    """Write ``text`` with a later modification time, as a new save has."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text, encoding="utf-8")
    if path.stat().st_mtime_ns <= before:
        os.utime(path, ns=(before + 1_000_000_000, before + 1_000_000_000))


async def test_a_comments_only_text_is_refused_by_the_check_as_by_a_reload(
    database: Database, tmp_path: Path
) -> None:
    """The check said ``ok`` to a text that the reload (and start-up) refused as empty."""
    path = tmp_path / "rules.yaml"
    _save(path, GOOD)
    async with api_client(database, settings(path)) as api:
        comments = "# all rules removed for now\n"
        checked = await api.call("POST", "/api/v1/rules/check", "operator", json={"text": comments})
        assert checked.status_code == 200
        assert checked.json()["ok"] is False
        assert checked.json()["problems"] == [f"<request>: {EMPTY}"]
        _save(path, comments)
        reload = (await api.call("POST", "/api/v1/rules/reload")).json()
        assert reload == {"reloaded": False, "error": f"{path}: {EMPTY}"}
        configured = (await api.call("POST", "/api/v1/rules/check", "operator", json={})).json()
        assert configured["ok"] is False and configured["problems"] == [f"{path}: {EMPTY}"]


async def test_a_regular_expression_re_cannot_compile_is_a_located_problem(
    database: Database, tmp_path: Path
) -> None:
    """An OverflowError from ``re`` answered 500 to the check and to the reload, and
    ``/healthz`` showed no reload error."""
    path = tmp_path / "rules.yaml"
    _save(path, GOOD)
    problem = (
        "rules[1].match.incident.source.matches: invalid regular expression 'a{4294967296}': "
        "the repetition number is too large"
    )
    async with api_client(database, settings(path)) as api:
        checked = await api.call(
            "POST", "/api/v1/rules/check", "operator", json={"text": GOOD + BAD_REGEX}
        )
        assert checked.status_code == 200
        assert checked.json()["ok"] is False
        assert checked.json()["problems"] == [f"<request>:9:42: {problem}"]

        _save(path, GOOD + BAD_REGEX)
        answer = await api.call("POST", "/api/v1/rules/reload")
        assert answer.status_code == 200
        assert answer.json() == {"reloaded": False, "error": f"{path}:9:42: {problem}"}
        health = (await api.call("GET", "/healthz", None)).json()
        assert health["rules"]["last_reload_error"] == f"{path}:9:42: {problem}"
        status = (await api.call("GET", "/api/v1/rules", "viewer")).json()
        assert status["loaded"] and status["rules"] == 1


async def test_merges_and_staff_references_are_checked_as_loaded(
    database: Database, tmp_path: Path
) -> None:
    path = tmp_path / "rules.yaml"
    _save(path, GOOD)
    merged = GOOD.replace(
        "  - name: everything\n",
        "  - name: prod\n"
        "    match: {incident: {labels: &prod {env: prod}}}\n"
        "    continue: true\n"
        "  - name: prod-payments\n"
        "    match: {incident: {labels: {<<: *prod, service: payments}}}\n"
        "    continue: true\n"
        "  - name: everything\n",
    )
    bare = GOOD + "    followup: {kind: call, owner: on_call, deadline: 1h}\n"
    async with api_client(database, settings(path)) as api:
        ok = await api.call("POST", "/api/v1/rules/check", "operator", json={"text": merged})
        assert ok.json()["ok"] is True and ok.json()["rules"] == 3
        refused = await api.call("POST", "/api/v1/rules/check", "operator", json={"text": bare})
        assert refused.json()["problems"] == [
            "<request>:8:35: rules[0].followup.owner: on_call names the person on call in a "
            "group: write on_call:GROUP (none are defined)"
        ]
