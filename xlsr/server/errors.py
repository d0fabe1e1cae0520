"""What a request can do wrong: an HTTP status, a type naming the cause, one line of message."""

from __future__ import annotations

from ..errors import XlsrError


class RequestError(XlsrError):
    """A bad request: answered `status` with `{"error": {"message", "type", "param"}}`; the server goes on."""

    def __init__(self, status: int, type: str, message: str, param: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.type, self.message, self.param = status, type, message, param
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.type}}
