"""Webhooks to the partner's back end: the events of `app.events`, signed as Standard Webhooks
and delivered at least once, in order per party per endpoint (docs/partner-webhooks.md)."""
