import orjson
import pytest

from gateway.media import MediaPolicy, media_note
from gateway.parse import ANTHROPIC_PARAMS, Call, check_params, parse_chat, parse_completion
from policies.errors import BodyTooLarge, InvalidRequest


def chat(body: object, **kw) -> object:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return parse_chat(
        raw, max_bytes=kw.get("max_bytes", 10_000), max_messages=kw.get("max_messages", 5)
    )


OK = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}


@pytest.mark.parametrize(
    ("body", "message", "param"),
    [
        (b"{not json", "not valid JSON", None),
        (b"", "empty", None),
        (b"[1, 2]", "must be a JSON object, not an array", None),
        ({"messages": OK["messages"]}, "'model' is required", "model"),
        ({"model": 3, "messages": OK["messages"]}, "'model' is required", "model"),
        ({"model": "m"}, "'messages' is required", "messages"),
        ({"model": "m", "messages": "hi"}, "must be a list", "messages"),
        ({"model": "m", "messages": []}, "must not be empty", "messages"),
        ({"model": "m", "messages": ["hi"]}, "messages[0] must be an object", "messages"),
        (
            {"model": "m", "messages": [{"role": "wizard", "content": "x"}]},
            "messages[0].role",
            "messages[0].role",
        ),
        (
            {"model": "m", "messages": [{"role": "user", "content": 5}]},
            "string or a list",
            "messages[0].content",
        ),
        (
            {"model": "m", "messages": [{"role": "user", "content": [{"text": "x"}]}]},
            "with a 'type'",
            "messages[0].content[0]",
        ),
        ({**OK, "max_tokens": 0}, "positive integer", "max_tokens"),
        ({**OK, "max_tokens": "10"}, "positive integer", "max_tokens"),
        ({**OK, "max_tokens": True}, "positive integer", "max_tokens"),
        ({**OK, "stream": "yes"}, "'stream' must be true or false", "stream"),
        ({**OK, "stream_options": []}, "must be an object", "stream_options"),
        ({**OK, "tools": {}}, "'tools' must be a list", "tools"),
        (
            {"model": "m", "messages": [{"role": "user", "content": "x"}] * 6},
            "over the limit of 5",
            "messages",
        ),
    ],
)
def test_bad_chat_bodies(body, message: str, param: str | None) -> None:
    with pytest.raises(InvalidRequest) as exc:
        chat(body)
    assert message in exc.value.message
    assert exc.value.param == param
    assert exc.value.status == 400


def test_body_over_limit_is_413() -> None:
    with pytest.raises(BodyTooLarge) as exc:
        chat({**OK, "pad": "x" * 20_000})
    assert exc.value.status == 413 and "limit of 10000 bytes" in exc.value.message


def test_good_chat_body() -> None:
    body = {
        "model": "auto",
        "messages": [
            {"role": "system", "content": "be brief"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "first"},
                    {"type": "image_url", "image_url": {}},
                ],
            },
            {"role": "assistant", "content": None, "tool_calls": []},
            {"role": "user", "content": "second"},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 50,
        "max_completion_tokens": 40,
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "response_format": {"type": "json_object"},
    }
    call = chat(body)
    assert call.model == "auto" and call.stream and call.include_usage
    assert call.max_tokens == 40 and call.last_user_text == "second"
    assert call.has_tools and call.json_mode and call.prompt_tokens_est > 0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"model": "m"}, "'prompt' is required"),
        ({"model": "m", "prompt": "a", "suffix": 1}, "'suffix' must be a string"),
    ],
)
def test_bad_completion_bodies(body: dict, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        parse_completion(orjson.dumps(body), max_bytes=1000)


def test_the_prompt_estimate_counts_the_prompt_only() -> None:
    plain = chat(OK).prompt_tokens_est
    padded = chat(
        {**OK, "user": "u" * 3000, "metadata": {"k": "v" * 3000}, "stream_options": None}
    ).prompt_tokens_est
    assert plain == padded and plain <= 8
    words = "word " * 300  # 1,500 bytes: 500 tokens at 3 bytes a token
    history = [
        {"role": "user", "content": "hi"},
        {
            "role": "assistant",
            "content": None,
            "reasoning_content": words,
            "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": words}}
            ],
        },
        {"role": "tool", "tool_call_id": "c", "content": [{"type": "text", "text": words}]},
    ]
    tool = {"type": "function", "function": {"name": "f", "description": words}}
    est = chat({"model": "m", "messages": history, "tools": [tool]}).prompt_tokens_est
    # 4 x 500 tokens of text; the template: 3 messages, 1 tool call, the tool instructions
    markers = 3 * 4 + 16 + 200 + 8
    assert 4 * 500 + markers <= est <= 4 * 500 + markers + 60
    fim = parse_completion(
        orjson.dumps({"model": "m", "prompt": words, "suffix": words, "user": "u" * 3000}),
        max_bytes=10_000,
    )
    assert 1000 <= fim.prompt_tokens_est <= 1002


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("temperature", "0.7", "'temperature' must be a number, not a string"),
        ("top_p", True, "'top_p' must be a number, not a boolean"),
        ("seed", 1.5, "'seed' must be an integer, not a number"),
        ("stop", [1], "'stop' must be a string or a list of strings, not an array"),
        ("max_tokens", "many", "'max_tokens' must be a positive integer, not a string"),
        ("max_tokens", -3, "'max_tokens' must be a positive integer, not -3"),
    ],
)
def test_standard_parameters_are_type_checked(field: str, value: object, fragment: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        chat({**OK, field: value})
    assert fragment in exc.value.message and exc.value.param == field


def test_null_standard_parameters_are_unset() -> None:
    fields = ("temperature", "top_p", "seed", "stop", "stream", "n", "max_tokens")
    call = chat({**OK, **dict.fromkeys(fields)})
    assert not call.stream and call.max_tokens is None and call.choices == 1


@pytest.mark.parametrize("value", ["x", 5, -1, 1.5, [1], True])
@pytest.mark.parametrize(
    "field", ["chat_template_kwargs", "stream_options", "response_format", "logit_bias", "metadata"]
)
def test_object_parameters_must_be_objects(field: str, value: object) -> None:
    with pytest.raises(InvalidRequest) as exc:
        chat({**OK, field: value})
    assert f"'{field}' must be an object, not" in exc.value.message
    assert exc.value.param == field
    with pytest.raises(InvalidRequest):
        parse_completion(orjson.dumps({"model": "m", "prompt": "p", field: value}), max_bytes=999)


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("temperature", 1e308, "'temperature' must be from 0 to 2, not 1e+308"),
        ("temperature", 2.5, "'temperature' must be from 0 to 2, not 2.5"),
        ("top_p", -0.1, "'top_p' must be from 0 to 1, not -0.1"),
        ("presence_penalty", 2.01, "'presence_penalty' must be from -2 to 2"),
        ("frequency_penalty", -3, "'frequency_penalty' must be from -2 to 2, not -3"),
        ("max_tokens", 10**30, "'max_tokens' is 1e+30, too large: ask for at most 2147483647"),
        ("max_completion_tokens", 2**31, "'max_completion_tokens' is 2147483648, too large"),
    ],
)
def test_standard_parameters_are_range_checked(field: str, value: object, fragment: str) -> None:
    raw = orjson.dumps({**OK, field: 0}).replace(b'":0', b'":' + str(value).encode())
    with pytest.raises(InvalidRequest) as exc:
        chat(raw)
    assert fragment in exc.value.message and exc.value.param == field


def test_the_range_edges_pass() -> None:
    call = chat(
        {
            **OK,
            "temperature": 0,
            "top_p": 1,
            "presence_penalty": -2,
            "frequency_penalty": 2,
            "max_tokens": 2**31 - 1,
        }
    )
    assert call.max_tokens == 2**31 - 1


@pytest.mark.parametrize(
    "text",
    ["QUJD" * 750, "日本語のテキスト" * 100, "🙂" * 500, "x"],
    ids=["base64", "cjk", "emoji", "one-char"],
)
def test_the_prompt_bound_covers_one_token_per_byte_and_the_template(text: str) -> None:
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": text}]
    call = chat({"model": "m", "messages": messages})
    size = len(text.encode()) + 1
    # A byte-level tokenizer: at most a token per byte, plus markers per message and once.
    assert call.prompt_tokens_max >= size + 4 * len(messages) + 16
    assert call.prompt_tokens_est < call.prompt_tokens_max <= 3 * size + 64


# ---- tool choices and tools the backends do not know ------------------------------------------


def _fn(name: str) -> dict:
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}


TOOLS = [_fn("a"), _fn("b"), _fn("c")]


@pytest.mark.parametrize(
    ("choice", "tools", "names", "sent", "note"),
    [
        (
            {
                "type": "allowed_tools",
                "allowed_tools": {
                    "mode": "required",
                    "tools": [{"type": "function", "function": {"name": "b"}}],
                },
            },
            TOOLS,
            ["b"],
            "required",
            "allowed-tools-as-subset=1/3",
        ),
        (
            {
                "type": "allowed_tools",
                "allowed_tools": {
                    "mode": "auto",
                    "tools": [
                        {"type": "function", "function": {"name": "c"}},
                        {"type": "function", "function": {"name": "a"}},
                    ],
                },
            },
            TOOLS,
            ["a", "c"],  # in the order of 'tools'
            "auto",
            "allowed-tools-as-subset=2/3",
        ),
        (
            {
                "type": "allowed_tools",
                "allowed_tools": {
                    "mode": "required",
                    "tools": [{"type": "custom", "custom": {"name": "p"}}],
                },
            },
            [*TOOLS, {"type": "custom", "custom": {"name": "p"}}],
            ["p"],
            "required",
            "allowed-tools-as-subset=1/4",
        ),
        (
            {"type": "custom", "custom": {"name": "p"}},
            [{"type": "custom", "custom": {"name": "p"}}],
            ["p"],
            {"type": "function", "function": {"name": "p"}},
            "custom-tool-as-function=1",
        ),
        ({"type": "function", "function": {"name": "a"}}, TOOLS, ["a", "b", "c"], None, None),
        ("required", TOOLS, ["a", "b", "c"], None, None),
    ],
)
def test_tool_choices_reach_the_backend_in_its_terms(
    choice: object, tools: list, names: list[str], sent: object, note: str | None
) -> None:
    call = chat({**OK, "tools": tools, "tool_choice": choice})
    assert [t["function"]["name"] for t in call.body["tools"]] == names
    assert all(t["type"] == "function" for t in call.body["tools"])
    assert call.body["tool_choice"] == (choice if sent is None else sent)
    assert (note in call.notes) if note else not call.notes


@pytest.mark.parametrize(
    ("tools", "choice", "message"),
    [
        (TOOLS, {"type": "allowed_tools"}, "'tool_choice.allowed_tools' must be an object"),
        (
            TOOLS,
            {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": []}},
            "non-empty",
        ),
        (
            TOOLS,
            {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": "a"}},
            "non-empty",
        ),
        (
            TOOLS,
            {
                "type": "allowed_tools",
                "allowed_tools": {
                    "mode": "any",
                    "tools": [{"type": "function", "function": {"name": "a"}}],
                },
            },
            "'tool_choice.allowed_tools.mode' must be auto or required, not 'any'",
        ),
        (
            TOOLS,
            {
                "type": "allowed_tools",
                "allowed_tools": {"tools": [{"type": "function", "function": {"name": "a"}}]},
            },
            "'tool_choice.allowed_tools.mode' must be auto or required, not null",
        ),
        (
            TOOLS,
            {
                "type": "allowed_tools",
                "allowed_tools": {"mode": "auto", "tools": [{"type": "function", "name": "a"}]},
            },
            "'tool_choice.allowed_tools.tools[0]' must be",
        ),
        (
            TOOLS,
            {
                "type": "allowed_tools",
                "allowed_tools": {
                    "mode": "auto",
                    "tools": [{"type": "function", "function": {"name": "zz"}}],
                },
            },
            "allows the tool 'zz', which is not in 'tools'",
        ),
        (
            None,
            {
                "type": "allowed_tools",
                "allowed_tools": {
                    "mode": "auto",
                    "tools": [{"type": "function", "function": {"name": "a"}}],
                },
            },
            "which is not in 'tools'",
        ),
        (TOOLS, {"type": "custom", "custom": {}}, "'tool_choice' must be none, auto, required"),
        (TOOLS, {"type": "web_search"}, "'tool_choice' must be none, auto, required"),
        (TOOLS, "any", "'tool_choice' must be none, auto, required"),
        ([{"type": "custom"}], None, "tools[0] must be a custom tool"),
        ([{"type": "custom", "custom": {"name": 3}}], None, "tools[0] must be a custom tool"),
        (
            [{"type": "custom", "custom": {"name": "p", "format": {"type": "regex"}}}],
            None,
            "tools[0].custom.format must be",
        ),
        ([{"type": "hosted", "name": "x"}], None, "tools[0] must be a function tool"),
    ],
)
def test_bad_tools_and_tool_choices_are_400s_naming_the_field(
    tools: object, choice: object, message: str
) -> None:
    body = {**OK, "tools": tools, "tool_choice": choice}
    with pytest.raises(InvalidRequest) as exc:
        chat(body)
    assert message in exc.value.message
    assert exc.value.param == ("tools" if choice is None else "tool_choice")


@pytest.mark.parametrize(
    ("fmt", "description"),
    [
        (None, "Apply a patch"),
        ({"type": "text"}, "Apply a patch"),
        (
            {"type": "grammar", "grammar": {"syntax": "lark", "definition": "start: /.+/"}},
            "Apply a patch\n\nThe input must follow this lark grammar:\nstart: /.+/",
        ),
    ],
)
def test_a_custom_tool_is_offered_as_a_function_of_its_input(fmt: object, description: str) -> None:
    custom = {"name": "patch", "description": "Apply a patch"}
    if fmt is not None:
        custom["format"] = fmt
    call = chat({**OK, "tools": [{"type": "custom", "custom": custom}]})
    (tool,) = call.body["tools"]
    assert tool["function"]["name"] == "patch"
    assert tool["function"]["description"] == description
    assert tool["function"]["parameters"]["required"] == ["input"]
    assert call.context == frozenset({"patch"})
    assert call.notes == ["custom-tool-as-function=1"]


def test_a_custom_tool_call_in_the_history_becomes_a_function_call() -> None:
    messages = [
        {"role": "user", "content": "patch it"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "custom", "custom": {"name": "patch", "input": "*** Begin"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "done"},
    ]
    call = chat({"model": "m", "messages": messages})
    assert call.body["messages"][1]["tool_calls"] == [
        {
            "id": "c1",
            "type": "function",
            "function": {"name": "patch", "arguments": '{"input":"*** Begin"}'},
        }
    ]
    bad = [
        messages[0],
        {**messages[1], "tool_calls": [{"type": "custom", "custom": {"name": "p"}}]},
    ]
    with pytest.raises(InvalidRequest) as exc:
        chat({"model": "m", "messages": bad})
    assert exc.value.param == "messages[1].tool_calls" and '"type": "custom"' in exc.value.message


def _nested(levels: int) -> bytes:
    """A chat body whose ``extra`` field nests ``levels`` objects and arrays (the body
    itself is one more level)."""
    inner = b'{"k":' * (levels // 2) + b"[" * (levels - levels // 2)
    value = inner + b'"x"' + b"]" * (levels - levels // 2) + b"}" * (levels // 2)
    return orjson.dumps(OK)[:-1] + b',"extra":' + value + b"}"


@pytest.mark.parametrize("depth", [129, 300, 1000])
def test_a_body_nested_too_deep_is_a_400(depth: int) -> None:
    with pytest.raises(InvalidRequest, match="more than 128 levels deep"):
        chat(_nested(depth - 1))


def test_a_body_nested_to_the_limit_is_accepted() -> None:
    assert chat(_nested(127)).model == OK["model"]


# ---- the media policy on chat content parts (as for Anthropic and Responses) ----------------

# Each content part type that is not text (OpenAI's, and vLLM's audio_url / video_url), and
# the kind the media policy counts it as (``image-as-text`` and the like).
MEDIA_PARTS = [
    ({"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}, "image"),
    ({"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}, "image"),
    ({"type": "input_audio", "input_audio": {"data": "AA==", "format": "wav"}}, "audio"),
    ({"type": "audio_url", "audio_url": {"url": "https://example.com/a.mp3"}}, "audio"),
    ({"type": "video_url", "video_url": {"url": "https://example.com/v.mp4"}}, "video"),
    ({"type": "file", "file": {"file_data": "data:application/pdf;base64,AA=="}}, "file"),
    ({"type": "file", "file": {"file_id": "file-abc"}}, "file"),
]
MEDIA_IDS = [f"{part['type']}-{i}" for i, (part, _) in enumerate(MEDIA_PARTS)]


def _with_part(part: dict, role: str = "user") -> dict:
    """A chat body whose message of ``role`` has a text part, then ``part``."""
    content = [{"type": "text", "text": "look"}, part]
    if role == "tool":
        call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        messages = [
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": content},
        ]
    else:
        messages = [{"role": role, "content": content}]
        if role != "user":
            messages.append({"role": "user", "content": "go"})
    return {"model": "m", "messages": messages}


def chat_with(body: dict, media: MediaPolicy) -> Call:
    return parse_chat(orjson.dumps(body), max_bytes=10_000, max_messages=5, media=media)


@pytest.mark.parametrize(("part", "kind"), MEDIA_PARTS, ids=MEDIA_IDS)
@pytest.mark.parametrize("role", ["user", "system", "developer", "assistant", "tool"])
def test_media_parts_become_text_notes_and_are_counted(part: dict, kind: str, role: str) -> None:
    body = _with_part(part, role)
    index = 2 if role == "tool" else 0
    call = chat_with(body, "note")
    content = call.body["messages"][index]["content"]
    assert content == [{"type": "text", "text": "look"}, {"type": "text", "text": media_note(kind)}]
    assert call.notes == [f"{kind}-as-text=1"]
    if role == "user":
        assert call.last_user_text == "look\n" + media_note(kind)


@pytest.mark.parametrize(("part", "kind"), MEDIA_PARTS, ids=MEDIA_IDS)
@pytest.mark.parametrize("role", ["user", "system", "developer", "assistant", "tool"])
def test_media_policy_reject_refuses_media_parts_naming_them(
    part: dict, kind: str, role: str
) -> None:
    index = 2 if role == "tool" else 0
    with pytest.raises(InvalidRequest) as exc:
        chat_with(_with_part(part, role), "reject")
    assert exc.value.status == 400
    assert exc.value.param == f"messages[{index}].content[1]"
    assert exc.value.message == (
        f"messages[{index}].content[1]: {part['type']} parts are not supported "
        "(DeepSeek V4 reads text only); send text instead"
    )


def test_media_notes_are_counted_per_kind() -> None:
    parts = [part for part, _ in MEDIA_PARTS]
    call = chat_with({"model": "m", "messages": [{"role": "user", "content": parts}]}, "note")
    assert sorted(call.notes) == [
        "audio-as-text=2",
        "file-as-text=2",
        "image-as-text=2",
        "video-as-text=1",
    ]
    # The estimate reads the notes, not the media's own JSON.
    assert all(p["type"] == "text" for p in call.body["messages"][0]["content"])


@pytest.mark.parametrize("media", ["note", "reject"])
def test_text_and_refusal_parts_pass_under_either_media_policy(media: MediaPolicy) -> None:
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "be brief"}]},
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "no"}, {"type": "refusal", "refusal": "no"}],
        },
        {"role": "user", "content": "why"},
    ]
    body = {"model": "m", "messages": messages}
    call = chat_with(orjson.loads(orjson.dumps(body)), media)
    assert call.body["messages"] == messages and call.notes == []


@pytest.mark.parametrize(
    ("part", "param", "message"),
    [
        ({"type": "image"}, "messages[0].content[1].type", "'image' is not a content part type"),
        ({"type": "input_image"}, "messages[0].content[1].type", "is not a content part type"),
        ({"image_url": {"url": "x"}}, "messages[0].content[1]", "an object with a 'type'"),
        ({"type": "text", "text": 5}, "messages[0].content[1].text", "text must be a string"),
    ],
)
@pytest.mark.parametrize("media", ["note", "reject"])
def test_unknown_or_malformed_parts_are_a_400_naming_the_field(
    part: dict, param: str, message: str, media: MediaPolicy
) -> None:
    with pytest.raises(InvalidRequest) as exc:
        chat_with(_with_part(part), media)
    assert exc.value.param == param and message in exc.value.message


def test_completions_know_no_media_policy() -> None:
    call = parse_completion(orjson.dumps({"model": "m", "prompt": "[image]"}), max_bytes=1000)
    assert call.notes == [] and call.body["prompt"] == "[image]"


def test_an_integer_range_is_written_as_integers() -> None:
    with pytest.raises(InvalidRequest) as exc:
        check_params({"top_k": -1}, ANTHROPIC_PARAMS)
    assert exc.value.message == "'top_k' must be from 0 to 2147483647, not -1"
