"""The rules holder: a bad edit, however bad, is refused and recorded; the rules stay."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

import broadcaster.escalation.holder as holder_module
from broadcaster.config.settings import Settings
from broadcaster.escalation.holder import RulesHolder, load_file, load_text
from rules import EXAMPLE_RULES, RulesError

BAD_REGEX = "\n  - name: bad-regex\n    match: {incident: {source: {matches: 'a{4294967296}'}}}\n"


def settings_for(path: Path) -> Settings:
    return Settings.model_validate(
        {
            "delivery": {"channels": ["email"]},
            "channels": {
                "email": {"type": "console", "contact": "email"},
                "sms": {"type": "console", "contact": "sms"},
                "push": {"type": "console", "contact": "fcm"},
            },
            "staff": {
                "notify_channel": "email",
                "people": {"maria": {"name": "Maria", "email": "maria@example.org"}},
                "groups": {
                    "account-managers": {"members": ["maria"]},
                    "care": {"members": ["maria"]},
                    "duty-managers": {"members": ["maria"], "on_call": "maria"},
                },
            },
            "rules": {"path": str(path)},
        }
    )


def _touch_later(path: Path) -> None:
    """A later modification time, as a new save has (the watch compares them)."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(EXAMPLE_RULES.read_text(encoding="utf-8"), encoding="utf-8")
    return path


def test_a_regular_expression_re_cannot_compile_is_a_recorded_reload_error(
    rules_file: Path,
) -> None:
    """An OverflowError from ``re`` escaped the reload: the file watch logged a traceback at
    every interval, and ``/healthz`` showed no error."""
    holder = RulesHolder(settings_for(rules_file))
    good = holder.load()
    rules_file.write_text(rules_file.read_text(encoding="utf-8") + BAD_REGEX, encoding="utf-8")
    _touch_later(rules_file)
    assert holder.reload_if_changed() is False
    assert holder.current is good
    assert holder.error is not None
    assert "rules[8].match.incident.source.matches: invalid regular expression " in holder.error
    assert "'a{4294967296}': the repetition number is too large" in holder.error
    with pytest.raises(RulesError):  # start-up: refused with the problem, not a traceback
        RulesHolder(settings_for(rules_file)).load()


def test_any_failure_of_the_loader_is_recorded_once_and_the_rules_stay(
    rules_file: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Defence in depth: whatever the loader raises on input no one foresaw, a reload keeps
    the rules, records the error for ``/healthz`` and logs the traceback once (the watch
    does not try the same file again); start-up and checks get a ``RulesError``."""
    holder = RulesHolder(settings_for(rules_file))
    good = holder.load()

    def broken(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(holder_module, "load_rules", broken)
    _touch_later(rules_file)
    with caplog.at_level(logging.ERROR, logger="broadcaster.rules"):
        assert holder.reload_if_changed() is False
        assert holder.reload_if_changed() is False  # the same file: not tried again
    assert holder.current is good
    assert holder.error == (
        f"{rules_file}: the rules could not be checked: the loader failed "
        "(ZeroDivisionError: division by zero); the traceback is in the log"
    )
    tracebacks = [r for r in caplog.records if r.exc_info is not None]
    assert len(tracebacks) == 1
    assert [r.getMessage() for r in caplog.records] == [
        "the rules loader failed",
        "rules reload rejected; the previous rules stay active",
    ]
    with pytest.raises(RulesError) as info:
        load_file(rules_file, holder.settings)
    assert info.value.problems == [holder.error]
    with pytest.raises(RulesError):
        RulesHolder(settings_for(rules_file)).load()

    monkeypatch.undo()
    assert holder.reload() is True
    assert holder.error is None


def test_a_failure_outside_the_loader_is_recorded_too(
    rules_file: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    holder = RulesHolder(settings_for(rules_file))
    good = holder.load()

    def broken(path: Path, settings: Settings) -> None:
        raise RuntimeError("unforeseen")

    monkeypatch.setattr(holder_module, "load_file", broken)
    with caplog.at_level(logging.ERROR, logger="broadcaster.rules"):
        assert holder.reload() is False
    assert holder.current is good
    assert holder.error is not None and "RuntimeError: unforeseen" in holder.error
    assert len([r for r in caplog.records if r.exc_info is not None]) == 1


def test_text_and_file_are_checked_alike(rules_file: Path) -> None:
    """The API checks text with ``load_text``; start-up and reloads read the file with
    ``load_file``: a comments-only file passed the one and was refused by the other."""
    settings = settings_for(rules_file)
    for text in ("# all rules removed for now\n", "\n", ""):
        rules_file.write_text(text, encoding="utf-8")
        with pytest.raises(RulesError) as from_file:
            load_file(rules_file, settings)
        with pytest.raises(RulesError) as from_text:
            load_text(text, str(rules_file), settings)
        assert (
            from_file.value.problems
            == from_text.value.problems
            == [
                f"{rules_file}: the file is empty (no policies, no rules); to run without rules, "
                "leave rules.path out of the configuration"
            ]
        )
