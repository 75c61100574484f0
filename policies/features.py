"""Request features for the router: cheap, bounded work whatever the prompt's size.

Only the newest user turn is read, and only its last ``max_scan_chars`` characters; the
rest of the conversation contributes lengths and counts. A 1M-token prompt costs what a
long last turn costs. Hashed n-grams use CRC32, stable across processes (never ``hash()``).

The newest *task* turn is the last user message with text of its own: a user message that
only carries tool results (an agent loop's) is skipped. Harness text is not the task:
``<system-reminder>`` blocks are dropped, and when the newest turn repeats the start of the
previous user turn (a harness that resends its instructions every turn), only what it adds
counts. The task's length is that added text's.
"""

from __future__ import annotations

import math
import os
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

HASH_DIM = 1 << 14
MAX_SCAN_CHARS = 2000

_WORD = re.compile(r"[a-z][a-z0-9_']*|\d+|[^\sa-z0-9]")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_CODE = re.compile(
    r"```|\bdef |\bclass |\bfunction\b|\breturn\b|;\s*$|\{\s*$|#include|=>|\bimport ", re.M
)
# Math markers: LaTeX commands and signs, arithmetic between numbers, and two words. Their
# matches never overlap, so each part is counted on its own, the literals with str.count.
_MATH_LITERALS = ("\\frac", "\\sqrt", "\\sum", "\\int", "^", "$")
_ARITH = re.compile(r"\b\d+\s*[-+*/=]\s*\d+")
_ARITH_OPS = ("-", "+", "*", "/", "=")
_MATH_WORDS = re.compile(r"\bequation\b|\bprobability\b")
_MATH_WORD_HINTS = ("equation", "probability")
_REASON = re.compile(
    r"\bstep[- ]by[- ]step\b|\bprove\b|\bproof\b|\bderive\b|\bexplain why\b|\bjustify\b|"
    r"\breason\w*\b|\bthink carefully\b|\bshow that\b"
)
_MULTI_WORDS = re.compile(r"\bthen\b|\bafter that\b|\bfirst\b|\bsecond\b|\bfinally\b")
_MULTI_LIST = re.compile(r"^\s*\d+[.)]", re.M)  # "1." / "2)" at a line start
# Substrings without which a pattern cannot match: a C-speed check skips the regex.
_CODE_HINTS = ("```", "def ", "class ", "function", "return", ";", "{", "#include", "=>", "import ")
_MULTI_HINTS = ("then", "after that", "first", "second", "finally")
_REASON_HINTS = (
    "step",
    "prove",
    "proof",
    "derive",
    "explain why",
    "justify",
    "reason",
    "think carefully",
    "show that",
)
_CONSTRAINT_HINTS = (
    "must",
    "exactly",
    "at least",
    "at most",
    "without",
    "only",
    "constraint",
    "ensure",
)
_ASCII_DIGITS = "0123456789"
_CONSTRAINT = re.compile(
    r"\bmust\b|\bexactly\b|\bat least\b|\bat most\b|\bwithout\b|\bonly\b|\bconstraint|\bensure\b"
)

# Blocks an agent harness adds to user turns on every request (Claude Code's reminders,
# Codex's environment context and instructions): they describe the harness, not the task.
_HARNESS = re.compile(
    r"<(system-reminder|environment_context|user_instructions|skills_instructions"
    r"|permissions instructions)>.*?</\1>\s*",
    re.S,
)

DENSE_NAMES = (
    "bias",
    "log_total_chars",
    "log_last_chars",
    "turns",
    "code",
    "math",
    "reasoning",
    "multi_step",
    "constraints",
    "tools",
    "json_mode",
    "questions",
    "numbers",
    "digit_share",
    "has_system",
)


_REMINDER = re.compile(r"<system-reminder>.*?</system-reminder>", re.S)
REPEAT_MIN_CHARS = 64  # a shared prefix shorter than this is not a repeated harness
REPEAT_SCAN_CHARS = 8000  # how much of two turns is compared for a repeated prefix


@dataclass(frozen=True, slots=True)
class Features:
    dense: tuple[float, ...]
    hashed: tuple[int, ...]
    total_chars: int
    last_user_chars: int
    task: str = ""  # the scanned task text (at most max_scan_chars), for an embedding


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            p["text"] for p in content if isinstance(p, Mapping) and isinstance(p.get("text"), str)
        )
    return ""


def _length(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(len(p.get("text", "")) for p in content if isinstance(p, Mapping))
    return 0


def _count(pattern: re.Pattern[str], text: str, hints: tuple[str, ...]) -> int:
    """Matches of ``pattern``; none without one of its ``hints`` (and then no regex runs)."""
    return len(pattern.findall(text)) if any(h in text for h in hints) else 0


def _digits(text: str) -> int:
    """Characters for which ``str.isdigit`` holds (ten C-speed counts for ASCII text)."""
    if text.isascii():
        return sum(text.count(d) for d in _ASCII_DIGITS)
    return sum(map(str.isdigit, text))


def _math(text: str, digits: int) -> int:
    """Math markers: what one alternation of the literals, ``_ARITH`` and ``_MATH_WORDS``
    would find (their matches share no character, so the counts add up)."""
    n = sum(text.count(s) for s in _MATH_LITERALS)
    if digits and any(op in text for op in _ARITH_OPS):
        n += len(_ARITH.findall(text))
    return n + _count(_MATH_WORDS, text, _MATH_WORD_HINTS)


def hash_ngrams(text: str) -> tuple[int, ...]:
    """Hashed unigrams and bigrams: CRC32 of ``word`` and of ``"a b"``, modulo HASH_DIM.

    A bigram's CRC continues from its first word's (``crc32(b" " + b, crc32(a))`` equals
    ``crc32(a + " " + b)``), so no bigram string is ever built.
    """
    words = [w.encode() for w in _WORD.findall(text.lower())]
    crcs = [zlib.crc32(w) for w in words]
    out = {c % HASH_DIM for c in crcs}
    crc32 = zlib.crc32
    out.update(crc32(b, crc32(b" ", c)) % HASH_DIM for c, b in zip(crcs, words[1:], strict=False))
    return tuple(sorted(out))


def from_text(
    last: str,
    *,
    total_chars: int | None = None,
    last_chars: int | None = None,
    turns: int = 1,
    tools: bool = False,
    json_mode: bool = False,
    has_system: bool = False,
    max_scan_chars: int = MAX_SCAN_CHARS,
    ngrams: bool = True,
) -> Features:
    """``ngrams=False`` skips the hashed n-grams (only the linear model reads them)."""
    scan = last[-max_scan_chars:]
    last_len = len(last) if last_chars is None else last_chars
    if "<system-reminder>" in scan:
        kept = _REMINDER.sub("", scan)
        last_len = max(0, last_len - (len(scan) - len(kept)))
        scan = kept
    low = scan.lower()
    n = max(len(scan), 1)
    total = last_len if total_chars is None else total_chars
    digits = _digits(scan)
    dense = (
        1.0,
        math.log1p(total) / 10,
        math.log1p(last_len) / 10,
        min(turns, 50) / 10,
        min(_count(_CODE, scan, _CODE_HINTS), 10) / 5,
        min(_math(scan, digits), 20) / 5,
        min(_count(_REASON, low, _REASON_HINTS), 5) / 2,
        min(_count(_MULTI_WORDS, low, _MULTI_HINTS) + len(_MULTI_LIST.findall(low)), 10) / 5,
        min(_count(_CONSTRAINT, low, _CONSTRAINT_HINTS), 10) / 5,
        1.0 if tools else 0.0,
        1.0 if json_mode else 0.0,
        min(scan.count("?"), 10) / 5,
        min(len(_NUMBER.findall(scan)) if digits else 0, 40) / 10,
        digits / n,
        1.0 if has_system else 0.0,
    )
    return Features(dense, hash_ngrams(scan) if ngrams else (), total, last_len, scan)


def _added(last: str, prev: str) -> int:
    """Length of the prefix ``last`` repeats from ``prev`` (0 below REPEAT_MIN_CHARS)."""
    if not prev or last[:REPEAT_MIN_CHARS] != prev[:REPEAT_MIN_CHARS]:
        return 0
    a, b = last[:REPEAT_SCAN_CHARS], prev[:REPEAT_SCAN_CHARS]
    n = len(os.path.commonprefix((a, b)))
    return n if n >= REPEAT_MIN_CHARS else 0


def task_text(text: str) -> str:
    """A user turn without the blocks an agent harness adds to it."""
    return _HARNESS.sub("", text) if "</" in text else text


def task_messages(messages: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The conversation as the router should weigh it.

    System and developer prompts still count as present, but not by their length: an agent
    sends the same long prompt (and tool schemas) on every turn, whatever the task. User
    turns lose the harness blocks; a turn that was only harness blocks is left out.
    """
    out: list[Mapping[str, Any]] = []
    for m in messages:
        role = m.get("role")
        if role in ("system", "developer"):
            out.append({"role": role, "content": ""})
        elif role == "user":
            content = m.get("content")
            text = task_text(content if isinstance(content, str) else _text(content))
            if text.strip():
                out.append({"role": "user", "content": text})
        else:
            out.append(m)
    return out


def extract_features(
    messages: Sequence[Mapping[str, Any]],
    *,
    tools: bool = False,
    json_mode: bool = False,
    max_scan_chars: int = MAX_SCAN_CHARS,
    ngrams: bool = True,
) -> Features:
    total = 0
    last = prev = ""
    last_len = 0
    turns = 0
    has_system = False
    for m in messages:
        content = m.get("content")
        size = _length(content)
        total += size
        role = m.get("role")
        if role == "user":
            turns += 1
            if isinstance(content, str):
                text = content
            else:
                text = _text(content)[-REPEAT_SCAN_CHARS - max_scan_chars :]
            if text:  # a message of tool results only is not a new task turn
                prev, last, last_len = last, text, size
        elif role in ("system", "developer"):
            has_system = True
    repeated = _added(last, prev)
    if repeated:
        last = last[max(repeated, len(last) - max_scan_chars) :]
        last_len = max(0, last_len - repeated)
    return from_text(
        last,
        total_chars=total,
        last_chars=last_len,
        turns=turns,
        tools=tools,
        json_mode=json_mode,
        has_system=has_system,
        max_scan_chars=max_scan_chars,
        ngrams=ngrams,
    )
