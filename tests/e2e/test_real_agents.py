"""Claude Code and Codex CLI themselves, unchanged, through the gateway to the simulators.

The pinned releases come from ``scripts/agents.sh`` (run by scripts/test.sh). The
simulator answers plain text, or calls a tool when the prompt asks for it by name
("use the Read tool with {...}"), so each agent runs a real tool round trip.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REQUIRE

from .conftest import Gateway

AGENTS = Path(__file__).resolve().parents[2] / "var" / "agents" / "bin"


def _agent(name: str) -> Path:
    path = AGENTS / name
    if not path.exists():
        msg = f"{path} is missing (run scripts/agents.sh)"
        if REQUIRE:
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def _run(argv: list[str], env: dict[str, str], cwd: Path) -> str:
    clean = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "TERM")}
    done = subprocess.run(
        argv, env={**clean, **env}, cwd=cwd, capture_output=True, text=True, timeout=120
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    return out


def _claude(gw: Gateway, tmp_path: Path, *args: str) -> str:
    env = {
        "HOME": str(tmp_path / "home"),
        "ANTHROPIC_BASE_URL": gw.url,
        "ANTHROPIC_API_KEY": "test",
        "DISABLE_TELEMETRY": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }
    return _run([str(_agent("claude")), "-p", *args], env, tmp_path)


def _codex(gw: Gateway, tmp_path: Path, prompt: str) -> str:
    home = tmp_path / "codex"
    home.mkdir()
    (home / "config.toml").write_text(
        'model = "deepseek-v4-flash"\nmodel_provider = "tiergate"\n\n'
        "[model_providers.tiergate]\n"
        f'name = "tiergate"\nbase_url = "{gw.url}/v1"\nenv_key = "TIERGATE_KEY"\n'
        'wire_api = "responses"\n'
    )
    env = {"HOME": str(tmp_path), "CODEX_HOME": str(home), "TIERGATE_KEY": "test"}
    argv = [str(_agent("codex")), "exec", "--skip-git-repo-check", prompt]
    return _run(argv, env, tmp_path)


def test_claude_code_print_mode(gateway: Gateway, tmp_path: Path) -> None:
    out = _claude(gateway, tmp_path, "say hi")  # no --bare
    assert "[deepseek-ai/DeepSeek-V4" in out  # the simulated replica's answer
    s = gateway.settled()[-1]
    assert s.protocol == "anthropic" and s.status == 200


def test_claude_code_tool_round_trip(gateway: Gateway, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello from the file\n")
    before = len(gateway.settled())
    ask = f'use the Read tool with {{"file_path": "{tmp_path / "notes.txt"}"}}\n'
    out = _claude(gateway, tmp_path, ask, "--allowedTools", "Read")
    assert "[deepseek-ai/DeepSeek-V4" in out
    turns = [s for s in gateway.settled()[before:] if s.protocol == "anthropic"]
    assert len(turns) >= 2 and all(s.status == 200 for s in turns)  # call, then the answer


def test_codex_exec(gateway: Gateway, tmp_path: Path) -> None:
    out = _codex(gateway, tmp_path, "say hi")
    assert "[deepseek-ai/DeepSeek-V4-Flash" in out
    s = gateway.settled()[-1]
    assert s.protocol == "responses" and s.requested_model == "deepseek-v4-flash"


def test_codex_exec_with_a_tool_call(gateway: Gateway, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello from the file\n")
    before = len(gateway.settled())
    out = _codex(gateway, tmp_path, 'use the exec_command tool with {"cmd": "cat notes.txt"}\n')
    assert "hello from the file" in out  # Codex ran the command the model asked for
    turns = [s for s in gateway.settled()[before:] if s.protocol == "responses"]
    assert len(turns) >= 2 and all(s.status == 200 for s in turns)
