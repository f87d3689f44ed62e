"""Loading ``config.yaml``: ``${ENV}`` substitution, ``BROADCASTER_*`` overrides, located errors.

Every error names where the bad value came from: ``config.yaml:12:5: schedule.cadence.major:
invalid duration 'soon'``, or the environment variable that set it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from broadcaster.compose.templates import available_languages
from broadcaster.config.settings import Settings, cross_check

ENV_PREFIX = "BROADCASTER_"
CONFIG_ENV = "BROADCASTER_CONFIG"
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

Path_ = tuple[str | int, ...]

SHIPPED_CONFIG = Path(__file__).resolve().parent.parent / "_default_config.yaml"
"""Where an installed wheel keeps its copy of ``config.yaml`` (``broadcaster/``; pyproject's
``force-include``). Its relative paths are read as they are from the repository's own copy:
the rules file and templates against the installed packages (``rules/examples/…`` beside
``broadcaster/``), the SQLite store against the working directory (``./data``), never
inside the installation."""


class ConfigError(Exception):
    """The configuration cannot be used; ``problems`` lists every located error."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class _Origin:
    where: str

    def __str__(self) -> str:
        return self.where


def locate_config(
    explicit: str | Path | None = None, environ: Mapping[str, str] | None = None
) -> Path:
    """The config file to use: ``--config``, else ``$BROADCASTER_CONFIG``, else ``./config.yaml``,
    else the default shipped with the package."""
    if explicit is not None:
        return Path(explicit)
    env = (os.environ if environ is None else environ).get(CONFIG_ENV)
    if env:
        return Path(env)
    local = Path("config.yaml")
    if local.exists():
        return local
    if SHIPPED_CONFIG.exists():
        return SHIPPED_CONFIG
    return Path(__file__).resolve().parents[2] / "config.yaml"


def not_utf8(path: Path, exc: UnicodeDecodeError) -> str:
    """Where a file that should be UTF-8 is not: ``path:line: not UTF-8 (byte …)``."""
    line = exc.object[: exc.start].count(b"\n") + 1
    byte = exc.object[exc.start]
    return f"{path}:{line}: not UTF-8 (byte 0x{byte:02x} at offset {exc.start}); save it as UTF-8"


def load_settings(
    path: str | Path | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Read, substitute, override and validate; raise :class:`ConfigError` on any problem."""
    env = os.environ if environ is None else environ
    file = locate_config(path, env)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{file}: cannot read: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([not_utf8(file, exc)]) from None
    origins: dict[Path_, _Origin] = {}
    try:
        data = _parse_yaml(text, str(file), origins)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{file}:{mark.line + 1}:{mark.column + 1}" if mark else str(file)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{where}: YAML syntax error: {problem}"]) from exc
    if data is None:
        # An empty file (a file emptied by mistake, the wrong one) read as every default
        # started a daemon on a new, empty store, as if the data were lost.
        raise ConfigError([f"{file}: the file is empty; write {{}} in it to take every default"])
    if not isinstance(data, dict):
        raise ConfigError([f"{file}:1:1: the top level must be a mapping of sections"])
    problems: list[str] = []
    data = _substitute(data, (), env, origins, problems, str(file))
    _apply_overrides(data, env, origins, problems)
    if problems:
        raise ConfigError(problems)
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            [
                _describe(_key_path(err, data), err["msg"], origins, str(file))
                for err in exc.errors()
            ]
        ) from exc
    crossed = [_describe(loc, msg, origins, str(file)) for loc, msg in cross_check(settings)]
    if crossed:
        raise ConfigError(crossed)
    base = file.resolve().parent
    shipped = file.resolve() == SHIPPED_CONFIG
    settings.database.url = resolve_sqlite_url(
        settings.database.url, Path.cwd() if shipped else base
    )
    if shipped:
        base = SHIPPED_CONFIG.parent.parent  # the installed packages, rules/ among them
    if settings.rules.path is not None and not settings.rules.path.is_absolute():
        settings.rules.path = base / settings.rules.path
    if (
        settings.messages.templates_dir is not None
        and not settings.messages.templates_dir.is_absolute()
    ):
        settings.messages.templates_dir = base / settings.messages.templates_dir
    languages = available_languages(settings.messages.templates_dir)
    if settings.messages.default_language not in languages:
        # Every message falls back to it: without its templates, those in other
        # languages failed too, at every attempt, with a traceback.
        language = settings.messages.default_language
        raise ConfigError(
            [
                _describe(
                    ("messages", "default_language"),
                    f"no templates in {language!r} (there are: {', '.join(languages)}); "
                    f"add a folder {language}/ to messages.templates_dir, or pick one of those",
                    origins,
                    str(file),
                )
            ]
        )
    return settings


def resolve_sqlite_url(url: str, base: Path) -> str:
    """Make a relative SQLite path absolute against ``base`` (the config file's folder)."""
    match = re.match(r"^(sqlite(?:\+\w+)?):///(?!/)(.+)$", url)
    if not match or match.group(2).startswith(":memory:"):
        return url
    return f"{match.group(1)}:///{(base / match.group(2)).resolve()}"


MAX_VALUES = 100_000
"""The most values (keys, items, scalars) a configuration may expand to. YAML aliases can
make a few lines stand for billions of values (the "billion laughs"); every value is
visited here and copied later, so such a file would hang the loader."""


def _parse_yaml(text: str, filename: str, origins: dict[Path_, _Origin]) -> Any:
    loader = yaml.SafeLoader(text)
    loader.name = filename
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        try:
            _record_marks(node, (), origins, filename, budget=[MAX_VALUES])
        except _TooLarge as exc:
            where = f"{filename}:{exc.mark.line + 1}:{exc.mark.column + 1}"
            raise ConfigError(
                [
                    f"{where}: the document expands to more than {MAX_VALUES} values "
                    "(YAML aliases repeating aliases?)"
                ]
            ) from None
        return loader.construct_document(node)
    finally:
        loader.dispose()


class _TooLarge(Exception):
    def __init__(self, mark: yaml.Mark) -> None:
        super().__init__()
        self.mark = mark


def _record_marks(
    node: yaml.Node,
    path: Path_,
    origins: dict[Path_, _Origin],
    name: str,
    mark: yaml.Mark | None = None,
    *,
    budget: list[int],
) -> None:
    budget[0] -= 1
    if budget[0] < 0:
        raise _TooLarge(node.start_mark)
    mark = mark or node.start_mark
    origins[path] = _Origin(f"{name}:{mark.line + 1}:{mark.column + 1}")
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node)
            # A block mapping or list starts on the line after its key; point at the key.
            at_key = key_node.start_mark if isinstance(value_node, yaml.CollectionNode) else None
            _record_marks(value_node, (*path, str(key)), origins, name, at_key, budget=budget)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _record_marks(item, (*path, index), origins, name, budget=budget)


def _substitute(
    value: Any,
    path: Path_,
    env: Mapping[str, str],
    origins: dict[Path_, _Origin],
    problems: list[str],
    filename: str,
) -> Any:
    if isinstance(value, dict):
        return {
            k: _substitute(v, (*path, str(k)), env, origins, problems, filename)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [
            _substitute(v, (*path, i), env, origins, problems, filename)
            for i, v in enumerate(value)
        ]
    if not isinstance(value, str) or "${" not in value:
        return value

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = env.get(name)
        # As in the shell: ``${VAR:-default}`` takes the default when VAR is unset or empty.
        if default is not None and not value:
            return default
        if value is not None:
            return value
        problems.append(
            _describe(path, f"environment variable {name} is not set", origins, filename)
        )
        return ""

    return _PLACEHOLDER.sub(replace, value)


def _apply_overrides(
    data: dict[str, Any],
    env: Mapping[str, str],
    origins: dict[Path_, _Origin],
    problems: list[str],
) -> None:
    """``BROADCASTER_SECTION__KEY=value`` sets ``section.key``; values are parsed as YAML."""
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or "__" not in name[len(ENV_PREFIX) :]:
            continue
        keys = [k.lower() for k in name[len(ENV_PREFIX) :].split("__")]
        if any(not k for k in keys):
            problems.append(f"environment {name}: empty key segment in the name")
            continue
        try:
            value = yaml.safe_load(env[name]) if env[name] else ""
        except yaml.YAMLError as exc:
            problems.append(f"environment {name}: not a valid YAML value: {exc}")
            continue
        # A numeric segment indexes a list the file (or an earlier variable) wrote, as in
        # BROADCASTER_FEEDS__0__URL; anything else makes or replaces a mapping.
        node: Any = data
        steps: list[str | int] = []
        for key in keys:
            if isinstance(node, list):
                index = int(key) if key.isascii() and key.isdigit() else None
                if index is None or index >= len(node):
                    at = ".".join(str(step) for step in steps)
                    problems.append(
                        f"environment {name}: {at} is a list of {len(node)} item(s); "
                        f"{key!r} is not one of its indexes (0 to {len(node) - 1})"
                    )
                    break
                step: str | int = index
            else:
                step = key
            steps.append(step)
            if len(steps) == len(keys):
                node[step] = value
                break
            child = node.get(step) if isinstance(node, dict) else node[step]
            if not isinstance(child, dict | list):
                following = keys[len(steps)]
                if following.isascii() and following.isdigit():
                    # An index into a list the file does not have: the list, not item N.
                    at = ".".join(str(part) for part in steps)
                    whole = ENV_PREFIX + "__".join(str(part).upper() for part in steps)
                    fix = (
                        f"set the whole list with {whole}='[...]' (YAML)"
                        if len(steps) > 1  # a top-level section is not one variable
                        else f"write the {at} list in the file"
                    )
                    problems.append(
                        f"environment {name}: {at} is not a list in the file, so it has no "
                        f"item {following}; {fix}"
                    )
                    break
                child = {}
                node[step] = child
                origins[tuple(steps)] = _Origin(f"environment {name}")
            node = child
        if len(steps) != len(keys):
            continue
        path: Path_ = tuple(steps)
        # The file's marks below this key describe the value the environment replaced.
        for stale in [p for p in origins if p[: len(path)] == path]:
            del origins[stale]
        origins[path] = _Origin(f"environment {name}")


def _key_path(error: ErrorDetails, data: Any) -> Path_:
    """The config keys of a pydantic error location, without discriminated-union tags.

    A tagged union adds the tag to the location (``channels.email.email.port``); it is not a
    key. A tag that matches nothing is reported on the discriminator key itself.
    """
    path: list[str | int] = []
    node = data
    for part in error["loc"]:
        if isinstance(node, dict) and part not in node and node.get("type") == part:
            continue  # the tag of a union discriminated by "type"
        path.append(part)
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            node = None
    if error["type"] == "union_tag_invalid" and isinstance(node, dict):
        discriminator = str((error.get("ctx") or {}).get("discriminator", "")).strip("'")
        if discriminator in node:
            path.append(discriminator)
    return tuple(path)


def _describe(loc: tuple[Any, ...], msg: str, origins: dict[Path_, _Origin], filename: str) -> str:
    path: Path_ = tuple(p for p in loc if isinstance(p, str | int))
    key = ".".join(str(p) for p in path)
    probe = path
    while probe and probe not in origins:
        probe = probe[:-1]
    where = origins.get(probe) if probe in origins else origins.get((), _Origin(filename))
    if where is None:
        where = _Origin(filename)
    # pydantic says "Value error, " before a validator's own message: the key says enough.
    msg = msg.removeprefix("Value error, ")
    return f"{where}: {key or '(top level)'}: {msg}"
