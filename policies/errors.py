"""The one error hierarchy of tiergate.

Every failure a client can see is a ``TiergateError``: it carries the HTTP status, a
machine-readable code and a message a person can act on. The gateway renders it in the
caller's protocol (OpenAI or Anthropic error shape) in one place; engines translate their
libraries' exceptions into these types in one place each.
"""

from __future__ import annotations

from typing import Any


class TiergateError(Exception):
    """Base of every error that reaches a client."""

    status: int = 500
    code: str = "internal_error"
    type: str = "server_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        retry_after: float | None = None,
        headers: dict[str, str] | None = None,
        detail: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after = retry_after
        self.headers = dict(headers or {})
        # For the log line only: what a library said (exception names, internal
        # addresses), which the client's message leaves out.
        self.detail = detail

    @property
    def logged(self) -> str:
        """The message with its detail, for the log line."""
        return f"{self.message} ({self.detail})" if self.detail else self.message


# ---- client errors (4xx) -------------------------------------------------------------


class InvalidRequest(TiergateError):
    status = 400
    code = "invalid_request"
    type = "invalid_request_error"


class BodyTooLarge(InvalidRequest):
    status = 413
    code = "body_too_large"


class AuthenticationFailed(TiergateError):
    status = 401
    code = "invalid_api_key"
    type = "authentication_error"


class PermissionDenied(TiergateError):
    status = 403
    code = "permission_denied"
    type = "permission_error"


class UnknownModel(TiergateError):
    status = 404
    code = "model_not_found"
    type = "invalid_request_error"


class BudgetExceededError(TiergateError):
    status = 429
    code = "budget_exceeded"
    type = "insufficient_quota"


class RateLimited(TiergateError):
    status = 429
    code = "rate_limit_exceeded"
    type = "rate_limit_error"


# ---- upstream and server errors ------------------------------------------------------


class UpstreamError(TiergateError):
    """The model backend failed. ``retryable`` says whether another replica may help."""

    status = 502
    code = "upstream_error"
    type = "api_error"
    retryable = True


class UpstreamBadRequest(UpstreamError):
    """The backend rejected the request itself (400/422): retrying elsewhere cannot help."""

    status = 400
    code = "upstream_rejected_request"
    type = "invalid_request_error"
    retryable = False


class UpstreamRequestFailed(UpstreamError):
    """A vLLM replica refused this request's own content, not because it is unwell.

    vLLM answers 400/422 for input it refuses, 500 with an error body when an assertion
    fails while it encodes a request, and 501 for input it does not support. The
    replica's siblings would refuse it alike, but another backend (the hosted API, with
    its own encoder and limits) may take it: it goes to the plan's next option once at
    most, and never counts against a replica's breaker. ``attempts`` counts the backends
    that refused it so.
    """

    status = 400
    code = "upstream_request_failed"
    type = "invalid_request_error"
    attempts = 1


class UpstreamConnectionLost(UpstreamError):
    """The backend closed the connection before answering (often an idle keep-alive
    connection it had just closed): sent again once on a fresh connection."""

    status = 503
    code = "upstream_connection_lost"
    type = "overloaded_error"


class UpstreamStreamError(UpstreamError):
    """The backend reported an error inside its stream (an ``error`` event)."""

    code = "upstream_stream_error"


class UpstreamRateLimited(UpstreamError):
    status = 429
    code = "upstream_rate_limited"
    type = "rate_limit_error"


class UpstreamInsufficientBalance(UpstreamError):
    """The hosted account ran out of money (DeepSeek 402). Never retried."""

    status = 402
    code = "upstream_insufficient_balance"
    type = "insufficient_quota"
    retryable = False


class UpstreamUnavailable(UpstreamError):
    status = 503
    code = "upstream_unavailable"
    type = "overloaded_error"


class UpstreamNotConfigured(UpstreamError):
    """The gateway has no credentials for this backend: its operator's fault, never the
    client's (a 401 would send the client looking at its own key). Another option of the
    plan may serve."""

    status = 503
    code = "upstream_not_configured"
    type = "api_error"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"
    type = "timeout_error"


class ClientClosedRequest(TiergateError):
    """The client went away before its answer began (nginx's 499): the upstream call was
    cancelled. Nobody reads this error; it is logged and counted."""

    status = 499
    code = "client_closed_request"


class ServiceUnavailable(TiergateError):
    status = 503
    code = "service_unavailable"
    type = "overloaded_error"


class ConfigError(Exception):
    """A configuration file or setting is invalid. Raised at startup, never per request."""


def json_type(value: Any) -> str:
    """What a decoded JSON value is, in JSON's words, for error messages ("an array", not
    "list")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
