"""The one small interface every engine implements.

An engine serves an option's backend: a pool of vLLM replicas, the hosted DeepSeek API,
a pass-through provider. Call sites never branch on the engine type: they build an
``EngineRequest`` and call ``complete`` or ``stream``. ``stream`` returns once the upstream
has accepted the request (status and headers received), before the first byte reaches
the client, so the gateway can still retry elsewhere; after that, the stream yields
complete SSE events already normalized to DeepSeek's shape.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from policies.options import Option
from policies.usage import Usage

Endpoint = Literal["chat", "completions"]


@dataclass(slots=True)
class EngineRequest:
    body: dict[str, Any]
    option: Option
    endpoint: Endpoint = "chat"
    request_id: str = ""
    affinity_key: bytes | None = None
    # Backends that already failed on the request's own content (see
    # ``UpstreamRequestFailed``): at the second, the request is not tried again.
    request_faults: int = 0


@dataclass(slots=True)
class EngineResponse:
    body: dict[str, Any]
    usage: Usage
    replica: str | None = None
    provider_cost_usd: float | None = None


@dataclass(slots=True)
class StreamOutcome:
    """Filled in while a stream is consumed; read after it ends."""

    usage: Usage | None = None
    finish_reason: str | None = None
    # The generated text streamed so far (content, reasoning, tool-call names and arguments,
    # completion text) as sent, JSON escapes included: the estimate a stream that broke
    # before its usage chunk is billed on (``engines.translate.generated_chars``).
    output_chars: int = 0
    reasoning_chars: int = 0  # of which reasoning (``reasoning_content`` / ``reasoning``)
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class EngineStream(Protocol):
    replica: str | None
    outcome: StreamOutcome

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


class Engine(Protocol):
    name: str

    async def complete(self, req: EngineRequest) -> EngineResponse: ...

    async def stream(self, req: EngineRequest) -> EngineStream: ...

    async def health(self) -> bool: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...
