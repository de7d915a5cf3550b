"""Imports every table module so `Base.metadata` is complete (Alembic and the tests use it)."""

from app.alerts.models import OperatorAlert
from app.db import Base
from app.events.models import Event
from app.funding.models import (
    BankAccount,
    BankAccountHistory,
    Party,
    PartyLimit,
    Transaction,
    TransactionHistory,
)
from app.idempotency.models import IdempotencyKey
from app.partner_webhooks.models import (
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookLane,
)
from app.processes.models import ServiceProcess
from app.recovery.models import RecoveryJob
from app.webhooks.models import WebhookEvent

__all__ = [
    "BankAccount",
    "BankAccountHistory",
    "Base",
    "Event",
    "IdempotencyKey",
    "OperatorAlert",
    "Party",
    "PartyLimit",
    "RecoveryJob",
    "ServiceProcess",
    "Transaction",
    "TransactionHistory",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookEndpoint",
    "WebhookEvent",
    "WebhookLane",
]
