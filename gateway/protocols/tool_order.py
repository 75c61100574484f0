"""Tool calls of a chat stream, written one after another.

A chat-completion stream (DeepSeek, vLLM, any OpenAI-shaped upstream) carries each tool
call's pieces under its ``index``, and may go on with call 0's arguments after call 1 began.
Anthropic content blocks and Responses output items are written one after another: a block
stopped cannot take more input. So the call being written stays open until its arguments
are complete JSON *and* another call has begun; pieces of the calls after it wait here and
are written when their turn comes, and whatever waits at the end (or when text follows) is
written whole then. A call is begun only once its name is known (a piece may bring it
late). Text or reasoning that comes while a call is unfinished (``busy``) waits for the
calls in the translators. A sequential stream (each call whole before the next) streams
live.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import orjson


@dataclass(slots=True)
class Begin:
    index: int
    id: str | None
    name: str


@dataclass(slots=True)
class Args:
    index: int
    text: str


@dataclass(slots=True)
class End:
    index: int


Step = Begin | Args | End


@dataclass(slots=True)
class _Call:
    id: str | None = None
    name: str = ""
    pieces: list[str] = field(default_factory=list)


def complete_json(text: str) -> bool:
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return True


class CallOrder:
    def __init__(self) -> None:
        self.live: int | None = None
        self.live_text: list[str] = []
        self.waiting: dict[int, _Call] = {}  # in the order they began
        self.ended: set[int] = set()

    def feed(self, call: dict[str, Any]) -> list[Step]:
        """One ``tool_calls`` entry of a chunk's delta -> the steps to write now."""
        k = call.get("index", 0)
        fn = call.get("function") or {}
        piece = fn.get("arguments") or ""
        if k == self.live:
            self.live_text.append(piece)
            steps: list[Step] = [Args(k, piece)] if piece else []
            return steps + self._advance()
        if k in self.ended:
            # More arguments for a call already written whole: its JSON was complete, so
            # this could only make it invalid. Nothing can take them any more.
            return []
        c = self.waiting.setdefault(k, _Call())
        c.id = c.id or call.get("id")
        c.name = c.name or fn.get("name") or ""
        if piece:
            c.pieces.append(piece)
        return self._advance()

    @property
    def busy(self) -> bool:
        """A call is unfinished: its arguments are not complete JSON yet, or calls wait."""
        return bool(self.waiting) or (
            self.live is not None and not complete_json("".join(self.live_text))
        )

    def _advance(self) -> list[Step]:
        steps: list[Step] = []
        while (
            self.waiting
            and next(iter(self.waiting.values())).name  # begun once named
            and (self.live is None or complete_json("".join(self.live_text)))
        ):
            steps += self._next()
        return steps

    def _next(self) -> list[Step]:
        """End the call being written (if any) and begin the first waiting one (if any)."""
        steps: list[Step] = []
        if self.live is not None:
            steps.append(End(self.live))
            self.ended.add(self.live)
            self.live, self.live_text = None, []
        if self.waiting:
            k, c = next(iter(self.waiting.items()))
            del self.waiting[k]
            self.live, self.live_text = k, list(c.pieces)
            steps.append(Begin(k, c.id, c.name))
            if c.pieces:
                steps.append(Args(k, "".join(c.pieces)))
        return steps

    def finish(self) -> list[Step]:
        """The stream ended, or text follows the calls: every call still open or waiting,
        in order, each ended (the last step is the last call's ``End``)."""
        steps: list[Step] = []
        while self.live is not None or self.waiting:
            steps += self._next()
        return steps


class InOrder(ABC):
    """A stream translator whose blocks or items are written one after another: its tool
    calls go through ``CallOrder``, and text or reasoning that comes while a call is
    unfinished waits for the calls (a block stopped cannot take the rest of a call's
    arguments). Subclasses write text (``_text``) and the calls' steps (``_tool_steps``)."""

    def __init__(self) -> None:
        self.calls = CallOrder()
        self.held: list[tuple[str, str]] = []  # text that came while a call was unfinished

    @abstractmethod
    def _text(self, kind: str, text: str) -> bytes:
        """Write text (``text``) or reasoning (``thinking``/``reasoning``) as the protocol does."""

    @abstractmethod
    def _tool_steps(self, steps: list[Step]) -> bytes:
        """Write the steps of the calls (begin, arguments, end) as the protocol does."""

    def _say(self, kind: str, text: str) -> bytes:
        """Text or reasoning: now, after the calls begun before it once they are whole."""
        if self.calls.busy:
            self.held.append((kind, text))
            return b""
        return self._tool_steps(self.calls.finish()) + self._release() + self._text(kind, text)

    def _release(self) -> bytes:
        held, self.held = self.held, []
        return b"".join(self._text(kind, text) for kind, text in held)
