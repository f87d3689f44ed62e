"""The staff console in a real browser: headless Chromium (Playwright) against ``broadcaster
run`` as a process. Sign in, declare, watch deliveries arrive on the incident page without
reloading it, complete the forced follow-up, and keep a screenshot.

Uses Debian's Chromium at /usr/bin/chromium; never downloads a browser. Set
``BROADCASTER_SCREENSHOT_DIR`` (e.g. ``tests/e2e/artifacts``) to keep the screenshot.
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import pytest

from broadcaster.access import credentials
from broadcaster.clock import RealClock
from broadcaster.customers.importer import import_customers
from broadcaster.devsmtp import SmtpSink
from broadcaster.store import Database
from broadcaster.store.migrate import upgrade_async
from tests.e2e.harness import Daemon, query, wait_until, write_config

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "a console password for ann"
TIMEOUT_MS = 15_000

RULES = """\
version: 1
policies:
  default:
    steps:
      - after: 0m
        every: 10m
        channels: [email]
rules:
  - name: vip-call
    match:
      incident:
        severity: critical
      customer:
        tier: vip
    followup:
      kind: call
      owner: staff:ann
      deadline: 2h
    continue: true
  - name: default-policy
    policy: default
"""


async def _prepare(folder: Path, customers: Path) -> int:
    """The store, its customers and ann's console account, as the CLI would make them."""
    url = f"sqlite+aiosqlite:///{folder / 'store.db'}"
    await upgrade_async(url)
    database = Database(url)
    try:
        result = await import_customers(database, customers, clock=RealClock())
        await credentials.set_account(
            database, RealClock(), name="ann", role="operator", password=PASSWORD
        )
    finally:
        await database.dispose()
    return result.imported


def _setup(folder: Path, smtp_port: int) -> Path:
    rules = folder / "rules.yaml"
    rules.write_text(RULES, encoding="utf-8")
    extra = f"""
staff:
  people:
    ann: {{name: Ann Visser}}
rules:
  path: {rules}
"""
    config = write_config(folder, smtp_port, cadence="10m", extra=extra)
    customers = folder / "customers.csv"
    customers.write_text(
        "id,name,language,timezone,email,components,tier\n"
        "C1,Vera Vip,en,Europe/Amsterdam,vera@example.org,payments,vip\n"
        "C2,Sam Standard,en,Europe/Amsterdam,sam@example.org,payments,standard\n"
        "C3,Noor Standard,en,Europe/Amsterdam,noor@example.org,payments,standard\n"
        "C4,Otto Other,en,Europe/Amsterdam,otto@example.org,mobile-app,standard\n",
        encoding="utf-8",
    )
    assert asyncio.run(_prepare(folder, customers)) == 4
    return config


def _port(daemon: Daemon) -> int:
    pattern = re.compile(r'"address": "127\.0\.0\.1:(\d+)"')
    wait_until(lambda: pattern.search(daemon.log()) is not None, 10, "http listening")
    found = pattern.search(daemon.log())
    assert found is not None
    return int(found.group(1))


def test_console_in_a_browser(tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (CI does)")
    sync_api = pytest.importorskip("playwright.sync_api")
    expect = sync_api.expect

    with SmtpSink() as sink:
        config = _setup(tmp_path, sink.port)
        daemon = Daemon(config, tmp_path / "daemon.log").start()
        try:
            base = f"http://127.0.0.1:{_port(daemon)}"
            problems: list[str] = []
            with sync_api.sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
                )
                try:
                    context = browser.new_context(viewport={"width": 1280, "height": 1000})
                    page = context.new_page()
                    page.set_default_timeout(TIMEOUT_MS)
                    page.on(
                        "console",
                        lambda m: (
                            problems.append(f"{m.location.get('url')}: {m.text}")
                            if m.type == "error"
                            and "/console/login" not in m.location.get("url", "")
                            else None
                        ),
                    )
                    page.on("pageerror", lambda exc: problems.append(str(exc)))

                    # Signed out: the console sends us to the login.
                    page.goto(f"{base}/console/followups")
                    expect(page).to_have_url(re.compile(r"/console/login\?next=/console/followups"))
                    page.get_by_label("Name").fill("ann")
                    page.get_by_label("Password").fill("not the password")
                    page.get_by_role("button", name="Sign in").click()
                    expect(page.get_by_role("alert")).to_have_text("Wrong name or password.")
                    page.get_by_label("Password").fill(PASSWORD)
                    page.get_by_role("button", name="Sign in").click()
                    expect(page).to_have_url(re.compile(r"/console/followups$"))

                    # Declare.
                    page.get_by_role("link", name="Declare", exact=True).click()
                    page.get_by_label("Title").fill("Card payments failing")
                    page.get_by_label("Severity").select_option("critical")
                    page.get_by_label("Message to customers").fill(
                        "Card payments fail; we are investigating."
                    )
                    page.get_by_label("Components").fill("payments")
                    page.get_by_role("button", name="Declare and send round 1").click()
                    expect(page).to_have_url(re.compile(r"/console/incidents/\d+\?ok=declared"))
                    found = re.search(r"/console/incidents/(\d+)", page.url)
                    assert found is not None
                    incident_id = int(found.group(1))

                    # Round 1 reaches the three affected customers; the chart shows it.
                    email_bar = page.locator('#live g[data-channel="email"]')
                    expect(email_bar).to_have_attribute("data-sent", "3")
                    wait_until(lambda: len(sink.messages) == 3, 10, "round 1 mail")

                    # An update posted from a second tab: this one refreshes itself.
                    page.evaluate("window.__same_page = true")
                    other = context.new_page()
                    other.goto(f"{base}/console/incidents/{incident_id}")
                    other.get_by_text("Post an update").click()
                    form = other.locator("#update-form")
                    form.get_by_label("Message to customers").fill("A fix is being rolled out.")
                    form.get_by_label("Status").select_option("identified")
                    form.get_by_role("button", name="Send update now").click()
                    expect(other.locator(".notice")).to_contain_text("Update posted")
                    other.close()
                    expect(email_bar).to_have_attribute("data-sent", "6")
                    expect(page.locator("#incident-status")).to_have_text("identified")
                    expect(page.locator("#live ol.timeline")).to_contain_text(
                        "A fix is being rolled out."
                    )
                    expect(page.locator("#live")).to_contain_text("Follow-ups (1 open)")
                    assert page.evaluate("window.__same_page === true")
                    wait_until(lambda: len(sink.messages) == 6, 10, "round 2 mail")

                    # The forced follow-up for the VIP customer: claim it, then record it.
                    page.get_by_role("link", name="Follow-ups", exact=True).click()
                    row = page.locator("tr[data-followup]")
                    expect(row).to_have_count(1)
                    expect(row).to_contain_text("C1")
                    row.get_by_role("button", name="Claim").click()
                    expect(page.locator(".notice")).to_have_text("Follow-up claimed: it is yours.")
                    row = page.locator("tr[data-followup]")
                    expect(row).to_have_attribute("data-state", "claimed")
                    row.get_by_label("outcome").select_option("reached")
                    row.get_by_label("note").fill("Called Vera; she will pay by transfer.")
                    row.get_by_role("button", name="Done").click()
                    expect(page.locator(".notice")).to_have_text("Follow-up recorded as done.")
                    expect(page.locator("tr[data-followup]")).to_have_count(0)

                    page.goto(f"{base}/console/incidents/{incident_id}")
                    expect(page.locator("#live")).to_contain_text("Called Vera")
                    shot = tmp_path / "console-incident.png"
                    page.screenshot(path=str(shot), full_page=True)
                    keep = os.environ.get("BROADCASTER_SCREENSHOT_DIR")
                    if keep:
                        Path(keep).mkdir(parents=True, exist_ok=True)
                        (Path(keep) / shot.name).write_bytes(shot.read_bytes())
                finally:
                    browser.close()
            assert shot.stat().st_size > 10_000
            assert problems == [], problems
        finally:
            assert daemon.stop() == 0

    tasks = query(
        tmp_path / "store.db", "SELECT customer_id, state, outcome, closed_by FROM followups"
    )
    assert tasks == [("C1", "done", "reached", "ann")]
    audited = query(
        tmp_path / "store.db",
        "SELECT action, actor, outcome FROM audit_log WHERE actor = 'account:ann' ORDER BY id",
    )
    assert audited == [
        ("console.login", "account:ann", "refused"),
        ("console.login", "account:ann", "ok"),
        ("incident.declare", "account:ann", "ok"),
        ("incident.update", "account:ann", "ok"),
        ("followup.claim", "account:ann", "ok"),
        ("followup.done", "account:ann", "ok"),
    ]
