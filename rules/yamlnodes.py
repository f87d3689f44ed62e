"""Reading composed YAML nodes with located problems, for the rules loader.

The loader works on the node tree (``yaml.compose``), not on constructed Python values, so
every key and value still knows its line and column. Readers never raise on bad input: they
record a problem (``file:line:col: path: message``) and return ``None``, so one pass lists
every error in the file.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import timedelta

import yaml
from yaml.constructor import ConstructorError, SafeConstructor

from rules.durations import parse_duration

_CORE = "tag:yaml.org,2002:"
_NULL = _CORE + "null"
MAX_DURATION = timedelta(days=3660)
"""Longer durations are mistakes (and would overflow date arithmetic)."""


class RulesError(Exception):
    """The rules cannot be used; ``problems`` lists every located error, in file order."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid rules:\n  " + "\n  ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Item:
    """A value node, where it sits (``rules[2].followup.owner``) and the key naming it."""

    node: yaml.Node
    path: str
    key: yaml.Node | None = None

    @property
    def mark(self) -> yaml.Mark:
        # A block mapping or list starts on the line after its key: point at the key.
        node = self.node
        if self.key is not None and isinstance(node, yaml.CollectionNode) and not node.flow_style:
            return self.key.start_mark
        return self.node.start_mark

    def child(self, key: yaml.Node, node: yaml.Node, name: str) -> Item:
        return Item(node, f"{self.path}.{name}" if self.path else name, key)


@dataclass
class Problems:
    """Located problems of one file, reported sorted by position."""

    filename: str
    _found: list[tuple[int, int, int, str]] = field(default_factory=list)

    def add(self, mark: yaml.Mark, path: str, message: str) -> None:
        where = f"{self.filename}:{mark.line + 1}:{mark.column + 1}"
        entry = f"{where}: {path or '(top level)'}: {message}"
        self._found.append((mark.line, mark.column, len(self._found), entry))

    def at(self, item: Item, message: str) -> None:
        self.add(item.mark, item.path, message)

    def __len__(self) -> int:
        return len(self._found)

    def listed(self) -> list[str]:
        return [entry for *_, entry in sorted(self._found)]


def location(filename: str, mark: yaml.Mark) -> str:
    return f"{filename}:{mark.line + 1}:{mark.column + 1}"


def suggest(word: str, known: Iterable[str]) -> str:
    """`` (did you mean 'sms'?)`` when a known word is close, else nothing."""
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.7)
    return f" (did you mean {close[0]!r}?)" if close else ""


def known_list(known: Collection[str], limit: int = 12) -> str:
    names = sorted(known)
    if not names:
        return "none are defined"
    shown = ", ".join(names[:limit])
    return f"known: {shown}" + (", …" if len(names) > limit else "")


class Reader:
    """Typed reads of nodes; a bad node becomes a problem and the read returns ``None``."""

    def __init__(self, problems: Problems) -> None:
        self.problems = problems
        self._constructor = SafeConstructor()

    def mapping(
        self,
        item: Item,
        allowed: Collection[str],
        required: Collection[str] = (),
        *,
        what: str = "key",
        hint: Callable[[str], str] | None = None,
    ) -> dict[str, Item] | None:
        """The entries of a mapping whose keys must be among ``allowed``. An unknown key is
        reported as an unknown ``what``, with ``hint(key)`` or a close match or the list."""
        node = item.node
        if not isinstance(node, yaml.MappingNode):
            self.problems.at(item, f"a mapping is expected, not {_describe(node)}")
            return None
        own = {id(key) for key, _ in node.value if key.tag != _CORE + "merge"}
        try:
            self._constructor.flatten_mapping(node)  # resolves ``<<: *anchor`` merges
        except ConstructorError as exc:
            self.problems.at(item, f"bad merge: {exc.problem}")
            return None
        out: dict[str, Item] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _NULL:
                self.problems.add(key_node.start_mark, item.path, "keys must be names")
                continue
            name = str(key_node.value)
            child = item.child(key_node, value_node, name)
            earlier = out.get(name)
            if earlier is not None and id(earlier.key) not in own:
                out[name] = child  # a merged key gives way, as in YAML (the last one wins)
            elif earlier is not None:
                self.problems.add(key_node.start_mark, child.path, "duplicate key")
            elif name not in allowed:
                why = (hint and hint(name)) or suggest(name, allowed) or f" ({known_list(allowed)})"
                self.problems.add(key_node.start_mark, child.path, f"unknown {what}{why}")
            else:
                out[name] = child
        for name in required:
            if name not in out:
                self.problems.at(item, f"missing key {name!r}")
        return out

    def names(self, item: Item) -> dict[str, Item] | None:
        """A mapping whose keys are names the admin chooses (policies, labels)."""
        node = item.node
        if not isinstance(node, yaml.MappingNode):
            self.problems.at(item, f"a mapping is expected, not {_describe(node)}")
            return None
        return self.mapping(item, {str(k.value) for k, _ in node.value if hasattr(k, "value")})

    def sequence(self, item: Item, *, single: bool = False) -> list[Item] | None:
        """A list; with ``single``, one scalar is read as a list of one."""
        node = item.node
        if single and isinstance(node, yaml.ScalarNode) and node.tag != _NULL:
            return [item]
        if not isinstance(node, yaml.SequenceNode):
            self.problems.at(item, f"a list is expected, not {_describe(node)}")
            return None
        return [Item(child, f"{item.path}[{i}]") for i, child in enumerate(node.value)]

    def text(self, item: Item) -> str | None:
        """A scalar as written (``22:00`` stays text, ``true`` stays ``"true"``)."""
        node = item.node
        if not isinstance(node, yaml.ScalarNode):
            self.problems.at(item, f"a single value is expected, not {_describe(node)}")
            return None
        if not node.tag.startswith(_CORE):
            self.problems.at(item, f"unsupported tag {node.tag}")
            return None
        if node.tag == _NULL:
            self.problems.at(item, "a value is expected here")
            return None
        value = str(node.value)
        if not value.strip():
            self.problems.at(item, "a value is expected here")
            return None
        return value

    def choice(self, item: Item, choices: Collection[str], what: str) -> str | None:
        value = self.text(item)
        if value is None:
            return None
        if value not in choices:
            hint = suggest(value, choices) or f" (one of {', '.join(choices)})"
            self.problems.at(item, f"unknown {what} {value!r}{hint}")
            return None
        return value

    def boolean(self, item: Item) -> bool | None:
        node = item.node
        if isinstance(node, yaml.ScalarNode) and node.tag == _CORE + "bool":
            return bool(self._constructor.construct_yaml_bool(node))
        self.problems.at(item, f"true or false is expected, not {_describe(node)}")
        return None

    def integer(self, item: Item, minimum: int | None = None) -> int | None:
        node = item.node
        if not (isinstance(node, yaml.ScalarNode) and node.tag == _CORE + "int"):
            self.problems.at(item, f"a whole number is expected, not {_describe(node)}")
            return None
        value = int(self._constructor.construct_yaml_int(node))
        if minimum is not None and value < minimum:
            self.problems.at(item, f"must be at least {minimum}")
            return None
        return value

    def duration(self, item: Item, *, positive: bool = True) -> timedelta | None:
        value = self.text(item)
        if value is None:
            return None
        try:
            parsed = parse_duration(value)
        except ValueError as exc:
            self.problems.at(item, str(exc))
            return None
        if positive and parsed <= timedelta(0):
            self.problems.at(item, "must be longer than 0s")
            return None
        if parsed > MAX_DURATION:
            self.problems.at(item, f"duration {value!r} is too long (at most 3660d)")
            return None
        return parsed


def _describe(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if node.tag == _NULL:
        return "nothing"
    return repr(str(node.value))
