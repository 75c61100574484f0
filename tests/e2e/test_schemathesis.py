"""Schema-driven fuzzing of every operation in /openapi.json against a real gateway.

The gateway runs on loopback in front of the simulators, with keys, budgets and the ledger in
a fresh PostgreSQL database, so the admin API is live too. Schemathesis generates requests
that fit the documented schema (positive) and requests that do not (negative); for each:

* no response is a 5xx (the simulators are healthy, so any 5xx is a gateway bug);
* every error body has its protocol's shape: Anthropic's on /v1/messages*, OpenAI's elsewhere.

Bounded: a few examples per operation and mode (TIERGATE_TEST_FUZZ_EXAMPLES to raise it),
no deadline, no example database.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.schemas import BaseSchema

from engines.asgi_thread import BackgroundServer
from gateway.app import create_app
from gateway.settings import Settings

from .conftest import Sims, demo_catalog

MASTER = "master-" + "s" * 24
EXAMPLES = int(os.environ.get("TIERGATE_TEST_FUZZ_EXAMPLES", "12"))

# Every operation the document lists; a new route must be added here to be fuzzed.
OPERATIONS = [
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/{model_id}"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/messages"),
    ("POST", "/v1/messages/count_tokens"),
    ("POST", "/v1/responses"),
    ("GET", "/v1/responses/{response_id}"),
    ("DELETE", "/v1/responses/{response_id}"),
    ("POST", "/admin/teams"),
    ("GET", "/admin/teams"),
    ("POST", "/admin/keys"),
    ("GET", "/admin/keys"),
    ("DELETE", "/admin/keys/{key_id}"),
    ("PUT", "/admin/budgets"),
    ("GET", "/admin/budgets"),
    ("PUT", "/admin/limits/{key_id}"),
    ("GET", "/admin/spend"),
    ("GET", "/admin/savings"),
]
# Operations with nothing to make invalid: no parameters and no body, or one free-text
# path parameter.
NO_INPUT = {
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/v1/models"),
    ("GET", "/admin/teams"),
    ("GET", "/admin/budgets"),
    ("DELETE", "/admin/keys/{key_id}"),
    ("GET", "/v1/models/{model_id}"),
    ("GET", "/v1/responses/{response_id}"),
    ("DELETE", "/v1/responses/{response_id}"),
}
CASES = [
    (method, path, mode)
    for method, path in OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or (method, path) not in NO_INPUT
]


@dataclass
class Target:
    url: str
    schema: BaseSchema


@pytest.fixture(scope="module")
def target(sims: Sims, pg_url: str, monkeypatch_module: pytest.MonkeyPatch) -> Iterator[Target]:
    app = create_app(
        Settings(
            log_level="warning",
            log_json=True,
            database_url=pg_url,
            master_key=MASTER,  # type: ignore[arg-type]
            max_body_bytes=256_000,
        ),
        catalog=demo_catalog(sims),
    )
    server = BackgroundServer(app).start()
    try:
        # Something for the admin operations to find: a team and one of its keys.
        auth = {"Authorization": f"Bearer {MASTER}"}
        httpx.post(server.base_url + "/admin/teams", json={"name": "fuzz"}, headers=auth)
        httpx.post(server.base_url + "/admin/keys", json={"team": "fuzz"}, headers=auth)
        schema = schemathesis.openapi.from_url(server.base_url + "/openapi.json")
        yield Target(server.base_url, schema)
    finally:
        server.stop()


def test_the_document_lists_every_operation(target: Target) -> None:
    listed = sorted(
        (op.ok().method.upper(), op.ok().path) for op in target.schema.get_all_operations()
    )
    assert listed == sorted(OPERATIONS)
    doc = httpx.get(target.url + "/openapi.json").json()
    for path in ("/v1/chat/completions", "/v1/messages", "/admin/keys", "/admin/budgets"):
        post_or_put = doc["paths"][path].get("post") or doc["paths"][path].get("put")
        schema = post_or_put["requestBody"]["content"]["application/json"]["schema"]
        assert schema["type"] == "object" and schema["required"]


def check_error_shape(path: str, response: Any) -> None:
    """A 4xx body in the caller's protocol's error shape."""
    body = response.json()
    if path.startswith("/v1/messages"):
        assert body.keys() == {"type", "error"} and body["type"] == "error", body
        err = body["error"]
        assert err.keys() == {"type", "message"}, body
        assert isinstance(err["type"], str) and isinstance(err["message"], str), body
        return
    assert body.keys() == {"error"}, body
    err = body["error"]
    assert err.keys() == {"message", "type", "param", "code"}, body
    assert isinstance(err["message"], str) and err["message"], body
    assert isinstance(err["type"], str) and isinstance(err["code"], str), body
    assert err["param"] is None or isinstance(err["param"], str), body


@pytest.mark.parametrize(("method", "path", "mode"), CASES)
def test_no_server_errors_and_protocol_shaped_errors(
    target: Target, method: str, path: str, mode: GenerationMode
) -> None:
    operation = target.schema[path][method]
    headers = {"Authorization": f"Bearer {MASTER}"}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        response = case.call(base_url=target.url, headers=headers, timeout=30)
        where = f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text}"
        assert response.status_code < 500, where
        if response.status_code >= 400:
            check_error_shape(case.path, response)

    run()
