"""Consumer authentication: Bearer JWTs from the partner's identity provider."""

from app.auth.dependencies import authenticate, party_access
from app.auth.tokens import Principal, TokenVerifier

__all__ = ["Principal", "TokenVerifier", "authenticate", "party_access"]
