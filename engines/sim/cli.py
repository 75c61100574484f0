"""``tiergate sim``: run a simulator in the foreground."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from engines.sim.config import SimConfig
from engines.sim.server import create_sim_app


def _run(args: argparse.Namespace) -> int:
    import uvicorn

    preset = args.preset or ("hosted" if args.mode == "hosted" else "flash")
    cfg = SimConfig.preset(preset)
    overrides: dict[str, object] = {}
    if args.mode:
        overrides["mode"] = args.mode
    if args.model:
        overrides["model"] = args.model
    if args.replica_id:
        overrides["replica_id"] = args.replica_id
    for name in (
        "fail_rate",
        "cache_blocks",
        "max_num_seqs",
        "max_model_len",
        "default_output_tokens",
    ):
        value = getattr(args, name)
        if value is not None:
            overrides[name] = value
    cfg = replace(cfg, **overrides)  # type: ignore[arg-type]
    if args.zero_latency:
        cfg = cfg.zero_latency()
    elif args.latency_scale != 1.0:
        cfg = cfg.scaled(args.latency_scale)
    uvicorn.run(
        create_sim_app(cfg),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        loop="uvloop",
        http="httptools",
    )
    return 0


def add_sim_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("sim", help="run a simulated vLLM V4 replica or hosted DeepSeek API")
    configure(p)


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", choices=("vllm", "hosted"))
    p.add_argument("--preset", choices=("flash", "pro", "hosted"))
    p.add_argument("--model", help="served model name (vLLM mode)")
    p.add_argument("--replica-id", dest="replica_id")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--zero-latency", action="store_true", help="no simulated latency at all")
    p.add_argument("--latency-scale", type=float, default=1.0)
    p.add_argument("--fail-rate", dest="fail_rate", type=float)
    p.add_argument("--cache-blocks", dest="cache_blocks", type=int)
    p.add_argument("--max-num-seqs", dest="max_num_seqs", type=int)
    p.add_argument("--max-model-len", dest="max_model_len", type=int)
    p.add_argument("--output-tokens", dest="default_output_tokens", type=int)
    p.set_defaults(func=_run)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engines.sim")
    configure(p)
    args = p.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
