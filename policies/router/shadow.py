"""Shadow mode, the pure parts: whether to sample a request, the judge's prompt and verdict,
and how a stored label becomes a training row for ``router train``.

The gateway replays a sampled share of cheap-routed requests on the strong option, asks a
judge to compare the two answers, and stores the verdict. Everything here takes plain
values (a random draw, texts, a stored record), so it is deterministic and tested by tables.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from policies.features import Features

Better = Literal["weak", "strong", "tie"]
VERDICTS = ("weak_ok", "strong_needed", "both_bad", "invalid")
MAX_TEXT_CHARS = 8000

JUDGE_SYSTEM = (
    "You are a strict grader comparing two answers to the same request. Judge correctness "
    "first, then completeness and whether the answer follows the request's instructions; "
    "ignore length and style unless the request asks for them. An answer is acceptable if a "
    "careful expert would accept it as a correct, usable reply to the request.\n"
    "Reply with one JSON object on the last line and nothing after it, exactly:\n"
    '{"better": "A" | "B" | "tie", "a_acceptable": true | false, "b_acceptable": true | false}'
)


def is_cheaper(
    served_tier: str, served_thinking: bool, strong_tier: str, strong_thinking: bool
) -> bool:
    """The served option is not the strong one (another tier, or the same without thinking)."""
    if served_tier != strong_tier:
        return True
    return strong_thinking and not served_thinking


def should_sample(draw: float, share: float, *, enabled: bool, auto: bool, cheaper: bool) -> bool:
    """Sample with probability ``share`` given a uniform ``draw`` in [0, 1).

    Only requests the router chose (``auto``) and sent to an option cheaper than the strong
    one are candidates; pinned models say nothing about the router's decision.
    """
    return enabled and auto and cheaper and share > 0 and draw < share


def _clip(text: str, limit: int = MAX_TEXT_CHARS) -> str:
    if len(text) <= limit:
        return text
    half = limit // 2
    return text[:half] + "\n[... truncated ...]\n" + text[-half:]


def judge_messages(
    question: str, weak_answer: str, strong_answer: str, *, weak_first: bool
) -> list[dict[str, str]]:
    """The judge's conversation. ``weak_first`` puts the weak answer in slot A; the caller
    draws it at random so that a judge's position bias does not favour one option."""
    a, b = (weak_answer, strong_answer) if weak_first else (strong_answer, weak_answer)
    user = (
        "[Request]\n"
        f"{_clip(question)}\n\n"
        "[Answer A]\n"
        f"{_clip(a)}\n\n"
        "[Answer B]\n"
        f"{_clip(b)}\n\n"
        "Which answer is better, and is each one acceptable? End with the JSON object."
    )
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


@dataclass(frozen=True, slots=True)
class Verdict:
    better: Better
    weak_ok: bool
    strong_ok: bool

    @property
    def label(self) -> str:
        if self.weak_ok:
            return "weak_ok"
        return "strong_needed" if self.strong_ok else "both_bad"


_OBJECT = re.compile(r"\{[^{}]*\}")
_SLOT = {"a": "A", "b": "B", "tie": "tie"}


def _flag(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return None


def _one(obj: Any, weak_first: bool) -> Verdict | None:
    if not isinstance(obj, dict):
        return None
    keys = {str(k).strip().lower(): v for k, v in obj.items()}
    if set(keys) != {"better", "a_acceptable", "b_acceptable"}:
        return None
    said = keys["better"]
    slot = _SLOT.get(said.strip().lower()) if isinstance(said, str) else None
    a_ok, b_ok = _flag(keys["a_acceptable"]), _flag(keys["b_acceptable"])
    if slot is None or a_ok is None or b_ok is None:
        return None
    # A preferred answer that is unacceptable while the other one is acceptable is a
    # contradiction, not a verdict.
    if (slot == "A" and b_ok and not a_ok) or (slot == "B" and a_ok and not b_ok):
        return None
    weak_slot = "A" if weak_first else "B"
    weak_ok, strong_ok = (a_ok, b_ok) if weak_first else (b_ok, a_ok)
    better: Better = "tie" if slot == "tie" else ("weak" if slot == weak_slot else "strong")
    return Verdict(better, weak_ok, strong_ok)


def parse_verdict(text: str | None, *, weak_first: bool) -> Verdict | None:
    """The last well-formed verdict object in the judge's reply, or None.

    Tolerates prose and code fences around the object; the object itself must have exactly
    the three keys with the allowed values (booleans may be the strings "true"/"false").
    """
    if not text:
        return None
    for raw in reversed(_OBJECT.findall(text)):
        try:
            obj = json.loads(raw)
        except ValueError:
            continue
        verdict = _one(obj, weak_first)
        if verdict is not None:
            return verdict
    return None


def answer_text(body: Mapping[str, Any]) -> str:
    """The assistant's text in a chat completion body (empty when there is none)."""
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return ""
    message = choices[0].get("message")
    content = message.get("content") if isinstance(message, dict) else None
    return content if isinstance(content, str) else ""


def stream_text(events: Sequence[bytes]) -> str:
    """The answer's text from the SSE events of a streamed chat completion."""
    parts: list[str] = []
    for event in events:
        for line in event.split(b"\n"):
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if not payload or payload == b"[DONE]":
                continue
            try:
                chunk = json.loads(payload)
            except ValueError:
                continue
            choices = chunk.get("choices") if isinstance(chunk, dict) else None
            if not isinstance(choices, list):
                continue
            for choice in choices:
                delta = choice.get("delta") if isinstance(choice, dict) else None
                content = delta.get("content") if isinstance(delta, dict) else None
                if isinstance(content, str):
                    parts.append(content)
    return "".join(parts)


def features_to_json(f: Features) -> dict[str, Any]:
    return {
        "dense": list(f.dense),
        "hashed": list(f.hashed),
        "total_chars": f.total_chars,
        "last_user_chars": f.last_user_chars,
    }


@dataclass(frozen=True, slots=True)
class Label:
    """A stored shadow label, as the export reads it back."""

    request_id: str
    team_id: str | None
    weak: str
    strong: str
    verdict: str
    better: str | None
    weak_ok: bool | None
    strong_ok: bool | None
    prompt: str | None
    features: Mapping[str, Any] | None


def training_row(label: Label) -> dict[str, Any] | None:
    """The ``router train --labels`` / ``router eval`` JSONL row, or None for an invalid one."""
    if label.verdict not in VERDICTS[:3] or label.weak_ok is None or label.strong_ok is None:
        return None
    row: dict[str, Any] = {
        "id": label.request_id,
        "source": "shadow",
        "category": label.team_id or "none",
    }
    if label.prompt is not None:
        row["prompt"] = label.prompt
    elif label.features is not None:
        row["features"] = dict(label.features)
    else:
        return None
    row["correct"] = {label.weak: label.weak_ok, label.strong: label.strong_ok}
    row["better"] = label.better
    return row
