"""The ``event_loop`` setting: which loop the daemon runs on, and what a missing uvloop does."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from broadcaster import eventloop
from broadcaster.cli.main import app


async def _which() -> str:
    return eventloop.loop_name()


def test_uvloop_runs_on_uvloop() -> None:
    pytest.importorskip("uvloop")
    assert eventloop.run(_which(), "uvloop") == "uvloop"


def test_asyncio_runs_on_the_standard_loop() -> None:
    assert eventloop.run(_which(), "asyncio") == "asyncio"
    assert eventloop.loop_factory("asyncio") is None


def test_without_uvloop_asyncio_still_runs_and_uvloop_refuses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop raises ImportError
    assert eventloop.run(_which(), "asyncio") == "asyncio"
    with pytest.raises(eventloop.EventLoopError, match="uvloop is not installed"):
        eventloop.run(_which(), "uvloop")


def test_the_daemon_refuses_to_start_on_a_missing_uvloop_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)
    config = tmp_path / "config.yaml"
    config.write_text(
        f"database:\n  url: sqlite+aiosqlite:///{tmp_path / 'store.db'}\n"
        "http:\n  enabled: false\nevent_loop: uvloop\n",
        encoding="utf-8",
    )
    result = CliRunner().invoke(app, ["run", "--config", str(config)])
    assert result.exit_code == 2, result.output
    assert "but uvloop is not installed" in result.output


def test_an_unknown_event_loop_is_a_located_config_error(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("event_loop: trio\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["run", "--config", str(config)])
    assert result.exit_code == 2
    assert "config.yaml:1:13: event_loop: Input should be 'asyncio' or 'uvloop'" in result.output


def test_the_running_loop_is_named() -> None:
    loop = asyncio.new_event_loop()
    try:
        assert eventloop.loop_name(loop) == "asyncio"
    finally:
        loop.close()


def test_the_default_is_uvloop_wherever_it_is_a_dependency() -> None:
    """uvloop is the default (docs/performance.md, eighth round), but on Windows, where the
    package does not exist and pyproject.toml does not ask for it."""
    from broadcaster.config.settings import Settings

    expected = "asyncio" if sys.platform == "win32" else "uvloop"
    assert expected == eventloop.DEFAULT_EVENT_LOOP
    assert Settings().event_loop == expected


def test_a_config_without_event_loop_needs_uvloop_and_says_how_to_choose_asyncio(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With uvloop missing, a config that does not name a loop refuses as one naming uvloop
    does, and says how to choose asyncio instead: nothing falls back silently."""
    if sys.platform == "win32":
        pytest.skip("the default is asyncio on Windows")
    monkeypatch.setitem(sys.modules, "uvloop", None)
    config = tmp_path / "config.yaml"
    config.write_text(
        f"database:\n  url: sqlite+aiosqlite:///{tmp_path / 'store.db'}\nhttp:\n  enabled: false\n",
        encoding="utf-8",
    )
    result = CliRunner().invoke(app, ["run", "--config", str(config)])
    assert result.exit_code == 2, result.output
    assert "or set event_loop: asyncio" in result.output
