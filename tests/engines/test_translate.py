import orjson
import pytest

from engines.base import StreamOutcome
from engines.translate import (
    SSENormalizer,
    count_generated,
    generated_chars,
    hosted_body,
    normalize_response,
    vllm_body,
)
from policies.options import NON_THINKING, Mode
from policies.usage import Usage

BODY = {
    "model": "deepseek-chat",
    "messages": [{"role": "user", "content": "hi"}],
    "temperature": 0.2,
    "top_p": 0.9,
    "thinking": {"type": "enabled"},
    "reasoning_effort": "max",
    "user_id": "u1",
}


@pytest.mark.parametrize(
    ("mode", "kwargs", "sampling"),
    [
        (NON_THINKING, {"thinking": False, "enable_thinking": False}, True),
        (
            Mode(True, "low"),  # vLLM's V4 template knows high and max
            {"thinking": True, "enable_thinking": True, "reasoning_effort": "high"},
            False,
        ),
        (
            Mode(True, "high"),
            {"thinking": True, "enable_thinking": True, "reasoning_effort": "high"},
            False,
        ),
        (
            Mode(True, "max"),
            {"thinking": True, "enable_thinking": True, "reasoning_effort": "max"},
            False,
        ),
    ],
)
def test_vllm_body(mode: Mode, kwargs: dict, sampling: bool) -> None:
    out = vllm_body(BODY, mode, "deepseek-ai/DeepSeek-V4-Flash", "chat", stream=False)
    assert out["model"] == "deepseek-ai/DeepSeek-V4-Flash"
    assert out["chat_template_kwargs"] == kwargs
    assert "thinking" not in out and "reasoning_effort" not in out
    assert ("temperature" in out) is sampling and ("top_p" in out) is sampling
    assert out["user_id"] == "u1" and BODY["model"] == "deepseek-chat"  # input untouched


@pytest.mark.parametrize(
    ("mode", "thinking", "effort"),
    [
        (NON_THINKING, {"type": "disabled"}, None),
        (Mode(True, "low"), {"type": "enabled"}, "low"),
        (Mode(True, "max"), {"type": "enabled"}, "max"),
    ],
)
def test_hosted_body(mode: Mode, thinking: dict, effort: str | None) -> None:
    out = hosted_body(BODY, mode, "deepseek-v4-flash", "chat", stream=True)
    assert out["model"] == "deepseek-v4-flash" and out["thinking"] == thinking
    assert out.get("reasoning_effort") == effort
    assert out["stream"] is True and out["stream_options"] == {"include_usage": True}


def test_fim_body_has_no_thinking_fields() -> None:
    out = hosted_body(
        {"model": "x", "prompt": "def f(", "suffix": ")"}, NON_THINKING, "m", "completions", False
    )
    assert "thinking" not in out and out["suffix"] == ")"


def test_normalize_vllm_response_to_deepseek_shape() -> None:
    body = {
        "choices": [
            {"message": {"role": "assistant", "content": "a", "reasoning": "r", "tool_calls": []}}
        ],
        "usage": {
            "prompt_tokens": 300,
            "completion_tokens": 20,
            "prompt_tokens_details": {"cached_tokens": 256},
        },
    }
    usage = normalize_response(body)
    # vLLM reports no reasoning tokens: the output split by characters ("r" vs "a")
    assert usage == Usage(256, 44, 20, 10)
    msg = body["choices"][0]["message"]
    assert msg["reasoning_content"] == "r" and "reasoning" not in msg and msg["tool_calls"] is None
    assert body["usage"]["prompt_cache_hit_tokens"] == 256
    assert body["usage"]["prompt_cache_miss_tokens"] == 44


def feed(lines: list[bytes], include_usage: bool) -> tuple[list[bytes], StreamOutcome]:
    out = StreamOutcome()
    norm = SSENormalizer(out, include_usage=include_usage)
    events = [e for e in (norm.feed(line) for line in lines) if e is not None]
    return events, out


CHUNK = b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"x\\"usage\\": 1"},"finish_reason":null}],"usage":null}'
USAGE = b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":10,"completion_tokens":3,"prompt_tokens_details":{"cached_tokens":4}}}'


def test_plain_chunks_pass_through_byte_for_byte() -> None:
    events, _ = feed([CHUNK, b"", b": keep-alive", b"data: [DONE]"], include_usage=True)
    assert events == [CHUNK + b"\n\n", b": keep-alive\n\n", b"data: [DONE]\n\n"]


@pytest.mark.parametrize("include", [True, False])
def test_usage_chunk_is_read_and_shown_only_if_asked(include: bool) -> None:
    events, out = feed([CHUNK, USAGE, b"data: [DONE]"], include_usage=include)
    assert out.usage == Usage(4, 6, 3, 0)
    usage_events = [e for e in events if b'"prompt_cache_hit_tokens":4' in e]
    assert len(usage_events) == (1 if include else 0)


def test_reasoning_delta_renamed_and_finish_reason_seen() -> None:
    line = b'data: {"choices":[{"index":0,"delta":{"reasoning": "hm"},"finish_reason": "insufficient_system_resource"}]}'
    events, out = feed([line], include_usage=False)
    chunk = orjson.loads(events[0][6:])
    assert chunk["choices"][0]["delta"] == {"reasoning_content": "hm"}
    assert out.finish_reason == "insufficient_system_resource"


def test_malformed_chunk_is_dropped_and_noted() -> None:
    events, out = feed([b'data: {"usage": {broken'], include_usage=True)
    assert events == [] and out.error


def test_reasoning_is_counted_apart_within_the_generated_text() -> None:
    out = StreamOutcome()
    for chunk in (
        b'{"choices":[{"delta":{"reasoning_content":"hmm"}}]}',
        b'{"choices":[{"delta":{"reasoning": "ab"}}]}',
        b'{"choices":[{"delta":{"content":"hello"}}]}',
    ):
        count_generated(out, chunk)
    assert (out.output_chars, out.reasoning_chars) == (10, 5)


def test_a_chunks_generated_text_is_counted_without_its_envelope() -> None:
    env = b'{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m",'
    assert generated_chars(env + b'"choices":[{"index":0,"delta":{"role":"assistant"}}]}') == 0
    assert generated_chars(env + b'"choices":[{"index":0,"delta":{"content":"hello"}}]}') == 5
    assert generated_chars(env + b'"choices":[{"delta":{"reasoning_content":"hmm"}}]}') == 3
    assert generated_chars(env + b'"choices":[{"delta":{"reasoning": "ab"}}]}') == 2
    call = b'"tool_calls":[{"index":0,"function":{"name":"weather","arguments":"{\\"q\\":"}}]'
    assert generated_chars(env + b'"choices":[{"delta":{' + call + b"}}]}") == 7 + 7  # as sent
    assert generated_chars(env + b'"choices":[{"index":0,"text":"def f():"}]}') == 8
    # a key's name inside the text is text; escapes count as sent (never less than the text)
    tricky = orjson.dumps({"choices": [{"delta": {"content": 'say "content":"x" \\'}}]})
    assert (
        generated_chars(tricky) == len(orjson.loads(tricky)["choices"][0]["delta"]["content"]) + 5
    )
