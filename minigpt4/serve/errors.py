"""The server's error type: an HTTP status plus OpenAI's error body ``{"error": {"message", "type", "code"}}``."""

from __future__ import annotations

from typing import Any, Dict, Optional


class ApiError(Exception):
    """A request the server refuses; ``status`` is the HTTP status, ``code`` a stable machine-readable name."""

    def __init__(self, status: int, message: str, code: str, kind: str = "invalid_request_error",
                 param: Optional[str] = None, headers: Optional[Dict[str, str]] = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.kind = kind
        self.param = param
        self.headers = headers or {}

    def body(self) -> Dict[str, Any]:
        """OpenAI's error shape."""
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def bad_request(message: str, code: str, param: Optional[str] = None) -> ApiError:
    """A 400 ``invalid_request_error``."""
    return ApiError(400, message, code, param=param)
