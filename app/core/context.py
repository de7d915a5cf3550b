"""Per-request context shared by the layers without passing it through every call."""

from contextvars import ContextVar

# Set by the request-id middleware for each incoming request; the Bakkt client forwards it as
# `x-tracking-id` so one consumer request can be followed into Bakkt's logs.
request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)


def current_request_id() -> str | None:
    return request_id_var.get()
