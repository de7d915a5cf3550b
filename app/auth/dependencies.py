"""FastAPI dependencies: who is calling, and may they act for the party in the path."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, FastAPI, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.auth.tokens import AuthenticationRequired, Principal, TokenVerifier
from app.config import Settings
from app.errors import Forbidden, NotFound, Unauthorized

bearer_scheme = HTTPBearer(
    auto_error=False,
    bearerFormat="JWT",
    description="A JWT from the partner's identity provider (`fiat-onramp token` in development).",
)

# Printable ASCII, 1 to 255 characters, except the dot segments `.` and `..` (spelled without
# a lookahead, which the Rust regex engine of pydantic does not have).
PARTY_REF_PATTERN = (
    r"^(?:[\x21-\x2d\x2f-\x7e][\x21-\x7e]{0,254}"
    r"|\.[\x21-\x2d\x2f-\x7e][\x21-\x7e]{0,253}"
    r"|\.\.[\x21-\x7e]{1,253})$"
)


def get_verifier(app: FastAPI) -> TokenVerifier:
    """The app's verifier, built on first use from the app's settings (it holds the JWKS cache)."""
    verifier: TokenVerifier | None = getattr(app.state, "token_verifier", None)
    if verifier is None:
        settings: Settings = app.state.settings
        verifier = app.state.token_verifier = TokenVerifier(settings)
    return verifier


async def authenticate(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Principal:
    if credentials is None:
        raise AuthenticationRequired(
            "Send `Authorization: Bearer <token>`.", headers={"WWW-Authenticate": "Bearer"}
        )
    try:
        return await get_verifier(request.app).verify(credentials.credentials)
    except Unauthorized as exc:
        # RFC 6750 §3: a refused token names the error in WWW-Authenticate.
        exc.headers.setdefault("WWW-Authenticate", 'Bearer error="invalid_token"')
        raise


async def party_access(
    party_ref: Annotated[
        str,
        Path(
            alias="partyRef",
            pattern=PARTY_REF_PATTERN,
            description="The consumer's `partnerPartyRef`",
        ),
    ],
    principal: Annotated[Principal, Depends(authenticate)],
) -> str:
    """The party in the path, if the caller may act for it.

    Another party's path answers 404 exactly like an unknown route, so a consumer cannot learn
    whether some other party exists.
    """
    if not principal.may_act_for(party_ref):
        raise NotFound("Not found.")
    return party_ref


class AdminScopeRequired(Forbidden):
    code = "admin_scope_required"
    title = "This route needs the admin scope"


async def require_admin(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
    """The partner's back end (a token with `AUTH_ADMIN_SCOPE`); consumers get 403.

    A 403, not the 404 of another party's path: admin routes are documented and take no party
    in the path, so their existence is no secret.
    """
    if not principal.admin:
        raise AdminScopeRequired("This route needs a token with the admin scope.")
    return principal
