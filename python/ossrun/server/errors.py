"""Errors as OpenAI's error JSON: {"error": {"message", "type", "param", "code"}}, with the HTTP
status a client expects (400 bad body, 401, 404, 413 prompt over the context, 429 queue full,
503 while the model loads). Nothing the model writes can end in a 500."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
          405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
          503: "server_error"}


class APIError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None, type: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPES.get(status, "server_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def _loc(loc) -> str:
    """pydantic's location ("body", "messages", 0, "role") as OpenAI writes it: messages[0].role."""
    out = ""
    for part in loc:
        if part == "body" and not out:
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and not part.startswith(("function-", "literal[", "union[")):
            out += ("." if out else "") + part
    return out


def validation_error(exc: RequestValidationError) -> APIError:
    errors = exc.errors()
    if not errors:
        return APIError(400, "Invalid request body")
    e = errors[0]
    param = _loc(e.get("loc", ()))
    if e.get("type") == "missing":
        return APIError(400, f"Missing required parameter: '{param}'.", param=param,
                        code="missing_required_parameter")
    if e.get("type") in ("json_invalid", "model_attributes_type") or not param:
        return APIError(400, "The request body is not a valid JSON object: " + e.get("msg", ""),
                        param=param or None)
    return APIError(400, f"Invalid value for '{param}': {e.get('msg', 'invalid')}.", param=param,
                    code="invalid_value")


def install(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        message = "Unknown path" if exc.status_code == 404 else str(exc.detail)
        return APIError(exc.status_code, f"{message}: {request.method} {request.url.path}").response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        return APIError(500, f"Internal error: {type(exc).__name__}: {exc}").response()
