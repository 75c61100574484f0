"""What a refused client reads: Anthropic error types per status, rate-limit and budget
messages that say only what is true."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway.budgets.base import BudgetExceeded, Window
from gateway.errors import anthropic_type, error_body
from gateway.http_guard import HeadTimeout, HeadTooLarge
from gateway.money import MoneyAccounting, rate_limits
from policies.budget import BudgetSpec
from policies.errors import BodyTooLarge, InvalidRequest, UpstreamTimeout


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (408, "invalid_request_error"),
        (413, "request_too_large"),
        (422, "invalid_request_error"),
        (429, "rate_limit_error"),
        (431, "invalid_request_error"),
        (500, "api_error"),
        (504, "timeout_error"),
        (599, "api_error"),
    ],
)
def test_anthropic_error_type_of_each_status(status: int, kind: str) -> None:
    assert anthropic_type(status) == kind


@pytest.mark.parametrize(
    ("err", "kind"),
    [
        (HeadTooLarge("head"), "invalid_request_error"),
        (HeadTimeout("slow"), "invalid_request_error"),
        (BodyTooLarge("big"), "request_too_large"),
        (InvalidRequest("bad"), "invalid_request_error"),
        (UpstreamTimeout("slow upstream"), "timeout_error"),
    ],
)
def test_client_errors_are_never_server_error_types_for_anthropic(
    err: InvalidRequest, kind: str
) -> None:
    body = error_body(err, "anthropic")
    assert body == {"type": "error", "error": {"type": kind, "message": err.message}}


@pytest.mark.parametrize(
    ("rpm", "tpm", "words"),
    [
        (5, None, "5 requests"),
        (None, 1000, "1000 tokens"),
        (5, 1000, "5 requests and 1000 tokens"),
    ],
)
def test_the_rate_limit_message_names_only_the_limits_that_are_set(
    rpm: int | None, tpm: int | None, words: str
) -> None:
    assert rate_limits(rpm, tpm) == words


def _refusal(period: str, amount: int = 500_000) -> tuple[str, dict[str, str], float | None]:
    spec = BudgetSpec("b1", "key", "k1", period, 1_000_000)  # type: ignore[arg-type]
    window = Window.of(spec, datetime(2026, 12, 5, 12, tzinfo=UTC), "UTC")
    err = MoneyAccounting._refusal(BudgetExceeded(window, 10, amount), amount)
    assert err.status == 429 and err.code == "budget_exceeded"
    return err.message, err.headers, err.retry_after


def test_a_total_budget_says_it_does_not_reset() -> None:
    message, headers, retry = _refusal("total")
    assert "this budget does not reset" in message and "9999" not in message
    assert "x-tiergate-budget-reset" not in headers and retry is None
    assert headers["x-tiergate-budget-id"] == "b1"
    assert headers["x-tiergate-budget-remaining-usd"] == "0.000000010"


def test_a_periodic_budget_says_when_it_resets() -> None:
    message, headers, retry = _refusal("day")
    assert "it resets at 2026-12-06T00:00:00+00:00" in message
    assert headers["x-tiergate-budget-reset"] == "2026-12-06T00:00:00+00:00"
    assert retry is not None and retry >= 1


@pytest.mark.parametrize("period", ["day", "total"])
def test_a_request_bigger_than_the_whole_limit_is_not_told_to_wait(period: str) -> None:
    message, headers, retry = _refusal(period, amount=1_000_001)
    assert "more than the budget's whole limit, so waiting will not help" in message
    assert "Lower max_tokens" in message and "resets" not in message
    assert retry is None and "x-tiergate-budget-reset" not in headers
