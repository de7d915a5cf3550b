"""The problems the webhook endpoint routes answer, each with its stable `code`."""

from __future__ import annotations

from app.errors import Conflict, NotFound, Unprocessable


class EndpointNotFound(NotFound):
    code = "webhook_endpoint_not_found"
    title = "No such webhook endpoint"


class EventNotFound(NotFound):
    code = "event_not_found"
    title = "No such event"


class InvalidWebhookUrl(Unprocessable):
    code = "invalid_webhook_url"
    title = "The URL cannot be a webhook target"


class TargetNotAllowed(Unprocessable):
    code = "webhook_target_not_allowed"
    title = "The URL names a private, loopback or link-local address"


class InvalidWebhookSecret(Unprocessable):
    code = "invalid_webhook_secret"
    title = "A secret is not a Standard Webhooks `whsec_` secret of at least 24 bytes"


class WebhookSecretRequired(Unprocessable):
    code = "webhook_secret_required"
    title = "The endpoint needs a secret (PARTNER_WEBHOOK_SECRETS is empty)"


class UnknownEventType(Unprocessable):
    code = "unknown_event_type"
    title = "An event type is not one the service sends"


class EventFiltered(Unprocessable):
    code = "event_type_filtered"
    title = "The endpoint's event-type filter does not take this event"


class InvalidRedelivery(Unprocessable):
    code = "invalid_redelivery"
    title = "Give either an eventId, or since and until (since before until)"


class RedeliveryTooLarge(Unprocessable):
    code = "redelivery_too_large"
    title = "The range holds too many events; page GET /v1/events instead"


class SecretSealingUnavailable(Conflict):
    code = "webhook_secret_sealing_unavailable"
    title = "Own secrets cannot be stored: PARTNER_WEBHOOK_SEALING_KEYS is not set"


class ManagedBySettings(Conflict):
    code = "webhook_endpoint_managed_by_settings"
    title = "This endpoint comes from PARTNER_WEBHOOK_URLS; change it there"
