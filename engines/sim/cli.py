"""``tiergate sim`` (or ``python -m engines.sim``): run a simulator in the foreground."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from engines.sim.config import FAULT_KINDS, SimConfig

# Command-line options that map one to one onto SimConfig fields.
_FIELDS = (
    "model",
    "replica_id",
    "block_size",
    "cache_blocks",
    "max_num_seqs",
    "data_parallel_size",
    "max_model_len",
    "default_output_tokens",
    "reasoning_tokens",
    "fail_rate",
    "idle_close_s",
    "queue_s",
    "keepalive_every_s",
    "concurrency_limit",
    "poll_delay_s",
    "fail_status",
    "fail_mode",
    "seed",
)


def build_config(args: argparse.Namespace) -> SimConfig:
    """The config the parsed options describe (``ValueError`` if they contradict)."""
    preset = args.preset or ("hosted" if args.mode == "hosted" else "flash")
    overrides: dict[str, object] = {
        name: getattr(args, name) for name in _FIELDS if getattr(args, name) is not None
    }
    if args.mode:
        overrides["mode"] = args.mode
    if args.keepalive is not None:
        overrides["keepalive_comments"] = args.keepalive
    cfg = SimConfig.preset(preset, **overrides)
    if args.zero_latency:
        return cfg.zero_latency()
    if args.latency_scale != 1.0:
        return cfg.scaled(args.latency_scale)
    return replace(cfg)


def _run(args: argparse.Namespace) -> int:
    import uvicorn

    from engines.sim.server import create_sim_app

    try:
        cfg = build_config(args)
    except ValueError as exc:
        print(f"tiergate sim: {exc}", file=sys.stderr)
        return 2
    print(
        f"tiergate sim: {cfg.mode} {cfg.model if cfg.mode == 'vllm' else ', '.join(cfg.models)} "
        f"as {cfg.replica_id} on http://{args.host}:{args.port}"
        + (" (zero latency)" if cfg.instant else ""),
        file=sys.stderr,
    )
    uvicorn.run(
        create_sim_app(cfg),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=False,
        loop="uvloop",
        http="httptools",
    )
    return 0


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", choices=("vllm", "hosted"), help="default: from the preset")
    p.add_argument(
        "--preset",
        choices=("flash", "pro", "hosted"),
        help="V4-like defaults (default: flash, or hosted with --mode hosted)",
    )
    p.add_argument("--model", help="served model name (vLLM mode)")
    p.add_argument("--replica-id", dest="replica_id", help="named in answers and x-sim-replica")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--zero-latency", action="store_true", help="no simulated latency at all")
    p.add_argument("--latency-scale", type=float, default=1.0, help="multiply all latencies")
    p.add_argument("--block-size", dest="block_size", type=int, help="prefix-cache block tokens")
    p.add_argument("--cache-blocks", dest="cache_blocks", type=int, help="prefix-cache capacity")
    p.add_argument("--max-num-seqs", dest="max_num_seqs", type=int, help="running requests")
    p.add_argument("--max-model-len", dest="max_model_len", type=int)
    p.add_argument(
        "--data-parallel-size",
        dest="data_parallel_size",
        type=int,
        help="engines in the replica, each with its own cache and `engine` metrics label",
    )
    p.add_argument("--output-tokens", dest="default_output_tokens", type=int)
    p.add_argument("--reasoning-tokens", dest="reasoning_tokens", type=int)
    p.add_argument("--fail-rate", dest="fail_rate", type=float, help="share of requests failed")
    p.add_argument("--fail-status", dest="fail_status", type=int, help="status of those failures")
    p.add_argument(
        "--fail-mode",
        dest="fail_mode",
        help=f"instead of a status, one of: {', '.join(FAULT_KINDS)}",
    )
    p.add_argument(
        "--keepalive",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="SSE ': keep-alive' comments (default: on for hosted)",
    )
    p.add_argument(
        "--idle-close-s",
        dest="idle_close_s",
        type=float,
        help="drop a request sent on a connection idle this long (vLLM's keep-alive: 5)",
    )
    p.add_argument(
        "--queue-s",
        dest="queue_s",
        type=float,
        help="hosted overload: wait this long before inference, sending keep-alives",
    )
    p.add_argument("--keepalive-every-s", dest="keepalive_every_s", type=float)
    p.add_argument("--concurrency-limit", dest="concurrency_limit", type=int, help="429 above this")
    p.add_argument(
        "--poll-delay-s", dest="poll_delay_s", type=float, help="answer /health, /metrics late"
    )
    p.add_argument("--seed", type=int)
    p.add_argument("--log-level", default="warning", choices=("debug", "info", "warning"))
    p.set_defaults(func=_run)


def add_sim_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("sim", help="run a simulated vLLM V4 replica or hosted DeepSeek API")
    configure(p)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m engines.sim",
        description="Simulate a vLLM V4 replica or the hosted DeepSeek API.",
    )
    configure(p)
    args = p.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
