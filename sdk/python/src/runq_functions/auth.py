"""Checking runq's identity tokens: Google-signed OIDC ID tokens (the emulator's locally), as
``docs/http-functions.md`` describes. Needs PyJWT with cryptography (``pip install
'runq-functions[verify]'``)."""

from __future__ import annotations

import asyncio
from typing import Any, Optional, Sequence

#: Google's signing keys of ID tokens.
GOOGLE_JWKS_URL = "https://www.googleapis.com/oauth2/v3/certs"
#: The two spellings of Google's issuer.
GOOGLE_ISSUERS = ("https://accounts.google.com", "accounts.google.com")


class TokenError(Exception):
    """The request's token is missing or doesn't pass a check (answered ``401``)."""


class Verifier:
    """Verifies ``Authorization: Bearer`` tokens: RS256 by a key of ``jwks_url``, ``iss``
    Google's, ``aud`` = ``audience``, not expired (``leeway`` seconds of skew), ``email_verified``
    and ``email`` one of ``allowed_emails`` (any verified email when empty)."""

    def __init__(
        self,
        audience: str,
        jwks_url: str = GOOGLE_JWKS_URL,
        allowed_emails: Sequence[str] = (),
        leeway: float = 30.0,
    ) -> None:
        import jwt  # PyJWT: only needed when tokens are checked.

        self._jwt = jwt
        self._keys = jwt.PyJWKClient(jwks_url, cache_keys=True)
        self.audience = audience
        self.allowed_emails = {e.lower() for e in allowed_emails}
        self.leeway = leeway

    async def verify(self, authorization: Optional[str]) -> dict[str, Any]:
        """The token's claims, or :class:`TokenError` saying which check failed (never the token)."""
        if not authorization or not authorization.lower().startswith("bearer "):
            raise TokenError("no bearer token")
        token = authorization[len("bearer ") :].strip()
        try:
            key = await asyncio.to_thread(self._keys.get_signing_key_from_jwt, token)
            claims: dict[str, Any] = self._jwt.decode(
                token,
                key.key,
                algorithms=["RS256"],
                audience=self.audience,
                leeway=self.leeway,
                options={"require": ["exp", "iss", "aud"]},
            )
        except Exception as e:  # PyJWT's errors, a JWKS that can't be fetched
            raise TokenError(f"the token doesn't verify: {type(e).__name__}") from None
        if claims.get("iss") not in GOOGLE_ISSUERS:
            raise TokenError("the token's issuer is not Google's")
        if claims.get("email_verified") is not True:
            raise TokenError("the token's email is not verified")
        email = str(claims.get("email", "")).lower()
        if self.allowed_emails and email not in self.allowed_emails:
            raise TokenError("the token's account may not call this function")
        return claims
