"""A deterministic, prefix-stable stand-in for the V4 tokenizer and chat template.

About four characters per token. Rendering is prefix-stable: a conversation extended by
more turns renders to text that starts with the shorter conversation's text (the
generation prompt ``<assistant>`` is also how an assistant turn starts), so its tokens
start with the shorter conversation's tokens, as with a real chat template. Thinking and
non-thinking requests render with different prefixes (max effort adds a system prefix),
so they never share cached blocks. A final assistant message marked ``prefix`` is left
open: the model continues it instead of starting a new turn.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

CHARS_PER_TOKEN = 4
_GENERATION_PROMPT = "<assistant>"


def content_text(content: Any) -> str:
    """The text of a message's content: a string or a list of ``{"type": "text"}`` parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            p["text"] if isinstance(p, dict) and isinstance(p.get("text"), str) else ""
            for p in content
        )
    return str(content)


def render_chat(
    messages: Sequence[dict[str, Any]],
    *,
    thinking: bool,
    effort: str | None = None,
    tools: Sequence[Any] | None = None,
    continue_last: bool = False,
) -> str:
    """Render a conversation; ``continue_last`` leaves the final (assistant) message open."""
    parts = ["<think-mode>" if thinking else "<chat-mode>"]
    if thinking and effort == "max":
        parts.append("<sys>Reason with maximum effort.</sys>")
    if tools:
        # as a chat template's ``tojson`` writes them (with its spaces), after its instructions
        parts.append(f"<tools n={len(tools)}>{_TOOL_RULES}{json.dumps(tools)}</tools>")
    for m in messages:
        role = m.get("role", "user")
        parts.append(f"<{role}>")
        reasoning = m.get("reasoning_content")
        if thinking and role == "assistant" and isinstance(reasoning, str) and reasoning:
            parts.append(f"<think>{reasoning}</think>")
        parts.append(content_text(m.get("content")))
        calls = m.get("tool_calls")
        for call in calls if isinstance(calls, list) else ():
            parts.append(_render_call(call))
    if not continue_last:
        parts.append(_GENERATION_PROMPT)
    return "".join(parts)


# What a V4-like template says about tools before their schemas.
_TOOL_RULES = (
    "You can call the tools below. To call one, write its name and a JSON object of its "
    "arguments between the call markers; you may call several in a row, and you will see "
    "each result in a tool message before you answer. "
)


def _render_call(call: Any) -> str:
    """A tool call as the template writes it: markers, the name and the arguments (no id)."""
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict):
        return f"<call>{call!r}</call>"
    args = fn.get("arguments")
    text = args if isinstance(args, str) else json.dumps(args)
    return f"<call>function<sep>{fn.get('name')}\n```json\n{text}\n```</call>"


def render_fim(prompt: str, suffix: str | None) -> str:
    """Fill-in-the-middle input: the text before the hole, then the text after it."""
    return "<fim-prefix>" + prompt + ("<fim-suffix>" + suffix if suffix else "") + "<fim-middle>"


def count_tokens(text: str) -> int:
    return max(1, -(-len(text) // CHARS_PER_TOKEN))


def block_hashes(text: str, block_tokens: int) -> list[bytes]:
    """Chained hashes of the full token blocks of ``text``: hash i covers blocks 0..i."""
    block_chars = block_tokens * CHARS_PER_TOKEN
    out: list[bytes] = []
    h = b""
    for i in range(len(text) // block_chars):
        h = hashlib.blake2b(
            h + text[i * block_chars : (i + 1) * block_chars].encode(), digest_size=16
        ).digest()
        out.append(h)
    return out
