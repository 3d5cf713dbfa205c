"""The HTTP errors of rung serve, answered as OpenAI's error JSON.

`{"error": {"message", "type", "param", "code"}}`, the shape every OpenAI client parses; kept
apart from the app so the limits, metrics and app modules raise the same error.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi.responses import JSONResponse


class ServeError(Exception):
    """An HTTP error answered as OpenAI's error JSON; `headers` go on the response (Retry-After)."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = dict(headers or {})

    def payload(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def error_json(status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None, headers: Mapping[str, str] | None = None) -> JSONResponse:
    error = ServeError(status, message, type_, param, code, headers)
    return JSONResponse(error.payload(), status_code=status, headers=error.headers or None)
