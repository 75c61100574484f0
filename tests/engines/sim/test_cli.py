"""The ``tiergate sim`` command line, and ``python -m engines.sim`` serving for real."""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from engines.asgi_thread import free_port
from engines.sim.cli import add_sim_command, build_config

ROOT = Path(__file__).resolve().parents[3]


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_sim_command(parser.add_subparsers())
    return parser.parse_args(["sim", *argv])


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], {"mode": "vllm", "model": "deepseek-ai/DeepSeek-V4-Flash"}),
        (["--mode", "hosted"], {"mode": "hosted", "block_size": 64, "keepalive_comments": True}),
        (
            ["--preset", "pro", "--zero-latency"],
            {"model": "deepseek-ai/DeepSeek-V4-Pro", "itl_s": 0.0},
        ),
        (
            ["--model", "m", "--replica-id", "r2", "--fail-rate", "0.5"],
            {"model": "m", "replica_id": "r2", "fail_rate": 0.5},
        ),
        (
            ["--fail-mode", "midstream", "--no-keepalive", "--mode", "hosted"],
            {"fail_mode": "midstream", "keepalive_comments": False},
        ),
        (["--latency-scale", "0.5"], {"itl_s": 0.006}),
    ],
)
def test_command_line_builds_the_config(argv: list[str], expected: dict[str, object]) -> None:
    cfg = build_config(_parse(argv))
    for name, value in expected.items():
        assert (
            getattr(cfg, name) == pytest.approx(value)
            if isinstance(value, float)
            else getattr(cfg, name) == value
        )


def test_command_line_rejects_a_bad_config_with_status_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = _parse(["--fail-rate", "3"])
    assert args.func(args) == 2
    assert "fail_rate" in capsys.readouterr().err


def test_python_m_engines_sim_serves_until_stopped() -> None:
    port = free_port()
    cmd = [sys.executable, "-m", "engines.sim", "--zero-latency", "--replica-id", "cli-1"]
    proc = subprocess.Popen([*cmd, "--port", str(port)], cwd=ROOT, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
        r = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "hi"}]},
        )
        assert r.status_code == 200 and r.headers["x-sim-replica"] == "cli-1"
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert b"zero latency" in err
