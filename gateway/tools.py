"""Tools in client bodies: tool names, custom (free-text and grammar) tools, ``tool_choice``
and ``allowed_tools``, and the ``json_schema`` format check, shared by the chat, Responses
and Anthropic parsers. Each refusal is a 400 naming the field.

Custom tools reach the backends as function tools with one string argument, ``input``;
their calls go back to the client as custom tool calls.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from policies.errors import InvalidRequest, json_type

# The one argument of the function a custom (free-text input) tool is offered upstream as.
_CUSTOM_INPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"input": {"type": "string", "description": "the raw input"}},
    "required": ["input"],
}


# Tool names: the hosted API takes letters, digits, underscores and dashes, up to 64;
# self-hosted clients also use dots and colons, so only what no name should hold is
# refused: nothing, over 64 characters, whitespace, control and format (bidi) characters.
_TOOL_NAME_MAX = 64
_BAD_NAME_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})


def check_tool_name(name: str, where: str) -> None:
    """A 400 naming the tool at ``where`` (``tools[3]``) when its name cannot be a tool's."""
    if not name:
        raise InvalidRequest(f"{where}.name must not be empty", param="tools")
    if len(name) > _TOOL_NAME_MAX:
        raise InvalidRequest(
            f"{where}.name has {len(name)} characters; a tool name has at most {_TOOL_NAME_MAX}",
            param="tools",
        )
    for ch in name:
        if unicodedata.category(ch) in _BAD_NAME_CATEGORIES:
            raise InvalidRequest(
                f"{where}.name contains {ascii(ch)}: a tool name may not contain whitespace, "
                "control or formatting characters (use letters, digits, '_', '-', '.' or ':')",
                param="tools",
            )


ToolKind = Literal["function", "custom", "server"]


@dataclass(slots=True)
class ToolNames:
    """The tools a request offers, by name, and each one's kind: names are checked and
    must be unique, and a named ``tool_choice`` must name one of them, of its kind."""

    kinds: dict[str, ToolKind] = field(default_factory=dict)

    def add(self, name: str, kind: ToolKind, where: str) -> None:
        check_tool_name(name, where)
        if name in self.kinds:
            raise InvalidRequest(
                f"{where}.name {name!r} is the name of an earlier tool: tool names in "
                "'tools' must be unique",
                param="tools",
            )
        self.kinds[name] = kind

    def custom(self) -> frozenset[str]:
        return frozenset(n for n, k in self.kinds.items() if k == "custom")

    def choose(self, name: str, kind: ToolKind | None, where: str) -> ToolKind:
        """The kind of the tool ``where`` (a named tool choice, of ``kind`` if given) names;
        a 400 naming ``tool_choice`` when it is not in ``tools`` or is of another kind."""
        offered = self.kinds.get(name)
        if offered is None:
            raise InvalidRequest(
                f"'{where}' names the tool {name!r}, which is not in 'tools'",
                param="tool_choice",
            )
        self.same_kind(name, kind, where)
        return offered

    def same_kind(self, name: str, kind: ToolKind | None, where: str) -> None:
        """A 400 when ``name`` is offered as a tool of another kind than ``kind``."""
        offered = self.kinds.get(name)
        if kind is not None and offered is not None and offered != kind:
            raise InvalidRequest(
                f"'{where}' names {name!r} as a {kind} tool, but it is a {offered} tool in 'tools'",
                param="tool_choice",
            )


_GRAMMAR_SYNTAXES = ("lark", "regex")


def check_custom_tool(description: Any, fmt: Any, where: str, *, nested: bool) -> None:
    """A custom tool's ``description`` (a string) and ``format``: ``{"type": "text"}`` or a
    grammar, ``{"type": "grammar", "syntax": "lark" or "regex", "definition": "..."}``
    (chat nests the two fields in ``"grammar": {...}``). A 400 names the field."""
    if description is not None and not isinstance(description, str):
        raise InvalidRequest(
            f"{where}.description must be a string, not {json_type(description)}", param="tools"
        )
    if fmt is None:
        return
    grammar_shape = (
        '{"type": "grammar", "grammar": {"syntax": "lark" or "regex", "definition": ...}}'
        if nested
        else '{"type": "grammar", "syntax": "lark" or "regex", "definition": ...}'
    )
    if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "grammar"):
        raise InvalidRequest(
            f'{where}.format must be {{"type": "text"}} or {grammar_shape}', param="tools"
        )
    if fmt["type"] == "text":
        return
    grammar = fmt.get("grammar") if nested else fmt
    at = f"{where}.format.grammar" if nested else f"{where}.format"
    if not isinstance(grammar, dict):
        raise InvalidRequest(f"{at} must be an object: {grammar_shape}", param="tools")
    syntax = grammar.get("syntax")
    if syntax not in _GRAMMAR_SYNTAXES:
        raise InvalidRequest(
            f"{at}.syntax must be lark or regex, not {shown_value(syntax)}", param="tools"
        )
    definition = grammar.get("definition")
    if not isinstance(definition, str) or not definition:
        got = "an empty string" if definition == "" else json_type(definition)
        raise InvalidRequest(
            f"{at}.definition must be the grammar as a non-empty string, not {got}",
            param="tools",
        )


# OpenAI's rule for a json_schema response format's name.
_SCHEMA_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")


def check_json_schema(spec: Mapping[str, Any], where: str, param: str) -> None:
    """A ``json_schema`` response format, as OpenAI's API checks it: ``name`` (required;
    letters, digits, '_' and '-', at most 64), ``schema`` an object, ``strict`` true or
    false, ``description`` a string. A 400 names the field."""
    name = spec.get("name")
    if not isinstance(name, str) or not _SCHEMA_NAME.fullmatch(name):
        got = "missing" if name is None else shown_value(name)
        raise InvalidRequest(
            f"'{where}.name' is required: the format's name, of letters, digits, '_' and '-' "
            f"(at most 64), not {got}",
            param=param,
        )
    schema = spec.get("schema")
    if schema is not None and not isinstance(schema, dict):
        raise InvalidRequest(
            f"'{where}.schema' must be a JSON schema object, not {json_type(schema)}",
            param=param,
        )
    strict = spec.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise InvalidRequest(
            f"'{where}.strict' must be true or false, not {json_type(strict)}", param=param
        )
    description = spec.get("description")
    if description is not None and not isinstance(description, str):
        raise InvalidRequest(
            f"'{where}.description' must be a string, not {json_type(description)}",
            param=param,
        )


def custom_tool_function(name: str, description: Any, fmt: Any) -> dict[str, Any]:
    """A custom tool (its input free text, or text in a grammar) as the function tool the
    backends know: one string argument, ``input``, with the grammar in the description.
    Chat nests the grammar (``{"type": "grammar", "grammar": {"syntax", "definition"}}``),
    Responses does not (``{"type": "grammar", "syntax", "definition"}``)."""
    desc = description if isinstance(description, str) else ""
    if isinstance(fmt, dict) and fmt.get("type") == "grammar":
        nested = fmt.get("grammar")
        grammar: dict[str, Any] = nested if isinstance(nested, dict) else fmt
        desc += f"\n\nThe input must follow this {grammar.get('syntax', '')} grammar:\n"
        desc += str(grammar.get("definition", ""))
    return {
        "type": "function",
        "function": {"name": name, "description": desc, "parameters": _CUSTOM_INPUT_SCHEMA},
    }


def custom_tool_arguments(custom: Mapping[str, Any]) -> str:
    """A custom tool call's input as the arguments of the function it is offered as."""
    return orjson.dumps({"input": custom.get("input", "")}).decode()


def custom_tool_input(arguments: str) -> str:
    """The input of a custom tool call from the arguments the model wrote for its function
    (``{"input": ...}``); arguments of another shape are the input as they stand."""
    try:
        raw = orjson.loads(arguments or "{}")
    except orjson.JSONDecodeError:
        return arguments
    value = raw.get("input") if isinstance(raw, dict) else None
    return value if isinstance(value, str) else arguments


_INPUT_WRAPPER = re.compile(r'\s*\{\s*"input"\s*:\s*"')


def custom_tool_input_so_far(arguments: str) -> str:
    """The input of a custom tool call whose arguments were cut off (the stream broke):
    what the model had written of the ``input`` string, decoded, or "" when the cut came
    before it; never the raw wrapper."""
    start = _INPUT_WRAPPER.match(arguments)
    if start is None:
        return ""
    rest = arguments[start.end() :]
    i = 0
    while i < len(rest):  # a closed string: the whole input
        if rest[i] == "\\":
            i += 2
            continue
        if rest[i] == '"':
            return str(orjson.loads('"' + rest[:i] + '"'))
        i += 1
    # Cut inside the string: drop a partly written escape (at most \uXXXX\uXXXX).
    for cut in range(len(rest), max(-1, len(rest) - 12), -1):
        try:
            return str(orjson.loads('"' + rest[:cut] + '"'))
        except orjson.JSONDecodeError:
            continue
    return ""


def chat_tools(tools: Any, notes: list[str]) -> tuple[list[Any] | None, ToolNames]:
    """The ``tools`` to send upstream, and the tools offered by name (the custom tools
    among them have their calls go back to the client as custom tool calls)."""
    names = ToolNames()
    if tools is None:
        return None, names
    if not isinstance(tools, list):
        raise InvalidRequest(f"'tools' must be a list, not {json_type(tools)}", param="tools")
    out: list[Any] = []
    for k, tool in enumerate(tools):
        if isinstance(tool, dict) and tool.get("type") == "custom":
            custom = tool.get("custom")
            if not isinstance(custom, dict) or not isinstance(custom.get("name"), str):
                raise InvalidRequest(
                    f'tools[{k}] must be a custom tool: {{"type": "custom", "custom": '
                    '{"name": ..., "description": ..., "format": {...}}}',
                    param="tools",
                )
            fmt = custom.get("format")
            check_custom_tool(custom.get("description"), fmt, f"tools[{k}].custom", nested=True)
            names.add(custom["name"], "custom", f"tools[{k}].custom")
            out.append(custom_tool_function(custom["name"], custom.get("description"), fmt))
            continue
        fn = tool.get("function") if isinstance(tool, dict) else None
        if (
            not isinstance(tool, dict)
            or tool.get("type") != "function"
            or not isinstance(fn, dict)
            or not isinstance(fn.get("name"), str)
        ):
            raise InvalidRequest(
                f'tools[{k}] must be a function tool: {{"type": "function", "function": '
                '{"name": ..., "description": ..., "parameters": {...}}} or a custom tool: '
                '{"type": "custom", "custom": {"name": ...}}',
                param="tools",
            )
        params = fn.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise InvalidRequest(
                f"tools[{k}].function.parameters must be a JSON schema object, not "
                f"{json_type(params)}",
                param="tools",
            )
        names.add(fn["name"], "function", f"tools[{k}].function")
        out.append(tool)
    if names.custom():
        notes.append(f"custom-tool-as-function={len(names.custom())}")
    return out, names


def _tool_names(tools: Any) -> list[str]:
    """The names of the function tools (OpenAI chat shape) in ``tools``."""
    names = []
    for tool in tools if isinstance(tools, list) else ():
        fn = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            names.append(fn["name"])
    return names


def allowed_tools(
    body: dict[str, Any], mode: Any, names: list[str], notes: list[str], where: str
) -> None:
    """``tool_choice: allowed_tools`` for backends that do not know it: ``tools`` keeps
    only the allowed tools (in the client's order) and ``tool_choice`` becomes the mode
    (auto or required). ``body`` is OpenAI chat; each name must be one of its tools; the
    error names ``where`` in ``tool_choice``."""
    if mode not in ("auto", "required"):
        raise InvalidRequest(
            f"'{where}.mode' must be auto or required, not {shown_value(mode)}",
            param="tool_choice",
        )
    offered = _tool_names(body.get("tools"))
    for name in names:
        if name not in offered:
            raise InvalidRequest(
                f"'{where}' allows the tool {name!r}, which is not in 'tools'",
                param="tool_choice",
            )
    if not names:
        # Only tools no backend runs (a Responses server tool, left out) are allowed.
        if body.get("tools"):
            notes.append("allowed-tools-as-subset=0")
            body["tool_choice"] = "none"
        return
    allowed = set(names)
    kept = [t for t in body["tools"] if t["function"]["name"] in allowed]
    notes.append(f"allowed-tools-as-subset={len(kept)}/{len(body['tools'])}")
    body["tools"] = kept
    body["tool_choice"] = mode


def shown_value(value: Any) -> str:
    """A string as written (short), anything else by its JSON type."""
    return repr(value[:40]) if isinstance(value, str) else json_type(value)


_CHOICE_HELP = (
    "'tool_choice' must be none, auto, required, "
    '{"type": "function", "function": {"name": ...}}, '
    '{"type": "custom", "custom": {"name": ...}} or '
    '{"type": "allowed_tools", "allowed_tools": {"mode": "auto" or "required", '
    '"tools": [{"type": "function", "function": {"name": ...}}, ...]}}'
)


def _named(entry: Any) -> tuple[ToolKind, str] | None:
    """The kind and name of the tool a chat tool reference names: {"type": "function",
    "function": {"name"}} or {"type": "custom", "custom": {"name"}}; None for anything else."""
    if not isinstance(entry, dict) or entry.get("type") not in ("function", "custom"):
        return None
    kind: ToolKind = entry["type"]
    inner = entry.get(kind)
    name = inner.get("name") if isinstance(inner, dict) else None
    return (kind, name) if isinstance(name, str) else None


def chat_tool_choice(body: dict[str, Any], offered: ToolNames, notes: list[str]) -> None:
    """Checks ``tool_choice`` and puts it in the shape the backends know: a custom tool's
    choice names its function; ``allowed_tools`` narrows ``tools`` (see ``allowed_tools``).
    A tool it names must be in ``tools``, of the kind it says."""
    choice = body.get("tool_choice")
    if choice is None or choice in ("none", "auto", "required"):
        return
    if not isinstance(choice, dict):
        raise InvalidRequest(_CHOICE_HELP, param="tool_choice")
    if choice.get("type") == "allowed_tools":
        spec = choice.get("allowed_tools")
        entries = spec.get("tools") if isinstance(spec, dict) else None
        if not isinstance(spec, dict) or not isinstance(entries, list) or not entries:
            raise InvalidRequest(
                "'tool_choice.allowed_tools' must be an object with 'mode' (auto or required) "
                "and 'tools', a non-empty list of tools by name",
                param="tool_choice",
            )
        names = []
        for k, entry in enumerate(entries):
            named = _named(entry)
            if named is None:
                raise InvalidRequest(
                    f"'tool_choice.allowed_tools.tools[{k}]' must be "
                    '{"type": "function", "function": {"name": ...}} or '
                    '{"type": "custom", "custom": {"name": ...}}',
                    param="tool_choice",
                )
            offered.same_kind(named[1], named[0], f"tool_choice.allowed_tools.tools[{k}]")
            names.append(named[1])
        allowed_tools(body, spec.get("mode"), names, notes, "tool_choice.allowed_tools")
        return
    named = _named(choice)
    if named is None:
        raise InvalidRequest(_CHOICE_HELP, param="tool_choice")
    kind, name = named
    offered.choose(name, kind, f"tool_choice.{kind}.name")
    body["tool_choice"] = {"type": "function", "function": {"name": name}}
