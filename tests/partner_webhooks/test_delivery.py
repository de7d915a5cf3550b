"""Delivery to the partner's back end: every event at least once, in order per party, signed
as Standard Webhooks; failures retried on the schedule (the clock moved, as the recovery tests
move it), a failing party holding up no one else, Retry-After, 3xx, timeouts, 410 and five days
of failure."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from app.config import Settings
from app.core.metrics import Metrics
from app.partner_webhooks.dispatcher import ALERT_DISABLED, CycleClock, Dispatcher
from app.partner_webhooks.service import WebhookEndpointService
from tests.partner_webhooks.conftest import (
    SECRET_A,
    SECRET_B,
    Execute,
    Received,
    Receiver,
    add_endpoint,
    add_event,
    db_now,
    endpoint_of,
    lane_of,
)

Party = Callable[[], str]


def fail_party(party: str, status: int = 500, headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    def decide(r: Received) -> tuple[int, dict[str, str], float]:
        if r.event["partyRef"] == party:
            return status, headers or {}, 0.0
        return 200, {}, 0.0

    return decide


async def test_every_event_arrives_once_in_party_order_and_verifies_with_either_secret(
    sql: Execute, dispatcher: Dispatcher, receiver: Receiver, party: Party
) -> None:
    endpoint = await add_endpoint(sql, receiver.url, secrets=[SECRET_A, SECRET_B])
    parties = [party() for _ in range(3)]
    written: dict[str, list[str]] = {p: [] for p in parties}
    for n in range(6):
        for p in parties:
            written[p].append(await add_event(sql, p, n=n))

    assert await dispatcher.cycle() == 18

    for p in parties:
        assert receiver.ids_of(p) == written[p]
    # A receiver that knows only the old secret, or only the new one, accepts every delivery.
    for secret in (SECRET_A, SECRET_B):
        for item in receiver.delivered:
            payload = Webhook(secret).verify(item.body, item.headers)
            assert payload["id"] == item.headers["webhook-id"]
            assert set(payload) == {"id", "type", "version", "createdAt", "partyRef", "data"}
    other = "whsec_" + "Q0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0M="
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(receiver.delivered[0].body, receiver.delivered[0].headers)
    assert all(r.headers["webhook-signature"].count("v1,") == 2 for r in receiver.delivered)
    rows = await sql(
        "SELECT state, attempts FROM partner_webhook_deliveries WHERE endpoint_id = :e",
        {"e": endpoint},
    )
    assert sorted({(r[0], r[1]) for r in rows}) == [("DELIVERED", 1)]
    for p in parties:
        assert (await lane_of(sql, endpoint, p))["next_attempt_at"] is None
    # Nothing left: another cycle sends nothing.
    assert await dispatcher.cycle() == 0


async def test_a_failing_party_waits_in_order_and_other_parties_are_not_held_up(
    sql: Execute, dispatcher: Dispatcher, receiver: Receiver, party: Party
) -> None:
    endpoint = await add_endpoint(sql, receiver.url)
    stuck, fine = party(), party()
    stuck_ids = [await add_event(sql, stuck, n=n) for n in range(3)]
    fine_ids = [await add_event(sql, fine, n=n) for n in range(3)]
    receiver.decide = fail_party(stuck)
    now = await db_now(sql)

    await dispatcher.cycle(now=now)

    assert receiver.ids_of(fine) == fine_ids
    # Only the first of the stuck party's events was tried; the later ones wait behind it.
    assert receiver.attempts_of(stuck) == [stuck_ids[0]]
    lane = await lane_of(sql, endpoint, stuck)
    assert lane["failures"] == 1
    wait = (lane["next_attempt_at"] - now).total_seconds()
    assert 4.0 <= wait <= 6.0  # the schedule's 5 s, jittered

    # New events of the healthy party go out while the other is still failing.
    later = await add_event(sql, fine, n=9)
    await dispatcher.cycle(now=now + timedelta(seconds=2))
    assert receiver.ids_of(fine) == [*fine_ids, later]
    assert receiver.attempts_of(stuck) == [stuck_ids[0]]

    receiver.decide = lambda _r: (200, {}, 0.0)
    await dispatcher.cycle(now=now + timedelta(seconds=7))
    assert receiver.ids_of(stuck) == stuck_ids
    assert (await lane_of(sql, endpoint, stuck))["failures"] == 0


async def test_a_receiver_down_for_hours_gets_every_event_in_order_on_the_schedule(
    sql: Execute, dispatcher: Dispatcher, receiver: Receiver, party: Party
) -> None:
    endpoint = await add_endpoint(sql, receiver.url)
    parties = [party(), party()]
    written = {p: [await add_event(sql, p, n=n) for n in range(4)] for p in parties}
    receiver.decide = lambda _r: (503, {}, 0.0)
    start = await db_now(sql)

    # At once, then 5 s, 5 min, 30 min, 2 h, 5 h after each failure (each +-10%).
    waits = [5, 300, 1800, 7200, 18000]
    at = start
    await dispatcher.cycle(now=at)
    for step, wait in enumerate(waits, start=2):
        before = len(receiver.received)
        await dispatcher.cycle(now=at + timedelta(seconds=wait * 0.89))
        assert len(receiver.received) == before, f"attempt {step} came early"
        at += timedelta(seconds=wait * 1.11)
        await dispatcher.cycle(now=at)
        for p in parties:
            assert receiver.attempts_of(p) == [written[p][0]] * step
            assert (await lane_of(sql, endpoint, p))["failures"] == step
    assert (await endpoint_of(sql, endpoint))["status"] == "ENABLED"

    # Back about 8 hours after the first failure: the next retry (10 h after the last)
    # delivers everything, in order.
    receiver.decide = lambda _r: (200, {}, 0.0)
    await dispatcher.cycle(now=at + timedelta(hours=11))
    for p in parties:
        assert receiver.ids_of(p) == written[p]
    attempts = await sql(
        "SELECT count(*) FROM partner_webhook_attempts WHERE endpoint_id = :e", {"e": endpoint}
    )
    assert attempts[0][0] == 2 * 6 + 2 * 4
    assert (await endpoint_of(sql, endpoint))["failing_since"] is None


async def test_a_receiver_that_times_out_is_retried_and_the_timeout_is_logged(
    sql: Execute, dispatcher: Dispatcher, receiver: Receiver, party: Party
) -> None:
    endpoint = await add_endpoint(sql, receiver.url)
    p = party()
    ids = [await add_event(sql, p, n=n) for n in range(2)]
    receiver.decide = lambda _r: (200, {}, 4.5)  # past the 3 s timeout of these tests
    now = await db_now(sql)

    await dispatcher.cycle(now=now)

    logged = await sql(
        "SELECT outcome, status_code, error, latency_ms FROM partner_webhook_attempts "
        "WHERE endpoint_id = :e",
        {"e": endpoint},
    )
    assert [(r[0], r[1]) for r in logged] == [("timeout", None)]
    assert "within 3 s" in logged[0][2]
    assert 2900 <= logged[0][3] < 4400
    receiver.decide = lambda _r: (200, {}, 0.0)
    # The retry is due 5 s (+-10%) after the attempt ended, 3 s after it started.
    await dispatcher.cycle(now=now + timedelta(seconds=10))
    # The timed-out request may have reached the receiver: at least once, in order.
    delivered = receiver.ids_of(p)
    assert delivered[-2:] == ids


async def test_a_redirect_is_a_failure_and_is_not_followed(
    sql: Execute, dispatcher: Dispatcher, receiver: Receiver, party: Party
) -> None:
    endpoint = await add_endpoint(sql, receiver.url)
    p = party()
    await add_event(sql, p)
    receiver.decide = lambda _r: (302, {"Location": receiver.url + "/elsewhere"}, 0.0)

    await dispatcher.cycle()

    assert len(receiver.received) == 1  # the Location was not fetched
    row = await sql(
        "SELECT state, last_status, last_error FROM partner_webhook_deliveries "
        "WHERE endpoint_id = :e",
        {"e": endpoint},
    )
    assert row[0][0] == "PENDING"
    assert row[0][1] == 302
    assert "redirect" in row[0][2]
    assert (await lane_of(sql, endpoint, p))["failures"] == 1


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_is_honoured(
    status: int, sql: Execute, dispatcher: Dispatcher, receiver: Receiver, party: Party
) -> None:
    endpoint = await add_endpoint(sql, receiver.url)
    p = party()
    await add_event(sql, p)
    receiver.decide = lambda _r: (status, {"Retry-After": "120"}, 0.0)
    now = await db_now(sql)

    await dispatcher.cycle(now=now)

    lane = await lane_of(sql, endpoint, p)
    assert 119 <= (lane["next_attempt_at"] - now).total_seconds() <= 122  # not the schedule's 5 s
    await dispatcher.cycle(now=now + timedelta(seconds=60))
    assert len(receiver.received) == 1
    receiver.decide = lambda _r: (200, {}, 0.0)
    await dispatcher.cycle(now=now + timedelta(seconds=125))
    assert len(receiver.delivered) == 1


async def test_410_disables_the_endpoint_with_an_alert_and_keeps_its_events(
    sql: Execute,
    dispatcher: Dispatcher,
    receiver: Receiver,
    party: Party,
    session: object,
) -> None:
    endpoint = await add_endpoint(sql, receiver.url)
    a, b = party(), party()
    ids = {p: [await add_event(sql, p, n=n) for n in range(2)] for p in (a, b)}
    receiver.decide = lambda _r: (410, {}, 0.0)

    await dispatcher.cycle()

    found = await endpoint_of(sql, endpoint)
    log = await sql("SELECT outcome, status_code, error FROM partner_webhook_attempts "
                    "WHERE endpoint_id = :e", {"e": endpoint})  # fmt: skip
    assert (found["status"], found["disabled_reason"]) == ("DISABLED", "gone"), log
    alerts = await sql(
        "SELECT count(*) FROM operator_alerts WHERE kind = :k AND subject = :s",
        {"k": ALERT_DISABLED, "s": f"webhook endpoint {endpoint}"},
    )
    assert alerts[0][0] == 1
    # Disabled: nothing more is sent, whatever the clock says.
    sent = len(receiver.received)
    new = await add_event(sql, a, n=5)
    await dispatcher.cycle(now=await db_now(sql) + timedelta(hours=1))
    assert len(receiver.received) == sent

    receiver.decide = lambda _r: (200, {}, 0.0)
    service = WebhookEndpointService(session, dispatcher.settings)  # type: ignore[arg-type]
    await service.enable(endpoint)
    await dispatcher.cycle()
    assert receiver.ids_of(a) == [*ids[a], new]
    assert receiver.ids_of(b) == ids[b]


async def test_five_days_of_failure_disable_the_endpoint_with_an_alert(
    sql: Execute, dispatcher: Dispatcher, receiver: Receiver, party: Party
) -> None:
    endpoint = await add_endpoint(sql, receiver.url)
    p = party()
    await add_event(sql, p)
    receiver.decide = lambda _r: (500, {}, 0.0)
    start = await db_now(sql)

    await dispatcher.cycle(now=start)
    await dispatcher.cycle(now=start + timedelta(days=4, hours=23))
    assert (await endpoint_of(sql, endpoint))["status"] == "ENABLED"
    await dispatcher.cycle(now=start + timedelta(days=5, hours=1))

    found = await endpoint_of(sql, endpoint)
    assert (found["status"], found["disabled_reason"]) == ("DISABLED", "failing")
    alerts = await sql(
        "SELECT detail FROM operator_alerts WHERE kind = :k AND subject = :s",
        {"k": ALERT_DISABLED, "s": f"webhook endpoint {endpoint}"},
    )
    assert len(alerts) == 1
    assert "5 days" in alerts[0][0]
    pending = await sql(
        "SELECT count(*) FROM partner_webhook_deliveries WHERE endpoint_id = :e "
        "AND state = 'PENDING'",
        {"e": endpoint},
    )
    assert pending[0][0] == 1


async def test_the_event_type_filter_sends_only_the_chosen_types(
    sql: Execute, dispatcher: Dispatcher, receiver: Receiver, party: Party
) -> None:
    await add_endpoint(sql, receiver.url, event_types=["transaction.returned"])
    p = party()
    await add_event(sql, p, "transaction.completed")
    wanted = await add_event(sql, p, "transaction.returned")

    await dispatcher.cycle()

    assert receiver.ids_of(p) == [wanted]


async def test_a_lane_claimed_by_a_worker_is_not_sent_by_another(
    sql: Execute, dispatcher: Dispatcher, receiver: Receiver, party: Party
) -> None:
    endpoint = await add_endpoint(sql, receiver.url)
    p = party()
    await add_event(sql, p)
    now = await db_now(sql)
    # Another replica claimed the lane a moment ago and is sending.
    await dispatcher.cycle(now=now - timedelta(days=1))  # fans out; receiver answers 200
    assert len(receiver.received) == 1
    second = await add_event(sql, p)
    token = uuid.uuid4()
    await dispatcher._fan_out(now)
    await sql(
        "UPDATE partner_webhook_lanes SET next_attempt_at = :until, claim_token = :t "
        "WHERE endpoint_id = :e AND party_ref = :p",
        {"until": now + timedelta(seconds=30), "t": token, "e": endpoint, "p": p},
    )

    await dispatcher.cycle(now=now)
    assert len(receiver.received) == 1
    # The lease runs out (that worker died): the event is sent by this one.
    await dispatcher.cycle(now=now + timedelta(seconds=31))
    assert receiver.ids_of(p)[-1] == second


async def _claimed_by(
    sql: Execute, endpoint: uuid.UUID, party_ref: str, *, heartbeat_age: timedelta
) -> uuid.UUID:
    """The lane held by another process's claim, a lease ahead; that process's last heartbeat
    was `heartbeat_age` ago."""
    holder = uuid.uuid4()
    await sql(
        "INSERT INTO service_processes (id, kind, hostname, pid, started_at, heartbeat_at) "
        "VALUES (:id, 'serve', 'elsewhere', 1, clock_timestamp() - interval '1 hour', "
        "clock_timestamp() - CAST(:age AS interval))",
        {"id": holder, "age": heartbeat_age},
    )
    await sql(
        "UPDATE partner_webhook_lanes SET next_attempt_at = clock_timestamp() + interval "
        "'100 seconds', claim_token = :t, claim_holder = :h "
        "WHERE endpoint_id = :e AND party_ref = :p",
        {"t": uuid.uuid4(), "h": holder, "e": endpoint, "p": party_ref},
    )
    return holder


async def test_a_lane_whose_holder_stopped_its_heartbeat_is_sent_without_waiting_for_the_lease(
    sql: Execute, dispatcher: Dispatcher, receiver: Receiver, party: Party
) -> None:
    endpoint = await add_endpoint(sql, receiver.url)
    p = party()
    event = await add_event(sql, p)
    await dispatcher._fan_out(await db_now(sql))
    # A replica claimed the lane and was SIGKILLed: its heartbeat is older than
    # PROCESS_STALE_AFTER (6 s), its lease has 100 s to go.
    await _claimed_by(sql, endpoint, p, heartbeat_age=timedelta(seconds=30))

    await dispatcher.cycle()

    assert receiver.ids_of(p) == [event]
    [lane] = await sql(
        "SELECT claim_token, claim_holder, next_attempt_at FROM partner_webhook_lanes "
        "WHERE endpoint_id = :e AND party_ref = :p",
        {"e": endpoint, "p": p},
    )
    assert (lane.claim_token, lane.claim_holder, lane.next_attempt_at) == (None, None, None)


async def test_a_lane_whose_holder_is_alive_waits_for_its_lease(
    sql: Execute, dispatcher: Dispatcher, receiver: Receiver, party: Party
) -> None:
    endpoint = await add_endpoint(sql, receiver.url)
    p = party()
    await add_event(sql, p)
    await dispatcher._fan_out(await db_now(sql))
    await _claimed_by(sql, endpoint, p, heartbeat_age=timedelta(seconds=1))

    await dispatcher.cycle()

    assert receiver.ids_of(p) == []


async def test_this_dispatchers_claims_name_its_process(
    sql: Execute,
    factory: async_sessionmaker[AsyncSession],
    wsettings: Settings,
    receiver: Receiver,
    party: Party,
) -> None:
    await add_endpoint(sql, receiver.url)
    p = party()
    await add_event(sql, p)
    me = uuid.uuid4()
    named = Dispatcher(factory, wsettings, metrics=Metrics(), process_id=me)
    try:
        await named._fan_out(await db_now(sql))
        lanes = await named._claim(CycleClock(await db_now(sql)), 8)
    finally:
        await named.aclose()

    assert [lane.party_ref for lane in lanes] == [p]
    holders = await sql(
        "SELECT claim_holder FROM partner_webhook_lanes WHERE party_ref = :p", {"p": p}
    )
    assert [row[0] for row in holders] == [me]
