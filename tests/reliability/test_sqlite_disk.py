"""SQLite on a disk that fills up or turns read-only under the daemon: a clear error in the
log, the daemon keeps running, the store stays intact (``PRAGMA integrity_check``), and the
work resumes by itself when the condition clears.

The store lives on a small tmpfs the test mounts (root only; skipped otherwise). A full disk
is a filler file taking the last free byte. A read-only disk is an ext4 file system on a loop
device that the kernel remounts read-only after an error (``trigger_fs_error``), as a failing
disk does; Linux refuses to remount a file system read-only by hand while SQLite holds a
file open for writing.
"""

from __future__ import annotations

import contextlib
import gc
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
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


@pytest.fixture
def ext4_disk() -> Iterator[tuple[Path, str]]:
    """A 32 MB ext4 on a loop device, mounted with ``errors=remount-ro``: (mount, device)."""
    if os.geteuid() != 0:
        pytest.skip("a loop-mounted file system needs root")
    folder = Path(tempfile.mkdtemp(prefix="bc-ext4-", dir="/tmp"))
    image, mount = folder / "disk.img", folder / "mnt"
    mount.mkdir()
    with image.open("wb") as fh:
        fh.truncate(32 << 20)
    made = subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], capture_output=True, check=False)
    attach = subprocess.run(
        ["losetup", "-f", "--show", str(image)], capture_output=True, text=True, check=False
    )
    device = attach.stdout.strip()
    if made.returncode != 0 or attach.returncode != 0 or not device:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip("no loop device or mkfs.ext4 here")
    try:
        if _mount("-o", "errors=remount-ro", device, str(mount)).returncode != 0:
            pytest.skip("cannot mount a loop device here")
        trigger = Path("/sys/fs/ext4") / Path(device).name / "trigger_fs_error"
        if not trigger.exists():
            pytest.skip("this kernel cannot trigger an ext4 error")
        yield mount, device
    finally:
        gc.collect()
        if subprocess.run(["umount", str(mount)], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", str(mount)], check=False)
        subprocess.run(["losetup", "-d", device], check=False)
        shutil.rmtree(folder, ignore_errors=True)


def test_disk_turns_read_only_under_the_daemon(tmp_path: Path, ext4_disk: tuple[Path, str]) -> None:
    """The file system hits an error and the kernel remounts it read-only (as ext4 does with
    ``errors=remount-ro``) while the daemon writes. The daemon must keep running and say
    why it cannot write; after the disk is checked and mounted again (which needs the daemon
    stopped: it holds the files), a restart sends everything that fell due, once."""
    mount, device = ext4_disk
    db = mount / "store.db"
    with SmtpSink() as sink:
        config = _setup(tmp_path, db, sink, cadence="2s")
        log_path = tmp_path / "daemon.log"
        daemon = Daemon(config, log_path).start()
        try:
            incident = _declare(config)
            wait_until(lambda: _round_sent(db, 1), 20, "round 1 sent")
            trigger = Path("/sys/fs/ext4") / Path(device).name / "trigger_fs_error"
            trigger.write_text("1")
            wait_until(
                lambda: "disk I/O error" in daemon.log() or "readonly" in daemon.log(),
                20,
                "the daemon to report that it cannot write",
            )
            time.sleep(3)  # rounds fall due; nothing can be written
            assert daemon.process is not None and daemon.process.poll() is None, daemon.log()
            before = len(sink.messages)
        finally:
            code = daemon.stop()
        assert code == 0, daemon.log()[-3000:]

        gc.collect()
        assert subprocess.run(["umount", str(mount)], check=False).returncode == 0
        subprocess.run(["e2fsck", "-fy", device], capture_output=True, check=False)
        assert _mount(device, str(mount)).returncode == 0
        assert _integrity(db) == "ok"
        # Committed is committed: with synchronous=NORMAL the WAL was not synced at each
        # commit, and the kernel dropped its unwritten pages with the error: the incident,
        # its round and their deliveries were gone after the repair.
        assert _round_sent(db, 1), "rows committed before the disk failed were lost"

        daemon = Daemon(config, tmp_path / "daemon-after.log").start()
        try:
            last = int(str(query(db, "select max(number) from rounds")[0][0]))
            wait_until(lambda: _round_sent(db, last + 1), 30, "rounds after the repair")
            cli(config, "incident", "resolve", str(incident), "--message", "Fixed.")
            final = int(
                str(query(db, "select max(number) from rounds where kind = 'resolution'")[0][0])
            )
            wait_until(lambda: _round_sent(db, final), 30, "the resolution")
        finally:
            assert daemon.stop() == 0, daemon.log()[-3000:]
    assert _integrity(db) == "ok"
    dispatched = int(str(query(db, "select count(*) from rounds where state = 'dispatched'")[0][0]))
    assert query(db, "select state, count(*) from deliveries group by state") == [
        ("sent", dispatched * CUSTOMERS)
    ]
    counts = Counter(
        (rcpt, str(m.message["X-Broadcaster-Round"]))
        for m in sink.messages
        for rcpt in m.recipients
    )
    repeats = sum(n - 1 for n in counts.values())
    errors = [line for line in log_path.read_text().splitlines() if "disk I/O error" in line]
    print(
        f"\nread-only after {before} mails; {len(errors)} log lines name the I/O error; "
        f"{dispatched} rounds sent after the repair and restart; repeats {repeats}; integrity ok"
    )
    assert repeats <= 2 * 5


def test_read_only_at_start_is_one_clear_line_then_a_restart_works(
    tmp_path: Path, small_disk: Path
) -> None:
    """The disk is read-only when the daemon starts (it came back so after a reboot, say):
    ``broadcaster run`` stops with exit code 2 and one line naming the store, no traceback.
    Once the disk is writable again, the next start sends what is due."""
    db = small_disk / "store.db"
    with SmtpSink() as sink:
        config = _setup(tmp_path, db, sink, cadence="1h")
        _declare(config)  # round 1 is due; nothing sent yet
        gc.collect()
        assert _mount("-o", "remount,ro", str(small_disk)).returncode == 0
        started = subprocess.run(
            [sys.executable, "-m", "broadcaster", "run", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert started.returncode == 2, started.stdout + started.stderr
        output = started.stdout + started.stderr
        assert "Traceback" not in output, output
        assert f"cannot open the store sqlite+aiosqlite:///{db}" in output, output
        assert _mount("-o", "remount,rw", str(small_disk)).returncode == 0
        daemon = Daemon(config, tmp_path / "daemon.log").start()
        try:
            wait_until(lambda: _round_sent(db, 1), 20, "round 1 once the disk is writable")
        finally:
            assert daemon.stop() == 0
    assert len(sink.messages) == CUSTOMERS
    assert _integrity(db) == "ok"
    print(f"\nread-only at start: exit 2, {output.strip().splitlines()[-1]!r}")
