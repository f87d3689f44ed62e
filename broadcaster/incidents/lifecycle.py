"""The incident lifecycle, pure: which status may follow which, and why not.

::

    investigating ⇄ identified ⇄ monitoring ──resolve──► resolved ──close──► closed
          ▲                                                  │
          └──────────── update with an open status (reopen) ─┘

Any open status may follow any other (a cause can turn out wrong, a fix can fail).
Resolution is its own operation, because it sends the final message and stops the
rounds; a resolved incident can be reopened by an update; a closed one is final.
"""

from __future__ import annotations

from typing import Final

MAX_SCOPE_CHARS: Final = 200
"""The longest component or region name an incident's scope keeps (the store's column, the
API's limit); a feed's longer names are cut to it."""

MAX_SCOPE_ITEMS: Final = 200
"""The most components (and regions) one declaration names."""
MAX_TITLE_CHARS: Final = 300
MAX_MESSAGE_CHARS: Final = 10_000
"""The longest title and message an operator writes, whichever way (CLI, console, API)."""
MAX_TEXT_CHARS: Final = 10_000
"""The longest of every other text an operator writes (cause, actions, workaround and the
apology's responsibility, regret, remedy, prevention, compensation), whichever way: the
service checks it, the API's schema (``Text``) has it too."""

OPEN_STATUSES: Final = ("investigating", "identified", "monitoring")
STATUSES: Final = (*OPEN_STATUSES, "resolved", "closed")
SEVERITIES: Final = ("minor", "major", "critical")
CAUSE_KINDS: Final = ("known", "suspected", "unknown")


class TransitionError(ValueError):
    """An operation the incident's current status does not allow."""


def is_open(status: str) -> bool:
    return status in OPEN_STATUSES


def check_severity(severity: str) -> str:
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {', '.join(SEVERITIES)}, not {severity!r}")
    return severity


def check_cause_kind(kind: str) -> str:
    if kind not in CAUSE_KINDS:
        raise ValueError(f"cause kind must be one of {', '.join(CAUSE_KINDS)}, not {kind!r}")
    return kind


def check_update(current: str, new: str | None) -> str:
    """The status after an update; ``None`` keeps an open status as it is."""
    if current == "closed":
        raise TransitionError("the incident is closed; declare a new incident instead")
    if new is None:
        if current == "resolved":
            raise TransitionError(
                "the incident is resolved; give an open status (e.g. investigating) to reopen it"
            )
        return current
    if new == "resolved":
        raise TransitionError("use 'incident resolve' to resolve: it sends the final message")
    if new == "closed":
        raise TransitionError("use 'incident close' to close a resolved incident")
    if new not in OPEN_STATUSES:
        raise TransitionError(
            f"unknown status {new!r}; an update takes one of {', '.join(OPEN_STATUSES)}"
        )
    return new


def check_resolve(current: str) -> str:
    if current == "resolved":
        raise TransitionError("the incident is already resolved")
    if current == "closed":
        raise TransitionError("the incident is closed")
    return "resolved"


def check_close(current: str) -> str:
    if current == "closed":
        raise TransitionError("the incident is already closed")
    if current != "resolved":
        raise TransitionError(
            f"only a resolved incident can be closed (it is {current}); resolve it first"
        )
    return "closed"
