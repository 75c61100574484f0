"""``tiergate engine profile flash|pro``: the vLLM launch command for a V4 replica.

Prints (or writes) the command line and environment for ``vllm serve`` following the V4
recipes, with a per-GPU memory estimate; a configuration that cannot fit is refused with
exit status 2 and a message naming what would fit.
"""

from __future__ import annotations

import argparse
import stat
import sys
from collections.abc import Sequence
from pathlib import Path

from engines.profiles import GPUS, MODELS, ProfileError, build
from gateway.cli_common import non_negative_int, port_number


def _profile(args: argparse.Namespace) -> int:
    try:
        profile = build(
            args.model,
            args.gpu,
            args.gpus,
            max_model_len=args.max_model_len,
            utilization=args.gpu_memory_utilization,
            port=args.port,
            host=args.host,
            model_path=args.model_path,
            mtp_tokens=args.mtp,
        )
    except ProfileError as exc:
        print(f"tiergate engine profile: {exc}", file=sys.stderr)
        return 2
    text = profile.json() if args.format == "json" else profile.shell()
    if args.write:
        path = Path(args.write)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        if args.format == "shell":
            path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        print(f"wrote {path}")
    else:
        sys.stdout.write(text)
    for warning in profile.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def add_engine_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    engine = subparsers.add_parser("engine", help="self-hosted engine helpers (vLLM)")
    esub = engine.add_subparsers(dest="engine_command", required=True)
    p = esub.add_parser(
        "profile", help="print the vLLM command line and environment for a V4 replica"
    )
    p.add_argument("model", choices=sorted(MODELS))
    p.add_argument("--gpus", type=int, required=True, help="GPUs per replica (data parallel size)")
    p.add_argument("--gpu", choices=sorted(GPUS), required=True)
    p.add_argument("--max-model-len", type=int, help="context length (default: 1M or the recipe's)")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument(
        "--mtp", type=non_negative_int, default=0, help="MTP speculative tokens (0: off)"
    )
    p.add_argument("--model-path", help="weights path or hub id (default: the official one)")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=port_number, default=8000)
    p.add_argument("--format", choices=("shell", "json"), default="shell")
    p.add_argument("--write", help="write to this file instead of printing")
    p.set_defaults(func=_profile)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.cli_engine")
    add_engine_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
