"""Which shape of message a channel carries, by the kind of contact point it addresses."""

from __future__ import annotations

from typing import Final

_FORMS: Final = {
    "sms": "sms",
    "fcm": "push",
    "apns": "push",
    "webpush": "push",
    "ntfy": "push",
}


def form_for(contact: str) -> str:
    """``sms``, ``push`` or ``email`` (the full form: email, console, webhooks)."""
    return _FORMS.get(contact, "email")
