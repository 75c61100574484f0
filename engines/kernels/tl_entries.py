"""Triton device helpers shared by the kernels: reading and writing cache entries.

Entries are bf16 rows of ``DIM`` values, or the FP8 layout of ``engines.kernels.fp8``:
``DIM - TAIL`` e4m3 values in 64-wide blocks with UE8M0 scale bytes, then ``TAIL`` bf16
values. ``stride`` is the row stride in elements of the body (bf16: ``DIM`` or more; FP8: the
entry's byte size, so the bf16 tail's stride is ``stride // 2``).
"""

from __future__ import annotations

import triton
import triton.language as tl

# A module global read inside @triton.jit code must be a tl.constexpr (compiled kernels refuse
# plain globals; the CPU interpreter does not check). Host code reads SCALE_BLOCK.value.
SCALE_BLOCK = tl.constexpr(64)


@triton.jit
def scale_from_byte(byte):  # type: ignore[no-untyped-def]
    """UE8M0 byte -> float32 ``2 ** (byte - 127)`` (exact, built from the exponent bits)."""
    return (byte.to(tl.int32) << 23).to(tl.float32, bitcast=True)


@triton.jit
def load_entries(  # type: ignore[no-untyped-def]
    body_ptr,
    tail_ptr,
    scale_ptr,
    slots,
    row_mask,
    stride,
    DIM: tl.constexpr,
    TAIL: tl.constexpr,
    FP8: tl.constexpr,
):
    """Rows ``slots [BN]`` of a cache as bf16 ``[BN, DIM]`` (masked rows read as 0)."""
    d = tl.arange(0, DIM)
    rows = slots.to(tl.int64)[:, None]
    if FP8:
        # An FP8 entry is 4-byte aligned only (584 bytes for the KV, 132 for indexer keys), so
        # the row offsets are declared multiples of 4 bytes (2 bf16 tail values) and nothing
        # more. Left to itself, Triton's alignment analysis credits every slot with the
        # divisibility of the first slot of a page run (16 with 64-entry pages: it keeps the
        # divisibility of ``idx % block_size`` through the add of the page base), vectorizes
        # the loads to 16 bytes across rows that are not 16-aligned, and the GPU faults with
        # a misaligned address. bf16 rows (``stride == DIM``, a multiple of 64) are aligned.
        off = tl.multiple_of(rows * stride, [4, 4])
        tail_off = tl.multiple_of(rows * (stride // 2), [2, 2])
        quant = d < DIM - TAIL
        mq = row_mask[:, None] & quant[None, :]
        body = tl.load(body_ptr + off + d[None, :], mask=mq, other=0.0)
        byte = tl.load(scale_ptr + off + (d // SCALE_BLOCK)[None, :], mask=mq, other=127)
        x = body.to(tl.float32) * scale_from_byte(byte)
        if TAIL > 0:
            mt = row_mask[:, None] & (d >= DIM - TAIL)[None, :]
            tail_d = tl.where(quant, 0, d - (DIM - TAIL))
            tail = tl.load(tail_ptr + tail_off + tail_d[None, :], mask=mt, other=0.0)
            x = tl.where(quant[None, :], x, tail.to(tl.float32))
        return x.to(tl.bfloat16)
    else:
        mask = row_mask[:, None]
        return tl.load(body_ptr + rows * stride + d[None, :], mask=mask, other=0.0).to(tl.bfloat16)


@triton.jit
def round_to_e4m3(y):  # type: ignore[no-untyped-def]
    """Round float32 ``|y| <= 448`` to the nearest e4m3 value (ties to even), as float32.

    The result converts to FP8 exactly, so the conversion's own rounding never matters.
    """
    bits = y.to(tl.uint32, bitcast=True)
    sign = bits & 0x80000000
    mag = bits & 0x7FFFFFFF
    # Normal range (>= 2**-6): keep 3 mantissa bits, round half to even.
    lsb = (mag >> 20) & 1
    normal = (mag + 0x7FFFF + lsb) & 0x7FF00000
    # Subnormal range: multiples of 2**-9; adding 1.5 * 2**14 rounds at that spacing.
    a = mag.to(tl.float32, bitcast=True)
    sub = ((a + 24576.0) - 24576.0).to(tl.uint32, bitcast=True)
    out = tl.where(mag < 0x3C800000, sub, normal) | sign
    return out.to(tl.float32, bitcast=True)


@triton.jit
def ue8m0_exponent(amax):  # type: ignore[no-untyped-def]
    """Smallest ``e`` with ``448 * 2**e >= amax`` (int32, clamped to [-126, 127])."""
    bits = amax.to(tl.int32, bitcast=True)
    exp = ((bits >> 23) & 0xFF) - 127
    mant = bits & 0x7FFFFF
    e = exp - 8 + (mant > 0x600000).to(tl.int32)
    e = tl.where(bits < (1 << 23), -126, e)
    return tl.minimum(tl.maximum(e, -126), 127)


@triton.jit
def store_fp8_blocks(  # type: ignore[no-untyped-def]
    body_ptr, scale_ptr, slot, x, block_ids, mask, stride
):
    """Quantize ``x [NB, 64]`` (float32; block ``block_ids[i]`` of an entry) into ``slot``."""
    amax = tl.max(tl.abs(x), axis=1)
    e = ue8m0_exponent(amax)
    inv = ((127 - e) << 23).to(tl.float32, bitcast=True)
    q = round_to_e4m3(x * inv[:, None])
    base = slot.to(tl.int64) * stride
    cols = block_ids[:, None] * SCALE_BLOCK + tl.arange(0, SCALE_BLOCK)[None, :]
    tl.store(body_ptr + base + cols, q.to(tl.float8e4nv), mask=mask[:, None])
    tl.store(scale_ptr + base + block_ids, (e + 127).to(tl.uint8), mask=mask)


@triton.jit
def mma(a, b, F32: tl.constexpr):  # type: ignore[no-untyped-def]
    """``a @ b`` with float32 accumulation.

    ``F32`` runs the product in float32 (IEEE): the Triton interpreter (CPU) multiplies bf16
    operands as raw integers, so CPU runs take this path; GPUs feed bf16 to tensor cores.
    """
    if F32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16))


def interpreted(device: object) -> bool:
    """Whether kernels on ``device`` run in the Triton interpreter (anything but CUDA)."""
    return getattr(device, "type", str(device)) != "cuda"


@triton.jit
def to_bf16(x):  # type: ignore[no-untyped-def]
    """float32 -> bf16 rounding to nearest even on every backend.

    The value is rounded in integer arithmetic first, so the final conversion is exact (the
    CPU interpreter truncates where GPUs round).
    """
    bits = x.to(tl.uint32, bitcast=True)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return rounded.to(tl.float32, bitcast=True).to(tl.bfloat16)
