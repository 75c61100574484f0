"""SIGTERM drains: an in-flight stream finishes, its ledger row is written, the process exits 0."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import yaml

from engines.asgi_thread import free_port
from engines.sim.config import SimConfig
from engines.sim.runner import SimServer
from gateway.db.migrate import upgrade

from .conftest import DEMO

ROOT = Path(__file__).resolve().parents[2]


def test_sigterm_lets_a_stream_finish_and_flushes_the_ledger(tmp_path: Path) -> None:
    slow = SimServer(SimConfig.preset("flash", itl_s=0.05, ttft_base_s=0.05)).start()
    db = tmp_path / "ledger.db"
    upgrade(f"sqlite+aiosqlite:///{db}")
    data = yaml.safe_load(DEMO.read_text())
    data["backends"]["flash-local"]["replicas"] = [slow.base_url]
    data["routing"]["backend_preference"] = ["self_hosted"]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    port = free_port()
    env = {
        **os.environ,
        "TIERGATE_DATABASE_URL": f"sqlite+aiosqlite:///{db}",
        "DEEPSEEK_API_KEY": "x",
        "TIERGATE_LOG_LEVEL": "warning",
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "serve",
            "--config",
            str(tmp_path / "c.yaml"),
            "--port",
            str(port),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        lines: list[str] = []

        def consume() -> None:
            body = {
                "model": "deepseek-chat",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 30,
                "stream": True,
            }
            with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=30) as r:
                lines.extend(line for line in r.iter_lines() if line)

        t = threading.Thread(target=consume)
        t.start()
        time.sleep(0.5)  # the stream is under way (30 tokens at 50 ms)
        proc.send_signal(signal.SIGTERM)
        t.join(30)
        # uvicorn drains, then re-raises SIGTERM on itself: exit by that signal, after the drain.
        assert proc.wait(30) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
        slow.stop()
    assert lines and lines[-1] == "data: [DONE]"
    rows = sqlite3.connect(db).execute("select status, output_tokens from ledger").fetchall()
    assert len(rows) == 1 and rows[0][0] == 200 and rows[0][1] > 0
