"""``model: auto`` reads the task, not the agent harness around it (captured first requests)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import Gateway

DATA = Path(__file__).parent / "data"
HARD = (
    "Prove that there are infinitely many primes, step by step, then derive why the same "
    "argument fails for primes of the form n^2 + 1 and explain why."
)


def _ask(name: str, text: str) -> tuple[str, dict[str, Any]]:
    body = json.loads((DATA / name).read_text())["body"]
    if "messages" in body:  # Claude Code: the last text block of the first user turn
        body["messages"][0]["content"][-1]["text"] = text
        body["model"] = "claude-sonnet-4-5"  # a claude-* name the catalog sends to auto
        return "/v1/messages", body
    body["input"][-1]["content"][0]["text"] = text
    body["model"] = "auto"
    return "/v1/responses", body


@pytest.mark.parametrize("name", ["claude_code_say_hi.json", "codex_say_hi.json"])
@pytest.mark.parametrize(("text", "thinking"), [("say hi", False), (HARD, True)])
def test_agent_boilerplate_is_not_difficulty(
    gateway: Gateway, name: str, text: str, thinking: bool
) -> None:
    path, body = _ask(name, text)
    # As captured: adaptive thinking at effort high (Claude Code), a reasoning summary with
    # no effort (Codex): both leave the mode to the router.
    body["stream"] = False
    r = httpx.post(gateway.url + path, json=body, headers={"authorization": "Bearer t"}, timeout=30)
    assert r.status_code == 200, r.text
    route = r.headers["x-tiergate-route"]
    if thinking:
        assert "/think-" in route, route
    else:
        assert route.startswith("flash/non-thinking/"), route
