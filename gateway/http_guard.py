"""Connection-level limits for ``tiergate serve``: request-head size and request-head time.

uvicorn's httptools protocol accepts request heads of any size and waits forever for a
head to finish (its keep-alive timer only runs between requests), so a client trickling
header bytes holds a connection and its memory indefinitely. ``guarded_protocol`` returns
a subclass that:

* answers 431 and closes once the request line plus headers pass ``max_head_bytes``;
* answers 408 and closes when a request head has not finished ``head_timeout_s`` after the
  connection opened or after its first byte arrived (slowloris-style clients). Between
  requests on a kept-alive connection, uvicorn's own keep-alive timeout applies;
* answers 408 and closes when a request body has not arrived whole ``body_timeout_s``
  after its head (a body shorter than its ``Content-Length``, or one trickled in).

A request the HTTP parser refuses (a control character in a header, a negative
``Content-Length``) is answered 400 and closed. All these answers carry the caller's
protocol error shape (OpenAI, or Anthropic for ``/v1/messages`` paths) and an
``x-request-id``. ``BodyLimit`` limits request bodies in the application (413).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httptools
import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.errors import Protocol, error_body, error_response
from policies.errors import BodyTooLarge, InvalidRequest, TiergateError


class HeadTooLarge(InvalidRequest):
    status = 431
    code = "request_header_fields_too_large"


class HeadTimeout(InvalidRequest):
    status = 408
    code = "request_timeout"


class MalformedHttp(InvalidRequest):
    code = "malformed_http"


_REASONS = {
    400: b"Bad Request",
    431: b"Request Header Fields Too Large",
    408: b"Request Timeout",
}


def guarded_protocol(
    max_head_bytes: int, head_timeout_s: float, body_timeout_s: float | None = None
) -> type[HttpToolsProtocol]:
    """An httptools protocol class enforcing the limits (uvicorn ``http=`` accepts it)."""

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._head_bytes = 0  # request line and complete headers, as parsed
            self._raw_head = 0  # bytes received while a head is unfinished
            self._head_too_large = False
            self._in_head = True
            self._head_timer: asyncio.TimerHandle | None = None
            self._body_timer: asyncio.TimerHandle | None = None

        # ---- head timer ------------------------------------------------------------------

        def _arm_head_timer(self) -> None:
            self._cancel_head_timer()
            self._head_timer = self.loop.call_later(head_timeout_s, self._head_timed_out)

        def _cancel_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self._in_head and not self.transport.is_closing():
                self._reject(
                    HeadTimeout(
                        f"request head not received within {head_timeout_s:g} s; "
                        "send the request line and headers promptly"
                    )
                )

        # ---- body timer ------------------------------------------------------------------

        def _cancel_body_timer(self) -> None:
            if self._body_timer is not None:
                self._body_timer.cancel()
                self._body_timer = None

        def _body_timed_out(self) -> None:
            self._body_timer = None
            if not self.transport.is_closing():
                self._reject(
                    HeadTimeout(
                        f"request body not received within {body_timeout_s:g} s of its head; "
                        "send the whole body (as long as its Content-Length) promptly"
                    )
                )

        def on_message_complete(self) -> None:
            self._cancel_body_timer()
            super().on_message_complete()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_head_timer()
            self._cancel_body_timer()
            super().connection_lost(exc)

        # ---- head size -------------------------------------------------------------------

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_head = True
            self._head_bytes = 0
            self._raw_head = 0
            if self._head_timer is None:
                self._arm_head_timer()

        def _count(self, n: int) -> None:
            self._head_bytes += n
            if self._head_bytes > max_head_bytes:
                self._head_too_large = True
                raise HeadTooLarge("request head too large")

        def on_url(self, url: bytes) -> None:
            self._count(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count(len(name) + len(value) + 4)
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._cancel_head_timer()
            super().on_headers_complete()
            if body_timeout_s is not None:
                self._cancel_body_timer()
                self._body_timer = self.loop.call_later(body_timeout_s, self._body_timed_out)

        def data_received(self, data: bytes) -> None:
            if self._head_too_large:
                return
            self._unset_keepalive_if_required()
            if self._in_head:
                self._raw_head += len(data)
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError as exc:
                if self._head_too_large:
                    self._reject_large()
                    return
                # uvicorn would answer text/plain; the client gets its protocol's JSON error.
                self.logger.warning("Invalid HTTP request received: %s", exc)
                self._reject(
                    MalformedHttp(
                        f"the request is not valid HTTP/1.1 ({exc}); check the request line "
                        "and headers: no control characters in them, and a Content-Length "
                        "of digits only"
                    )
                )
                return
            except httptools.HttpParserUpgrade:
                if self._should_upgrade():
                    self.handle_websocket_upgrade()
                else:
                    self._unsupported_upgrade_warning()
                return
            # A head still unfinished after all it was sent: every byte so far is head (one
            # endless header line is buffered by the parser until it ends, so count here too).
            if self._in_head and self._raw_head > max_head_bytes:
                self._head_too_large = True
                self._reject_large()

        def _reject_large(self) -> None:
            self._reject(
                HeadTooLarge(
                    f"request line and headers are over this gateway's limit of "
                    f"{max_head_bytes} bytes"
                )
            )

        def _reject(self, err: TiergateError) -> None:
            self._cancel_head_timer()
            self._cancel_body_timer()
            url = getattr(self, "url", None)
            path = url.split(b"?", 1)[0] if isinstance(url, bytes) else b""
            protocol = protocol_of_path(path.decode("latin-1"))
            body = orjson.dumps(error_body(err, protocol))
            defaults = self.server_state.default_headers
            head = [
                b"HTTP/1.1 %d %s\r\n" % (err.status, _REASONS[err.status]),
                *(name + b": " + value + b"\r\n" for name, value in defaults),
                b"content-type: application/json\r\n",
                b"content-length: %d\r\n" % len(body),
                b"x-request-id: %s\r\n" % uuid.uuid4().hex.encode(),
                b"connection: close\r\n\r\n",
            ]
            self.transport.write(b"".join(head) + body)
            self.transport.close()

    return GuardedHttpToolsProtocol


def protocol_of_path(path: str) -> Protocol:
    return "anthropic" if path.startswith(("/v1/messages", "/anthropic/")) else "openai"


def metric_protocol(path: str) -> str:
    """The protocol a refusal is counted under (the Responses API has OpenAI's error shape)."""
    return "responses" if path.startswith("/v1/responses") else protocol_of_path(path)


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` is a 413 before it is buffered.

    A declared ``Content-Length`` over the limit is answered at once, without reading the
    body; a chunked body is counted as it arrives and refused once it passes the limit, so
    the gateway never holds more than ``max_bytes`` (plus one chunk) of one request.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self, size: str) -> BodyTooLarge:
        return BodyTooLarge(
            f"request body is {size}, over this gateway's limit of {self.max_bytes} bytes"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = value
                break
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            err = self._too_large(f"{int(declared)} bytes")
            protocol = protocol_of_path(scope["path"])
            state = getattr(getattr(scope.get("app"), "state", None), "tiergate", None)
            if state is not None:  # counted and logged like every refusal
                state.pipeline.reject(metric_protocol(scope["path"]), err, path=scope["path"])
            response = error_response(err, protocol)
            response.headers["connection"] = "close"
            await response(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise self._too_large(f"over {self.max_bytes} bytes")
            return message

        await self.app(scope, counted, send)
