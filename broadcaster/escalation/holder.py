"""The active rules: loaded at start, reloaded on SIGHUP or when the file changes.

A bad edit never replaces good rules: the previous rules stay active, the error is
logged, kept in ``error`` and reported by ``/healthz``.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from broadcaster.config.loader import not_utf8
from broadcaster.config.settings import Settings
from rules import RulesError, RuleSet, load_rules

log = logging.getLogger("broadcaster.rules")


def load_file(path: Path, settings: Settings) -> RuleSet:
    """Load and check a rules file against the configured channels, staff and groups."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RulesError([f"{path}: cannot read: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise RulesError([not_utf8(path, exc)]) from exc
    if not any(line.strip() and not line.lstrip().startswith("#") for line in text.splitlines()):
        # An editor that empties the file before writing it, a save cut short: read as
        # "no rules", it had dropped every policy, follow-up and apology requirement.
        raise RulesError(
            [
                f"{path}: the file is empty (no policies, no rules); to run without rules, "
                "leave rules.path out of the configuration"
            ]
        )
    return load_rules(
        text,
        str(path),
        channels=set(settings.channels),
        staff=set(settings.staff.people),
        groups=set(settings.staff.groups),
    )


class RulesHolder:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.path = settings.rules.path
        self.current: RuleSet | None = None
        self.error: str | None = None
        self.loaded_mtime: float | None = None
        self.reloads = 0
        # The periodic check reloads in a worker thread, SIGHUP and the API on the loop:
        # one at a time, so an older file read cannot replace a newer one.
        self._reloading = threading.Lock()

    def load(self) -> RuleSet | None:
        """First load; raises :class:`RulesError` (start-up fails on bad rules)."""
        if self.path is None:
            return None
        self.loaded_mtime = self._mtime()
        self.current = load_file(self.path, self.settings)
        return self.current

    def _mtime(self) -> float | None:
        try:
            return self.path.stat().st_mtime if self.path is not None else None
        except OSError:
            return None

    def reload(self) -> bool:
        """Reload now; False (and the old rules kept) when the new file is bad."""
        if self.path is None:
            return False
        with self._reloading:
            return self._reload(self.path)

    def _reload(self, path: Path) -> bool:
        mtime = self._mtime()
        try:
            fresh = load_file(path, self.settings)
        except RulesError as exc:
            self.error = "\n".join(exc.problems)
            self.loaded_mtime = mtime
            log.error(
                "rules reload rejected; the previous rules stay active",
                extra={"problems": exc.problems},
            )
            return False
        self.current = fresh
        self.error = None
        self.loaded_mtime = mtime
        self.reloads += 1
        log.info("rules reloaded", extra={"path": str(path)})
        return True

    def reload_if_changed(self) -> bool:
        mtime = self._mtime()
        if mtime is not None and mtime != self.loaded_mtime:
            return self.reload()
        return False
