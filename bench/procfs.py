"""CPU seconds of other processes on this host, from Linux's ``/proc``: the sink process's,
and a local PostgreSQL server's (every connection's, so other clients of the same server
during the run count too). None where they cannot be read (not Linux, another host)."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import func, select

from broadcaster.store import Database


def proc_stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name (Linux), or None."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of a running process so far (Linux ``/proc``)."""
    fields = None if pid is None else proc_stat(pid)
    if fields is None:
        return None
    return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 2)


def server_cpu_seconds(postmaster: int | None) -> float | None:
    """CPU seconds of a PostgreSQL server on this host so far: the postmaster's own, its
    ended children's (reaped: counted in its ``cutime``/``cstime``) and its live
    children's, so that connections closed during the run still count. None when the
    server's processes cannot be read (another host, another user)."""
    if postmaster is None:
        return None
    own = proc_stat(postmaster)
    if own is None:
        return None
    ticks = sum(int(own[i]) for i in (11, 12, 13, 14))
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            child = proc_stat(int(entry.name))
            if child is not None and child[1] == str(postmaster):
                ticks += int(child[11]) + int(child[12])
    return round(ticks / os.sysconf("SC_CLK_TCK"), 2)


async def postmaster_pid(database: Database) -> int | None:
    """The postmaster's pid: the parent of the server process that serves our connection,
    when that is a PostgreSQL process on this host (else None: a remote server's pid may
    be some other local process's)."""
    async with database.session() as session:
        backend = int((await session.execute(select(func.pg_backend_pid()))).scalar_one())
    return postgres_parent(backend)


def postgres_parent(pid: int) -> int | None:
    """The parent of ``pid`` if ``pid`` is a PostgreSQL process on this host, else None."""
    try:
        name = Path(f"/proc/{pid}/comm").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    fields = proc_stat(pid) if name.startswith("postgres") else None
    return None if fields is None else int(fields[1])


def thread_cpu_seconds() -> dict[str, float]:
    """This process's CPU seconds so far per thread (``/proc/self/task``, Linux; empty
    elsewhere): the main thread (the event loop's), the HTTP client's runtime threads by their
    own name, and Python's other threads (aiosqlite's, the default executor's), which keep the
    process's name, together; threads of the same name are summed."""
    ticks = os.sysconf("SC_CLK_TCK")
    seen: dict[str, float] = {}
    try:
        tasks = list(os.scandir("/proc/self/task"))
    except OSError:
        return seen
    main = str(os.getpid())
    for task in tasks:
        try:
            name = Path(task.path, "comm").read_text(encoding="utf-8", errors="replace").strip()
            if task.name == main:
                name = "main (event loop)"
            elif name.startswith("python"):  # Python's threads keep the process's name
                name = "other Python threads (SQLite, executor)"
            with open(Path(task.path, "stat"), encoding="ascii", errors="replace") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        seen[name] = seen.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return seen


def threads_per_delivery_us(
    before: dict[str, float], after: dict[str, float], deliveries: int
) -> dict[str, float]:
    """Each thread name's CPU between ``before`` and ``after``, per delivery, in µs (threads
    that used none left out; a thread that ended between the two readings is not counted)."""
    if not deliveries:
        return {}
    spent = {name: after[name] - before.get(name, 0.0) for name in after}
    return {
        name: round(seconds / deliveries * 1e6, 1)
        for name, seconds in sorted(spent.items(), key=lambda item: -item[1])
        if seconds > 0
    }
