"""Log lines as an operator reads them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_json_error_line_carries_the_traceback() -> None:
    script = (
        "from gateway.logging import configure_logging, get_logger\n"
        "configure_logging('info', json=True)\n"
        "try:\n"
        "    {}['missing']\n"
        "except KeyError:\n"
        "    get_logger().exception('unhandled_error', path='/v1/x')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    line = json.loads(done.stderr.strip().splitlines()[-1])
    assert line["event"] == "unhandled_error" and line["level"] == "error"
    assert "Traceback" in line["exception"] and "KeyError: 'missing'" in line["exception"]
