"""Kernel tests run on CUDA where there is one, else in the Triton interpreter on CPU.

Tests marked ``gpu`` run only with CUDA (CI deselects them with ``-m "not gpu"``).

``TRITON_INTERPRET`` must be set before the kernel modules are imported (``triton.jit``
reads it when a kernel is defined), so it is set here, at collection time.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

try:
    import torch

    HAVE_CUDA = torch.cuda.is_available()
    if not HAVE_CUDA:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    import triton  # noqa: F401

    HAVE_KERNEL_DEPS = True
except ImportError:
    HAVE_KERNEL_DEPS = HAVE_CUDA = False

if not HAVE_KERNEL_DEPS and os.environ.get("TIERGATE_TEST_REQUIRE_SERVICES") == "1":
    raise RuntimeError(
        "the kernel tests need torch and triton: install them with pip install -e '.[kernels]'"
        " (make test does)"
    )

# Without the kernels extra only the import tests (which need neither) are collected.
collect_ignore = (
    []
    if HAVE_KERNEL_DEPS
    else [p.name for p in Path(__file__).parent.glob("*.py") if p.name != "test_imports.py"]
)


@pytest.fixture
def device() -> str:
    return "cuda" if HAVE_CUDA else "cpu"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if HAVE_CUDA or os.environ.get("TIERGATE_KERNELS_COMPILE_REPORT"):
        return  # compile-only mode (tests/engines/kernels/sm90.py) compiles the GPU tests too
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
