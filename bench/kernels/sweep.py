"""Launch-parameter sweep of ``sparse_decode`` on a GPU: heads per program, tile rows, warps.

    python bench/kernels/sweep.py --contexts 128k --batches 1,32 --budget-s 150

For each layer configuration (shape x batch x kind x format at each context) it times the
kernel, as ``decode.py`` does (L2 flushed, CUDA graph, median), with every
``(block_h, block_n, num_warps)`` in ``--configs`` and the default split count, checks each
output against the default configuration's, and prints the time of each and the best. The
JSON (``var/bench/kernels-sweep.json``) keeps every measurement. The defaults of
``sparse_decode`` should be the configuration that wins across the table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from decode import Env, Timer, make_caches, make_plan, parse_size  # noqa: E402

DEFAULT = (16, 32, 4)


def parse_configs(text: str) -> list[tuple[int, int, int]]:
    out = []
    for part in text.split(","):
        bh, bn, nw = (int(x) for x in part.split("x"))
        out.append((bh, bn, nw))
    if DEFAULT not in out:
        out.insert(0, DEFAULT)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="flash,pro")
    ap.add_argument("--contexts", default="128k")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--kinds", default="csa,hca")
    ap.add_argument("--formats", default="bf16,fp8")
    ap.add_argument(
        "--configs",
        default="16x32x4,16x64x4,16x32x8,32x32x4,32x32x8,64x32x8,64x16x8,64x32x16",
        help="block_h x block_n x num_warps, comma separated",
    )
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--budget-s", type=float, default=0)
    ap.add_argument("--out", type=Path, default=Path("var/bench/kernels-sweep.json"))
    args = ap.parse_args(argv)

    import torch

    from engines.kernels.decode import sparse_decode
    from engines.kernels.shapes import SHAPES, LayerKind

    if not torch.cuda.is_available():
        print("the sweep needs a CUDA GPU")
        return 2
    plan_args = argparse.Namespace(
        tiny=False,
        shapes=args.shapes,
        contexts=args.contexts,
        batches=args.batches,
        kinds=args.kinds,
        formats=args.formats,
        samples=args.samples,
    )
    plan = make_plan(plan_args)
    device = torch.device("cuda")
    env = Env(torch, device, plan, Timer(torch, device, plan), False, 0.0)
    configs = parse_configs(args.configs)
    start = time.monotonic()
    rows: list[dict[str, Any]] = []
    print("shape  ctx     B kind fmt  " + " ".join(f"{'x'.join(map(str, c)):>10}" for c in configs))
    done = True
    layers = itertools.product(
        [parse_size(c) for c in args.contexts.split(",")],
        [int(b) for b in args.batches.split(",")],
        [LayerKind(k) for k in args.kinds.split(",")],
        args.formats.split(","),
    )
    for ctx, batch, kind, fmt in layers:
        if args.budget_s and time.monotonic() - start > args.budget_s:
            done = False
            break
        caches = make_caches(env, ctx, batch, kind, fmt == "fp8")
        for name in args.shapes.split(","):
            r = sweep_one(env, sparse_decode, SHAPES[name], ctx, batch, kind, fmt, caches, configs)
            rows.append(r)
            cells = " ".join(f"{t:10.1f}" if t is not None else f"{'fail':>10}" for t in r["us"])
            print(f"{name:6} {ctx // 1024:4}k {batch:3} {kind!s:4} {fmt:4} {cells}", flush=True)
        del caches
        torch.cuda.empty_cache()
    best: dict[str, float] = {}
    for i, c in enumerate(configs):
        ratios = [r["us"][i] / r["us"][0] for r in rows if r["us"][i] and r["us"][0]]
        if ratios:
            gm = 1.0
            for x in ratios:
                gm *= x
            best["x".join(map(str, c))] = gm ** (1 / len(ratios))
    print("geometric mean time vs 16x32x4:", json.dumps({k: round(v, 3) for k, v in best.items()}))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"configs": configs, "rows": rows, "geomean_vs_default": best, "complete": done})
    )
    print(f"wrote {args.out}")
    return 0


def sweep_one(
    env: Env,
    sparse_decode: Any,
    shape: Any,
    ctx: int,
    batch: int,
    kind: Any,
    fmt: str,
    caches: tuple[Any, Any],
    configs: list[tuple[int, int, int]],
) -> dict[str, Any]:
    from engines.kernels.shapes import LayerKind

    torch, device = env.torch, env.device
    wcache, ccache = caches
    gen = torch.Generator(device=device).manual_seed(7)
    q = (torch.randn(batch, shape.n_heads, shape.head_dim, generator=gen, device=device)).bfloat16()
    sink = torch.randn(shape.n_heads, generator=gen, device=device)
    pos = torch.full((batch,), ctx - 1, dtype=torch.int32, device=device)
    sel = None
    if kind is LayerKind.CSA:
        noise = torch.rand(batch, ctx // kind.ratio, generator=gen, device=device)
        sel = noise.topk(shape.index_topk, dim=1).indices.sort(dim=1).values.int()
    base = None
    times: list[float | None] = []
    errs: list[float | None] = []
    for bh, bn, nw in configs:
        fn = partial(
            sparse_decode,
            q,
            pos,
            sink,
            wcache,
            kind,
            compressed=ccache,
            selected=sel,
            scale=shape.softmax_scale,
            window_size=shape.window,
            block_h=bh,
            block_n=bn,
            num_warps=nw,
        )
        try:
            out, _ = fn()
            torch.cuda.synchronize()
        except Exception as exc:  # noqa: BLE001 - a config that cannot compile or run is a result
            print(f"  {bh}x{bn}x{nw}: {type(exc).__name__}: {str(exc)[:200]}")
            times.append(None)
            errs.append(None)
            continue
        if base is None:
            base = out.float()
        errs.append(float((out.float() - base).abs().max()))
        times.append(env.timer(fn)["us"])
    return {
        "shape": shape.name,
        "ctx": ctx,
        "batch": batch,
        "kind": str(kind),
        "format": fmt,
        "us": times,
        "max_diff_vs_default": errs,
    }


if __name__ == "__main__":
    raise SystemExit(main())
