"""Request and connection limits of a real `tiergate serve` process in front of simulators.

Body size (413), messages per request (400), request-head size (431), request-head time
(408), and slowloris-style clients that must not starve anyone else.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import Sims
from .test_money_e2e import Gateways, sims_catalog

ROOT = Path(__file__).resolve().parents[2]
MAX_BODY = 64_000
MAX_MESSAGES = 20
MAX_HEAD = 8_192
HEAD_TIMEOUT = 3.0
BODY_TIMEOUT = 2.0


@pytest.fixture(scope="module")
def served(sims: Sims, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    config = sims_catalog(sims, tmp_path_factory.mktemp("limits"))
    env = {
        **os.environ,
        "DEEPSEEK_API_KEY": "sim-key",
        "TIERGATE_DATABASE_URL": "none",
        "TIERGATE_LOG_LEVEL": "warning",
        "TIERGATE_MAX_BODY_BYTES": str(MAX_BODY),
        "TIERGATE_MAX_MESSAGES": str(MAX_MESSAGES),
        "TIERGATE_MAX_HEADER_BYTES": str(MAX_HEAD),
        "TIERGATE_HEADER_TIMEOUT_S": str(HEAD_TIMEOUT),
        "TIERGATE_BODY_TIMEOUT_S": str(BODY_TIMEOUT),
    }
    gw = Gateways(env, config)
    gw.start(1)
    yield gw.urls[0]
    gw.stop()


def chat_body(n_messages: int = 1, text: str = "hi") -> dict[str, Any]:
    return {
        "model": "deepseek-chat",
        "max_tokens": 8,
        "messages": [{"role": "user", "content": text}] * n_messages,
    }


def anthropic_body(n_messages: int = 1, text: str = "hi") -> dict[str, Any]:
    return {**chat_body(n_messages, text), "model": "deepseek-chat"}


def openai_error(r: httpx.Response) -> dict[str, Any]:
    body = r.json()
    assert body.keys() == {"error"} and body["error"].keys() == {"message", "type", "param", "code"}
    err: dict[str, Any] = body["error"]
    return err


def anthropic_error(r: httpx.Response) -> dict[str, Any]:
    body = r.json()
    assert body["type"] == "error" and body["error"].keys() == {"type", "message"}
    err: dict[str, Any] = body["error"]
    return err


# ---- body size ------------------------------------------------------------------------------


def test_body_just_under_the_limit_is_served(served: str) -> None:
    body = chat_body(text="x" * (MAX_BODY - 500))
    r = httpx.post(served + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 200, r.text


def test_declared_body_over_the_limit_is_413_in_each_protocol(served: str) -> None:
    big = "x" * (MAX_BODY + 1)
    r = httpx.post(served + "/v1/chat/completions", json=chat_body(text=big), timeout=30)
    assert r.status_code == 413
    err = openai_error(r)
    assert err["code"] == "body_too_large" and f"limit of {MAX_BODY} bytes" in err["message"]
    r = httpx.post(served + "/v1/messages", json=anthropic_body(text=big), timeout=30)
    assert r.status_code == 413
    assert anthropic_error(r)["type"] == "request_too_large"


def test_chunked_body_over_the_limit_is_413(served: str) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "deepseek-chat", "messages": [{"role": "user", "content": "'
        for _ in range(MAX_BODY // 1000 + 2):
            yield b"y" * 1000
        yield b'"}]}'

    r = httpx.post(
        served + "/v1/chat/completions",
        content=chunks(),
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert "content-length" not in r.request.headers
    assert r.status_code == 413
    assert openai_error(r)["code"] == "body_too_large"


# ---- messages per request -------------------------------------------------------------------


def test_too_many_messages_is_400_in_each_protocol(served: str) -> None:
    ok = httpx.post(served + "/v1/chat/completions", json=chat_body(MAX_MESSAGES), timeout=30)
    assert ok.status_code == 200, ok.text
    r = httpx.post(served + "/v1/chat/completions", json=chat_body(MAX_MESSAGES + 1), timeout=30)
    assert r.status_code == 400
    err = openai_error(r)
    assert err["param"] == "messages" and f"limit of {MAX_MESSAGES}" in err["message"]
    r = httpx.post(served + "/v1/messages", json=anthropic_body(MAX_MESSAGES + 1), timeout=30)
    assert r.status_code == 400
    assert f"limit of {MAX_MESSAGES}" in anthropic_error(r)["message"]


# ---- request head ---------------------------------------------------------------------------


def test_oversized_head_is_431_in_each_protocol(served: str) -> None:
    fine = httpx.post(
        served + "/v1/chat/completions",
        json=chat_body(),
        headers={"x-pad": "p" * (MAX_HEAD - 1000)},
        timeout=30,
    )
    assert fine.status_code == 200, fine.text
    pad = {"x-pad": "p" * (MAX_HEAD + 1)}
    r = httpx.post(served + "/v1/chat/completions", json=chat_body(), headers=pad, timeout=30)
    assert r.status_code == 431
    assert f"limit of {MAX_HEAD} bytes" in openai_error(r)["message"]
    r = httpx.post(served + "/v1/messages", json=anthropic_body(), headers=pad, timeout=30)
    assert r.status_code == 431
    assert anthropic_error(r)["message"]
    assert anthropic_error(r)["type"] == "invalid_request_error"  # a client error, not api_error
    assert r.headers["x-request-id"]
    many = {f"x-h{i}": "v" * 40 for i in range(MAX_HEAD // 40)}
    assert httpx.get(served + "/healthz", headers=many, timeout=30).status_code == 431
    assert httpx.get(served + "/healthz", timeout=5).status_code == 200


def _read_all(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except (TimeoutError, ConnectionResetError):  # a reset may follow the reply
        pass
    return out


def test_a_head_that_never_finishes_is_cut_off_with_408(served: str) -> None:
    port = int(served.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        for _ in range(int(HEAD_TIMEOUT * 4)):  # keeps sending, a byte at a time
            try:
                sock.sendall(b"x")
            except OSError:
                break
            time.sleep(0.25)
        reply = _read_all(sock, HEAD_TIMEOUT + 5)
    assert reply.startswith(b"HTTP/1.1 408"), reply
    assert b'"type":"error"' in reply  # Anthropic shape: the path was /v1/messages
    assert HEAD_TIMEOUT - 0.5 <= time.monotonic() - started <= HEAD_TIMEOUT + 6


def test_a_body_shorter_than_its_content_length_is_cut_off_with_408(served: str) -> None:
    port = int(served.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"model":'
        )
        started = time.monotonic()
        reply = _read_all(sock, BODY_TIMEOUT + 10)
    assert reply.startswith(b"HTTP/1.1 408"), reply
    assert b'"code":"request_timeout"' in reply and b"Content-Length" in reply
    assert BODY_TIMEOUT - 0.5 <= time.monotonic() - started <= BODY_TIMEOUT + 6


def test_200_trickling_connections_do_not_starve_a_normal_client(served: str) -> None:
    port = int(served.rsplit(":", 1)[1])
    socks: list[socket.socket] = []
    stop = threading.Event()
    try:
        for _ in range(200):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
            socks.append(s)
        opened = time.monotonic()

        def trickle() -> None:
            while not stop.is_set():
                for s in socks:
                    with contextlib.suppress(OSError):
                        s.send(b"x")
                time.sleep(0.1)

        t = threading.Thread(target=trickle, daemon=True)
        t.start()
        with httpx.Client(base_url=served, timeout=5) as client:
            for i in range(20):
                begin = time.monotonic()
                r = client.post("/v1/chat/completions", json=chat_body(text=f"normal {i}"))
                assert r.status_code == 200, r.text
                assert time.monotonic() - begin < 2.0
        # The normal client was served while all 200 heads were still being trickled.
        assert time.monotonic() - opened < HEAD_TIMEOUT
        # ...and the tricklers are cut off at the head deadline, freeing their connections.
        cut = 0
        for s in socks:
            if _read_all(s, HEAD_TIMEOUT + 5).startswith(b"HTTP/1.1 408"):
                cut += 1
        assert cut == len(socks)
    finally:
        stop.set()
        for s in socks:
            s.close()


def test_one_endless_header_line_is_431(served: str) -> None:
    port = int(served.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nx-endless: ")
        try:
            for _ in range(4 * MAX_HEAD // 1024):
                sock.sendall(b"e" * 1024)
                time.sleep(0.01)
        except OSError:
            pass  # the gateway may close before all of it is sent
        reply = _read_all(sock, HEAD_TIMEOUT + 5)
    assert reply.startswith(b"HTTP/1.1 431"), reply


@pytest.mark.parametrize(
    ("path", "header"),
    [
        ("/v1/chat/completions", b"x-bad: a\x01b"),
        ("/v1/chat/completions", b"content-length: -5"),
        ("/v1/messages", b"x-bad: a\x7fb"),
    ],
)
def test_a_request_the_http_parser_refuses_is_a_json_400(
    served: str, path: str, header: bytes
) -> None:
    port = int(served.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n" + header + b"\r\n\r\n")
        reply = _read_all(sock, 5)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), reply
    assert b"content-type: application/json" in head.lower(), reply
    data = json.loads(body)
    if path == "/v1/messages":
        assert data["type"] == "error" and data["error"]["type"] == "invalid_request_error"
    else:
        assert data["error"]["code"] == "malformed_http"
    assert "not valid HTTP/1.1" in data["error"]["message"], data
