"""The admin API's problems, each with its HTTP status and machine `code` (app/errors.py)."""

from __future__ import annotations

from app.errors import Conflict, Forbidden, NotFound


class AdminSubjectRequired(Forbidden):
    code = "admin_subject_required"
    title = "Admin actions are recorded under the token's subject; this token names none"


class TransactionNotHeld(Conflict):
    code = "transaction_not_held"
    title = "The transaction is not held for review"


class TransactionInFlight(Conflict):
    code = "transaction_in_flight"
    title = "The consumer's request may still be talking to Bakkt about this transaction"


class WebhookEventNotFound(NotFound):
    code = "webhook_event_not_found"
    title = "No such stored webhook event"


class WebhookEventApplied(Conflict):
    code = "webhook_event_applied"
    title = "The webhook event has been applied already"


class WebhookEventRecorded(Conflict):
    code = "webhook_event_recorded"
    title = "The transaction's history holds this event already"


class WebhookEventUnreadable(Conflict):
    code = "webhook_event_unreadable"
    title = "The stored webhook body still cannot be read"


class WebhookEventBodyCleared(Conflict):
    code = "webhook_event_body_cleared"
    title = "Retention has cleared the stored webhook body"


class BankAccountAlreadyDisabled(Conflict):
    code = "bank_account_already_disabled"
    title = "The bank account is disabled already"


class BankAccountNotOperatorDisabled(Conflict):
    code = "bank_account_not_disabled_by_operator"
    title = "Only a bank account an operator disabled can be enabled again"


class AlertNotFound(NotFound):
    code = "alert_not_found"
    title = "No such alert"


class AlertAlreadyResolved(Conflict):
    code = "alert_already_resolved"
    title = "The alert is resolved already"
