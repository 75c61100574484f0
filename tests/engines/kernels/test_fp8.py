"""FP8 entry layout: sizes, round trips, and Triton quantization equal to PyTorch's."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
triton = pytest.importorskip("triton")

import triton.language as tl  # noqa: E402

from engines.kernels import fp8  # noqa: E402
from engines.kernels.fp8 import INDEX_FORMAT, KV_FORMAT, EntryFormat  # noqa: E402
from engines.kernels.tl_entries import load_entries, store_fp8_blocks, to_bf16  # noqa: E402
from tests.engines.kernels.util import fp8_bound, randn  # noqa: E402


def test_entry_sizes_match_the_v4_cache_layout() -> None:
    assert KV_FORMAT.nbytes == 584
    assert (KV_FORMAT.quant_dim, KV_FORMAT.n_scales, KV_FORMAT.scale_offset) == (448, 7, 576)
    assert INDEX_FORMAT.nbytes == 132
    with pytest.raises(ValueError):
        EntryFormat(dim=100, tail=0)


@pytest.mark.parametrize(
    ("amax", "exponent"),
    [(448.0, 0), (448.5, 1), (896.0, 1), (1.0, -8), (1.75, -8), (1.7501, -7), (0.0, -126)],
)
def test_scale_is_the_smallest_power_of_two_that_fits(amax: float, exponent: int) -> None:
    e = int(fp8.ue8m0_exponent(torch.tensor([amax]))[0])
    assert e == exponent
    assert 448.0 * 2.0**e >= amax
    assert amax == 0.0 or 448.0 * 2.0 ** (e - 1) < amax


@pytest.mark.parametrize("fmt", [KV_FORMAT, INDEX_FORMAT])
def test_round_trip_error_is_within_half_an_fp8_step(fmt: EntryFormat) -> None:
    x = randn(33, fmt.dim, seed=1) * torch.logspace(-3, 3, 33)[:, None]
    back = fp8.dequantize(fp8.quantize(x, fmt), fmt)
    assert ((back - x).abs() <= fp8_bound(x)).all()
    if fmt.tail:
        assert torch.equal(back[:, -fmt.tail :], x[:, -fmt.tail :].bfloat16().float())


@triton.jit
def _encode_kernel(
    x_ptr, body_ptr, tail_ptr, scale_ptr, stride, D: tl.constexpr, TAIL: tl.constexpr
):  # type: ignore[no-untyped-def]
    row = tl.program_id(0)
    nb: tl.constexpr = D // 64
    x = tl.load(x_ptr + row * D + tl.arange(0, D))
    ids = tl.arange(0, nb)
    store_fp8_blocks(
        body_ptr, scale_ptr, row, tl.reshape(x, (nb, 64)), ids, ids < (D - TAIL) // 64, stride
    )
    if TAIL > 0:
        d = tl.arange(0, D)
        tail_d = tl.where(d >= D - TAIL, d - (D - TAIL), 0)
        tl.store(tail_ptr + row * (stride // 2) + tail_d, to_bf16(x), mask=d >= D - TAIL)


@triton.jit
def _decode_kernel(
    body_ptr, tail_ptr, scale_ptr, stride, out_ptr, D: tl.constexpr, TAIL: tl.constexpr
):  # type: ignore[no-untyped-def]
    n = tl.arange(0, 16)
    x = load_entries(body_ptr, tail_ptr, scale_ptr, n, n < 16, stride, D, TAIL, True)
    tl.store(out_ptr + n[:, None] * D + tl.arange(0, D)[None, :], x.to(tl.float32))


def _edge_values(dim: int, device: str) -> torch.Tensor:
    rows = [
        randn(dim, seed=2) * 100,
        randn(dim, seed=3) * 1e-3,  # subnormal e4m3 values after scaling
        torch.zeros(dim),
        torch.full((dim,), -0.0),
        torch.linspace(-448.0, 448.0, dim),
        torch.linspace(-7.99, 7.99, dim),  # rounds up across a binade
        torch.arange(dim) * 0.0625 + 0.03125,  # exact halfway cases
    ]
    rows += [randn(dim, seed=10 + i) * 10.0 ** (i - 4) for i in range(16 - len(rows))]
    return torch.stack(rows).float().to(device)


@pytest.mark.parametrize("fmt", [KV_FORMAT, INDEX_FORMAT])
def test_triton_quantization_is_bit_identical_to_pytorch(fmt: EntryFormat, device: str) -> None:
    x = _edge_values(fmt.dim, device)
    want = fp8.quantize(x, fmt)
    got = torch.zeros_like(want)
    body, tail, scales = fp8.views(got, fmt)
    _encode_kernel[(x.shape[0],)](
        x, body, tail if fmt.tail else body, scales, fmt.nbytes, D=fmt.dim, TAIL=fmt.tail
    )
    assert torch.equal(got, want)
    out = torch.empty_like(x)
    _decode_kernel[(1,)](
        body, tail if fmt.tail else body, scales, fmt.nbytes, out, D=fmt.dim, TAIL=fmt.tail
    )
    assert torch.equal(out, fp8.dequantize(want, fmt).bfloat16().float())
