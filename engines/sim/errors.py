"""Errors the simulator answers with, in each backend's own OpenAI-shaped error body.

vLLM: ``{"error": {"message", "type": "BadRequestError", "param", "code": 400}}``.
Hosted DeepSeek API: ``{"error": {"message", "type": "invalid_request_error", "param",
"code": "invalid_request_error"}}`` with the documented status meanings (402 insufficient
balance, 429 rate limit, 503 overloaded).
"""

from __future__ import annotations

from typing import Any

from engines.sim.config import Mode

_VLLM_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    402: "PaymentRequiredError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    422: "UnprocessableEntityError",
    429: "RateLimitError",
    500: "InternalServerError",
    501: "NotImplementedError",
    503: "ServiceUnavailableError",
}

_HOSTED_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "invalid_request_error",
    404: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}

#: What each status means, as the hosted API documents it.
STATUS_MESSAGES = {
    400: "Invalid Format: the request body is malformed",
    401: "Authentication Fails: the API key is wrong",
    402: "Insufficient Balance: top up the account before retrying",
    404: "Not Found",
    422: "Invalid Parameters: the request has invalid parameters",
    429: "Rate Limit Reached: requests are being sent too quickly",
    500: "Server Error: the server encountered an issue",
    503: "Server Overloaded: the server is overloaded due to high traffic",
}


class SimError(Exception):
    """A request the simulated backend refuses, with the status it answers."""

    def __init__(self, status: int, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


def status_message(status: int) -> str:
    return STATUS_MESSAGES.get(status, f"HTTP {status}")


def error_body(mode: Mode, status: int, message: str, param: str | None = None) -> dict[str, Any]:
    if mode == "vllm":
        fallback = "InternalServerError" if status >= 500 else "BadRequestError"
        return {
            "error": {
                "message": message,
                "type": _VLLM_TYPES.get(status, fallback),
                "param": param,
                "code": status,
            }
        }
    err_type = _HOSTED_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": err_type, "param": param, "code": err_type}}
