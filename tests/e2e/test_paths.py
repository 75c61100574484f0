"""The OpenAI routes without ``/v1``, as DeepSeek serves them, and no redirects."""

from __future__ import annotations

import httpx
import openai
import pytest

from .conftest import Gateway


def test_the_openai_sdk_with_deepseeks_base_url(gateway: Gateway) -> None:
    c = openai.OpenAI(base_url=gateway.url, api_key="test", max_retries=0)
    chat = c.chat.completions.create(
        model="deepseek-chat", messages=[{"role": "user", "content": "hi"}]
    )
    assert chat.choices[0].message.content
    with c.chat.completions.create(
        model="deepseek-chat", messages=[{"role": "user", "content": "hi"}], stream=True
    ) as stream:
        assert any(chunk.choices and chunk.choices[0].delta.content for chunk in stream)
    fim = c.completions.create(model="deepseek-chat", prompt="def f(", suffix="    return 1")
    assert fim.choices[0].text is not None
    assert "deepseek-chat" in {m.id for m in c.models.list()}
    assert c.models.retrieve("deepseek-chat").id == "deepseek-chat"
    assert c.responses.create(model="deepseek-chat", input="hi").output_text


def test_the_beta_base_url_serves_fim(gateway: Gateway) -> None:
    c = openai.OpenAI(base_url=gateway.url + "/beta", api_key="test", max_retries=0)
    fim = c.completions.create(model="deepseek-chat", prompt="def f(", suffix="    return 1")
    assert fim.choices[0].text is not None


@pytest.mark.parametrize(
    ("path", "protocol"),
    [("/v1/messages/", "anthropic"), ("/v1/chat/completions/", "openai")],
)
def test_a_trailing_slash_is_a_404_in_the_protocols_shape(
    gateway: Gateway, path: str, protocol: str
) -> None:
    r = httpx.post(gateway.url + path, json={}, timeout=30)
    assert r.status_code == 404, r.text
    error = r.json()["error"]
    assert "no trailing slash" in error["message"]
    if protocol == "anthropic":
        assert error["type"] == "not_found_error"
    else:
        assert error["code"] == "not_found"
    assert r.headers["x-request-id"]


@pytest.mark.parametrize("path", ["/v1/models/", "/models/"])
def test_the_models_list_with_a_trailing_slash_is_a_404_saying_so(
    gateway: Gateway, path: str
) -> None:
    r = httpx.get(gateway.url + path, timeout=30)
    assert r.status_code == 404, r.text
    assert "no trailing slash" in r.json()["error"]["message"]
