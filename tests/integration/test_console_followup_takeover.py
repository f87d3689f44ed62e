"""The console's follow-up queue offers an overdue claimed task's take-over to whom the
service allows it (the same rights as the CLI and the API: one service function), and not
before the deadline."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from broadcaster.access import credentials
from broadcaster.store import Followup, FollowupEvent
from tests.integration.test_console import (
    PASSWORD,
    Console,
    app,  # noqa: F401 (the fixture)
    declare,
    run_rounds,
    signed_in,
)


async def test_an_overdue_claimed_task_is_taken_over_from_the_queue(app: Console) -> None:  # noqa: F811
    await credentials.set_account(
        app.state.database, app.clock, name="maria", role="operator", password=PASSWORD
    )
    csrf = await signed_in(app.http, "ann")
    await declare(app, csrf)
    await run_rounds(app)
    async with app.state.database.session() as session:
        first = (await session.execute(select(Followup.id).order_by(Followup.id))).scalar()
    claimed = await app.http.post(f"/console/followups/{first}/claim", data={"csrf_token": csrf})
    assert claimed.status_code == 303
    claim_form = f'action="/console/followups/{first}/claim"'
    manager = app.another_browser()
    async with manager:
        maria_csrf = await signed_in(manager, "maria")
        assert claim_form not in (await manager.get("/console/followups")).text  # ann's, in time
        early = await manager.post(
            f"/console/followups/{first}/claim", data={"csrf_token": maria_csrf}
        )
        assert early.status_code == 422 and "is claimed, not open: ann holds it" in early.text

        app.clock.advance(timedelta(hours=2, minutes=1))  # past the deadline: escalated
        await app.engine.sweep_followups()
        assert claim_form in (await manager.get("/console/followups")).text
        assert claim_form not in (await app.http.get("/console/followups")).text  # ann has it
        taken = await manager.post(
            f"/console/followups/{first}/claim", data={"csrf_token": maria_csrf}
        )
        assert taken.status_code == 303
    async with app.state.database.session() as session:
        task = await session.get(Followup, first)
        details = (
            await session.execute(
                select(FollowupEvent.staff, FollowupEvent.detail).where(
                    FollowupEvent.followup_id == first, FollowupEvent.kind == "claimed"
                )
            )
        ).all()
    assert task is not None and (task.state, task.owner) == ("claimed", "maria")
    assert [staff for staff, _ in details] == ["ann", "maria"]
    assert (details[1][1] or "").startswith("taken over from ann, overdue since ")
