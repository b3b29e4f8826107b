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


class BearerAuth:
    """ASGI middleware: every request but OPEN_PATHS passes check_bearer before the app reads or
    validates its body. Plain ASGI: Starlette's BaseHTTPMiddleware re-streams each response body
    through a memory stream, a fifth of the event loop's time per streamed token."""

    def __init__(self, app, api_key: str | None):
        self.app = app
        self.api_key = api_key

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self.api_key and scope["path"] not in OPEN_PATHS:
            value = next((v for k, v in scope["headers"] if k == b"authorization"), None)
            try:
                check_bearer(value.decode("latin-1") if value is not None else None, self.api_key)
            except APIError as e:
                await e.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)
