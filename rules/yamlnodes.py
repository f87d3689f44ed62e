"""Reading composed YAML nodes with located problems, for the rules loader.

The loader works on the node tree (``yaml.compose``), not on constructed Python values, so
every key and value still knows its line and column. Readers never raise on bad input: they
record a problem (``file:line:col: path: message``) and return ``None``, so one pass lists
every error in the file.

Merge keys (``<<: *anchor``) are resolved wherever a mapping is read, without changing the
node tree (an anchor can be merged in several places, and read where it is written too). A
merged entry keeps its own position, in the anchor, where its text is; a problem in it says
which merge brought it in: ``rules.yaml:4:20: rules[1].match.incident.labels.env: … (merged
by `<<` at line 12)``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import timedelta

import yaml
from yaml.constructor import SafeConstructor

from rules.durations import parse_duration

_CORE = "tag:yaml.org,2002:"
_NULL = _CORE + "null"
_MERGE = _CORE + "merge"
_WHOLE = re.compile(r"[-+]?[0-9][0-9_]*")
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
    merged: yaml.Mark | None = None
    """Where the ``<<`` that brought this value in from an anchor is written (the outermost
    one), or ``None`` for a value written where it is read."""

    @property
    def mark(self) -> yaml.Mark:
        # A block mapping or list starts on the line after its key: point at the key.
        node = self.node
        if self.key is not None and isinstance(node, yaml.CollectionNode) and not node.flow_style:
            return self.key.start_mark
        return self.node.start_mark

    def child(
        self, key: yaml.Node, node: yaml.Node, name: str, merged: yaml.Mark | None = None
    ) -> Item:
        path = f"{self.path}.{name}" if self.path else name
        return Item(node, path, key, self.merged or merged)

    def element(self, node: yaml.Node, index: int) -> Item:
        return Item(node, f"{self.path}[{index}]", merged=self.merged)


@dataclass
class Problems:
    """Located problems of one file, reported sorted by position."""

    filename: str
    _found: list[tuple[int, int, int, str]] = field(default_factory=list)

    def add(
        self, mark: yaml.Mark, path: str, message: str, merged: yaml.Mark | None = None
    ) -> None:
        where = f"{self.filename}:{mark.line + 1}:{mark.column + 1}"
        if merged is not None:
            message += f" (merged by `<<` at line {merged.line + 1})"
        entry = f"{where}: {path or '(top level)'}: {message}"
        self._found.append((mark.line, mark.column, len(self._found), entry))

    def at(self, item: Item, message: str) -> None:
        self.add(item.mark, item.path, message, item.merged)

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
        allowed: Collection[str] | None,
        required: Collection[str] = (),
        *,
        what: str = "key",
        hint: Callable[[str], str] | None = None,
    ) -> dict[str, Item] | None:
        """The entries of a mapping, ``<<`` merges resolved, whose keys must be among
        ``allowed`` (``None``: any name). An unknown key is reported as an unknown ``what``,
        with ``hint(key)`` or a close match or the list."""
        node = item.node
        if not isinstance(node, yaml.MappingNode):
            self.problems.at(item, f"a mapping is expected, not {_describe(node)}")
            return None
        try:
            entries = _entries(node, frozenset(), {})
        except _BadMerge as bad:
            self.problems.add(bad.mark, item.path, f"bad merge: {bad.problem}", item.merged)
            return None
        out: dict[str, Item] = {}
        merged_in: set[str] = set()  # the names whose entry came from a merge
        for key_node, value_node, merged in entries:
            at = item.merged or merged
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _NULL:
                self.problems.add(key_node.start_mark, item.path, "keys must be names", at)
                continue
            name = str(key_node.value)
            child = item.child(key_node, value_node, name, merged)
            earlier = out.get(name)
            if earlier is not None and name in merged_in:
                # A merged key gives way, as in YAML: to the mapping's own key, or to a key
                # of a merge that takes precedence (those come later in ``entries``).
                out[name] = child
                if merged is None:
                    merged_in.discard(name)
            elif earlier is not None:
                self.problems.add(key_node.start_mark, child.path, "duplicate key", at)
            elif allowed is not None and name not in allowed:
                why = (hint and hint(name)) or suggest(name, allowed) or f" ({known_list(allowed)})"
                self.problems.add(key_node.start_mark, child.path, f"unknown {what}{why}", at)
            else:
                out[name] = child
                if merged is not None:
                    merged_in.add(name)
        for name in required:
            if name not in out:
                self.problems.at(item, f"missing key {name!r}")
        return out

    def names(self, item: Item) -> dict[str, Item] | None:
        """A mapping whose keys are names the admin chooses (policies, labels)."""
        return self.mapping(item, None)

    def sequence(self, item: Item, *, single: bool = False) -> list[Item] | None:
        """A list; with ``single``, one scalar is read as a list of one."""
        node = item.node
        if single and isinstance(node, yaml.ScalarNode) and node.tag != _NULL:
            return [item]
        if not isinstance(node, yaml.SequenceNode):
            self.problems.at(item, f"a list is expected, not {_describe(node)}")
            return None
        return [item.element(child, i) for i, child in enumerate(node.value)]

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
            try:
                return bool(self._constructor.construct_yaml_bool(node))
            except KeyError:  # ``!!bool maybe``
                pass
        self.problems.at(item, f"true or false is expected, not {_describe(node)}")
        return None

    def integer(self, item: Item, minimum: int | None = None) -> int | None:
        node = item.node
        if not (isinstance(node, yaml.ScalarNode) and node.tag == _CORE + "int"):
            self.problems.at(item, f"a whole number is expected, not {_describe(node)}")
            return None
        try:
            value = int(self._constructor.construct_yaml_int(node))
        except ValueError:  # ``!!int abc``; thousands of digits (int() refuses them)
            digits = sum(c.isdigit() for c in str(node.value))
            if _WHOLE.fullmatch(str(node.value)):
                self.problems.at(item, f"the number is too large ({digits} digits)")
            else:
                self.problems.at(item, f"a whole number is expected, not {_describe(node)}")
            return None
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
    text = str(node.value)
    return repr(text) if len(text) <= 60 else f"{text[:40]!r}… ({len(text)} characters)"


class _BadMerge(Exception):
    def __init__(self, mark: yaml.Mark, problem: str) -> None:
        super().__init__(problem)
        self.mark = mark
        self.problem = problem


_Entry = tuple[yaml.Node, yaml.Node, yaml.Mark | None]


def _entries(
    node: yaml.MappingNode, within: frozenset[int], done: dict[int, list[_Entry]]
) -> list[_Entry]:
    """A mapping's entries with its ``<<`` merges resolved, in YAML's order of precedence
    (a later entry wins over an earlier merged one): the merged entries first, each marked
    with the ``<<`` that brought it, then the mapping's own. ``<<: [*a, *b]`` takes ``a``'s
    value over ``b``'s; of two ``<<`` keys, the later wins. The node tree is not changed
    (``SafeConstructor.flatten_mapping`` rewrites it in place). ``within``: the mappings
    being merged (a merge of one into itself is refused); ``done``: those resolved already,
    so that merges of merges are resolved once each, and what merges bring in is only the
    entry that wins for each key (repeated merges cannot multiply the entries)."""
    if id(node) in done:
        return done[id(node)]
    if id(node) in within:
        raise _BadMerge(node.start_mark, "the merge takes in the mapping it is part of")
    within = within | {id(node)}
    merged: list[_Entry] = []
    own: list[_Entry] = []
    for key, value in node.value:
        if key.tag != _MERGE:
            own.append((key, value, None))
            continue
        sources = value.value if isinstance(value, yaml.SequenceNode) else [value]
        for source in reversed(sources):
            if not isinstance(source, yaml.MappingNode):
                raise _BadMerge(
                    source.start_mark,
                    f"<< takes a mapping (e.g. *anchor) or a list of them, not {_describe(source)}",
                )
            merged.extend((k, v, key.start_mark) for k, v, _ in _entries(source, within, done))
    winners: dict[object, _Entry] = {}
    for entry in merged:
        key = entry[0]
        named = isinstance(key, yaml.ScalarNode) and key.tag != _NULL
        winners.pop(key.value if named else id(key), None)
        winners[key.value if named else id(key)] = entry
    done[id(node)] = entries = [*winners.values(), *own]
    return entries
