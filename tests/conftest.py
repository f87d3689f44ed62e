"""Shared fixtures: a fresh store per test, parametrised over SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Literal

import asyncpg
import pytest

from bench.pgbouncer import NOT_FOUND as PGBOUNCER_NOT_FOUND
from bench.pgbouncer import SERVER_SESSIONS as PGBOUNCER_SESSIONS
from bench.pgbouncer import Bouncer
from bench.pgbouncer import binary as pgbouncer_binary
from broadcaster.store import Database
from broadcaster.store.migrate import upgrade_async
from channels import http_transport

POSTGRES_ENV = "BROADCASTER_TEST_POSTGRES_URL"
SESSION_MODE_SESSIONS = 40
"""PgBouncer's server sessions in session mode: more than the clients of a test keep open."""
_EXIT_STATUS = pytest.StashKey[int]()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[_EXIT_STATUS] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Last of all: a session whose tests started pyreqwest's threads ends with its exit
    status without the interpreter's finalization, which those threads can abort
    (:func:`channels.http_transport.exit_now`)."""
    status = config.stash.get(_EXIT_STATUS, None)
    if status is not None:
        http_transport.exit_now(status)


REPO = Path(__file__).resolve().parents[1]


def _find_fixtures() -> Path:
    """``shared/fixtures`` beside the checkout; for a clone made elsewhere (a scratch CI
    run), beside the local repository it was cloned from; ``$BROADCASTER_FIXTURES`` wins."""
    explicit = os.environ.get("BROADCASTER_FIXTURES")
    if explicit:
        return Path(explicit)
    beside = REPO.parent / "shared" / "fixtures"
    if beside.is_dir():
        return beside
    origin = subprocess.run(
        ["git", "-C", str(REPO), "config", "--get", "remote.origin.url"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    if origin and Path(origin).is_dir():
        cloned_from = Path(origin).resolve().parent / "shared" / "fixtures"
        if cloned_from.is_dir():
            return cloned_from
    return beside


FIXTURES = _find_fixtures()


def postgres_admin_url() -> str | None:
    """The PostgreSQL URL the tests may use (asyncpg form), or None when not configured."""
    return os.environ.get(POSTGRES_ENV) or None


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test; dropped afterwards."""
    base = postgres_admin_url()
    if base is None:
        pytest.skip(f"PostgreSQL tests need {POSTGRES_ENV} (e.g. postgresql+asyncpg://...)")
    name = f"bc_test_{uuid.uuid4().hex[:12]}"
    admin = asyncpg_dsn(base)

    async def create() -> None:
        try:
            conn = await asyncpg.connect(admin, timeout=5)
        except (OSError, asyncpg.PostgresError) as exc:
            if os.environ.get("CI"):  # CI sets the URL on purpose: a skip would hide a failure
                pytest.fail(f"PostgreSQL at {POSTGRES_ENV} is not reachable: {exc}")
            pytest.skip(f"PostgreSQL at {POSTGRES_ENV} is not reachable: {exc}")
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    async def drop() -> None:
        conn = await asyncpg.connect(admin, timeout=5)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(create())
    head, _, _ = base.rpartition("/")
    try:
        yield f"{head}/{name}"
    finally:
        asyncio.run(drop())


def asyncpg_dsn(url: str) -> str:
    """A SQLAlchemy ``postgresql+asyncpg://`` URL as asyncpg's own ``connect`` takes it."""
    return url.replace("postgresql+asyncpg://", "postgresql://")


def require_pgbouncer() -> None:
    """Skip (fail in CI, which installs it) where Debian's pgbouncer is missing."""
    if pgbouncer_binary() is None:
        if os.environ.get("CI"):  # CI installs it: a skip would hide a failure
            pytest.fail(PGBOUNCER_NOT_FOUND)
        pytest.skip(PGBOUNCER_NOT_FOUND)


@pytest.fixture
def pgbouncer(postgres_url: str, request: pytest.FixtureRequest) -> Iterator[Bouncer]:
    """A PgBouncer in front of ``postgres_url``'s database (``.url`` through it, ``.direct``
    past it), in transaction pooling mode, or in the mode a test's indirect parameter
    names; see :mod:`bench.pgbouncer`."""
    require_pgbouncer()
    mode: Literal["transaction", "session"] = getattr(request, "param", "transaction")
    # In session mode a client holds its server session while it is connected: the pool
    # must hold every connection the test's clients keep open, or they wait for ever.
    sessions = SESSION_MODE_SESSIONS if mode == "session" else PGBOUNCER_SESSIONS
    bouncer = Bouncer(postgres_url, mode=mode, sessions=sessions).start()
    try:
        yield bouncer
    finally:
        bouncer.remove()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty store, once per backend."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
async def database(store_url: str) -> AsyncIterator[Database]:
    """A migrated, empty store on each backend; asserts no connection is left checked out."""
    await upgrade_async(store_url)
    db = Database(store_url)
    try:
        yield db
    finally:
        pool = db.engine.pool
        checked_out = getattr(pool, "checkedout", lambda: 0)()
        await db.dispose()
        assert checked_out == 0, f"{checked_out} database connection(s) leaked"
