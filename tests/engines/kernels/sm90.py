"""Compile-only mode: every kernel launch is compiled for Hopper (sm_90) instead of run.

Loaded as a pytest plugin (``-p tests.engines.kernels.sm90``) with
``TIERGATE_KERNELS_COMPILE_REPORT=path`` set and ``TRITON_INTERPRET=0``, on any machine, GPU
or not (``test_compile_sm90.py`` does this). Each launch goes through Triton's real compiler
(front end, TTGIR, LLVM, PTX and ``ptxas``) for an H100/H200 target; nothing runs, so the
tests' numeric checks fail and are ignored. What counts is the report written at the end:
every kernel compiled with its shared memory, every compile error, and every FP8 entry load
the compiler widened past the entries' 4-byte alignment. The CPU interpreter that the
ordinary tests use accepts code the compiler refuses (plain Python globals, a constexpr
assigned twice) and never faults on alignment, so this is the check that the kernels build,
and load safely, on the GPU they are written for. ``TIERGATE_KERNELS_DUMP=dir`` also writes
each variant's PTX and TTIR there.
"""

from __future__ import annotations

import json
import os
import traceback
from typing import Any

import pytest

REPORT = os.environ.get("TIERGATE_KERNELS_COMPILE_REPORT", "")
DUMP = os.environ.get("TIERGATE_KERNELS_DUMP", "")
ARCH = 90

_compiled: dict[str, dict[str, Any]] = {}
_errors: list[dict[str, str]] = []


def _install() -> None:
    import torch
    from triton.backends.compiler import GPUTarget
    from triton.runtime import driver
    from triton.runtime.jit import JITFunction

    class CompileOnly:
        """The parts of a Triton driver that compiling needs; launching is never reached."""

        def __init__(self) -> None:
            self.target = GPUTarget("cuda", ARCH, 32)

        def is_active(self) -> bool:
            return True

        def get_current_target(self) -> GPUTarget:
            return self.target

        def get_current_device(self) -> int:
            return 0

        def get_current_stream(self, device: int | None = None) -> int:
            return 0

        def get_active_torch_device(self) -> torch.device:
            return torch.device("cpu")

    driver.set_active(CompileOnly())  # type: ignore[arg-type]

    def compile_only(self: JITFunction, *args: Any, grid: Any, warmup: bool, **kwargs: Any) -> Any:
        name = f"{self.module}.{self.fn.__name__}"
        try:
            kernel = _run(self, *args, grid=grid, warmup=True, **kwargs)
        except Exception as exc:  # noqa: BLE001 - every compile failure is the finding
            _errors.append(
                {
                    "kernel": name,
                    "error": f"{type(exc).__name__}: {exc}"[:3000],
                    "where": "".join(traceback.format_exception(exc)[-3:])[:2000],
                }
            )
            raise
        ptx = kernel.asm["ptx"]
        entry = _compiled.setdefault(name, {"launches": 0, "max_shared_bytes": 0})
        entry["launches"] += 1
        entry["max_shared_bytes"] = max(entry["max_shared_bytes"], kernel.metadata.shared)
        if kwargs.get("FP8"):
            for line in wide_entry_loads(ptx):
                _errors.append(
                    {"kernel": name, "error": f"FP8 entry load wider than 4 bytes: {line}"}
                )
        if DUMP:
            os.makedirs(DUMP, exist_ok=True)
            stem = os.path.join(DUMP, f"{name}.{abs(hash(repr(sorted(kwargs.items())))):x}")
            with open(stem + ".ptx", "w") as f:
                f.write(f"// {kwargs}\n{ptx}")
            with open(stem + ".ttir", "w") as f:
                f.write(kernel.asm["ttir"])
        return None

    _run = JITFunction.run
    JITFunction.run = compile_only  # type: ignore[method-assign]

    # The kernels' host code picks the tensor-core (bf16) path on CUDA: compile that one.
    import engines.kernels.decode as decode
    import engines.kernels.indexer as indexer
    import engines.kernels.tl_entries as tl_entries

    for module in (decode, indexer, tl_entries):
        module.interpreted = lambda device: False  # type: ignore[attr-defined]


def wide_entry_loads(ptx: str) -> list[str]:
    """Vector loads (``ld.global.v2/v4``) that PTX attributes to ``tl_entries.py``.

    FP8 cache entries are 4-byte aligned only (584 and 132 bytes), so in a kernel compiled
    for FP8 entries every load of an entry must be 4 bytes or narrower; a wider one faults
    with a misaligned address on some rows. (The bf16 branch, whose rows are aligned, is not
    compiled into FP8 kernels.)
    """
    wide, loc = [], ""
    for line in ptx.splitlines():
        text = line.strip()
        if text.startswith(".loc"):
            loc = text.split("//", 1)[-1].strip()
        elif "ld.global.v" in text and "tl_entries.py" in loc:
            wide.append(f"{loc}: {text}")
    return wide


def pytest_configure(config: pytest.Config) -> None:
    if REPORT:
        if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
            raise pytest.UsageError("compile-only mode needs TRITON_INTERPRET=0")
        _install()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if REPORT:
        with open(REPORT, "w") as f:
            json.dump({"arch": ARCH, "compiled": _compiled, "errors": _errors}, f, indent=1)
