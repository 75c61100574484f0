"""Paged caches of V4 entries (raw window tokens, compressed KV, indexer keys).

Entries of one sequence live in fixed-size blocks named by a per-row block table, as in
vLLM's paged KV cache: entry ``j`` of row ``r`` is slot
``block_table[r, j // block_size] * block_size + j % block_size``. Entries are bf16
(``data: bf16 [slots, dim]``) or FP8 (``data: uint8 [slots, fmt.nbytes]``, see ``fp8``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engines.kernels import fp8
from engines.kernels.fp8 import EntryFormat


@dataclass(frozen=True)
class KernelArgs:
    """Pointers and row stride a Triton kernel needs to read or write entries."""

    body: torch.Tensor
    tail: torch.Tensor
    scales: torch.Tensor
    stride: int


@dataclass(frozen=True)
class PagedEntries:
    data: torch.Tensor
    block_table: torch.Tensor
    block_size: int
    dim: int
    fmt: EntryFormat | None = None

    def __post_init__(self) -> None:
        want = (torch.uint8, self.fmt.nbytes) if self.fmt else (torch.bfloat16, self.dim)
        if self.data.dim() != 2 or (self.data.dtype, self.data.shape[1]) != want:
            raise ValueError(f"cache data must be {want[0]} [slots, {want[1]}]")
        if self.fmt is not None and self.fmt.dim != self.dim:
            raise ValueError(f"format is for dim {self.fmt.dim}, cache dim is {self.dim}")
        if self.block_table.dtype != torch.int32 or self.block_table.dim() != 2:
            raise ValueError("block_table must be int32 [rows, max_blocks]")
        if not self.data.is_contiguous():
            raise ValueError("cache data must be contiguous")

    @classmethod
    def allocate(
        cls,
        rows: int,
        capacity: int,
        dim: int,
        *,
        block_size: int,
        fmt: EntryFormat | None = None,
        device: torch.device | str = "cpu",
        seed: int | None = None,
    ) -> PagedEntries:
        """A zeroed cache with room for ``capacity`` entries per row.

        With ``seed`` the physical blocks are handed out in a random order (as a long-running
        allocator would), so readers that ignore the block table are caught.
        """
        per_row = max(1, -(-capacity // block_size))
        n_blocks = rows * per_row
        if seed is None:
            order = torch.arange(n_blocks, dtype=torch.int32)
        else:
            gen = torch.Generator().manual_seed(seed)
            order = torch.randperm(n_blocks, generator=gen).to(torch.int32)
        table = order.reshape(rows, per_row).to(device)
        slots = n_blocks * block_size
        if fmt is None:
            data = torch.zeros(slots, dim, dtype=torch.bfloat16, device=device)
        else:
            data = torch.zeros(slots, fmt.nbytes, dtype=torch.uint8, device=device)
        return cls(data=data, block_table=table, block_size=block_size, dim=dim, fmt=fmt)

    @property
    def capacity(self) -> int:
        return int(self.block_table.shape[1]) * self.block_size

    def slots(self, row: int, idx: torch.Tensor) -> torch.Tensor:
        idx = idx.to(device=self.data.device, dtype=torch.long)
        blocks = self.block_table[row].long()[idx // self.block_size]
        return blocks * self.block_size + idx % self.block_size

    def write(self, row: int, idx: torch.Tensor, x: torch.Tensor) -> None:
        """Store entries ``x [n, dim]`` at positions ``idx [n]`` of ``row``."""
        slots = self.slots(row, idx)
        if self.fmt is None:
            self.data[slots] = x.to(torch.bfloat16)
        else:
            self.data[slots] = fp8.quantize(x, self.fmt)

    def write_rows(self, idx: torch.Tensor, x: torch.Tensor) -> None:
        """Store one entry per row: ``x [R, dim]`` at entry ``idx [R] % capacity`` of each row."""
        idx = idx.to(device=self.data.device, dtype=torch.long) % self.capacity
        rows = torch.arange(idx.shape[0], device=self.data.device)
        pages = self.block_table.long()[rows, idx // self.block_size]
        slots = pages * self.block_size + idx % self.block_size
        self.data[slots] = x.to(torch.bfloat16) if self.fmt is None else fp8.quantize(x, self.fmt)

    def read(self, row: int, idx: torch.Tensor) -> torch.Tensor:
        """Entries at positions ``idx`` of ``row`` as float32 ``[n, dim]`` (dequantized)."""
        rows = self.data[self.slots(row, idx)]
        return rows.float() if self.fmt is None else fp8.dequantize(rows, self.fmt)

    def kernel_args(self) -> KernelArgs:
        if self.fmt is None:
            return KernelArgs(self.data, self.data, self.data, self.dim)
        body, tail, scales = fp8.views(self.data, self.fmt)
        return KernelArgs(body, tail if self.fmt.tail else body, scales, self.fmt.nbytes)
