"""A credential the gateway cannot use is a 401, never an anonymous request; an empty one is
no credential (served anonymously where keys are not required)."""

from __future__ import annotations

import httpx
import pytest

from .conftest import Gateway

CHAT = {"model": "deepseek-chat", "messages": [{"role": "user", "content": "hi"}]}
MESSAGES = {**CHAT, "max_tokens": 16}
UNUSABLE = [
    {"api-key": "tg-secret-key"},  # the Azure OpenAI SDK's header
    {"authorization": "Basic tg-secret-key"},
    {"authorization": "Token tg-secret-key"},
    {"authorization": "tg-secret-key"},
]


@pytest.mark.parametrize("headers", UNUSABLE)
def test_an_unusable_credential_is_401_in_the_openai_shape(
    gateway: Gateway, headers: dict[str, str]
) -> None:
    r = httpx.post(gateway.url + "/v1/chat/completions", json=CHAT, headers=headers, timeout=30)
    assert r.status_code == 401, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_api_key"
    assert "'Authorization: Bearer <key>' or 'x-api-key: <key>'" in error["message"]
    assert "tg-secret-key" not in r.text


@pytest.mark.parametrize("headers", UNUSABLE[:2])
def test_an_unusable_credential_is_401_in_the_anthropic_shape(
    gateway: Gateway, headers: dict[str, str]
) -> None:
    r = httpx.post(gateway.url + "/v1/messages", json=MESSAGES, headers=headers, timeout=30)
    assert r.status_code == 401, r.text
    assert r.json()["error"]["type"] == "authentication_error"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": "Bearer"},  # a client configured without a key
        {"x-api-key": ""},
        {"authorization": "Bearer test"},
        {"authorization": "bearer test"},
        {"x-api-key": "test"},
        {"authorization": "Basic proxy-credential", "x-api-key": "test"},
    ],
)
def test_no_credential_or_a_usable_one_is_served(gateway: Gateway, headers: dict[str, str]) -> None:
    r = httpx.post(gateway.url + "/v1/chat/completions", json=CHAT, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
