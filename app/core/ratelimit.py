"""Rate limits per party and per route: a FastAPI dependency on the routers that act for a party.

The bucket is chosen after the token is verified, never from the path alone: a consumer is
counted as its own party whatever path it asks for, so nobody can use up another party's
allowance. An admin token (the partner's back end) is counted as the party in the path, or as
its subject on routes without one. The check runs before the route's own dependencies, so a
refused request has claimed no idempotency key and written nothing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.routing import BaseRoute

from app.auth.dependencies import authenticate
from app.auth.tokens import Principal
from app.config import Settings
from app.core.rates import Rate, RouteLimiter
from app.errors import PROBLEM_JSON, RETRY_AFTER, AppError, problem_responses
from app.startup import ConfigError

_READS = frozenset({"GET", "HEAD"})


class RateLimited(AppError):
    status_code = 429
    code = "rate_limited"
    title = "Too many requests"


class RateLimits:
    """This process's limiters, one per route and method, built on first use."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.reads = settings.rate_limit_reads
        self.writes = settings.rate_limit_writes
        self.overrides = dict(settings.rate_limit_routes)
        self.clock = clock
        # By id() of the route a request matched (routes are not hashable; they live as long
        # as the app) and method.
        self._limiters: dict[tuple[int, str], tuple[RouteLimiter, str]] = {}
        # The route's path template as the app serves it: a router included with a prefix
        # keeps its routes' own, shorter paths.
        self._paths: dict[int, str] = {}

    def rate_for(self, method: str, path: str) -> Rate:
        rate = self.overrides.get(f"{method} {path}")
        if rate is not None:
            return rate
        return self.reads if method in _READS else self.writes

    def bind_routes(self, routes: list[BaseRoute]) -> None:
        """Learn the app's routes; every RATE_LIMIT_ROUTES entry must name one of them (a typo
        would limit nothing)."""
        known: set[str] = set()
        for context in iter_route_contexts(routes):
            path = context.path
            if path is None or not isinstance(context.original_route, APIRoute):
                continue
            self._paths.setdefault(id(context.original_route), path)
            known.update(f"{method} {path}" for method in context.methods or ())
        unknown = sorted(set(self.overrides) - known)
        if unknown:
            raise ConfigError(
                f"RATE_LIMIT_ROUTES: {', '.join(unknown)} is not a route of the service "
                "(`METHOD /path/template` as in /openapi.json)"
            )

    def check(self, method: str, route: APIRoute, key: object) -> None:
        """Count one request; raises RateLimited, with the seconds to wait, when over."""
        found = self._limiters.get((id(route), method))
        if found is None:
            path = self._paths.get(id(route), route.path)
            found = self._limiters[(id(route), method)] = (
                RouteLimiter(self.rate_for(method, path)),
                path,
            )
        limiter, path = found
        wait = limiter.hit(key, self.clock())
        if wait:
            seconds = math.ceil(wait)
            raise RateLimited(
                f"At most {limiter.rate} requests to {method} {path}; retry in {seconds} s.",
                retry_after=max(1, seconds),
            )


def _bucket(request: Request, principal: Principal) -> object:
    if not principal.admin:
        return ("party", principal.party_ref or principal.subject)
    party = request.path_params.get("partyRef")
    if party is not None:
        return ("party", party)
    return ("admin", principal.subject)


async def enforce_rate_limit(
    request: Request, principal: Annotated[Principal, Depends(authenticate)]
) -> None:
    # `authenticate` is the routes' own dependency: FastAPI runs it once per request.
    limits: RateLimits | None = request.app.state.rate_limits
    if limits is None:
        return
    limits.check(request.method, request.scope["route"], _bucket(request, principal))


_DECLARED = problem_responses(RateLimited)
_DECLARED[429]["content"] = {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}
_DECLARED[429]["headers"] = {
    RETRY_AFTER: {"description": "Seconds to wait before retrying", "schema": {"type": "integer"}}
}

# `app.include_router(router, **RATE_LIMITED)`: every route of the router counted and the 429
# declared in its OpenAPI entry.
RATE_LIMITED: dict[str, Any] = {
    "dependencies": [Depends(enforce_rate_limit)],
    "responses": _DECLARED,
}
