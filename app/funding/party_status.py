"""What a party's status and Bakkt's reason code mean, and what the party may do in each.

The reason codes are the table of Bakkt's guide ("PARTY_EVENT Reason Codes",
docs/bakkt-contract.md §4.3 and A10), each with the guide's meaning and the effect an app should
show. Bakkt pairs no reason with a status, so what a party may do follows its status alone; the
reason says why, and for DOCUMENT_VERIFICATION what the consumer can do about it. A code that is
not in the table is kept and shown as Bakkt sent it (and an operator is alerted, by the webhook
receiver): Bakkt may add codes, and a new one must never stop a status from being applied.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.funding.models import PartyStatus


@dataclass(frozen=True, slots=True)
class Reason:
    code: str
    meaning: str
    effect: str


REASONS: dict[str, Reason] = {
    reason.code: reason
    for reason in (
        Reason(
            "ACCOUNT_CLOSURE_REQUESTED",
            "The customer requested account closure.",
            "The account is being closed: no new deposits or bank links.",
        ),
        Reason(
            "MAX_ACH_RETURNS",
            "The party was suspended after too many ACH returns.",
            "No deposits, withdrawals or bank links until Bakkt lifts the suspension.",
        ),
        Reason(
            "COMPLIANCE_LOCKED",
            "The account was suspended by Bakkt's compliance team.",
            "No deposits, withdrawals or bank links until compliance unlocks it.",
        ),
        Reason(
            "LIQUIDATE_ACCOUNT",
            "The party may only sell crypto or withdraw funds.",
            "Withdrawals only: no deposits or bank links.",
        ),
        Reason(
            "OTHER",
            "Suspended for another, unspecified reason.",
            "No deposits, withdrawals or bank links; contact Bakkt support for the reason.",
        ),
        Reason(
            "TAX_ID_MAX_RETRIES",
            "The party reached the maximum number of attempts to verify its tax ID.",
            "No deposits, withdrawals or bank links until the tax ID is verified with Bakkt.",
        ),
        Reason(
            # Not in the guide's table, but in the example at the head of its webhooks page.
            "LIQUIDATED",
            "The party has been liquidated.",
            "Withdrawals only: no deposits or bank links.",
        ),
        Reason(
            "CLOSED",
            "The party has been closed.",
            "Nothing more can be done with the account.",
        ),
        Reason(
            "ENROLLMENT",
            "The party has been enrolled.",
            "The account is usable as its status allows (ACTIVE: everything).",
        ),
        Reason(
            "RISK_KYC",
            "The party failed the CIP (identity) check.",
            "No deposits, withdrawals or bank links while compliance reviews it.",
        ),
        Reason(
            "RISK_OFAC",
            "The party failed OFAC sanctions screening.",
            "No deposits, withdrawals or bank links while compliance reviews it.",
        ),
        Reason(
            "PENDING_REVIEW",
            "The party is in the compliance team's manual review queue.",
            "No deposits, withdrawals or bank links until the review ends.",
        ),
        Reason(
            "DOCUMENT_VERIFICATION",
            "The party must provide more documents to validate its identity.",
            "No deposits, withdrawals or bank links until the consumer uploads an ID and a face "
            "scan at `verificationUrl` before `verificationUrlExpiresAt`.",
        ),
    )
}


@dataclass(frozen=True, slots=True)
class Allowed:
    deposit: bool
    withdraw: bool
    link: bool


def allowed(status: str) -> Allowed:
    """What a party in `status` may do here. An unknown status allows nothing."""
    if status == PartyStatus.ACTIVE:
        return Allowed(deposit=True, withdraw=True, link=True)
    if status == PartyStatus.LIQUIDATED:
        return Allowed(deposit=False, withdraw=True, link=False)
    return Allowed(deposit=False, withdraw=False, link=False)


def reason_fields(code: str | None) -> dict[str, object]:
    """The reason as the gating errors' bodies carry it: `reasonCode` raw, always; its meaning
    and effect when the code is one of the guide's."""
    known = REASONS.get(code) if code else None
    fields: dict[str, object] = {"reasonCode": code}
    if known is not None:
        fields["reasonMeaning"] = known.meaning
        fields["reasonEffect"] = known.effect
    return fields
