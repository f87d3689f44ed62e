"""The public incident page in a real browser (headless Chromium, Playwright) against
``broadcaster run``: its script, allowed by the page's Content-Security-Policy, shows every
time in the reader's time zone with the zone's name; the UTC time stays in the title.

Uses Debian's Chromium at /usr/bin/chromium; never downloads a browser."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from broadcaster.devsmtp import SmtpSink
from tests.e2e.harness import Daemon, cli, write_config
from tests.e2e.test_browser import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS, _port

pytestmark = pytest.mark.e2e

ZONE_NAME = r"(?:[A-Z]{3,5}|GMT[+-]\d{1,2}(?::\d\d)? \({zone}\))"
"""What the page calls a zone: Intl's short name (``CET``, ``EST``), or where that is only an
offset, the offset and the zone (``GMT+1 (Europe/Amsterdam)``)."""


def _declare(config: Path) -> int:
    result = cli(
        config,
        "incident",
        "declare",
        "--title",
        "Card payments failing",
        "--severity",
        "critical",
        "--component",
        "payments",
        "--message",
        "Card payments fail; we are investigating.",
    )
    found = re.search(r"declared incident (\d+)", result.stdout)
    assert found, result.stdout
    return int(found.group(1))


def test_the_incident_page_shows_times_in_the_readers_zone(tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (CI does)")
    sync_api = pytest.importorskip("playwright.sync_api")

    with SmtpSink() as sink:
        config = write_config(tmp_path, sink.port, cadence="10m")
        cli(config, "db", "upgrade")
        daemon = Daemon(config, tmp_path / "daemon.log").start()
        try:
            base = f"http://127.0.0.1:{_port(daemon)}"
            incident_id = _declare(config)
            problems: list[str] = []
            seen: dict[str, list[tuple[str, str, str]]] = {}
            with sync_api.sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
                )
                try:
                    for zone, query in (("Europe/Amsterdam", ""), ("America/New_York", "?lang=nl")):
                        context = browser.new_context(timezone_id=zone)
                        page = context.new_page()
                        page.set_default_timeout(TIMEOUT_MS)
                        page.on("console", lambda m: problems.append(m.text))
                        page.on("pageerror", lambda exc: problems.append(str(exc)))
                        page.goto(f"{base}/incidents/{incident_id}{query}")
                        times = page.locator("time[data-local]")
                        sync_api.expect(times.first).not_to_have_text(re.compile(r"UTC$"))
                        seen[zone] = [
                            (
                                times.nth(i).get_attribute("datetime") or "",
                                times.nth(i).inner_text(),
                                times.nth(i).get_attribute("title") or "",
                            )
                            for i in range(times.count())
                        ]
                        context.close()
                finally:
                    browser.close()
        finally:
            assert daemon.stop() == 0

    assert problems == [], problems  # a script the CSP blocked would be reported here
    for zone, times in seen.items():
        assert len(times) == 2, (zone, times)  # the timeline entry and the next update
        for instant, text, title in times:
            when = datetime.fromisoformat(instant)
            local = when.astimezone(ZoneInfo(zone))
            name = ZONE_NAME.replace("{zone}", re.escape(zone))
            assert re.fullmatch(f"{local:%Y-%m-%d %H:%M} {name}", text), (zone, text)
            assert title == f"{when:%Y-%m-%d %H:%M} UTC"
