"""The configuration loader on hostile files and environments: only ConfigError escapes, and
every problem says where (``file:line:column``, or the environment variable).

Inputs: arbitrary text; the shipped ``config.yaml`` mutated character by character and key
by key; documents of the right sections holding arbitrary values; ``BROADCASTER_*``
overrides holding arbitrary YAML. And one found by hand: a YAML alias bomb ("billion
laughs"), which hung the loader before it counted what a document expands to.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broadcaster.config.loader import MAX_VALUES, ConfigError, load_settings
from tests.conftest import REPO

SHIPPED = (REPO / "config.yaml").read_text(encoding="utf-8")
SECTIONS = [
    "database",
    "schedule",
    "delivery",
    "channels",
    "messages",
    "http",
    "staff",
    "rules",
    "feeds",
    "webhook_secrets",
    "hooks",
    "log",
]
FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.sampled_from(["15m", "-1s", "${NOPE}", "${X:-5s}", "sms", "0"]),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=12) | st.sampled_from(SECTIONS), inner, max_size=4)
    ),
    max_leaves=20,
)


def _check(text: str, tmp: Path, environ: dict[str, str] | None = None) -> None:
    file = tmp / "config.yaml"
    file.write_text(text, encoding="utf-8", errors="surrogatepass")
    located = re.compile(rf"^({re.escape(str(file))}(:\d+:\d+)?|environment BROADCASTER_\S+): ")
    try:
        load_settings(file, environ=environ or {})
    except ConfigError as exc:
        assert exc.problems
        for problem in exc.problems:
            assert located.match(problem), problem


@FUZZ
@given(text=st.text(max_size=300))
def test_any_text(tmp_path: Path, text: str) -> None:
    _check(text, tmp_path)


@st.composite
def mutated_shipped(draw: st.DrawFn) -> str:
    text = SHIPPED
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        action = draw(st.sampled_from(["insert", "delete", "replace"]))
        piece = draw(
            st.sampled_from(
                [
                    ":",
                    " ",
                    "\n",
                    "\t",
                    "-",
                    "[",
                    "{",
                    "&a",
                    "*a",
                    "'",
                    "x",
                    "${Y}",
                    "0",
                    '"',
                    "#",
                    "!!python/object:os.system",
                ]
            )
        )
        if action == "insert":
            text = text[:at] + piece + text[at:]
        elif action == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 20)) :]
        else:
            text = text[:at] + piece + text[at + len(piece) :]
    return text


@FUZZ
@given(text=mutated_shipped())
def test_the_shipped_config_mutated(tmp_path: Path, text: str) -> None:
    _check(text, tmp_path)


@FUZZ
@given(document=st.dictionaries(st.sampled_from(SECTIONS), values, max_size=5))
def test_right_sections_arbitrary_values(tmp_path: Path, document: dict[str, object]) -> None:
    _check(yaml.safe_dump(document), tmp_path)


@FUZZ
@given(
    overrides=st.dictionaries(
        st.sampled_from(
            [
                "BROADCASTER_DELIVERY__WORKERS",
                "BROADCASTER_SCHEDULE__CADENCE__MAJOR",
                "BROADCASTER_CHANNELS__EMAIL",
                "BROADCASTER_LOG__REDACT__EMAILS",
                "BROADCASTER_HTTP__PORT",
                "BROADCASTER___",
                "BROADCASTER_X__",
            ]
        ),
        st.text(max_size=30) | values.map(lambda v: yaml.safe_dump(v)),
        max_size=3,
    )
)
def test_environment_overrides(tmp_path: Path, overrides: dict[str, str]) -> None:
    _check(SHIPPED, tmp_path, overrides)


def test_a_yaml_alias_bomb_is_refused_quickly_and_located(tmp_path: Path) -> None:
    lines = ["log:", "  level: INFO", "bomb:", "  a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for n in range(1, 9):
        prev, cur = chr(ord("a") + n - 1), chr(ord("a") + n)
        lines.append(f"  {cur}: &{cur} [" + ", ".join([f"*{prev}"] * 10) + "]")
    file = tmp_path / "config.yaml"
    file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    started = time.monotonic()
    try:
        load_settings(file, environ={})
    except ConfigError as exc:
        assert len(exc.problems) == 1
        assert re.match(rf"{re.escape(str(file))}:\d+:\d+: the document expands", exc.problems[0])
        assert str(MAX_VALUES) in exc.problems[0]
    else:
        raise AssertionError("a document of 10**9 values was accepted")
    assert time.monotonic() - started < 5


def test_a_large_but_honest_document_still_loads(tmp_path: Path) -> None:
    feeds = "".join(
        f"  - {{name: feed{n}, type: rss, url: 'https://example.org/{n}.xml'}}\n"
        for n in range(300)
    )
    file = tmp_path / "config.yaml"
    file.write_text("feeds:\n" + feeds, encoding="utf-8")
    try:
        settings_ = load_settings(file, environ={})
    except ConfigError as exc:  # the feed schema may want more; but not the size check
        assert not any("expands" in p for p in exc.problems), exc.problems
    else:
        assert len(settings_.feeds) == 300
