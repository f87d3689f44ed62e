"""Every staff reference the rules loader accepts names someone in the daemon's directory.

The loader checks names against the configured staff and groups; the directory resolves the
references at run time. A form the loader took and the directory could not resolve (bare
``on_call``: "the person on call", of no group) passed ``rules check`` and then created no
forced follow-up and told no one.
"""

from __future__ import annotations

from pathlib import Path

from broadcaster.config.settings import StaffSettings
from broadcaster.escalation.holder import load_text
from broadcaster.followups.directory import Directory
from rules import StaffRef
from tests.unit.test_rules_holder import settings_for

RULES = """\
policies:
  default:
    steps:
      - after: 0m
        every: 30m
        channels: [email]
        notify: [{refs}]
rules:
  - name: r
    followup: {{kind: call, owner: account_manager, deadline: 1h, escalation: [{refs}]}}
"""
WRITTEN = ["staff:maria", "group:care", "on_call:duty-managers", "maria", "care"]


def test_every_accepted_form_resolves_to_someone() -> None:
    settings = settings_for(Path("rules.yaml"))
    ruleset = load_text(RULES.format(refs=", ".join(WRITTEN)), "rules.yaml", settings)
    directory = Directory(settings.staff)
    step = ruleset.policies["default"].steps[0]
    followup = ruleset.rules[0].followup
    assert followup is not None
    refs: list[StaffRef] = [*step.notify, *followup.escalation]
    assert len(refs) == 2 * len(WRITTEN)
    for ref in refs:
        assert directory.members(ref), f"{ref} tells no one"
        assert directory.resolve(ref, None) in settings.staff.people, f"{ref} owns nothing"
    assert directory.resolve(followup.owner, "maria") == "maria"


def test_a_group_s_on_call_person_is_told_with_its_members() -> None:
    """A group with an on-call person and no members owned follow-ups (``resolve``) but
    ``notify: [group:G]`` told nobody."""
    staff = StaffSettings.model_validate(
        {
            "people": {"ann": {"name": "Ann"}, "bob": {"name": "Bob"}},
            "groups": {"night": {"on_call": "ann"}, "day": {"members": ["bob"], "on_call": "ann"}},
        }
    )
    directory = Directory(staff)
    assert directory.members(StaffRef.parse("group:night")) == ["ann"]
    assert directory.members(StaffRef.parse("group:day")) == ["bob", "ann"]
    assert directory.members(StaffRef.parse("on_call:day")) == ["ann"]
