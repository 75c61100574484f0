"""FP8 cache entries: layout, quantization and dequantization (PyTorch).

An entry of ``dim`` values is stored as

* ``dim - tail`` values in FP8 e4m3, quantized in blocks of 64 with one power-of-two scale
  per block (UE8M0: one byte holding the biased exponent, value ``2 ** (byte - 127)``),
* ``tail`` values in bf16 (for the main KV these are the 64 roped dims, kept exact),
* the scale bytes, then zero padding to a multiple of 4 bytes.

The main V4 KV entry (512 dims, 64-dim bf16 tail) is 448 + 128 + 7 + 1 = 584 bytes; an
indexer key (128 dims, all FP8) is 128 + 2 + 2 = 132 bytes.

Quantization rounds to nearest even, like a hardware conversion. The Triton kernels use
the same layout and the same scale rule, so a kernel-written entry and one written here
decode to the same values up to the rounding of their inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FP8_MAX = 448.0
BLOCK = 64
_UE8M0_BIAS = 127
FP8_DTYPE = torch.float8_e4m3fn


@dataclass(frozen=True)
class EntryFormat:
    """Byte layout of one FP8 cache entry."""

    dim: int
    tail: int

    def __post_init__(self) -> None:
        if self.tail % BLOCK or self.quant_dim % BLOCK or self.tail > self.dim:
            raise ValueError(f"dim {self.dim} and tail {self.tail} must be multiples of {BLOCK}")

    @property
    def quant_dim(self) -> int:
        return self.dim - self.tail

    @property
    def n_scales(self) -> int:
        return self.quant_dim // BLOCK

    @property
    def tail_offset(self) -> int:
        return self.quant_dim

    @property
    def scale_offset(self) -> int:
        return self.quant_dim + 2 * self.tail

    @property
    def nbytes(self) -> int:
        raw = self.scale_offset + self.n_scales
        return (raw + 3) // 4 * 4


KV_FORMAT = EntryFormat(dim=512, tail=64)
INDEX_FORMAT = EntryFormat(dim=128, tail=0)


def ue8m0_exponent(amax: torch.Tensor) -> torch.Tensor:
    """Smallest ``e`` with ``448 * 2**e >= amax``, computed exactly from the float bits.

    ``amax`` is float32 and non-negative; zero (and subnormal) blocks get ``-126`` so the
    scale byte is never 0 and the scale is always a normal float.
    """
    bits = amax.float().contiguous().view(torch.int32)
    exp = ((bits >> 23) & 0xFF) - 127
    mant = bits & 0x7FFFFF
    e = exp - 8 + (mant > 0x600000).to(torch.int32)
    return torch.where(bits < (1 << 23), torch.full_like(e, -126), e).clamp(-126, 127)


def _scale_from_byte(byte: torch.Tensor) -> torch.Tensor:
    return (byte.to(torch.int32) << 23).view(torch.float32)


def views(buf: torch.Tensor, fmt: EntryFormat) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Typed views ``(fp8 [N, quant_dim], bf16 tail [N, tail], scale bytes [N, n_scales])``."""
    if buf.dtype != torch.uint8 or buf.shape[-1] != fmt.nbytes:
        raise ValueError(f"expected uint8 [N, {fmt.nbytes}], got {buf.dtype} {tuple(buf.shape)}")
    q = buf[:, : fmt.quant_dim].view(FP8_DTYPE)
    tail = buf[:, fmt.tail_offset : fmt.scale_offset].view(torch.bfloat16)
    scales = buf[:, fmt.scale_offset : fmt.scale_offset + fmt.n_scales]
    return q, tail, scales


def quantize(x: torch.Tensor, fmt: EntryFormat) -> torch.Tensor:
    """Encode ``x [N, dim]`` into a new ``uint8 [N, nbytes]`` buffer."""
    n = x.shape[0]
    buf = torch.zeros(n, fmt.nbytes, dtype=torch.uint8, device=x.device)
    encode_into(buf, x, fmt)
    return buf


def encode_into(buf: torch.Tensor, x: torch.Tensor, fmt: EntryFormat) -> None:
    """Encode ``x [N, dim]`` into the rows of ``buf`` (``uint8 [N, nbytes]``)."""
    if x.shape[-1] != fmt.dim:
        raise ValueError(f"expected entries of {fmt.dim} values, got {x.shape[-1]}")
    q_view, tail_view, scale_view = views(buf, fmt)
    xf = x.float()
    blocks = xf[:, : fmt.quant_dim].reshape(-1, fmt.n_scales, BLOCK)
    e = ue8m0_exponent(blocks.abs().amax(dim=-1))
    scaled = blocks * torch.exp2(-e.float()).unsqueeze(-1)
    q_view.copy_(scaled.reshape(-1, fmt.quant_dim).to(FP8_DTYPE))
    scale_view.copy_((e + _UE8M0_BIAS).to(torch.uint8))
    if fmt.tail:
        tail_view.copy_(xf[:, fmt.quant_dim :].to(torch.bfloat16))


def dequantize(buf: torch.Tensor, fmt: EntryFormat) -> torch.Tensor:
    """Decode ``uint8 [N, nbytes]`` into float32 ``[N, dim]``."""
    q_view, tail_view, scale_view = views(buf, fmt)
    scale = _scale_from_byte(scale_view)
    body = q_view.float().reshape(-1, fmt.n_scales, BLOCK) * scale.unsqueeze(-1)
    parts = [body.reshape(-1, fmt.quant_dim)]
    if fmt.tail:
        parts.append(tail_view.float())
    return torch.cat(parts, dim=-1)
