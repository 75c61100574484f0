"""Per-layer decode latency of the V4 sparse decode kernel, against PyTorch and dense attention.

    python bench/kernels/decode.py                  # CUDA: Flash and Pro, 64k/128k/1M, B 1/8/32
    python bench/kernels/decode.py --tiny           # small shapes, CPU interpreter (smoke test)

For each model shape (Flash: 64 heads, top-k 512; Pro: 128 heads, top-k 1024), context
(every row decodes the token at position ``ctx - 1``), batch size, layer kind and cache
format (bf16 or FP8 entries) it times one layer's decode attention:

* ``kernel``: ``sparse_decode`` (split-K kernel + merge kernel). A CSA layer attends the
  128-token window and the top-k selected compressed entries (random distinct visible
  entries here), an HCA layer the window and all ``ctx / 128`` entries.
* ``torch``: the same attention in PyTorch, batched: gather the rows through the block
  tables (dequantizing FP8), then float32 logits, masked softmax with the sink and ``P @ V``,
  as ``engines.kernels.reference`` specifies it.
* ``dense``: attention of the same queries over the full context, ``ctx`` tokens x 512 dims
  bf16 with one KV head shared by all query heads
  (``torch.nn.functional.scaled_dot_product_attention``, K = V).

Timing on CUDA: each function is captured in a CUDA graph when it can be (else launched
eagerly), run a few times to warm up, then timed with CUDA events one call at a time with
the L2 cache flushed before each call (a layer's KV is cold in a real decode step); the
median of ``--samples`` calls is reported. Achieved bandwidth is the bytes the kernel must
read (window rows + selected or all visible entries, FP8 scales and bf16 tails included,
queries, selected indices) over its time, compared with the measured device-to-device copy
bandwidth (a 2 GiB copy: bytes read + written over time). Targets at 128k: kernel
bandwidth >= 70% of copy bandwidth and kernel >= 5x faster than dense.

``--tiny`` runs small shapes (in Triton's interpreter when there is no GPU) so the script is
exercised anywhere; its timings mean nothing. Results: a table on stdout and JSON
(``var/bench/kernels.json``, ``var/bench/kernels-tiny.json`` for ``--tiny``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engines.kernels.shapes import FLASH, PRO, AttentionShape, LayerKind  # noqa: E402

TARGET_BW_FRACTION = 0.70
TARGET_DENSE_SPEEDUP = 5.0
TINY_FLASH = AttentionShape(
    name="tiny-flash",
    n_heads=16,
    index_topk=16,
    window_layers=0,
    csa_layers=1,
    hca_layers=1,
    head_dim=128,
    window=32,
)
TINY_PRO = AttentionShape(
    name="tiny-pro",
    n_heads=32,
    index_topk=32,
    window_layers=0,
    csa_layers=1,
    hca_layers=1,
    head_dim=128,
    window=32,
)


@dataclass(frozen=True)
class Plan:
    shapes: tuple[AttentionShape, ...]
    contexts: tuple[int, ...]
    batches: tuple[int, ...]
    kinds: tuple[LayerKind, ...]
    formats: tuple[str, ...]
    target_ctx: int
    block_size: int
    samples: int
    warmup: int
    copy_bytes: int
    flush_bytes: int


def parse_size(text: str) -> int:
    text = text.strip().lower()
    mult = {"k": 1024, "m": 1024 * 1024}.get(text[-1:], 1)
    return int(text[:-1] if mult > 1 else text) * mult


def make_plan(args: argparse.Namespace) -> Plan:
    if args.tiny:
        return Plan(
            shapes=(TINY_FLASH, TINY_PRO),
            contexts=(4096, 2048),
            batches=(1, 2),
            kinds=(LayerKind.CSA, LayerKind.HCA),
            formats=("bf16", "fp8"),
            target_ctx=4096,
            block_size=16,
            samples=args.samples or 2,
            warmup=1,
            copy_bytes=16 << 20,
            flush_bytes=0,
        )
    names = {"flash": FLASH, "pro": PRO}
    return Plan(
        shapes=tuple(names[s] for s in args.shapes.split(",")),
        contexts=tuple(parse_size(c) for c in args.contexts.split(",")),
        batches=tuple(int(b) for b in args.batches.split(",")),
        kinds=tuple(LayerKind(k) for k in args.kinds.split(",")),
        formats=tuple(args.formats.split(",")),
        target_ctx=128 * 1024,
        block_size=64,
        samples=args.samples or 30,
        warmup=3,
        copy_bytes=2 << 30,
        flush_bytes=256 << 20,
    )


class Timer:
    """Median time of a function: CUDA events with a cold L2, or wall time on CPU."""

    def __init__(self, torch: Any, device: Any, plan: Plan) -> None:
        self.torch = torch
        self.cuda = device.type == "cuda"
        self.plan = plan
        self.flush = (
            torch.empty(plan.flush_bytes, dtype=torch.uint8, device=device)
            if self.cuda and plan.flush_bytes
            else None
        )

    def __call__(self, fn: Callable[[], object]) -> dict[str, Any]:
        torch = self.torch
        for _ in range(self.plan.warmup):
            fn()
        if not self.cuda:
            times = []
            for _ in range(self.plan.samples):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            return {"us": statistics.median(times) * 1e6, "method": "wall clock (cpu)"}
        run, method, graph = fn, "eager", None
        torch.cuda.synchronize()
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                fn()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                fn()
            graph.replay()
            torch.cuda.synchronize()
            run, method = graph.replay, "cuda graph"
        except Exception as exc:  # some paths cannot be captured: time them eagerly
            graph = None
            torch.cuda.synchronize()
            method = f"eager ({type(exc).__name__})"
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        times = []
        for _ in range(self.plan.samples):
            if self.flush is not None:
                self.flush.zero_()
            start.record()
            run()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) * 1e3)
        del graph
        return {"us": statistics.median(times), "min_us": min(times), "method": method}


def copy_bandwidth(torch: Any, device: Any, plan: Plan) -> dict[str, Any]:
    """Device-to-device copy: (bytes read + bytes written) / time, median of 10."""
    n = plan.copy_bytes
    src = torch.ones(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    timer = Timer(torch, device, replace(plan, samples=10, flush_bytes=0))
    t = timer(partial(dst.copy_, src))
    return {"bytes": n, "us": t["us"], "gbs": 2 * n / (t["us"] * 1e-6) / 1e9}


def entry_bytes(fmt: Any, dim: int) -> int:
    """Bytes of one entry the kernel reads (FP8: body, scale bytes and bf16 tail)."""
    if fmt is None:
        return 2 * dim
    return fmt.quant_dim + fmt.n_scales + 2 * fmt.tail


def fill_random(torch: Any, cache: Any, seed: int, chunk: int = 1 << 16) -> None:
    """Random N(0, 1) entries in every slot of a cache (FP8-encoded for FP8 caches)."""
    from engines.kernels import fp8

    gen = torch.Generator(device=cache.data.device).manual_seed(seed)
    for lo in range(0, cache.data.shape[0], chunk):
        hi = min(lo + chunk, cache.data.shape[0])
        x = torch.randn(hi - lo, cache.dim, generator=gen, device=cache.data.device)
        if cache.fmt is None:
            cache.data[lo:hi] = x.to(torch.bfloat16)
        else:
            cache.data[lo:hi] = fp8.quantize(x, cache.fmt)


def gather_rows(torch: Any, cache: Any, idx: Any) -> Any:
    """Entries ``idx [R, M]`` (each row's own) of a paged cache as float32 ``[R, M, dim]``."""
    from engines.kernels import fp8

    rows = torch.arange(idx.shape[0], device=idx.device)[:, None]
    pages = cache.block_table.long()[rows, idx // cache.block_size]
    slots = (pages * cache.block_size + idx % cache.block_size).reshape(-1)
    data = cache.data[slots]
    vals = data.float() if cache.fmt is None else fp8.dequantize(data, cache.fmt)
    return vals.reshape(idx.shape[0], idx.shape[1], cache.dim)


def torch_decode(
    torch: Any,
    q: Any,
    pos: Any,
    sink: Any,
    window: Any,
    comp: Any,
    selected: Any,
    kind: LayerKind,
    scale: float,
    window_size: int,
) -> tuple[Any, Any]:
    """The reference attention, batched in PyTorch (float32): ``(out [R, H, D], lse [R, H])``."""
    rows, dev = q.shape[0], q.device
    p = pos.long()
    tok = p[:, None] - (window_size - 1) + torch.arange(window_size, device=dev)
    kv = [gather_rows(torch, window, tok.clamp(min=0) % window.capacity)]
    valid = [tok >= 0]
    n_vis = (p + 1) // kind.ratio
    if kind is LayerKind.CSA:
        idx = selected.long()
        valid.append((idx >= 0) & (idx < n_vis[:, None]))
    else:
        idx = torch.arange(comp.capacity, device=dev).expand(rows, -1)
        valid.append(idx < n_vis[:, None])
    kv.append(gather_rows(torch, comp, idx.clamp(min=0)))
    kv_all, ok = torch.cat(kv, dim=1), torch.cat(valid, dim=1)
    logits = torch.bmm(q.float(), kv_all.transpose(1, 2)) * scale
    logits = logits.masked_fill(~ok[:, None, :], float("-inf"))
    logits = torch.cat([logits, sink.float().expand(rows, -1)[..., None]], dim=2)
    lse = torch.logsumexp(logits, dim=2)
    probs = torch.exp(logits[..., :-1] - lse[..., None])
    return torch.bmm(probs, kv_all), lse


def check_reference(torch: Any, case: dict[str, Any], out: Any) -> float:
    """Largest difference of the batched PyTorch path from ``reference.decode_attention``."""
    from engines.kernels import reference as ref

    worst = 0.0
    kind, shape = case["kind"], case["shape"]
    for r in range(out.shape[0]):
        p = int(case["pos"][r])
        raw = torch.zeros(p + 1, shape.head_dim, device=out.device)
        lo = max(0, p - shape.window + 1)
        toks = torch.arange(lo, p + 1, device=out.device)
        raw[lo:] = case["window"].read(r, toks % case["window"].capacity)
        ent = case["comp"].read(r, torch.arange(case["n_ent"], device=out.device))
        sel = case["sel"][r].long() if case["sel"] is not None else None
        want = ref.decode_attention(
            case["q"][r], p, kind, raw, ent, sel, case["sink"], shape.softmax_scale, shape.window
        )
        worst = max(worst, float((out[r] - want).abs().max()))
    return worst


@dataclass
class Env:
    """What every measurement needs: torch, the device, the plan, the timer."""

    torch: Any
    device: Any
    plan: Plan
    timer: Timer
    tiny: bool
    copy_gbs: float


def time_dense(env: Env, queries: dict[str, Any], ctx: int, batch: int) -> list[dict[str, Any]]:
    """Dense attention over ``ctx`` bf16 tokens (one KV head) for each shape's queries."""
    torch, plan = env.torch, env.plan
    dim = plan.shapes[0].head_dim
    kv_bytes = batch * ctx * dim * 2
    free = torch.cuda.mem_get_info()[0] if env.device.type == "cuda" else 4 * kv_bytes
    out = []
    kvd = None
    if 1.5 * kv_bytes < free:
        gen = torch.Generator(device=env.device).manual_seed(ctx + batch)
        try:
            kvd = torch.randn(
                batch, 1, ctx, dim, generator=gen, device=env.device, dtype=torch.bfloat16
            )
        except torch.OutOfMemoryError:
            kvd = None
    for shape in plan.shapes:
        rec: dict[str, Any] = {"shape": shape.name, "ctx": ctx, "batch": batch}
        rec["read_bytes"] = kv_bytes + batch * shape.n_heads * dim * 2
        if kvd is None:
            rec.update(us=None, method="skipped: not enough device memory")
        else:
            qd = queries[shape.name][0].view(batch, 1, shape.n_heads, dim)
            sdpa = torch.nn.functional.scaled_dot_product_attention
            try:
                t = env.timer(partial(sdpa, qd, kvd, kvd, scale=shape.softmax_scale))
                rec.update(us=t["us"], method=t["method"])
            except torch.OutOfMemoryError:
                rec.update(us=None, method="out of memory")
        out.append(rec)
    del kvd
    return out


def make_caches(env: Env, ctx: int, batch: int, kind: LayerKind, fp8: bool) -> tuple[Any, Any]:
    """A window ring (one window per row) and the layer's compressed cache, random entries."""
    from engines.kernels.fp8 import EntryFormat
    from engines.kernels.paged import PagedEntries

    shape0, plan = env.plan.shapes[0], env.plan
    dim, window = shape0.head_dim, shape0.window
    fmt = EntryFormat(dim=dim, tail=shape0.rope_dim) if fp8 else None
    wcache = PagedEntries.allocate(
        batch,
        window,
        dim,
        block_size=min(plan.block_size, window),
        fmt=fmt,
        device=env.device,
        seed=1,
    )
    ccache = PagedEntries.allocate(
        batch,
        ctx // kind.ratio,
        dim,
        block_size=plan.block_size,
        fmt=fmt,
        device=env.device,
        seed=2,
    )
    fill_random(env.torch, wcache, seed=3)
    fill_random(env.torch, ccache, seed=4)
    return wcache, ccache


def bench_layer(
    env: Env,
    shape: AttentionShape,
    kind: LayerKind,
    fmt_name: str,
    pos: Any,
    query: tuple[Any, Any],
    caches: tuple[Any, Any],
    dense_us: float | None,
) -> dict[str, Any]:
    """Kernel and PyTorch path for one layer; the kernel checked against the PyTorch path."""
    import triton

    from engines.kernels.decode import default_splits, default_tiles, sparse_decode

    torch, device = env.torch, env.device
    (q, sink), (wcache, ccache) = query, caches
    batch, heads, dim = q.shape
    window, n_ent = shape.window, ccache.capacity
    ctx = int(pos[0]) + 1
    sel = None
    n_rows = window + ctx // kind.ratio
    if kind is LayerKind.CSA:
        gen = torch.Generator(device=device).manual_seed(5)
        noise = torch.rand(batch, ctx // kind.ratio, generator=gen, device=device)
        sel = noise.topk(shape.index_topk, dim=1).indices.sort(dim=1).values.int()
        n_rows = window + shape.index_topk
    kernel_fn = partial(
        sparse_decode,
        q,
        pos,
        sink,
        wcache,
        kind,
        compressed=ccache,
        selected=sel,
        scale=shape.softmax_scale,
        window_size=window,
    )
    torch_fn = partial(
        torch_decode, torch, q, pos, sink, wcache, ccache, sel, kind, shape.softmax_scale, window
    )
    out, lse = kernel_fn()
    want, want_lse = torch_fn()
    ref_err = None
    if env.tiny:
        case = {"kind": kind, "shape": shape, "pos": pos.tolist(), "window": wcache}
        case.update(comp=ccache, n_ent=n_ent, sel=sel, q=q, sink=sink)
        ref_err = check_reference(torch, case, want)
        if ref_err > 1e-4:
            raise SystemExit(f"the PyTorch path differs from the reference by {ref_err}")
    tk = env.timer(kernel_fn)
    tt = env.timer(torch_fn)
    fmt = ccache.fmt
    read = batch * (
        n_rows * entry_bytes(fmt, dim)
        + heads * dim * 2
        + (shape.index_topk * 4 if sel is not None else 0)
    )
    read += heads * 4 + batch * 4
    block_h, block_n = default_tiles(batch, fmt is not None)  # sparse_decode's defaults
    head_blocks = triton.cdiv(heads, max(16, min(block_h, triton.next_power_of_2(heads))))
    max_entries = shape.index_topk if sel is not None else ccache.capacity
    n_tiles = triton.cdiv(window, block_n) + triton.cdiv(max_entries, block_n)
    splits = default_splits(batch, head_blocks, n_tiles, device)
    bw = read / (tk["us"] * 1e-6) / 1e9
    return {
        "shape": shape.name,
        "heads": heads,
        "ctx": ctx,
        "batch": batch,
        "kind": str(kind),
        "format": fmt_name,
        "attended_rows": n_rows,
        "kernel_us": tk["us"],
        "kernel_min_us": tk.get("min_us"),
        "kernel_timing": tk["method"],
        "torch_us": tt["us"],
        "torch_timing": tt["method"],
        "dense_us": dense_us,
        "read_bytes": read,
        "write_bytes": batch * heads * (dim * 2 + 4),
        "split_scratch_bytes": 2 * batch * splits * heads * (dim + 2) * 4,
        "splits": splits,
        "bandwidth_gbs": bw,
        "copy_fraction": bw / env.copy_gbs,
        "speedup_vs_dense": dense_us / tk["us"] if dense_us else None,
        "speedup_vs_torch": tt["us"] / tk["us"],
        "max_abs_err_vs_torch": float((out.float() - want).abs().max()),
        "max_abs_out": float(want.abs().max()),
        "max_lse_err_vs_torch": float((lse - want_lse).abs().max()),
        "torch_vs_reference_err": ref_err,
    }


def run(args: argparse.Namespace, save: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """All measurements; ``save`` gets the results so far after each (context, batch)."""
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.tiny:
        raise SystemExit("the full benchmark needs a CUDA device (--tiny runs anywhere)")
    if not cuda:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    import triton

    torch.set_float32_matmul_precision("highest")
    device = torch.device("cuda" if cuda else "cpu")
    plan = make_plan(args)
    deadline = time.monotonic() + args.budget_s if args.budget_s else math.inf
    started = time.monotonic()
    timer = Timer(torch, device, plan)
    copy = copy_bandwidth(torch, device, plan)
    print(f"copy bandwidth: {copy['gbs']:.0f} GB/s ({copy['bytes'] >> 20} MiB copy)", flush=True)
    env = Env(torch, device, plan, timer, bool(args.tiny), copy["gbs"])
    print(HEADER, flush=True)

    results: list[dict[str, Any]] = []
    dense_results: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []

    def summary(unfinished: bool) -> dict[str, Any]:
        return {
            "meta": meta(torch, triton, device, args, plan),
            "partial": unfinished,
            "copy_bandwidth": copy,
            "results": results,
            "dense": dense_results,
            "skipped": skipped,
            "targets": evaluate_targets(results, plan.target_ctx),
            "elapsed_s": time.monotonic() - started,
        }

    for ctx in plan.contexts:
        for batch in plan.batches:
            if time.monotonic() > deadline:
                skipped.append({"ctx": ctx, "batch": batch, "reason": "time budget"})
                continue
            pos = torch.full((batch,), ctx - 1, dtype=torch.int32, device=device)
            queries = {}
            for shape in plan.shapes:
                gen = torch.Generator(device=device).manual_seed(shape.n_heads + batch)
                q = torch.randn(batch, shape.n_heads, shape.head_dim, generator=gen, device=device)
                sink = torch.randn(shape.n_heads, generator=gen, device=device)
                queries[shape.name] = (q.bfloat16(), sink)
            dense = time_dense(env, queries, ctx, batch)
            dense_results.extend(dense)
            dense_us = {d["shape"]: d["us"] for d in dense}
            for kind in plan.kinds:
                for fmt_name in plan.formats:
                    what = {"ctx": ctx, "batch": batch, "kind": str(kind), "format": fmt_name}
                    try:
                        caches = make_caches(env, ctx, batch, kind, fmt_name == "fp8")
                        for shape in plan.shapes:
                            rec = bench_layer(
                                env,
                                shape,
                                kind,
                                fmt_name,
                                pos,
                                queries[shape.name],
                                caches,
                                dense_us[shape.name],
                            )
                            results.append(rec)
                            print(row_text(rec), flush=True)
                    except torch.OutOfMemoryError:
                        skipped.append({**what, "reason": "out of memory"})
                    caches = None
            if cuda:
                torch.cuda.empty_cache()
            save(summary(unfinished=True))

    return summary(unfinished=False)


def evaluate_targets(results: list[dict[str, Any]], ctx: int) -> dict[str, Any]:
    at = [r for r in results if r["ctx"] == ctx]
    bw_met = [r for r in at if r["copy_fraction"] >= TARGET_BW_FRACTION]
    dense_met = [
        r
        for r in at
        if r["speedup_vs_dense"] is not None and r["speedup_vs_dense"] >= TARGET_DENSE_SPEEDUP
    ]

    def key(r: dict[str, Any]) -> str:
        return f"{r['shape']} B={r['batch']} {r['kind']} {r['format']}"

    return {
        "ctx": ctx,
        "configs": len(at),
        "bandwidth_target": TARGET_BW_FRACTION,
        "bandwidth_met": [key(r) for r in bw_met],
        "best_copy_fraction": max((r["copy_fraction"] for r in at), default=None),
        "dense_speedup_target": TARGET_DENSE_SPEEDUP,
        "dense_speedup_met": [key(r) for r in dense_met],
        "min_speedup_vs_dense": min(
            (r["speedup_vs_dense"] for r in at if r["speedup_vs_dense"] is not None), default=None
        ),
    }


def meta(torch: Any, triton: Any, device: Any, args: argparse.Namespace, plan: Plan) -> dict:
    info: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "tiny": bool(args.tiny),
        "argv": sys.argv[1:],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "device": str(device),
        "plan": {
            "shapes": [s.name for s in plan.shapes],
            "contexts": list(plan.contexts),
            "batches": list(plan.batches),
            "kinds": [str(k) for k in plan.kinds],
            "formats": list(plan.formats),
            "samples": plan.samples,
            "warmup": plan.warmup,
            "l2_flush_bytes": plan.flush_bytes,
        },
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu=props.name,
            capability=f"{props.major}.{props.minor}",
            sms=props.multi_processor_count,
            memory_gib=round(props.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
        )
    try:
        info["commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        info["commit"] = None
    return info


HEADER = (
    f"{'shape':<10} {'ctx':>5} {'B':>3} {'kind':<4} {'fmt':<4} {'rows':>5} "
    f"{'kernel us':>10} {'torch us':>10} {'dense us':>10} {'read MB':>8} {'GB/s':>7} "
    f"{'%copy':>6} {'xdense':>7} {'xtorch':>7} {'max err':>8}"
)


def ctx_text(ctx: int) -> str:
    return f"{ctx >> 20}M" if ctx >= 1 << 20 else f"{ctx >> 10}k"


def row_text(r: dict[str, Any]) -> str:
    def num(x: float | None, spec: str) -> str:
        return "-" if x is None else format(x, spec)

    return (
        f"{r['shape']:<10} {ctx_text(r['ctx']):>5} {r['batch']:>3} {r['kind']:<4} "
        f"{r['format']:<4} {r['attended_rows']:>5} {r['kernel_us']:>10.1f} "
        f"{r['torch_us']:>10.1f} {num(r['dense_us'], '10.1f'):>10} "
        f"{r['read_bytes'] / 1e6:>8.2f} {r['bandwidth_gbs']:>7.0f} "
        f"{100 * r['copy_fraction']:>5.1f}% {num(r['speedup_vs_dense'], '7.1f'):>7} "
        f"{r['speedup_vs_torch']:>7.1f} {r['max_abs_err_vs_torch']:>8.1e}"
    )


def report(res: dict[str, Any]) -> str:
    lines = []
    m = res["meta"]
    lines.append(
        f"device: {m.get('gpu', m['device'])} (cc {m.get('capability', '-')}, "
        f"{m.get('sms', '-')} SMs), torch {m['torch']}, triton {m['triton']}"
        + ("  [--tiny: timings are not meaningful]" if m["tiny"] else "")
    )
    cb = res["copy_bandwidth"]
    lines.append(f"copy bandwidth: {cb['gbs']:.0f} GB/s (read + write of {cb['bytes'] >> 20} MiB)")
    lines.append(HEADER)
    lines.extend(row_text(r) for r in res["results"])
    t = res["targets"]
    lines.append(
        f"targets at {ctx_text(t['ctx'])} ({t['configs']} configs): bandwidth >= "
        f"{100 * t['bandwidth_target']:.0f}% of copy in {len(t['bandwidth_met'])}"
        f" (best {fmt_pct(t['best_copy_fraction'])}); >= {t['dense_speedup_target']:.0f}x "
        f"faster than dense in {len(t['dense_speedup_met'])}"
        f" (min {fmt_x(t['min_speedup_vs_dense'])})"
    )
    for s in res["skipped"]:
        lines.append(f"skipped: {s}")
    return "\n".join(lines)


def fmt_pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def fmt_x(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}x"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="small shapes; CPU interpreter if no GPU")
    ap.add_argument("--shapes", default="flash,pro")
    ap.add_argument("--contexts", default="128k,64k,1m", help="in run order")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--kinds", default="csa,hca")
    ap.add_argument("--formats", default="bf16,fp8")
    ap.add_argument("--samples", type=int, default=0, help="timed calls per function")
    ap.add_argument("--budget-s", type=float, default=0, help="stop starting new configs after")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    out = args.out or ROOT / "var" / "bench" / (
        "kernels-tiny.json" if args.tiny else "kernels.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(res: dict[str, Any]) -> None:
        out.write_text(json.dumps(res, indent=2) + "\n")

    res = run(args, save)
    print(report(res))
    save(res)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
