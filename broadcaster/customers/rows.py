"""One customer row: parsing and validation of a CSV record or a JSON line, with no I/O.

Kept pure so that the importer, the tests and the property tests share one definition of a
valid row, and so that a bad row can only ever fail with :class:`RowRejected` (never with a
stray ``ValueError`` that would abort a whole import). Every limit below mirrors a column of
the store: PostgreSQL enforces ``varchar(n)`` and rejects NUL characters, so a value that
passes here never makes a batch insert fail later.
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata
import zoneinfo
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, NamedTuple

import email_validator
import phonenumbers
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
)
from pydantic_core import PydanticCustomError

CSV_COLUMNS: tuple[str, ...] = (
    "id",
    "name",
    "language",
    "timezone",
    "email",
    "phone",
    "push_tokens",
    "components",
    "regions",
    "channels",
    "tier",
    "tags",
    "region",
    "sla",
    "account_manager",
    "postal_address",
)
REQUIRED_COLUMNS: tuple[str, ...] = ("id", "name")
LIST_FIELDS = frozenset({"push_tokens", "components", "regions", "channels", "tags"})
LIST_SEPARATOR = ";"
PUSH_PROVIDERS: tuple[str, ...] = ("fcm", "apns", "webpush", "ntfy")
"""The prefixes of ``push_tokens`` entries; each is also the contact point's kind."""
MAX_ADDRESS = 2048
"""``contact_points.address`` is ``varchar(2048)``: the longest address any kind may have."""
MAX_POSTAL_ADDRESS = 500
"""The most characters of a postal address, its line breaks counted (``customers.postal_address``
is text: the bound is what a visit needs, not what the column holds)."""
MAX_POSTAL_LINES = 10
"""The most lines of a postal address."""
CLEARABLE = frozenset({"postal_address"})
"""Fields an import leaves as they are when its file does not have them (a CSV file without
the column, a JSON Lines record without the key), and clears when given empty; the others
become the row's whatever it says (left out: their default)."""

# A well-formed BCP 47 tag (RFC 5646 "langtag"), ``_`` accepted for ``-`` as locales write it.
# Well-formed, not registered: a tag the templates lack falls back to the default language.
_LANGUAGE = re.compile(
    r"""
    [a-z]{2,3}(?:[-_][a-z]{3}){0,3}                 # language, extended (zh-yue)
    (?:[-_][a-z]{4})?                               # script (Hant)
    (?:[-_](?:[a-z]{2}|[0-9]{3}))?                  # region (GB, 419)
    (?:[-_](?:[a-z0-9]{5,8}|[0-9][a-z0-9]{3}))*     # variants (valencia, 1901)
    (?:[-_][0-9a-wy-z](?:[-_][a-z0-9]{2,8})+)*      # extensions (u-nu-thai)
    (?:[-_]x(?:[-_][a-z0-9]{1,8})+)?                # private use (x-acme)
    """,
    re.IGNORECASE | re.VERBOSE,
)
_CHANNEL = re.compile(r"[a-z0-9_-]{1,32}")
_WORD = _CHANNEL  # tier and tags: the same alphabet as channel names
_STAFF_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_APNS = re.compile(r"[0-9A-Fa-f]{8,400}")
_NTFY = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Visible ASCII: FCM registration tokens are, and (unlike arbitrary text) a 2048-character one
# always fits a PostgreSQL btree entry of the (customer_id, kind, address) unique index.
_FCM = re.compile(r"[!-~]+")
_URL = re.compile(r"https?://[!-~]+")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+={0,2}")
_NEEDS_PROVIDER = "a push token needs its provider: fcm:, apns:, webpush: or ntfy:"


class Problem(NamedTuple):
    """What is wrong with a row: the field (None for the row as a whole) and why."""

    field: str | None
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class RowRejected(Exception):
    """The row cannot be imported; ``problems`` says which fields and why."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(str(problem) for problem in self.problems))


@dataclass(frozen=True)
class RowError:
    """A rejected row: where it is (``source:line``) and what is wrong with it."""

    source: str
    line: int
    problems: tuple[Problem, ...]

    @property
    def field(self) -> str | None:
        """The first field at fault (None when the row as a whole is unreadable)."""
        return self.problems[0].field if self.problems else None

    @property
    def reason(self) -> str:
        return "; ".join(str(problem) for problem in self.problems)

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.reason}"


class HeaderError(ValueError):
    """The CSV header makes the whole file unusable (unknown, missing or repeated columns)."""


def _no_nul(value: str) -> str:
    """PostgreSQL text cannot hold NUL; refusing it here keeps one bad row from failing a batch.

    (Undecodable bytes need no check: pydantic refuses lone surrogates as ``string_unicode``.)
    """
    if "\x00" in value:
        raise PydanticCustomError("nul", "contains a NUL character")
    return value


def _one_line(value: str) -> str:
    """Ids and subscriptions are one line. In a CSV file a line break inside one is nearly
    always a quote opened and not closed, which takes the following records into the cell:
    refusing it names the record, where storing it would lose them silently. (A name may
    span lines, as spreadsheets export them; the reader's strict quoting catches a quote
    left open there.)"""
    if "\n" in value or "\r" in value:
        raise PydanticCustomError(
            "line_break",
            "contains a line break (in a CSV file: a quote opened here and not closed takes "
            "in the lines after it)",
        )
    return value


def _addressable(value: str) -> str:
    """An id is a path segment of the API's URLs (``/api/v1/customers/{id}``). One with a
    ``/`` (even written ``%2F``) would be routed elsewhere, and ``.`` or ``..`` is dropped or
    climbs a level when clients and proxies normalise the path: such a customer could be
    created but never read, changed or erased there. Control characters are refused too:
    ids are printed in reports and logs."""
    if "/" in value:
        raise PydanticCustomError("id", "must not contain '/' (ids are used in URL paths)")
    if value in {".", ".."}:
        raise PydanticCustomError(
            "id", "must not be '{value}' (ids are used in URL paths)", {"value": value}
        )
    if any(unicodedata.category(char) == "Cc" for char in value):
        raise PydanticCustomError("id", "must not contain control characters")
    return value


def _blank_is_none(value: object) -> object:
    """An empty or blank value of a clearable field says "none on file": None, not ""."""
    if isinstance(value, str) and (not value or value.isspace()):
        return None
    return value


def _postal_address(value: str | None) -> str | None:
    """A postal address as its lines: a CSV cell's quoted line breaks, or ``\\n`` in JSON.
    Stored with each line trimmed, blank lines dropped and ``\\n`` between them; control
    characters other than the line breaks are refused (a tab, a NUL: a file's fault)."""
    if value is None:
        return None
    text = value.replace("\r\n", "\n").replace("\r", "\n")
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    if any(unicodedata.category(char) == "Cc" for line in lines for char in line):
        raise PydanticCustomError(
            "postal_address", "contains a control character (only line breaks may separate lines)"
        )
    if len(lines) > MAX_POSTAL_LINES:
        raise PydanticCustomError(
            "postal_address",
            "has {count} lines; at most {limit}",
            {"count": len(lines), "limit": MAX_POSTAL_LINES},
        )
    address = "\n".join(lines)
    if len(address) > MAX_POSTAL_ADDRESS:
        raise PydanticCustomError(
            "postal_address",
            "is {length} characters long; at most {limit}",
            {"length": len(address), "limit": MAX_POSTAL_ADDRESS},
        )
    return address or None


def _language(value: str) -> str:
    """A well-formed BCP 47 tag, written canonically (``en_gb`` -> ``en-GB``) so templates match.

    Only the form is checked, not the registry: a language without templates is still fine
    (its messages fall back to the default language), whereas ``xx-YY-ZZ`` is a typo.
    """
    if not _LANGUAGE.fullmatch(value):
        raise PydanticCustomError(
            "language", "'{value}' is not a language tag like en, nl or en-GB", {"value": value}
        )
    primary, *subtags = re.split(r"[-_]", value)
    parts = [primary.lower()]
    extended = False  # from the first singleton on (an extension, private use): lower case
    for subtag in subtags:
        extended = extended or len(subtag) == 1
        if extended:
            parts.append(subtag.lower())
        elif len(subtag) == 4 and subtag.isalpha():
            parts.append(subtag.title())  # script: Latn
        elif (len(subtag) == 2 and subtag.isalpha()) or (len(subtag) == 3 and subtag.isdigit()):
            parts.append(subtag.upper())  # region: GB, 419
        else:
            parts.append(subtag.lower())
    return "-".join(parts)


@functools.cache
def _known_timezones() -> dict[str, str]:
    """Lower-cased name -> IANA name, read once: the membership test is then a dict lookup."""
    return {name.lower(): name for name in zoneinfo.available_timezones()}


def _timezone(value: str) -> str:
    """An IANA name exactly as spelled in the tz database (portable across file systems)."""
    known = _known_timezones().get(value.lower())
    if known == value:
        return value
    if known is not None:
        raise PydanticCustomError(
            "timezone",
            "unknown time zone '{value}' (did you mean '{known}'?)",
            {"value": value, "known": known},
        )
    raise PydanticCustomError("timezone", "unknown time zone '{value}'", {"value": value})


def _email(value: str) -> str:
    """Validated syntax only (no DNS), stored in normalised form so re-imports match."""
    try:
        return email_validator.validate_email(value, check_deliverability=False).normalized
    except email_validator.EmailNotValidError as exc:
        raise PydanticCustomError(
            "email", "value is not a valid email address: {reason}", {"reason": str(exc)}
        ) from None


def _phone(value: str) -> str:
    """E.164. A national number is refused rather than guessed: the country would be a guess."""
    if not value.startswith("+"):
        raise PydanticCustomError(
            "phone",
            "'{value}' must be in international format: + and country code",
            {"value": value},
        )
    try:
        number = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException as exc:
        raise PydanticCustomError(
            "phone",
            "'{value}' is not a phone number: {reason}",
            {"value": value, "reason": re.sub(r"^\(\d+\)\s*", "", str(exc))},
        ) from None
    if not phonenumbers.is_valid_number(number):
        raise PydanticCustomError(
            "phone", "'{value}' is not a valid phone number", {"value": value}
        )
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _push_token(value: str) -> str:
    """``provider:token``, checked the way that provider's channel will use it, normalised.

    The provider is the part before the *first* colon (an FCM token may contain colons).
    Normalised so that re-imports match: an APNs token in lower case, a Web Push subscription
    as compact ASCII JSON of just its endpoint and keys.
    """
    provider, colon, token = value.partition(":")
    if not colon or provider not in PUSH_PROVIDERS:
        hint = " (in lower case)" if colon and provider.lower() in PUSH_PROVIDERS else ""
        raise PydanticCustomError("push_provider", _NEEDS_PROVIDER + hint)
    token = token.strip()
    if not token:
        raise PydanticCustomError(
            "push_token", "nothing follows '{provider}:'", {"provider": provider}
        )
    if provider == "fcm":
        if len(token) > MAX_ADDRESS:  # FCM allows 4096; the address column holds 2048
            raise PydanticCustomError(
                "push_token", "an fcm token is at most {limit} characters", {"limit": MAX_ADDRESS}
            )
        if not _FCM.fullmatch(token):
            raise PydanticCustomError(
                "push_token", "an fcm token is printable ASCII without spaces"
            )
    elif provider == "apns":
        if not _APNS.fullmatch(token):
            raise PydanticCustomError(
                "push_token", "an apns device token is 8 to 400 hexadecimal digits"
            )
        token = token.lower()
    elif provider == "ntfy":
        if not _NTFY.fullmatch(token):
            raise PydanticCustomError(
                "push_token", "an ntfy topic is 1 to 64 of A-Z, a-z, 0-9, _ and -"
            )
    else:
        token = _web_push_subscription(token)
    return f"{provider}:{token}"


def _web_push_subscription(text: str) -> str:
    """A browser's ``PushSubscription`` JSON, reduced to ``{"endpoint", "keys": {...}}``.

    Only the shape is checked (http(s) endpoint, base64url keys); the Web Push channel decodes
    the keys when it sends, and decides whether a plain ``http:`` endpoint is allowed.
    """
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        raise PydanticCustomError(
            "push_token", "a webpush subscription must be the browser's PushSubscription JSON"
        ) from None
    if not isinstance(document, dict):
        raise PydanticCustomError("push_token", "a webpush subscription must be a JSON object")
    endpoint, keys = document.get("endpoint"), document.get("keys")
    if not isinstance(endpoint, str) or not _URL.fullmatch(endpoint):
        raise PydanticCustomError(
            "push_token", "a webpush subscription needs its endpoint URL (https://...)"
        )
    if not isinstance(keys, dict):
        raise PydanticCustomError(
            "push_token", "a webpush subscription needs its keys (p256dh and auth)"
        )
    for name in ("p256dh", "auth"):
        key = keys.get(name)
        if not isinstance(key, str) or not _BASE64URL.fullmatch(key):
            raise PydanticCustomError(
                "push_token",
                "a webpush subscription needs keys.{name} (base64url text)",
                {"name": name},
            )
    canonical = json.dumps(
        {"endpoint": endpoint, "keys": {"p256dh": keys["p256dh"], "auth": keys["auth"]}},
        separators=(",", ":"),
    )
    if len(canonical) > MAX_ADDRESS:
        raise PydanticCustomError(
            "push_token",
            "a webpush subscription is at most {limit} characters (as compact JSON)",
            {"limit": MAX_ADDRESS},
        )
    return canonical


def _channel(value: str) -> str:
    if not _CHANNEL.fullmatch(value):
        raise PydanticCustomError(
            "channel",
            "'{value}' is not a channel name (1 to 32 of a-z, 0-9, _ and -)",
            {"value": value},
        )
    return value


def _word(what: str) -> Callable[[str], str]:
    """A validator of a lower-case word (a tier, a tag), named ``what`` in its message."""

    def check(value: str) -> str:
        if not _WORD.fullmatch(value):
            raise PydanticCustomError(
                what,
                "'{value}' is not a {what} (1 to 32 of a-z, 0-9, _ and -)",
                {"value": value, "what": what},
            )
        return value

    return check


def _staff_id(value: str) -> str:
    if not _STAFF_ID.fullmatch(value):
        raise PydanticCustomError(
            "staff_id",
            "'{value}' is not a staff id (1 to 64 of A-Z, a-z, 0-9, _, . and -)",
            {"value": value},
        )
    return value


def _unique(values: tuple[str, ...]) -> tuple[str, ...]:
    """Drop empty items and repeats (keeping order): the store has one row per value."""
    return tuple(dict.fromkeys(value for value in values if value))


NoNul = AfterValidator(_no_nul)
OneLine = AfterValidator(_one_line)
PushToken = Annotated[str, NoNul, AfterValidator(_push_token)]
Topic = Annotated[str, Field(max_length=200), NoNul, OneLine]
Channel = Annotated[str, AfterValidator(_channel)]
Tag = Annotated[str, AfterValidator(_word("tag"))]


class CustomerRow(BaseModel):
    """A customer as a file describes it: who, how to reach them, what they follow."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, frozen=True)

    id: Annotated[
        str, Field(min_length=1, max_length=64), NoNul, OneLine, AfterValidator(_addressable)
    ]
    """Unique; also the customer's URL path segment in the API (so no ``/``, ``.``, ``..``)."""
    name: Annotated[str, Field(min_length=1, max_length=200), NoNul]
    language: Annotated[str, Field(max_length=16), AfterValidator(_language)] = "en"
    timezone: Annotated[str, Field(max_length=64), AfterValidator(_timezone)] = "UTC"
    email: Annotated[str, Field(max_length=512), NoNul, AfterValidator(_email)] | None = None
    phone: Annotated[str, Field(max_length=64), AfterValidator(_phone)] | None = None
    push_tokens: Annotated[tuple[PushToken, ...], AfterValidator(_unique)] = ()
    components: Annotated[tuple[Topic, ...], AfterValidator(_unique)] = ()
    regions: Annotated[tuple[Topic, ...], AfterValidator(_unique)] = ()
    channels: Annotated[tuple[Channel, ...], AfterValidator(_unique)] = ()
    """The customer's preferred channel order for failover (names from the configuration)."""
    tier: Annotated[str, AfterValidator(_word("tier"))] = "standard"
    tags: Annotated[tuple[Tag, ...], AfterValidator(_unique)] = ()
    """Labels the rules can match; stored comma-joined (see :meth:`stored_tags`)."""
    region: Annotated[str, Field(max_length=200), NoNul] | None = None
    """Where the customer is (free text), unlike ``regions``, the regions it subscribes to."""
    sla: Annotated[str, Field(max_length=64), NoNul] | None = None
    account_manager: Annotated[str, AfterValidator(_staff_id)] | None = None
    """The staff id of the customer's account manager."""
    postal_address: Annotated[
        str | None, BeforeValidator(_blank_is_none), AfterValidator(_postal_address)
    ] = None
    """Where a visit goes, its lines separated by line breaks; None (given empty): none on
    file. Left out, an import or a PUT keeps the one on file (:attr:`gives_postal_address`)."""

    @property
    def gives_postal_address(self) -> bool:
        """Whether the row says the postal address (empty included: "none on file"), rather
        than leave it out: an import keeps the stored one for a row that does not."""
        return "postal_address" in self.model_fields_set

    def contact_points(self) -> list[tuple[str, str]]:
        """``(kind, address)`` pairs, the kinds the channels know: email, sms and the push
        providers (fcm, apns, webpush, ntfy: a push token's prefix is its kind)."""
        points = [_split_push_token(token) for token in self.push_tokens]
        if self.phone:
            points.insert(0, ("sms", self.phone))
        if self.email:
            points.insert(0, ("email", self.email))
        return points

    def subscriptions(self) -> list[tuple[str, str]]:
        """``(kind, value)`` pairs: what incidents this customer is affected by."""
        return [("component", value) for value in self.components] + [
            ("region", value) for value in self.regions
        ]

    def channel_order(self) -> str | None:
        """``channels`` as stored in ``customers.channel_order``: comma-joined, None if empty."""
        return ",".join(self.channels) or None

    def stored_tags(self) -> str | None:
        """``tags`` as stored in ``customers.tags``: comma-joined, None if empty."""
        return ",".join(self.tags) or None


def _split_push_token(token: str) -> tuple[str, str]:
    provider, _, address = token.partition(":")
    return provider, address


def split_list(cell: str) -> list[str]:
    """A CSV list cell: ``a; b;;c`` -> ``["a", "b", "c"]`` (blanks dropped)."""
    return [item.strip() for item in cell.split(LIST_SEPARATOR) if item.strip()]


def check_csv_header(header: Sequence[str]) -> list[str]:
    """The header's column names, normalised (trimmed, lower case); raise on unusable ones.

    Failing here, before any row is read, is what lets the importer refuse a file with a
    typo in a column name instead of silently importing customers without, say, their phone.
    """
    names = [name.strip().lower() for name in header]
    unknown = [name for name in names if name not in CSV_COLUMNS]
    if unknown:
        raise HeaderError(
            "unknown column(s) "
            + ", ".join(repr(name) for name in unknown)
            + "; the known ones are "
            + ", ".join(CSV_COLUMNS)
        )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise HeaderError("repeated column(s) " + ", ".join(repr(name) for name in repeated))
    missing = [name for name in REQUIRED_COLUMNS if name not in names]
    if missing:
        raise HeaderError("missing required column(s) " + ", ".join(repr(n) for n in missing))
    return names


def unconfigured_channels(row: CustomerRow, configured: Collection[str]) -> list[Problem]:
    """A problem for each channel of ``row``'s preferred order that is not ``configured``.

    Separate from the model, which knows names only by their form: the configuration is not a
    row's, and rows are validated without one (tests, property tests). The importer and the
    API both call this with the configured channels, so an order naming ``pigeon`` is refused
    when it comes in rather than silently skipped at every failover.
    """
    known = ", ".join(sorted(configured)) or "none"
    return [
        Problem("channels", f"{name!r} is not a configured channel (configured: {known})")
        for name in row.channels
        if name not in configured
    ]


def from_csv_record(
    record: Mapping[str, str], channels: Collection[str] | None = None
) -> CustomerRow:
    """Validate one CSV record (column -> cell); empty cells mean "use the default", but for
    a :data:`CLEARABLE` column, whose empty cell says "none" (and whose absence from the
    header leaves the stored value as it is).

    ``channels``: the configured channel names, when the preferred order is to be checked.
    """
    data: dict[str, Any] = {}
    for column, cell in record.items():
        if not cell or cell.isspace():
            if column in CLEARABLE:
                data[column] = None
            continue
        data[column] = split_list(cell) if column in LIST_FIELDS else cell
    return _validate(data, channels)


def from_json_line(line: str | bytes, channels: Collection[str] | None = None) -> CustomerRow:
    """Validate one JSON Lines record: an object whose lists are JSON arrays of strings.

    ``channels``: the configured channel names, when the preferred order is to be checked.
    """
    try:
        value = json.loads(line)
    except UnicodeDecodeError:
        raise RowRejected([Problem(None, "the line is not valid UTF-8")]) from None
    except json.JSONDecodeError as exc:
        raise RowRejected(
            [Problem(None, f"not valid JSON: {exc.msg} at column {exc.colno}")]
        ) from None
    except (ValueError, RecursionError) as exc:  # huge integers, absurd nesting
        raise RowRejected([Problem(None, f"not valid JSON: {exc}")]) from None
    if not isinstance(value, dict):
        raise RowRejected([Problem(None, "expected a JSON object")])
    data = {
        key: item
        for key, item in value.items()
        if key in CLEARABLE
        or (item is not None and not (isinstance(item, str) and (not item or item.isspace())))
    }
    return _validate(data, channels)


_MESSAGES = {
    "missing": "is required",
    "extra_forbidden": "unknown field",
    "string_type": "must be a string",
    "string_unicode": "is not valid UTF-8 text",
    "tuple_type": "must be a list of strings",
}


def _validate(data: dict[str, Any], channels: Collection[str] | None) -> CustomerRow:
    try:
        row = CustomerRow.model_validate(data)
    except ValidationError as exc:
        raise RowRejected([_problem(error) for error in exc.errors()]) from None
    if channels is not None and (problems := unconfigured_channels(row, channels)):
        raise RowRejected(problems)
    return row


def _problem(error: Any) -> Problem:
    location = error["loc"]
    field = str(location[0]) if location else None
    if field is not None:
        field += "".join(f"[{part}]" for part in location[1:])
    kind = error["type"]
    if kind == "string_too_short" and error.get("ctx", {}).get("min_length") == 1:
        return Problem(field, "must not be empty")
    return Problem(field, _MESSAGES.get(kind, error["msg"]))
