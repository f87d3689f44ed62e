"""One-time form nonces: a declaration, update or resolution submitted twice (a double click,
a reload that posts the form again) is made once.

Each of those forms carries a random nonce. It is stored as the caller's idempotency key (the
API's ``Idempotency-Key`` store, :mod:`broadcaster.web.api.idempotency`) *in the transaction
of the action*: the action is never stored without it, nor it without the action, whichever
daemon served the form. A submit whose nonce made something already is answered with a
redirect to it; of two at once only one acts (the key is unique: the other's transaction
fails on it, and is answered as the first was).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets

from starlette.datastructures import FormData

from broadcaster.access.credentials import Principal
from broadcaster.web.api.idempotency import Idempotency
from broadcaster.web.state import WebState

FIELD = "nonce"
"""The form field that carries it."""
_SHAPE = re.compile(r"[A-Za-z0-9_-]{16,64}")


def new() -> str:
    return secrets.token_urlsafe(18)


def of(form: FormData) -> str | None:
    """The form's nonce; None when it has none (or not one this console made)."""
    value = form.get(FIELD)
    return value if isinstance(value, str) and _SHAPE.fullmatch(value) else None


def key(
    state: WebState, principal: Principal, nonce: str | None, path: str, form: FormData
) -> Idempotency:
    """The stored key of ``principal``'s form with ``nonce``, posted to ``path`` with what
    ``form`` holds: the same form sent again is answered as the first was; the nonce with
    other contents (a tab left open, the back button, an edit, a send) is refused, not
    taken for the first one (which would drop it and say it was sent)."""
    fields = sorted(
        (name, str(value)) for name, value in form.multi_items() if name not in UNHASHED
    )
    digest = hashlib.sha256(json.dumps([f"POST {path}", fields]).encode()).hexdigest()
    return Idempotency(
        state.database,
        principal.actor,
        None if nonce is None else f"console:{nonce}",
        digest,
        state.clock.now(),
        reused="This form was sent already, with other contents; nothing was sent this "
        "time. Reload the page to send a new one.",
    )


UNHASHED = frozenset({"csrf_token", FIELD})
"""Form fields that are not its contents."""
