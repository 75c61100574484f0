"""Shared builders for the kernel tests (small shapes unless a test says otherwise)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from engines.kernels import reference as ref  # noqa: E402
from engines.kernels.fp8 import EntryFormat  # noqa: E402
from engines.kernels.paged import PagedEntries  # noqa: E402

# Tolerances (absolute, on outputs of magnitude about 1):
# bf16 storage of an output or entry: 1 bf16 ulp at 1-2 is 2**-7; allow 2 ulps.
BF16_ATOL = 2.0**-6
# GPU tensor-core paths also round the probabilities to bf16 before P @ V.
GPU_ATOL = 2.0**-5


def fp8_format(dim: int) -> EntryFormat:
    """The FP8 layout tests use: a 64-dim bf16 tail when the entry has roped dims to keep."""
    return EntryFormat(dim=dim, tail=64 if dim > 64 else 0)


def filled_cache(
    values: torch.Tensor, *, block_size: int, fp8: bool, seed: int, capacity: int | None = None
) -> PagedEntries:
    """A shuffled paged cache holding ``values [R, N, D]`` at entries ``0 .. N-1`` per row."""
    rows, n, dim = values.shape
    cache = PagedEntries.allocate(
        rows,
        capacity or n,
        dim,
        block_size=block_size,
        fmt=fp8_format(dim) if fp8 else None,
        device=values.device,
        seed=seed,
    )
    for r in range(rows):
        cache.write(r, torch.arange(n, device=values.device), values[r])
    return cache


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape: int, seed: int, device: str = "cpu", scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape, generator=gen(seed)) * scale).to(device)


def fp8_bound(x: torch.Tensor) -> torch.Tensor:
    """Largest rounding error FP8 storage may add to each value of ``x [..., D]``.

    Half an e4m3 step at the top of a 64-dim block is at most amax / 16; bf16 tails are
    covered by the same bound.
    """
    blocks = x.reshape(*x.shape[:-1], -1, 64).abs().amax(dim=-1, keepdim=True)
    return (blocks / 16).expand(*x.shape[:-1], -1, 64).reshape(x.shape) + 1e-6


__all__ = ["ref", "torch"]
