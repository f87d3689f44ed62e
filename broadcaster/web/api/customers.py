"""``/api/v1/customers``: create, update, delete, import; their contact points and
subscriptions. Operators read (the data is personal); admins write."""

from __future__ import annotations

import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict
from sqlalchemy import delete, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from broadcaster.access import audit
from broadcaster.access.credentials import Principal
from broadcaster.customers.importer import (
    CustomerExists,
    ImportInputError,
    import_customers,
    upsert_customers,
)
from broadcaster.customers.rows import CustomerRow, unconfigured_channels
from broadcaster.store import ContactPoint, Customer, Subscription
from broadcaster.web.api.schemas import Page, page_of
from broadcaster.web.auth import client_source, require
from broadcaster.web.errors import AUTHENTICATED, WITH_BODY, ApiError, responses
from broadcaster.web.state import WebState, state_of

router = APIRouter(prefix="/api/v1/customers", tags=["customers"], responses=AUTHENTICATED)

Operator = Annotated[Principal, Depends(require("operator"))]
Admin = Annotated[Principal, Depends(require("admin"))]
IMPORT_MAX_BYTES = 512 * 1024 * 1024
IMPORT_ERRORS_SHOWN = 100


class ContactPointOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    kind: str
    address: str
    opted_out: bool
    disabled: bool
    disabled_reason: str | None


class SubscriptionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    kind: str
    value: str


class CustomerOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    language: str
    timezone: str
    channel_order: str | None
    tier: str
    tags: str | None
    region: str | None
    sla: str | None
    account_manager: str | None
    postal_address: str | None
    """Where a visit goes, its lines separated by ``\\n``; null when none is on file."""


class CustomerDetailOut(CustomerOut):
    contact_points: list[ContactPointOut]
    subscriptions: list[SubscriptionOut]


class ImportErrorOut(BaseModel):
    line: int
    field: str | None
    message: str


class ImportOut(BaseModel):
    imported: int
    rejected: int
    errors: list[ImportErrorOut]
    """The first rejected rows, each with its line and field."""
    warned: int = 0
    warnings: list[ImportErrorOut] = []
    """The first imported rows with a warning (an account manager who is not staff)."""


def _audited(
    web: WebState, principal: Principal, request: Request, action: str, customer_id: str
) -> Callable[[AsyncConnection], Awaitable[None]]:
    """The audit entry of a customer write, made in that write's transaction."""

    async def write(connection: AsyncConnection) -> None:
        await audit.record_with(
            connection,
            principal,
            action,
            f"customer:{customer_id}",
            client_source(request),
            web.clock.now(),
        )

    return write


async def _refused(
    web: WebState,
    principal: Principal,
    request: Request,
    action: str,
    customer_id: str,
    error: ApiError,
) -> ApiError:
    """``error``, once the refused write is in the audit log (as every refusal is)."""
    await audit.record(
        web.database,
        web.clock,
        principal,
        action,
        f"customer:{customer_id}"[:200],
        client_source(request),
        outcome="refused",
        detail={"reason": error.message},
    )
    return error


def _check_channels(web: WebState, body: CustomerRow) -> None:
    """Refuse a preferred order naming a channel the configuration lacks, as the import does
    (the model alone knows names only by their form)."""
    problems = unconfigured_channels(body, web.settings.channels)
    if problems:
        raise ApiError(422, "; ".join(map(str, problems)), field="body.channels")


async def _detail(web: WebState, customer_id: str) -> CustomerDetailOut:
    async with web.database.session() as session:
        customer = await session.get(Customer, customer_id)
        if customer is None:
            raise ApiError(404, f"no customer with id {customer_id!r}", field="path.customer_id")
        points = (
            await session.execute(
                select(ContactPoint)
                .where(ContactPoint.customer_id == customer_id)
                .order_by(ContactPoint.id)
            )
        ).scalars()
        topics = (
            await session.execute(
                select(Subscription)
                .where(Subscription.customer_id == customer_id)
                .order_by(Subscription.id)
            )
        ).scalars()
        return CustomerDetailOut(
            **CustomerOut.model_validate(customer).model_dump(),
            contact_points=[ContactPointOut.model_validate(p) for p in points],
            subscriptions=[SubscriptionOut.model_validate(t) for t in topics],
        )


@router.get("", response_model=Page[CustomerOut], summary="Customers by id")
async def list_customers(
    request: Request,
    _: Operator,
    q: Annotated[str | None, Query(max_length=200, description="id or name contains")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
) -> Page[CustomerOut]:
    query = select(Customer).order_by(Customer.id).limit(limit + 1)
    if q:
        escaped = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        pattern = f"%{escaped}%"
        query = query.where(
            or_(Customer.id.ilike(pattern, escape="\\"), Customer.name.ilike(pattern, escape="\\"))
        )
    if cursor is not None:
        query = query.where(Customer.id > cursor)
    async with state_of(request).database.session() as session:
        rows = list((await session.execute(query)).scalars())
    return page_of(rows, limit, CustomerOut, lambda row: row.id)


@router.post(
    "",
    response_model=CustomerDetailOut,
    status_code=201,
    summary="Create a customer",
    responses={**WITH_BODY, **responses(409)},
)
async def create(body: CustomerRow, request: Request, principal: Admin) -> CustomerDetailOut:
    web = state_of(request)
    try:
        _check_channels(web, body)
        try:
            await upsert_customers(
                web.database,
                [body],
                web.clock.now(),
                _audited(web, principal, request, "customer.create", body.id),
                create_only=True,
            )
        except CustomerExists:
            raise ApiError(
                409, f"customer {body.id!r} exists; PUT /api/v1/customers/{{id}}", field="body.id"
            ) from None
    except ApiError as exc:
        raise await _refused(web, principal, request, "customer.create", body.id, exc) from None
    return await _detail(web, body.id)


@router.get(
    "/{customer_id}",
    response_model=CustomerDetailOut,
    summary="One customer",
    responses=responses(404),
)
async def show(customer_id: str, request: Request, _: Operator) -> CustomerDetailOut:
    return await _detail(state_of(request), customer_id)


@router.put(
    "/{customer_id}",
    response_model=CustomerDetailOut,
    summary="Replace a customer: its contact points and subscriptions become the body's "
    "(201 when it is new)",
    responses={201: {"model": CustomerDetailOut, "description": "Created"}, **WITH_BODY},
)
async def replace(
    customer_id: str, body: CustomerRow, request: Request, response: Response, principal: Admin
) -> CustomerDetailOut:
    web = state_of(request)
    try:
        if body.id != customer_id:
            raise ApiError(
                422, f"id: the body's id {body.id!r} is not {customer_id!r}", field="body.id"
            )
        _check_channels(web, body)
    except ApiError as exc:
        raise await _refused(web, principal, request, "customer.update", customer_id, exc) from None
    async with web.database.session() as session:
        new = await session.get(Customer, customer_id) is None
    action = "customer.create" if new else "customer.update"
    # 201 by what the write found (two concurrent PUTs of a new id: one created it).
    created = await upsert_customers(
        web.database, [body], web.clock.now(), _audited(web, principal, request, action, body.id)
    )
    if created:
        response.status_code = 201
    return await _detail(web, customer_id)


@router.delete(
    "/{customer_id}",
    status_code=204,
    summary="Delete a customer and its history",
    responses=responses(404),
)
async def remove(customer_id: str, request: Request, principal: Admin) -> Response:
    web = state_of(request)
    async with web.database.session() as session, session.begin():
        customer = await session.get(Customer, customer_id)
        if customer is not None:
            # Contact points, subscriptions, deliveries and follow-ups go with it (ON DELETE
            # CASCADE): a deletion is an erasure.
            await session.execute(delete(Customer).where(Customer.id == customer_id))
            session.add(
                audit.entry(
                    principal,
                    "customer.delete",
                    f"customer:{customer_id}",
                    client_source(request),
                    web.clock.now(),
                )
            )
    if customer is None:  # audited once the transaction is over (SQLite: one connection)
        missing = ApiError(404, f"no customer with id {customer_id!r}", field="path.customer_id")
        raise await _refused(web, principal, request, "customer.delete", customer_id, missing)
    return Response(status_code=204)


@router.get(
    "/{customer_id}/contact-points",
    response_model=list[ContactPointOut],
    summary="Addresses",
    responses=responses(404),
)
async def contact_points(customer_id: str, request: Request, _: Operator) -> list[ContactPointOut]:
    return (await _detail(state_of(request), customer_id)).contact_points


@router.get(
    "/{customer_id}/subscriptions",
    response_model=list[SubscriptionOut],
    summary="The components and regions it follows",
    responses=responses(404),
)
async def subscriptions(customer_id: str, request: Request, _: Operator) -> list[SubscriptionOut]:
    return (await _detail(state_of(request), customer_id)).subscriptions


@router.post(
    "/import",
    response_model=ImportOut,
    summary="Import CSV or JSON Lines (the body); valid rows are kept, bad ones reported",
    responses=WITH_BODY,
    openapi_extra={
        "requestBody": {
            "content": {
                "text/csv": {"schema": {"type": "string"}},
                "application/x-ndjson": {"schema": {"type": "string"}},
            },
            "required": True,
        }
    },
)
async def import_(
    request: Request,
    principal: Admin,
    format: Annotated[
        str | None, Query(pattern="^(csv|jsonl)$", description="default: from Content-Type")
    ] = None,
) -> ImportOut:
    web = state_of(request)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    fmt = format or {
        "text/csv": "csv",
        "application/x-ndjson": "jsonl",
        "application/jsonl": "jsonl",
        "application/json-lines": "jsonl",
    }.get(content_type)
    if fmt is None:
        raise ApiError(
            415,
            "send text/csv or application/x-ndjson, or say ?format=csv|jsonl",
            field="header.Content-Type",
        )
    with tempfile.TemporaryDirectory(prefix="broadcaster-import-") as folder:
        path = Path(folder) / f"upload.{fmt}"
        size = 0
        with path.open("wb") as sink:
            async for chunk in request.stream():
                size += len(chunk)
                if size > IMPORT_MAX_BYTES:
                    raise ApiError(413, f"the import is larger than {IMPORT_MAX_BYTES} bytes")
                sink.write(chunk)
        try:
            result = await import_customers(
                web.database,
                path,
                clock=web.clock,
                fmt=fmt,
                channels=web.settings.channels,
                staff=web.settings.staff.people,
            )
        except ImportInputError as exc:
            raise ApiError(422, str(exc).replace(str(path), "body"), field="body") from None
    await audit.record(
        web.database,
        web.clock,
        principal,
        "customer.import",
        "customers",
        client_source(request),
        detail={
            "imported": result.imported,
            "rejected": result.rejected,
            "warned": result.warned,
            "format": fmt,
        },
    )
    return ImportOut(
        imported=result.imported,
        rejected=result.rejected,
        errors=[
            ImportErrorOut(line=e.line, field=e.field, message=e.reason)
            for e in result.errors[:IMPORT_ERRORS_SHOWN]
        ],
        warned=result.warned,
        warnings=[
            ImportErrorOut(line=w.line, field=w.field, message=w.reason)
            for w in result.warnings[:IMPORT_ERRORS_SHOWN]
        ],
    )
