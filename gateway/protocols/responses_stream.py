"""The Responses event stream: DeepSeek-shaped chat chunks -> ``response.*`` events.

Items are opened, written and closed in order, each event numbered; the stream ends in
``response.completed``, ``response.incomplete`` (the output limit or a filter cut the
answer) or ``response.failed`` (the upstream broke off). Items and response objects are
built by the same ``Renderer`` as the non-streaming answer (gateway/protocols/responses.py).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.parse import Call
from gateway.protocols.relay import translate_relayed
from gateway.protocols.responses import Context, Renderer, new_id, response_status
from gateway.protocols.tool_order import Args, Begin, InOrder, Step, complete_json
from policies.errors import TiergateError, UpstreamUnavailable
from policies.usage import Usage, usage_from_openai


@dataclass(slots=True)
class _Open:
    """The output item being streamed."""

    kind: str  # "reasoning" | "message" | "call"
    index: int
    item_id: str
    text: list[str] = field(default_factory=list)
    call_id: str = ""
    name: str = ""


class StreamTranslator(InOrder):
    """DeepSeek-shaped chat chunks -> the Responses event stream, in order."""

    def __init__(self, ctx: Context, model: str) -> None:
        super().__init__()  # items are written one after another
        self.r = Renderer(ctx, model)
        self.seq = 0
        self.output: list[dict[str, Any]] = []
        self.open: _Open | None = None
        self.finish: str | None = None
        self.usage = Usage()

    def _event(self, kind: str, **data: Any) -> bytes:
        self.seq += 1
        payload = orjson.dumps({"type": kind, "sequence_number": self.seq - 1, **data})
        return b"event: " + kind.encode() + b"\ndata: " + payload + b"\n\n"

    def start(self) -> bytes:
        snapshot = self.r.response("in_progress", [])
        return self._event("response.created", response=snapshot) + self._event(
            "response.in_progress", response=snapshot
        )

    def _begin(self, kind: str, item: dict[str, Any]) -> tuple[bytes, _Open]:
        out = self._close()
        self.open = _Open(kind, len(self.output), item["id"])
        self.output.append(item)
        out += self._event("response.output_item.added", output_index=self.open.index, item=item)
        return out, self.open

    def _close(self, broken: bool = False) -> bytes:
        """Ends the open item. One ``broken`` off (the stream failed while it was written,
        or the output limit cut it) is ``incomplete``; a tool call cut so has no arguments
        or input ``done`` event, as what it has is not all the model meant to write."""
        o, self.open = self.open, None
        if o is None:
            return b""
        at = {"item_id": o.item_id, "output_index": o.index}
        text = "".join(o.text)
        status = "incomplete" if broken else "completed"
        if o.kind == "reasoning":
            item = self.r.reasoning(text, o.item_id, status)
            out = self._event("response.reasoning_text.done", **at, content_index=0, text=text)
        elif o.kind == "message":
            item = self.r.message(text, o.item_id, status)
            part = item["content"][0]
            out = self._event(
                "response.output_text.done", **at, content_index=0, text=text, logprobs=[]
            )
            out += self._event("response.content_part.done", **at, content_index=0, part=part)
        elif broken:
            item = self.r.call(o.call_id, o.name, text, o.item_id, status)
            out = b""
        else:
            item = self.r.call(o.call_id, o.name, text, o.item_id)
            if item["type"] == "custom_tool_call":
                out = self._event(
                    "response.custom_tool_call_input.delta", **at, delta=item["input"]
                )
                out += self._event(
                    "response.custom_tool_call_input.done", **at, input=item["input"]
                )
            else:
                out = self._event(
                    "response.function_call_arguments.done", **at, name=o.name, arguments=text
                )
        self.output[o.index] = item
        return out + self._event("response.output_item.done", output_index=o.index, item=item)

    def _text(self, kind: str, delta: str) -> bytes:
        out = b""
        if self.open is None or self.open.kind != kind:
            if kind == "reasoning":
                item: dict[str, Any] = {
                    "type": "reasoning",
                    "id": new_id("rs"),
                    "status": "in_progress",
                    "summary": [],
                }
                out, o = self._begin(kind, item)
            else:
                item = self.r.message("", new_id("msg"), "in_progress")
                item["content"] = []
                out, o = self._begin(kind, item)
                part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
                out += self._event(
                    "response.content_part.added",
                    item_id=o.item_id,
                    output_index=o.index,
                    content_index=0,
                    part=part,
                )
        current = self.open
        assert current is not None
        current.text.append(delta)
        name = (
            "response.reasoning_text.delta" if kind == "reasoning" else "response.output_text.delta"
        )
        extra: dict[str, Any] = {} if kind == "reasoning" else {"logprobs": []}
        return out + self._event(
            name,
            item_id=current.item_id,
            output_index=current.index,
            content_index=0,
            delta=delta,
            **extra,
        )

    def _tool_steps(self, steps: list[Step], broken: bool = False) -> bytes:
        """``broken``: the answer was cut, so a call whose arguments are not whole JSON
        ends incomplete."""
        out = b""
        for step in steps:
            if isinstance(step, Begin):
                call_id = step.id or new_id("call")
                custom = step.name in self.r.ctx.custom_tools
                item = self.r.call(call_id, step.name, "", new_id("ctc" if custom else "fc"))
                item["status"] = "in_progress"
                if custom:
                    item["input"] = ""
                more, o = self._begin("call", item)
                o.call_id, o.name = call_id, step.name
                out += more
            elif isinstance(step, Args):
                cur = self.open
                assert cur is not None
                cur.text.append(step.text)
                if cur.name not in self.r.ctx.custom_tools:
                    out += self._event(
                        "response.function_call_arguments.delta",
                        item_id=cur.item_id,
                        output_index=cur.index,
                        delta=step.text,
                    )
            else:
                cur = self.open
                cut = broken and cur is not None and not complete_json("".join(cur.text))
                out += self._close(broken=cut)
        return out

    def feed(self, chunk: dict[str, Any]) -> bytes:
        out = b""
        if isinstance(chunk.get("usage"), dict):
            self.usage = usage_from_openai(chunk["usage"]) or self.usage
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("reasoning_content"):
                out += self._say("reasoning", delta["reasoning_content"])
            if delta.get("content"):
                out += self._say("message", delta["content"])
            for call in delta.get("tool_calls") or ():
                out += self._tool_steps(self.calls.feed(call))
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        return out

    def fail(self, err: TiergateError) -> bytes:
        out = self._close(broken=True)
        error = {"code": err.code, "message": err.message}
        return out + self._event(
            "response.failed",
            response=self.r.response("failed", self.output, self.usage, error=error),
        )

    def end(self) -> bytes:
        try:
            status, incomplete = response_status(self.finish)
        except TiergateError as err:
            return self.fail(err)
        # Cut by the output limit (or a filter): the item being written is incomplete.
        broken = status != "completed"
        out = self._tool_steps(self.calls.finish(), broken) + self._release()
        out += self._close(broken=broken)
        final = self.r.response(status, self.output, self.usage, incomplete=incomplete)
        kind = "response.completed" if status == "completed" else "response.incomplete"
        return out + self._event(kind, response=final)


def translate_stream(
    events: AsyncGenerator[bytes, None], call: Call
) -> AsyncGenerator[bytes, None]:
    tr = StreamTranslator(call.context, call.model)

    def fail(err: dict[str, Any]) -> bytes:
        failure = UpstreamUnavailable(str(err.get("message", err)))
        failure.code = str(err.get("code") or err.get("type") or failure.code)
        return tr.fail(failure)

    return translate_relayed(events, tr.start, tr.feed, tr.end, fail)
