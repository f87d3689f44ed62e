"""SQLite on a disk that fills up or turns read-only under the daemon: a clear error in the
log, the daemon keeps running, the store stays intact (``PRAGMA integrity_check``), and the
work resumes by itself when the condition clears.

The store lives on a small tmpfs the test mounts (root only; skipped otherwise). A full disk
is a filler file taking the last free byte.
"""

from __future__ import annotations

import contextlib
import gc
import os
import re
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from broadcaster.devsmtp import SmtpSink
from tests.e2e.harness import Daemon, cli, wait_until, write_config, write_customers

pytestmark = pytest.mark.e2e

CUSTOMERS = 30


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, check=False)


@pytest.fixture
def small_disk() -> Iterator[Path]:
    """A 16 MB tmpfs of our own."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    folder = Path(tempfile.mkdtemp(prefix="bc-disk-", dir="/tmp"))
    mounted = _mount("-t", "tmpfs", "-o", "size=16m,mode=0755", "tmpfs", str(folder))
    if mounted.returncode != 0:
        folder.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        _mount("-o", "remount,rw", str(folder))
        gc.collect()
        for _ in range(50):
            if subprocess.run(["umount", str(folder)], check=False).returncode == 0:
                break
            time.sleep(0.1)
        else:
            subprocess.run(["umount", "-l", str(folder)], check=False)
        with contextlib.suppress(OSError):
            folder.rmdir()


def _fill(folder: Path) -> Path:
    """Take every free byte of the disk (unbuffered writes, smaller and smaller); returns
    the filler file."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for size in (1 << 16, 4096, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    return filler


def query(db: Path, sql: str, *params: object) -> list[tuple[object, ...]]:
    """Like the harness's, but closing the connection (a leftover one keeps the mount busy)."""
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn:
        return list(conn.execute(sql, params))


def _integrity(db: Path) -> str:
    return str(query(db, "PRAGMA integrity_check")[0][0])


def _round_sent(db: Path, number: int) -> bool:
    try:
        rows = query(
            db,
            "select d.state, count(*) from deliveries d join rounds r on r.id = d.round_id "
            "where r.number = ? group by d.state",
            number,
        )
    except sqlite3.Error:
        return False
    return rows == [("sent", CUSTOMERS)]


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
        "--region",
        "north",
        "--message",
        "Card payments fail.",
    )
    return int(re.findall(r"declared incident (\d+)", result.stdout)[0])


def _setup(folder: Path, store: Path, sink: SmtpSink, cadence: str) -> Path:
    config = write_config(folder, sink.port, cadence=cadence)
    text = re.sub(r"url: sqlite\S+", f"url: sqlite+aiosqlite:///{store}", config.read_text())
    config.write_text(text, encoding="utf-8")
    write_customers(folder / "customers.csv", CUSTOMERS, 0)
    cli(config, "db", "upgrade")
    cli(config, "customers", "import", str(folder / "customers.csv"))
    return config


def test_full_disk_then_space_returns(tmp_path: Path, small_disk: Path) -> None:
    db = small_disk / "store.db"
    with SmtpSink() as sink:
        config = _setup(tmp_path, db, sink, cadence="2s")
        daemon = Daemon(config, tmp_path / "daemon.log").start()
        try:
            incident = _declare(config)
            wait_until(lambda: _round_sent(db, 1), 20, "round 1 sent")
            filler = _fill(small_disk)
            full_at = len(sink.messages)
            wait_until(lambda: "full" in daemon.log(), 20, "the daemon to notice the full disk")
            time.sleep(3)  # more rounds fall due meanwhile; nothing can be written
            assert daemon.process is not None and daemon.process.poll() is None, daemon.log()
            assert _integrity(db) == "ok"
            stuck = len(sink.messages)
            filler.unlink()  # space returns
            last = int(str(query(db, "select max(number) from rounds")[0][0]))
            wait_until(lambda: _round_sent(db, last + 1), 30, "a round after space returned")
            cli(config, "incident", "resolve", str(incident), "--message", "Fixed.")
            final = int(
                str(query(db, "select max(number) from rounds where kind = 'resolution'")[0][0])
            )
            wait_until(lambda: _round_sent(db, final), 30, "the resolution")
        finally:
            code = daemon.stop()
        assert code == 0, daemon.log()[-3000:]
    assert _integrity(db) == "ok"
    log = daemon.log()
    full_lines = [line for line in log.splitlines() if "database or disk is full" in line]
    assert full_lines, "no clear 'disk is full' error in the log"
    states = query(db, "select state, count(*) from deliveries group by state")
    assert states == [("sent", final * CUSTOMERS)] or states == [
        ("sent", len(states) and states[0][1])
    ]
    print(
        f"\ndisk full after {full_at} mails ({stuck} by the time space returned); "
        f"{len(full_lines)} 'disk is full' log lines; {final} rounds, all sent; integrity ok"
    )
