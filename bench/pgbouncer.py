"""A real PgBouncer (transaction pooling mode unless told otherwise) in front of one
PostgreSQL database: for the pooler tests (``database.pooler``) and ``python -m bench
fanout --pgbouncer``.

Debian's ``pgbouncer`` package (CI installs it). PgBouncer will not run as root: as root it
is started as ``nobody``, its files in a folder of its own under the system's temporary
folder. Its pool is small (:data:`SERVER_SESSIONS` server sessions for the database, unless
told otherwise), so that clients share server sessions, as they do in production.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from sqlalchemy import make_url

SERVER_SESSIONS = 3
"""PgBouncer's ``default_pool_size``: server sessions per database and user."""

NOT_FOUND = "PgBouncer is not installed: Debian's pgbouncer package (CI installs it)"


def binary() -> str | None:
    """The pgbouncer executable (``/usr/sbin`` is not on every PATH)."""
    return shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/bin")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Bouncer:
    """A PgBouncer for the database of ``direct`` (an asyncpg URL straight to PostgreSQL)."""

    direct: str
    sessions: int = SERVER_SESSIONS
    """``default_pool_size``: server sessions for the database."""
    mode: Literal["transaction", "session"] = "transaction"
    """``pool_mode``: ``transaction`` or ``session``."""
    folder: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="pgbouncer-")))
    port: int = field(default_factory=_free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The same database, through the pooler."""
        return (
            make_url(self.direct)
            .set(host="127.0.0.1", port=self.port)
            .render_as_string(hide_password=False)
        )

    @property
    def pid(self) -> int | None:
        """PgBouncer's process, while it runs."""
        return self.process.pid if self.process is not None else None

    def start(self) -> Bouncer:
        executable = binary()
        if executable is None:
            raise FileNotFoundError(NOT_FOUND)
        server = make_url(self.direct)
        user = server.username or "postgres"
        self.folder.chmod(0o777)  # PgBouncer runs as nobody when we are root
        (self.folder / "users.txt").write_text(f'"{user}" ""\n', encoding="utf-8")
        config = self.folder / "pgbouncer.ini"
        config.write_text(
            f"""[databases]
* = host={server.host or "127.0.0.1"} port={server.port or 5432}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = trust
auth_file = {self.folder / "users.txt"}
pool_mode = {self.mode}
default_pool_size = {self.sessions}
max_client_conn = 500
logfile = {self.folder / "pgbouncer.log"}
""",
            encoding="utf-8",
        )
        command = [executable, str(config)]
        if os.geteuid() == 0:
            command[1:1] = ["-u", "nobody"]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"PgBouncer did not start: {self.log()}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def log(self) -> str:
        path = self.folder / "pgbouncer.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)
