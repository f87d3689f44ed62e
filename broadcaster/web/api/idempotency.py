"""``Idempotency-Key``: a retried declaration or update answers what the first one did.

A client that times out and sends again, or a double submit, declared twice: every affected
customer got two first notices. With the header (as Stripe's and the IETF's
draft-ietf-httpapi-idempotency-key-header) the key, a hash of the request and what it made
are stored by caller and key *in the transaction of the action*: the action is never stored
without its key, nor its key without the action. The same request again gets the same
status and the same resource (header ``Idempotent-Replayed: true``); the key with another
request is refused (422); of two at once only one acts (the key is unique: the other's
transaction fails on it and is answered as a replay). Keys are kept 24 hours; an older one
is forgotten: the leader prunes them (:func:`prune`), and a caller's when one is met.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any, Final

from fastapi import Header, Response
from pydantic import BaseModel
from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession

from broadcaster.store import Also, Database
from broadcaster.store.models import IdempotencyKey
from broadcaster.web.errors import ApiError

HEADER: Final = "Idempotency-Key"
KEPT: Final = timedelta(hours=24)
"""How long a key is remembered."""
REPLAYED: Final = "Idempotent-Replayed"

Key = Annotated[
    str | None,
    Header(
        alias=HEADER,
        min_length=1,
        max_length=255,
        pattern=r"^[!-~]+$",
        description="a unique key of this request (a UUID), 1 to 255 visible ASCII characters: "
        "sent again with the same request, it answers what the first did instead of acting "
        "twice (kept 24 hours)",
    ),
]


def fingerprint(method: str, path: str, body: BaseModel) -> str:
    """SHA-256 of the request as it was understood: its method, its path, its body."""
    text = json.dumps(
        # The fields the client sent, not the model's defaults: an omitted field (keep) and
        # an explicit null (withdraw, as expected_resolution_at's) are different requests.
        {"method": method, "path": path, "body": body.model_dump(mode="json", exclude_unset=True)},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Idempotency:
    """One request's key (``None``: no header, nothing is kept)."""

    database: Database
    actor: str
    key: str | None
    request_hash: str
    now: datetime
    reused: str | None = None
    """What to say when the key comes with another request (default: the header's terms)."""

    async def previous(self) -> IdempotencyKey | None:
        """What a request with this key made already, if it is this request; an
        :class:`ApiError` if the key was used for another one."""
        if self.key is None:
            return None
        async with self.database.session() as session:
            row = await session.get(IdempotencyKey, (self.actor, self.key))
        if row is None:
            return None
        if row.created_at <= self.now - KEPT:  # forgotten: and so are the caller's others
            async with self.database.session() as session, session.begin():
                await session.execute(
                    delete(IdempotencyKey).where(
                        IdempotencyKey.actor == self.actor,
                        IdempotencyKey.created_at <= self.now - KEPT,
                    )
                )
            return None
        if row.request_hash != self.request_hash:
            raise ApiError(
                422,
                self.reused
                or f"{HEADER}: this key was used for another request "
                f"({row.created_at.isoformat(timespec='seconds')}); "
                "send a new key with a new request",
                field=f"header.{HEADER}",
            )
        return row

    def record(self, resource: str, status: int) -> Also | None:
        """The hook that stores the key with what the action made, in its transaction."""
        if self.key is None:
            return None
        key = self.key

        def write(session: AsyncSession, result: Any) -> None:
            session.add(
                IdempotencyKey(
                    actor=self.actor,
                    key=key,
                    request_hash=self.request_hash,
                    status=status,
                    resource=resource,
                    resource_id=result.id,
                    created_at=self.now,
                )
            )

        return write


async def prune(database: Database, now: datetime) -> int:
    """Forget the keys of every caller older than :data:`KEPT` (the leader's follow-up sweep
    does, every half minute): the table holds a day of keyed requests and console forms."""
    async with database.session() as session, session.begin():
        result = await session.execute(
            delete(IdempotencyKey).where(IdempotencyKey.created_at <= now - KEPT)
        )
    return int(getattr(result, "rowcount", 0) or 0)


def replayed(response: Response, row: IdempotencyKey) -> None:
    """Answer as the first request was answered."""
    response.status_code = row.status
    response.headers[REPLAYED] = "true"
