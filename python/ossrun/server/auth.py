"""`--api-key` / OSSRUN_API_KEY: requests must carry `Authorization: Bearer KEY`, compared in
constant time so that the key cannot be guessed byte by byte from response times."""

from __future__ import annotations

import hmac

from .errors import APIError

OPEN_PATHS = frozenset({"/health"})  # load balancers probe it without a key


def check_bearer(authorization: str | None, api_key: str | None) -> None:
    """Raise a 401 APIError unless `authorization` is "Bearer <api_key>" (no key: all pass)."""
    if not api_key:
        return
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise APIError(401, "Missing API key: send 'Authorization: Bearer <key>'.",
                       code="invalid_api_key")
    if not hmac.compare_digest(token.strip().encode(), api_key.encode()):
        raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")
