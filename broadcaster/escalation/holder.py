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
    return load_text(text, str(path), settings)


def load_text(text: str, filename: str, settings: Settings) -> RuleSet:
    """Check rules YAML against the configured channels, staff and groups: the one check
    behind start-up, reloads, ``rules check`` and the API's and console's checks, so they
    agree (an empty file is refused by each alike).

    Raises :class:`RulesError` and nothing else: should the loader fail on some input it did
    not foresee, the failure is logged with its traceback and refused like a bad file, so a
    rules edit can never take the daemon, its file watch or a request down."""
    try:
        return load_rules(
            text,
            filename,
            channels=set(settings.channels),
            staff=set(settings.staff.people),
            groups=set(settings.staff.groups),
        )
    except RulesError:
        raise
    except Exception as exc:
        log.exception("the rules loader failed", extra={"path": filename})
        raise RulesError([_failed(filename, exc)]) from exc


def _failed(filename: str, exc: Exception) -> str:
    return (
        f"{filename}: the rules could not be checked: the loader failed "
        f"({type(exc).__name__}: {exc}); the traceback is in the log"
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
            problems = exc.problems
        except Exception as exc:
            # Whatever went wrong, the previous rules stay: a reload runs from the file watch,
            # SIGHUP and requests, none of which may die of a rules edit. Recorded with the
            # file's time, so the watch does not log it again until the file changes.
            log.exception("rules reload failed", extra={"path": str(path)})
            problems = [_failed(str(path), exc)]
        else:
            self.current = fresh
            self.error = None
            self.loaded_mtime = mtime
            self.reloads += 1
            log.info("rules reloaded", extra={"path": str(path)})
            return True
        self.error = "\n".join(problems)
        self.loaded_mtime = mtime
        log.error(
            "rules reload rejected; the previous rules stay active",
            extra={"problems": problems},
        )
        return False

    def reload_if_changed(self) -> bool:
        mtime = self._mtime()
        if mtime is not None and mtime != self.loaded_mtime:
            return self.reload()
        return False
