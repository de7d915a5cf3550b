"""Each metric moves when its event happens (the recovery counters, the circuit and
`bakkt_up` have their own tests in tests/recovery/)."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

from prometheus_client.parser import text_string_to_metric_families

from app.core.metrics import Metrics
from tests.funding.conftest import TokenFactory
from tests.funding.helpers import Execute, link_account, with_key
from tests.webhooks.events import URL, encode, fiat, signed_headers


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_every_known_counter_exists_at_zero_from_the_start() -> None:
    text = Metrics().render().decode()
    for series in (
        'fiat_onramp_job_errors_total{cause="database",worker="settle"} 0.0',
        'fiat_onramp_bakkt_requests_total{operation="transfer",outcome="unknown"} 0.0',
        'fiat_onramp_webhooks_received_total{outcome="rejected"} 0.0',
        'fiat_onramp_idempotency_rejections_total{code="idempotency_key_reused"} 0.0',
        'fiat_onramp_bakkt_token_refreshes_total{outcome="failed"} 0.0',
        "fiat_onramp_idempotency_replays_total 0.0",
        'fiat_onramp_recovery_drift_total{kind="mismatch"} 0.0',
    ):
        assert series in text, series
    # Unknown until this process hears from Bakkt: absent, not a 0 that would page.
    assert "fiat_onramp_bakkt_up" not in text


async def test_requests_bakkt_calls_idempotency_webhooks_and_gauges_move(
    api_with: object, auth: TokenFactory, sql: Execute
) -> None:
    http = await api_with()  # type: ignore[operator]
    metrics: Metrics = http._transport.app.state.metrics  # type: ignore[attr-defined]
    before = scrape((await http.get("/metrics")).text)
    party = f"p-{uuid.uuid4().hex[:12]}"
    headers = auth(party)
    base = f"/v1/parties/{party}"

    assert (await http.get(base, headers=headers)).status_code == 200
    await link_account(http, sql, party, headers)
    deposit = await http.post(
        f"{base}/deposits", json={"amount": "25.00"}, headers=with_key(headers, f"k-{party}")
    )
    assert deposit.status_code == 202
    replay = await http.post(
        f"{base}/deposits", json={"amount": "25.00"}, headers=with_key(headers, f"k-{party}")
    )
    assert replay.headers["Idempotent-Replayed"] == "true"
    reused = await http.post(
        f"{base}/deposits", json={"amount": "26.00"}, headers=with_key(headers, f"k-{party}")
    )
    assert reused.status_code == 422
    event = fiat(
        f"evt-{uuid.uuid4().hex}",
        party=party,
        ref=deposit.json()["id"],
        kind="ACH_DEPOSIT",
        status="COMPLETE",
        amount="25.00",
        at=datetime.now(UTC),
    )
    body = encode(event)
    signed = signed_headers(body, msg_id=event["requestId"])
    assert (await http.post(URL, content=body, headers=signed)).status_code == 200
    assert (await http.post(URL, content=body, headers=signed)).status_code == 200
    forged = {**signed, "webhook-signature": "v1,AAAA"}
    assert (await http.post(URL, content=body, headers=forged)).status_code == 401
    second = await http.post(
        f"{base}/deposits", json={"amount": "30.00"}, headers=with_key(headers)
    )
    assert second.status_code == 202
    await sql(
        "INSERT INTO operator_alerts (kind, subject, detail, data) "
        "VALUES ('transaction_held_for_review', :s, 'test', '{}'), "
        "('webhook_unmatched', :s, 'test', '{}')",
        {"s": f"transaction {party}"},
    )
    await sql(
        "UPDATE transactions SET created_at = clock_timestamp() - interval '2 hours' "
        "WHERE id = :id",
        {"id": second.json()["id"]},
    )
    # An event about a transfer we never made: parked until it matches (or gives up).
    stray = fiat(
        f"evt-{uuid.uuid4().hex}",
        party=party,
        ref=str(uuid.uuid4()),
        kind="ACH_DEPOSIT",
        status="COMPLETE",
        amount="5.00",
        at=datetime.now(UTC),
    )
    stray_body = encode(stray)
    parked = await http.post(
        URL, content=stray_body, headers=signed_headers(stray_body, msg_id=stray["requestId"])
    )
    assert parked.json()["status"] == "PARKED"

    after = scrape((await http.get("/metrics")).text)

    def moved(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    route = "/v1/parties/{partyRef}"
    assert moved("fiat_onramp_http_requests_total", route=route, method="GET", status="200") == 1
    assert (
        moved(
            "fiat_onramp_http_request_duration_seconds_count",
            route=route + "/deposits",
            method="POST",
            status="202",
        )
        == 3  # two deposits and the replay
    )
    assert moved("fiat_onramp_bakkt_requests_total", operation="link_plaid", outcome="ok") == 1
    assert moved("fiat_onramp_bakkt_requests_total", operation="transfer", outcome="ok") == 2
    assert moved("fiat_onramp_bakkt_request_duration_seconds_count", operation="transfer") == 2
    assert moved("fiat_onramp_bakkt_token_refreshes_total", outcome="ok") == 1
    assert after[("fiat_onramp_bakkt_up", ())] == 1
    assert moved("fiat_onramp_idempotency_replays_total") == 1
    assert moved("fiat_onramp_idempotency_rejections_total", code="idempotency_key_reused") == 1
    assert moved("fiat_onramp_webhooks_received_total", outcome="applied") == 1
    assert moved("fiat_onramp_webhooks_received_total", outcome="duplicate") == 1
    assert moved("fiat_onramp_webhooks_received_total", outcome="rejected") == 1
    assert moved("fiat_onramp_webhooks_rejected_total", reason="webhook_signature_invalid") == 1
    # The database's gauges, read by the scrape: the second deposit is open, the first is not.
    assert moved("fiat_onramp_transactions", state="PENDING") == 1
    assert after[("fiat_onramp_oldest_nonterminal_transaction_age_seconds", ())] >= 7200
    assert moved("fiat_onramp_webhooks_received_total", outcome="parked") == 1
    # The parked event, and the unmatched one its unresolved alert stands for.
    assert moved("fiat_onramp_webhook_events_parked") == 2
    assert moved("fiat_onramp_reconciliation_drift") == 1
    assert after[("fiat_onramp_metrics_database_up", ())] == 1
    build = [k for k in after if k[0] == "fiat_onramp_build_info"]
    assert build
    assert after[build[0]] == 1
    assert metrics.value("http_requests_total") >= 8
    assert re.search(
        r"^# TYPE fiat_onramp_webhook_events_parked gauge$", (await http.get("/metrics")).text, re.M
    )
