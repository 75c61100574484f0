"""The kernels compile for Hopper (sm_90) and load FP8 entries at their true alignment.

Runs the kernel tests in compile-only mode (``sm90.py``) in a subprocess: every launch the
small-shape tests make, and the real-shape (GPU) tests at the 64k context, is compiled by
Triton for an H100/H200 instead of run, on this machine's CPU. The CPU interpreter that runs
the other kernel tests cannot see either failure this catches; both reached the GPU once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[3]
KERNELS = {
    "engines.kernels.compressor._compress_decode_kernel",
    "engines.kernels.decode._decode_split_kernel",
    "engines.kernels.decode._merge_kernel",
    "engines.kernels.indexer._score_kernel",
    "engines.kernels.indexer._topk_kernel",
}


def test_every_kernel_launch_compiles_for_sm90(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    env = {
        **os.environ,
        "TRITON_INTERPRET": "0",
        "TIERGATE_KERNELS_COMPILE_REPORT": str(report),
        "TRITON_CACHE_DIR": os.environ.get("TRITON_CACHE_DIR", str(tmp_path / "triton-cache")),
    }
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-p",
        "tests.engines.kernels.sm90",
        "tests/engines/kernels",
        "--ignore=tests/engines/kernels/test_imports.py",
        "--ignore=tests/engines/kernels/test_compile_sm90.py",
        "-k",
        "not 128k and not 1m",
    ]
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert report.exists(), f"no report written:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    result = json.loads(report.read_text())
    assert result["errors"] == [], json.dumps(result["errors"][:5], indent=1)
    assert set(result["compiled"]) >= KERNELS, sorted(result["compiled"])
    for name in KERNELS:
        # 228 KiB of shared memory per block on Hopper, less 1 KiB the runtime keeps.
        assert result["compiled"][name]["max_shared_bytes"] <= 227 * 1024, name
