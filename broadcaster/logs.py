"""Structured logs: one JSON object per line (or plain text), with the record's extras,
with secrets, phone numbers and email addresses redacted (``log.redact`` in the config).

Redaction runs on everything a record carries: the message, every extra (strings inside
lists and mappings too, and the text of other values), and the traceback. It replaces:

- **secrets**: every secret value of the configuration (tokens, passwords, keys: each
  ``SecretStr``), credentials by their shape (``Bearer``/``Basic`` values, JWTs, PEM
  private keys, the password in ``scheme://user:password@host``, ``password=…``,
  ``"token": "…"`` and the like), and the value of any extra whose name says it is one
  (``password``, ``token``, ``secret``, ``authorization``, …) — by ``[redacted]``;
- **phone numbers** in international form (``+31 6 1234 5678``, E.164 as the store keeps
  them), by ``+…78`` (the last two digits);
- **email addresses**, by the first character of the local part and the top-level domain:
  ``j…@….org``.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, SecretStr

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}
"""Record attributes that are not extras (uvicorn adds ``color_message``: ANSI noise)."""

REDACTED = "[redacted]"
MIN_SECRET = 6
"""Configured secrets shorter than this are not searched for: they would mangle ordinary
text (and hide nothing worth hiding)."""

_SECRET_NAMES = re.compile(
    r"pass(?:word|wd|phrase)?|secret|token|api[_-]?key|authorization|credential|"
    r"private[_-]?key|signature|cookie",
    re.IGNORECASE,
)
"""Names of extras (and of ``name=value`` pairs in text) whose value is a secret."""

_SECRET_SHAPES = [
    # A PEM private key, whole.
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|\Z)", re.S),
    # A JSON Web Token (header.payload[.signature]).
    re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}(\.[A-Za-z0-9_-]*)?"),
]
_SCHEME_CREDENTIAL = re.compile(r"\b(Bearer|Basic|Token|Digest)(\s+)[A-Za-z0-9._~+/=:-]{6,}")
_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^\s:/@]*:)[^\s@/]+(@)", re.IGNORECASE)
_NAMED_VALUE = re.compile(
    r"""(?P<key>["']?[\w-]*(?:"""
    + _SECRET_NAMES.pattern
    + r""")[\w-]*["']?\s*[:=]\s*)(?P<quote>["']?)(?P<value>[^\s"',;&}]+)""",
    re.IGNORECASE,
)
_EMAIL = re.compile(
    r"(?<![\w.%+-])([A-Za-z0-9%+-])[A-Za-z0-9._%+-]*?(?:@|%40)(?:[A-Za-z0-9-]+\.)+"
    r"([A-Za-z]{2,})(?![\w-])"
)
"""An address, also URL-encoded (``anna%40example.nl`` in a query a log line quotes)."""
_PHONE = re.compile(
    r"(?<![\w+%])(?:\+|%2[Bb])\d(?:[\s().-]{0,2}\d){6,15}(?![\w])"
    r"|(?<![\w.,+%/:-])00[1-9](?:[\s().-]{0,2}\d){7,14}(?![\w-])"
)
"""A number in international form: ``+31…``, URL-encoded ``%2B31…``, or with the dialling
prefix ``0031…`` (standing alone, at least eight digits after it: not a decimal's
``0.00123…``, a UUID's ``00112233-…`` or a short zero-padded id)."""


@dataclass(frozen=True)
class Redaction:
    """What to redact; every kind is on unless the configuration turns it off."""

    secrets: bool = True
    phones: bool = True
    emails: bool = True


class Redactor:
    """Applies one :class:`Redaction` with the configuration's secret values."""

    def __init__(self, redaction: Redaction | None = None, secrets: Iterable[str] = ()) -> None:
        self.redaction = redaction or Redaction()
        values = {s for s in secrets if len(s) >= MIN_SECRET}
        self._known = (
            re.compile("|".join(re.escape(s) for s in sorted(values, key=len, reverse=True)))
            if values
            else None
        )

    @property
    def active(self) -> bool:
        r = self.redaction
        return r.secrets or r.phones or r.emails

    def text(self, value: str) -> str:
        """``value`` with what this redactor hides replaced."""
        r = self.redaction
        if r.secrets:
            if self._known is not None:
                value = self._known.sub(REDACTED, value)
            for shape in _SECRET_SHAPES:
                value = shape.sub(REDACTED, value)
            value = _SCHEME_CREDENTIAL.sub(lambda m: f"{m[1]}{m[2]}{REDACTED}", value)
            value = _URL_PASSWORD.sub(lambda m: f"{m[1]}{REDACTED}{m[2]}", value)
            value = _NAMED_VALUE.sub(_named, value)
        if r.emails:
            value = _EMAIL.sub(lambda m: f"{m[1]}…@….{m[2]}", value)
        if r.phones:
            value = _PHONE.sub(_phone, value)
        return value

    def value(self, value: Any, name: str = "") -> Any:
        """A log field's value, redacted: strings and the strings inside containers; other
        values that JSON cannot hold as they are, by their text."""
        if self.redaction.secrets and name and _SECRET_NAMES.search(name) and value:
            return REDACTED
        if isinstance(value, str):
            return self.text(value)
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, SecretStr):
            return REDACTED if self.redaction.secrets else value.get_secret_value()
        if isinstance(value, Mapping):
            return {str(k): self.value(v, str(k)) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self.value(v, name) for v in value]
        return self.text(str(value))


def _named(match: re.Match[str]) -> str:
    value = match["value"]
    if value.startswith("[") or value in ("Bearer", "Basic", "Token", "Digest"):
        return match[0]  # already redacted, or the scheme before a credential
    return f"{match['key']}{match['quote']}{REDACTED}"


def _phone(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match[0])
    return f"+…{digits[-2:]}"


def secret_values(model: BaseModel) -> list[str]:
    """Every ``SecretStr`` value in a settings tree (the values the logs must never show)."""
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, SecretStr):
            found.append(value.get_secret_value())
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(getattr(value, name))
        elif isinstance(value, Mapping):
            for item in value.values():
                walk(item)
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item)

    walk(model)
    return [v for v in found if v]


_current = Redactor()
"""The redactor every formatter of this module uses unless it was given its own."""


def set_redaction(redaction: Redaction, secrets: Iterable[str] = ()) -> None:
    """Make ``redaction`` (with these secret values) apply to every log line from now on."""
    global _current
    _current = Redactor(redaction, secrets)


def current_redactor() -> Redactor:
    return _current


class _RedactingFormatter(logging.Formatter):
    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__()
        self._redactor = redactor

    @property
    def redactor(self) -> Redactor:
        return self._redactor or _current

    def fields(self, record: logging.LogRecord) -> tuple[str, dict[str, Any], str | None]:
        """The message, the extras and the traceback of ``record``, redacted."""
        redactor = self.redactor
        message = redactor.text(record.getMessage())
        extras = {
            key: redactor.value(value, key)
            for key, value in vars(record).items()
            if key not in _STANDARD and not key.startswith("_")
        }
        error = self.formatException(record.exc_info) if record.exc_info else None
        return message, extras, redactor.text(error) if error else None


class JsonFormatter(_RedactingFormatter):
    def format(self, record: logging.LogRecord) -> str:
        message, extras, error = self.fields(record)
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": message,
        }
        payload.update(extras)
        if error:
            payload["error"] = error
        return json.dumps(payload, default=str, ensure_ascii=False)


class TextFormatter(_RedactingFormatter):
    def format(self, record: logging.LogRecord) -> str:
        message, extras, error = self.fields(record)
        line = f"{record.levelname:<7} {record.name}: {message}"
        if extras:
            line += "  " + " ".join(f"{k}={v}" for k, v in extras.items())
        if error:
            line += "\n" + error
        return line


def configure_logging(
    level: str = "INFO",
    fmt: str = "json",
    redaction: Redaction | None = None,
    secrets: Iterable[str] = (),
) -> None:
    """Send broadcaster logs to stderr in the chosen format (idempotent); redact as asked
    (by default: secrets, phone numbers and email addresses)."""
    set_redaction(redaction or Redaction(), secrets)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING, root.level))
