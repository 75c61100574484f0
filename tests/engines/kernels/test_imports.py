"""The package, the launch profiles and the plugin entry point import without torch/vLLM."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

_SCRIPT = """
import importlib.abc, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "triton", "vllm"}:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Block())
import engines.kernels, engines.kernels.plugin, engines.profiles, gateway.cli_engine
from engines.kernels import FLASH, LayerKind
assert FLASH.n_heads == 64 and LayerKind.CSA.ratio == 4
decision = engines.kernels.plugin.register()
assert not decision.register and "not installed" in decision.reason, decision
try:
    engines.kernels.sparse_decode
except ModuleNotFoundError:
    pass
else:
    raise AssertionError("the kernels resolved without torch")
assert not any(m.split(".")[0] in {"torch", "triton", "vllm"} for m in sys.modules)
print("ok")
"""


def test_imports_without_torch_triton_or_vllm() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_installed_distribution_registers_the_vllm_plugin() -> None:
    from importlib.metadata import entry_points

    from engines.kernels import plugin

    found = {ep.name: ep for ep in entry_points(group=plugin.ENTRY_POINT_GROUP)}
    assert "tiergate_v4_kernels" in found, "pip install -e . registers the vllm plugin"
    ep = found["tiergate_v4_kernels"]
    assert f"{ep.name} = {ep.value}" == plugin.ENTRY_POINT
    assert ep.load() is plugin.register
