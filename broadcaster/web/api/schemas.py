"""Request and response bodies of the API (they make its OpenAPI document)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Generic, Literal, TypeVar

from fastapi import Path, Query
from pydantic import BaseModel, ConfigDict, Field, field_validator

from broadcaster.access.credentials import Principal
from broadcaster.access.roles import allows
from broadcaster.compose.context import offers_of
from broadcaster.customers.rows import NoNul
from broadcaster.incidents.lifecycle import (
    MAX_MESSAGE_CHARS,
    MAX_SCOPE_CHARS,
    MAX_SCOPE_ITEMS,
    MAX_TEXT_CHARS,
    MAX_TITLE_CHARS,
)
from broadcaster.store.ids import MAX_ID
from broadcaster.web.inputs import Moment

T = TypeVar("T")

# Row ids are 64-bit (MAX_ID): a larger number is refused as input, never sent to the store.
IncidentId = Annotated[int, Path(ge=1, le=MAX_ID)]
FollowupId = Annotated[int, Path(ge=1, le=MAX_ID)]
IdFilter = Annotated[int | None, Query(ge=1, le=MAX_ID)]
Cursor = Annotated[
    int | None, Query(ge=1, le=MAX_ID, description="next_cursor of the previous page")
]

Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS), NoNul]
Short = Annotated[str, Field(max_length=300), NoNul]
Topic = Annotated[str, Field(min_length=1, max_length=MAX_SCOPE_CHARS), NoNul]
Severity = Literal["minor", "major", "critical"]
OpenStatus = Literal["investigating", "identified", "monitoring"]
CauseKind = Literal["known", "suspected", "unknown"]


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: int | str | None = Field(
        None, description="pass as ?cursor= for the next page; null on the last"
    )


R = TypeVar("R")
M = TypeVar("M", bound=BaseModel)


def page_of(
    rows: list[R],
    limit: int,
    model: type[M],
    cursor: Callable[[R], int | str],
    dump: Callable[[R], object] = lambda row: row,
) -> Page[M]:
    """One keyset page from ``limit + 1`` rows: the extra row only says there is more."""
    more = len(rows) > limit
    shown = rows[:limit]
    return Page[model](  # type: ignore[valid-type]
        items=[model.model_validate(dump(row)) for row in shown],
        next_cursor=cursor(shown[-1]) if more else None,
    )


FollowupCursor = Annotated[
    str | None,
    Query(
        max_length=40,
        pattern=r"^[0-9]{1,19}\.[0-9]{1,19}$",
        description="next_cursor of the previous page",
    ),
]
"""A follow-up page's cursor: the last task's deadline (microseconds since 1970, UTC) and id,
``<deadline>.<id>``; the next page starts after it, in (deadline, id) order."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def followup_cursor(task: Any) -> str:
    """The cursor after ``task`` (a :class:`~broadcaster.store.Followup`)."""
    return f"{(task.deadline_at - _EPOCH) // timedelta(microseconds=1)}.{task.id}"


def after_followup(cursor: str) -> tuple[datetime, int] | None:
    """The (deadline, id) a :data:`FollowupCursor` names; None if it names no possible one."""
    micros, _, number = cursor.partition(".")
    try:
        deadline = _EPOCH + timedelta(microseconds=int(micros))
    except OverflowError:
        return None
    task_id = int(number)
    return (deadline, task_id) if 1 <= task_id <= MAX_ID else None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class DeclareIn(_Strict):
    title: Annotated[str, Field(min_length=1, max_length=MAX_TITLE_CHARS), NoNul]
    severity: Severity
    message: Annotated[str, Field(min_length=1, max_length=MAX_MESSAGE_CHARS), NoNul]
    components: list[Topic] = Field(default_factory=list, max_length=MAX_SCOPE_ITEMS)
    regions: list[Topic] = Field(default_factory=list, max_length=MAX_SCOPE_ITEMS)
    status: OpenStatus = "investigating"
    cause_kind: CauseKind = "unknown"
    cause: Text | None = None
    actions: Text | None = None
    workaround: Text | None = None
    expected_resolution_at: Moment | None = None


class UpdateIn(_Strict):
    message: Annotated[str, Field(min_length=1, max_length=MAX_MESSAGE_CHARS), NoNul]
    status: OpenStatus | None = None
    severity: Severity | None = Field(
        None,
        description="the incident's new severity (omit to keep it): the cadence, the rules "
        "and the follow-ups of this round and the later ones follow it",
    )
    cause_kind: CauseKind | None = None
    cause: Text | None = None
    actions: Text | None = None
    workaround: Text | None = None
    expected_resolution_at: Moment | None = Field(
        None, description="a new expected resolution (omit to keep it; null withdraws it)"
    )


class ResolveIn(_Strict):
    message: Annotated[str, Field(min_length=1, max_length=MAX_MESSAGE_CHARS), NoNul]
    cause_kind: CauseKind | None = None
    cause: Text | None = None
    responsibility: Text | None = None
    regret: Text | None = None
    remedy: Text | None = None
    prevention: Text | None = None
    compensation: Text | None = None


class IncidentOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    title: str
    severity: str
    status: str
    source: str
    external_id: str | None
    declared_by: str
    created_at: datetime
    updated_at: datetime
    resolved_at: datetime | None
    closed_at: datetime | None
    rounds_made: int
    messages_purged_at: datetime | None = None
    """When its deliveries and their history were purged (``retention.messages``)."""


class CompensationOfferOut(BaseModel):
    """A compensation the rules granted at the resolution (when the operator wrote none)."""

    kind: str
    amount: str = Field(description="the amount as the rules wrote it: a decimal, as a string")
    currency: str
    rule: str = Field(description="the rule that granted it")


class TimelineEntryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    kind: str
    status: str
    message: str
    cause_kind: str
    cause: str | None
    actions: str | None
    workaround: str | None
    expected_resolution_at: datetime | None
    responsibility: str | None
    regret: str | None
    remedy: str | None
    prevention: str | None
    compensation: str | None
    """The operator's own words, as written."""
    compensation_offers: list[CompensationOfferOut] = Field(
        default_factory=list,
        description="what the rules granted at the resolution when the operator wrote no "
        "compensation; each customer's message tells it in their language",
    )
    author: str
    created_at: datetime

    @field_validator("compensation_offers", mode="before")
    @classmethod
    def _offers(cls, value: object) -> list[dict[str, str]]:
        return [offer.as_json() for offer in offers_of(value)]


class RoundOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    number: int
    kind: str
    state: str
    due_at: datetime
    started_at: datetime | None
    materialised_at: datetime | None
    next_due_at: datetime | None
    audience_size: int
    deliveries: dict[str, int] = Field(default_factory=dict)


class PromisesOut(BaseModel):
    kept: int = 0
    late: int = 0
    open: int = 0
    overdue: int = 0
    """Of the open ones, those already broken: due more than ``schedule.promise_grace`` ago,
    no round having reached the customers since (``broadcaster_promises_overdue``)."""
    worst_lateness_seconds: float | None = None


class FollowupOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    incident_id: int
    customer_id: str | None
    """None for a viewer: customer data is for operators and admins (so is ``note``)."""
    rule: str
    kind: str
    owner: str
    owner_ref: str | None
    """The rule's owner reference (``group:care``, ``on_call:duty-managers``, ``ann``):
    those it names may claim the task. None on tasks created before it was kept."""
    state: str
    deadline_at: datetime
    escalation_level: int
    outcome: str | None
    note: str | None
    created_at: datetime
    closed_at: datetime | None
    closed_by: str | None
    postal_address: list[str] | None = Field(
        None,
        description="where a visit goes: the customer's postal address as its lines, for "
        "visit tasks, to roles that may read customers (operators and admins); [] when none "
        "is on file; null otherwise (a call or an email, or a viewer)",
    )


def followup_out(
    task: Any, principal: Principal, postal: Mapping[str, list[str]] | None = None
) -> FollowupOut:
    """``task`` (a :class:`~broadcaster.store.Followup`) as ``principal`` may read it: without
    its customer and its free-text note for a viewer. ``postal`` is what
    :func:`~broadcaster.followups.notify.visit_addresses` loaded for ``principal`` (a visit
    whose customer it lacks has no address on file: [])."""
    out = FollowupOut.model_validate(task)
    if not allows(principal.role, "operator"):
        return out.model_copy(update={"customer_id": None, "note": None})
    if task.kind == "visit" and postal is not None:
        out.postal_address = list(postal.get(task.customer_id, []))
    return out


class IncidentDetailOut(IncidentOut):
    components: list[str]
    regions: list[str]
    timeline: list[TimelineEntryOut]
    rounds: list[RoundOut]
    deliveries_by_channel: dict[str, dict[str, int]]
    promises: PromisesOut
    next_update_due: datetime | None
    followups: list[FollowupOut] = Field(
        description="the first 50 follow-ups, open ones first, soonest deadline first; "
        "GET /api/v1/incidents/{id}/followups pages them all"
    )
    followup_counts: dict[str, int] = Field(
        default_factory=dict, description="the incident's follow-ups by state, all of them"
    )


class DeliveryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    incident_id: int
    round_id: int
    customer_id: str
    channel: str
    address: str
    state: str
    attempts: int
    next_attempt_at: datetime
    provider_message_id: str | None
    last_error: str | None
    created_at: datetime
    sent_at: datetime | None
    failover_from_id: int | None
    failover_to: str | None


class ClaimIn(_Strict):
    staff: Annotated[str, Field(max_length=64), NoNul] | None = Field(
        None, description="act for this staff id (admins only); default: the caller"
    )


class DoneIn(ClaimIn):
    outcome: Literal["reached", "voicemail", "declined", "unreachable"]
    note: Annotated[str, Field(min_length=1, max_length=10_000), NoNul]


class WaiveIn(ClaimIn):
    reason: Annotated[str, Field(min_length=1, max_length=10_000), NoNul]


class RulesOut(BaseModel):
    path: str | None
    loaded: bool
    policies: int
    rules: int
    digest: str | None
    reloads: int
    last_reload_error: str | None


class RulesCheckIn(_Strict):
    text: Annotated[str, Field(max_length=262_144), NoNul] | None = Field(
        None, description="rules YAML to check; omit to check the configured file"
    )


class RulesCheckOut(BaseModel):
    ok: bool
    problems: list[str]
    policies: int = 0
    rules: int = 0
    warnings: list[str] = []
    """What does not make the rules wrong but is worth knowing (a follow-up whose owner can
    name nobody, and who then owns it), each located as ``rules check`` gives it."""


class ReloadOut(BaseModel):
    reloaded: bool
    error: str | None


class ExplainOut(BaseModel):
    text: str
    policy: str | None
    matched_rules: list[str]
    required_for_resolution: list[str]


class AuditOut(BaseModel):
    id: int
    at: datetime
    actor: str
    role: str
    action: str
    target: str
    source: str
    outcome: str
    detail: dict[str, object]


class MeOut(BaseModel):
    actor: str
    role: str
