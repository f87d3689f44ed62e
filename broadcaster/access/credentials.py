"""API tokens, console accounts (scrypt passwords) and console sessions, kept hashed.

Tokens and session ids are 256-bit random strings: a SHA-256 of them is enough to look
them up without keeping them. Passwords are low-entropy, so they get scrypt with a salt.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update

from broadcaster.access.roles import Role, check_role
from broadcaster.clock import Clock
from broadcaster.store import Account, ApiToken, ConsoleSession, Database

TOKEN_PREFIX = "bct_"  # noqa: S105 - a marker, not a secret
NAME_MAX = 64
"""The longest account name: the width of ``accounts.name``."""
SESSION_LIFETIME = timedelta(hours=12)
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


class CredentialError(ValueError):
    """A credential cannot be created or changed as asked."""


@dataclass(frozen=True)
class Principal:
    """Who is asking: the audit log's actor and the role that decides what they may do."""

    kind: str  # token | account | cli
    name: str
    role: Role
    csrf_token: str | None = None
    """Console sessions only: the token every state-changing form must echo."""
    token_id: int | None = None
    """API tokens only: the token's own row (two tokens may bear one name)."""

    @property
    def actor(self) -> str:
        return f"{self.kind}:{self.name}"

    @property
    def caller(self) -> str:
        """Who holds what this caller stores for itself (its idempotency keys): the token
        itself, not its name, which another token may bear; else :attr:`actor`."""
        return f"token#{self.token_id}" if self.token_id is not None else self.actor


def account_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be an account's name (None when it can): longer than the store's
    column, or holding a character that is not printable (control characters and line
    breaks, bidirectional overrides, invisible format characters), which would let a name
    forge or rewrite a line of the audit log where it is shown."""
    if len(name) > NAME_MAX:
        return f"at most {NAME_MAX} characters"
    if not name.isprintable():
        return "only printable characters (no control, line-break or bidi characters)"
    return None


def _role(value: str) -> Role:
    try:
        return check_role(value)
    except ValueError as exc:
        raise CredentialError(str(exc)) from None


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    key = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, key = stored.split("$")
        if scheme != "scrypt":
            return False
        computed = hashlib.scrypt(
            password.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p), dklen=32
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(computed, _unb64(key))


# A fixed hash to verify against when the account does not exist, so a login for an
# unknown name takes as long as one for a known name with a wrong password.
_DUMMY_HASH = hash_password(secrets.token_urlsafe(16))


# --- API tokens --------------------------------------------------------------------------


async def create_token(
    database: Database,
    clock: Clock,
    *,
    name: str,
    role: str,
    created_by: str = "",
    lifetime: timedelta | None = None,
) -> tuple[ApiToken, str]:
    """A new token; the secret is returned once and never stored."""
    checked = _role(role)
    if not name.strip():
        raise CredentialError("name: say who or what holds the token")
    if lifetime is not None and lifetime <= timedelta(0):
        raise CredentialError("expires: a token's lifetime must be more than 0s")
    now = clock.now()
    try:
        now + (lifetime or timedelta(0))
    except OverflowError:
        raise CredentialError("expires: that lifetime runs past the calendar's end") from None
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(
        name=name.strip(),
        role=checked,
        token_hash=digest(secret),
        prefix=secret[: len(TOKEN_PREFIX) + 6],
        created_at=now,
        created_by=created_by,
        expires_at=now + lifetime if lifetime is not None else None,
    )
    async with database.session() as session, session.begin():
        session.add(row)
    return row, secret


async def list_tokens(database: Database) -> list[ApiToken]:
    async with database.session() as session:
        return list((await session.execute(select(ApiToken).order_by(ApiToken.id))).scalars())


async def revoke_token(database: Database, clock: Clock, token_id: int) -> ApiToken:
    async with database.session() as session, session.begin():
        row = await session.get(ApiToken, token_id)
        if row is None:
            raise CredentialError(f"no token with id {token_id}")
        if row.revoked_at is None:
            row.revoked_at = clock.now()
        return row


async def authenticate_token(database: Database, clock: Clock, secret: str) -> Principal | None:
    """The principal of a valid, unrevoked, unexpired token; None otherwise."""
    if not secret.startswith(TOKEN_PREFIX):
        return None
    now = clock.now()
    async with database.session() as session, session.begin():
        row = (
            await session.execute(select(ApiToken).where(ApiToken.token_hash == digest(secret)))
        ).scalar_one_or_none()
        if row is None or row.revoked_at is not None:
            return None
        if row.expires_at is not None and row.expires_at <= now:
            return None
        # Recorded at most once a minute, so a busy client does not write on every call.
        if row.last_used_at is None or now - row.last_used_at > timedelta(minutes=1):
            row.last_used_at = now
        return Principal("token", row.name, check_role(row.role), token_id=row.id)


# --- Console accounts and sessions -------------------------------------------------------


async def set_account(
    database: Database, clock: Clock, *, name: str, role: str, password: str
) -> Account:
    """Create the account, or change its role and password (and enable it again)."""
    checked = _role(role)
    if not name.strip():
        raise CredentialError("name: the account's staff id must not be empty")
    if problem := account_name_problem(name):
        raise CredentialError(f"name: {problem}")
    if len(password) < 12:
        raise CredentialError("password: use at least 12 characters")
    async with database.session() as session, session.begin():
        account = await session.get(Account, name)
        if account is None:
            account = Account(name=name, created_at=clock.now())
            session.add(account)
        account.role = checked
        account.password_hash = hash_password(password)
        account.disabled_at = None
        # A new password (or role) ends every session of the old one.
        await session.execute(
            update(ConsoleSession)
            .where(ConsoleSession.account == name, ConsoleSession.expires_at > clock.now())
            .values(expires_at=clock.now())
        )
        return account


async def disable_account(database: Database, clock: Clock, name: str) -> None:
    """Disable the account and end its sessions."""
    async with database.session() as session, session.begin():
        account = await session.get(Account, name)
        if account is None:
            raise CredentialError(f"no account named {name!r}")
        account.disabled_at = clock.now()
        await session.execute(
            update(ConsoleSession)
            .where(ConsoleSession.account == name)
            .values(expires_at=clock.now())
        )


async def list_accounts(database: Database) -> list[Account]:
    async with database.session() as session:
        return list((await session.execute(select(Account).order_by(Account.name))).scalars())


async def login(
    database: Database, clock: Clock, name: str, password: str, source: str = ""
) -> tuple[str, Principal] | None:
    """A new session (its cookie value and principal) when the password matches."""
    async with database.session() as session:
        account = await session.get(Account, name)
    stored = account.password_hash if account is not None else _DUMMY_HASH
    ok = await asyncio.to_thread(verify_password, password, stored)  # scrypt: ~50 ms of CPU
    if account is None or account.disabled_at is not None or not ok:
        return None
    session_id = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(32)
    now = clock.now()
    async with database.session() as session, session.begin():
        await session.execute(delete(ConsoleSession).where(ConsoleSession.expires_at <= now))
        session.add(
            ConsoleSession(
                id_hash=digest(session_id),
                account=name,
                csrf_token=csrf,
                created_at=now,
                expires_at=now + SESSION_LIFETIME,
                source=source[:100],
            )
        )
    return session_id, Principal("account", name, check_role(account.role), csrf)


async def session_principal(database: Database, clock: Clock, session_id: str) -> Principal | None:
    async with database.session() as session:
        row = await session.get(ConsoleSession, digest(session_id))
        if row is None or row.expires_at <= clock.now():
            return None
        account = await session.get(Account, row.account)
        if account is None or account.disabled_at is not None:
            return None
        return Principal("account", account.name, check_role(account.role), row.csrf_token)


async def logout(database: Database, clock: Clock, session_id: str) -> None:
    async with database.session() as session, session.begin():
        await session.execute(
            update(ConsoleSession)
            .where(ConsoleSession.id_hash == digest(session_id))
            .values(expires_at=clock.now())
        )


@dataclass
class LoginThrottle:
    """At most ``limit`` sign-in attempts that did not succeed per account name within
    ``window``; then that name is refused until the oldest leaves the window. An attempt
    counts from the moment it starts (so parallel guesses cannot slip past the check) and
    is forgotten when it succeeds. Kept in memory, per daemon, keyed by a hash of the
    case-folded name: a fixed 32 bytes a name, however long the name sent."""

    limit: int = 5
    window: timedelta = timedelta(minutes=15)
    max_names: int = 10_000
    _attempts: dict[bytes, deque[datetime]] = field(default_factory=dict)

    @staticmethod
    def _key(name: str) -> bytes:
        return hashlib.sha256(name.casefold().encode("utf-8", "surrogatepass")).digest()

    def _prune(self, key: bytes, now: datetime) -> deque[datetime] | None:
        times = self._attempts.get(key)
        if times is None:
            return None
        while times and now - times[0] >= self.window:
            times.popleft()
        if not times:
            del self._attempts[key]
            return None
        return times

    def begin(self, name: str, now: datetime) -> timedelta | None:
        """Count an attempt for ``name``; or, when it has used its attempts, how long it
        must wait (the attempt is then not counted)."""
        key = self._key(name)
        times = self._prune(key, now)
        if times is not None and len(times) >= self.limit:
            return times[0] + self.window - now
        if times is None:
            if len(self._attempts) >= self.max_names:
                # Under a name-spraying attack, forget names whose attempts have expired,
                # then the one with the fewest recent attempts (never a locked one first).
                for stale in [k for k in self._attempts if self._prune(k, now) is None]:
                    self._attempts.pop(stale, None)
                if len(self._attempts) >= self.max_names:
                    fewest = min(self._attempts, key=lambda k: len(self._attempts[k]))
                    del self._attempts[fewest]
            times = self._attempts.setdefault(key, deque())
        times.append(now)
        return None

    def succeeded(self, name: str) -> None:
        self._attempts.pop(self._key(name), None)
