"""Running ``broadcaster`` as real processes: the CLI and the daemon, on a temporary config."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import IO

from broadcaster.devsmtp import ReceivedMail

PYTHON = sys.executable


def write_config(
    folder: Path, smtp_port: int, *, cadence: str, lease: str = "2s", extra: str = ""
) -> Path:
    config = folder / "config.yaml"
    config.write_text(
        f"""
database:
  url: sqlite+aiosqlite:///{folder / "store.db"}
schedule:
  sweep_interval: 200ms
  promise_grace: 1s
  round_lease: {lease}
  audience_batch: 7
  cadence: {{critical: {cadence}, major: {cadence}, minor: {cadence}}}
delivery:
  channels: [email]
  workers: 2
  batch_size: 5
  lease: {lease}
  poll_interval: 100ms
  backoff: {{initial: 200ms, maximum: 1s, jitter: 0.1}}
channels:
  email:
    type: email
    host: 127.0.0.1
    port: {smtp_port}
    security: none
    from: "Test Transit <service@example.org>"
    pool_size: 1
messages:
  organisation: Test Transit
http:
  port: 0
log:
  level: INFO
  format: json
{extra}
""",
        encoding="utf-8",
    )
    return config


def cli(config: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [PYTHON, "-m", "broadcaster", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "NO_COLOR": "1"},
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"broadcaster {' '.join(args)} exited {result.returncode}:\n"
            f"{result.stdout}\n{result.stderr}"
        )
    return result


class Daemon:
    """``broadcaster run`` as a child process, its log in a file."""

    def __init__(self, config: Path, log_path: Path) -> None:
        self.config = config
        self.log_path = log_path
        self._log: IO[str] | None = None
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> Daemon:
        self._log = self.log_path.open("a", encoding="utf-8")
        self.process = subprocess.Popen(
            [PYTHON, "-m", "broadcaster", "run", "--config", str(self.config)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        wait_until(lambda: "daemon started" in self.log_path.read_text(), 20, "daemon start")
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout=timeout)
        if self._log is not None:
            self._log.close()
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8")


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``condition`` until true; return seconds waited, or fail naming ``what``."""
    start = time.monotonic()
    deadline = start + timeout
    while time.monotonic() < deadline:
        if condition():
            return time.monotonic() - start
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def rounds_by_customer(mails: list[ReceivedMail]) -> dict[str, list[int]]:
    """recipient address -> round numbers received, in arrival order."""
    out: dict[str, list[int]] = {}
    for mail in mails:
        number = int(str(mail.message["X-Broadcaster-Round"]).split("/")[1])
        for rcpt in mail.recipients:
            out.setdefault(rcpt, []).append(number)
    return out


def duplicates(mails: list[ReceivedMail]) -> int:
    counts = Counter(
        (rcpt, str(mail.message["X-Broadcaster-Round"]))
        for mail in mails
        for rcpt in mail.recipients
    )
    return sum(n - 1 for n in counts.values() if n > 1)


def query(db_path: Path, sql: str, *params: object) -> list[tuple[object, ...]]:
    with sqlite3.connect(db_path, timeout=30) as conn:
        return list(conn.execute(sql, params))


def write_customers(path: Path, affected: int, unaffected: int) -> tuple[list[str], list[str]]:
    """A CSV of customers; returns (affected addresses, unaffected addresses)."""
    lines = ["id,name,language,timezone,email,components,regions"]
    hit, miss = [], []
    for n in range(affected):
        email = f"cust{n:03d}@example.org"
        sub = ("payments", "") if n % 3 else ("", "north")
        lines.append(f"C{n:03d},Customer {n},en,Europe/Amsterdam,{email},{sub[0]},{sub[1]}")
        hit.append(email)
    for n in range(unaffected):
        email = f"other{n:03d}@example.org"
        lines.append(f"U{n:03d},Other {n},nl,Europe/Amsterdam,{email},mobile-app,south")
        miss.append(email)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return hit, miss


__all__ = ["signal"]
