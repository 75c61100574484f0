"""The ``tiergate`` command: serve, check a config, run the simulator and the demo, and more."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from importlib import import_module
from pathlib import Path

from gateway.catalog_file import read_catalog
from gateway.cli_common import CliError, port_number
from policies.errors import ConfigError

# Sub-command groups living in their own modules: (module, function that registers them).
_EXTENSIONS: tuple[tuple[str, str], ...] = (
    ("engines.sim.cli", "add_sim_command"),
    ("gateway.demo", "add_demo_command"),
    ("gateway.cli_admin", "add_admin_commands"),
    ("gateway.cli_router", "add_router_commands"),
    ("gateway.cli_engine", "add_engine_commands"),
    ("gateway.cli_ledger", "add_ledger_commands"),
)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.app import create_app
    from gateway.http_guard import guarded_protocol
    from gateway.settings import Settings

    overrides: dict[str, object] = {}
    if args.config:
        overrides["config"] = Path(args.config)
    if args.host:
        overrides["host"] = args.host
    if args.port:
        overrides["port"] = args.port
    settings = Settings(**overrides)  # type: ignore[arg-type]
    try:
        app = create_app(settings)
        _check_database(settings)
    except (ConfigError, CliError) as exc:
        print(f"tiergate: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        access_log=False,
        loop="uvloop",
        http=guarded_protocol(
            settings.max_header_bytes, settings.header_timeout_s, settings.body_timeout_s
        ),
        timeout_keep_alive=settings.keep_alive_s,
        limit_concurrency=settings.limit_concurrency,
        # SIGTERM: stop accepting, let in-flight requests and streams finish, then flush.
        timeout_graceful_shutdown=settings.graceful_shutdown_s,
    )
    return 0


def _check_database(settings: object) -> None:
    """A database URL that is not one, an unreachable database or one without the schema
    this code serves on: refused before serving (``CliError``/``ConfigError``)."""
    from gateway.cli_common import check_database

    url = getattr(settings, "database_url", "")
    if url not in ("", "none"):
        check_database(url)


def _check(args: argparse.Namespace) -> int:
    try:
        catalog = read_catalog(args.config)
    except ConfigError as exc:
        print(f"tiergate: {exc}", file=sys.stderr)
        return 2
    print(
        f"{args.config}: ok ({len(catalog.tiers)} tiers, {len(catalog.backends)} backends, "
        f"{len(catalog.models)} model names, {len(catalog.passthrough)} pass-through)"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tiergate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", help="catalog YAML (default: $TIERGATE_CONFIG)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=port_number)
    serve.set_defaults(func=_serve)
    check = sub.add_parser("check-config", help="validate a catalog file and exit")
    check.add_argument("config")
    check.set_defaults(func=_check)
    for module, fn in _EXTENSIONS:
        try:
            register: Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None] = (
                getattr(import_module(module), fn)
            )
        except ModuleNotFoundError as exc:
            if not exc.name or not module.startswith(exc.name):
                raise
            continue
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from pydantic import ValidationError

    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except ValidationError as exc:
        if exc.title != "Settings":
            raise
        # A TIERGATE_* variable (or --port) the settings refuse: one line each, exit 2.
        for e in exc.errors(include_url=False):
            name = "TIERGATE_" + "_".join(str(p) for p in e["loc"]).upper()
            print(f"tiergate: {name}: {e['msg']} (got {e['input']!r})", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`tiergate spend report --csv | head`): not an error, and no
        # traceback when Python flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return result


if __name__ == "__main__":
    sys.exit(main())
