"""A private PostgreSQL cluster for one test: initdb in a temporary folder, on a free port.

Restarting it disturbs nobody else's database. The server binaries come from the Debian
packages (``/usr/lib/postgresql/<version>/bin``); when the tests run as root, the cluster
runs as the ``postgres`` user (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.fakes.http import free_port


def server_bin() -> Path | None:
    """The newest installed ``bin`` folder holding ``initdb`` and ``pg_ctl``, if any."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    for pg_ctl in reversed(found):
        if (pg_ctl.parent / "initdb").exists():
            return pg_ctl.parent
    return None


def why_not() -> str | None:
    """Why a private cluster cannot be started here, or None when it can."""
    if server_bin() is None:
        return "PostgreSQL server binaries (initdb, pg_ctl) are not installed"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run the server"
        if shutil.which("runuser") is None:
            return "running as root without runuser"
    return None


class Cluster:
    def __init__(self, folder: Path, bindir: Path, port: int) -> None:
        self.folder = folder
        self.data = folder / "data"
        self.bindir = bindir
        self.port = port
        self.log = folder / "server.log"

    @property
    def url(self) -> str:
        """asyncpg URL of the ``broadcaster`` database."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/broadcaster"

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        command = [str(self.bindir / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, check=True, cwd=self.folder
        )

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8")
        with (self.data / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write(
                f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.folder}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "max_connections = 50\nshared_buffers = 32MB\n"
            )

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "30", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")

    def create_database(self) -> None:
        self._run(
            "psql",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-c",
            "CREATE DATABASE broadcaster",
        )

    def sql(self, statement: str) -> str:
        """Run one statement with psql; the unaligned output, without headers."""
        return self._run(
            "psql",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            "broadcaster",
            "-At",
            "-c",
            statement,
        ).stdout.strip()


@contextlib.contextmanager
def private_cluster() -> Iterator[Cluster]:
    bindir = server_bin()
    assert bindir is not None
    folder = Path(tempfile.mkdtemp(prefix="bc-pg-", dir="/tmp"))
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        os.chown(folder, entry.pw_uid, entry.pw_gid)
    folder.chmod(0o755)
    cluster = Cluster(folder, bindir, free_port())
    try:
        cluster.init()
        cluster.start()
        cluster.create_database()
        yield cluster
    finally:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            cluster.stop("immediate")
        shutil.rmtree(folder, ignore_errors=True)
