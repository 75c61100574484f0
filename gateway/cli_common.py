"""What the ``tiergate`` sub-commands share: errors a user can fix reported as one line, the
database a command works on checked before it runs, and argparse types for times and counts."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from policies.errors import ConfigError, TiergateError

Command = Callable[[argparse.Namespace], int]


class CliError(Exception):
    """What went wrong, in one line for the user: ``reported`` prints it, exit status 2."""


def reported(command: Command) -> Command:
    """``command`` with the errors a user can fix (an input file, a weights file, an output
    path, no rows to work on, a database that is missing, unreachable or not migrated)
    printed as one ``tiergate: ...`` line on stderr and exit status 2, as the other
    sub-commands do; anything else is a bug and keeps its traceback."""
    from policies.router.data import DataError

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except (CliError, DataError, ConfigError) as exc:
            print(f"tiergate: {exc}", file=sys.stderr)
            return 2
        except TiergateError as exc:
            print(f"tiergate: {exc.message}", file=sys.stderr)
            return 2

    return run


def database_url(args: argparse.Namespace) -> str:
    """The database a command works on (``--database-url``, else the settings'), checked:
    ``CliError`` where the URL is not one, the SQLite file does not exist (it is not created
    here: only ``tiergate db upgrade`` creates it), or the database cannot be reached;
    ``ConfigError`` where it has no tiergate schema or one this code cannot work on."""
    from gateway.settings import Settings

    url: str = getattr(args, "database_url", None) or Settings().database_url
    if url in ("", "none"):
        raise CliError("no database configured (TIERGATE_DATABASE_URL is empty)")
    check_database(url)
    return url


def check_database(url: str, *, migrated: bool = True) -> None:
    """See :func:`database_url`; ``migrated=False`` (``tiergate db``) checks only that the
    URL is one and the database can be reached, a SQLite file being created if missing (and
    its directory, where the one above that exists)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

    from gateway.db.engine import async_url, sync_url
    from gateway.db.migrate import current_revision, require_compatible

    try:
        parsed = make_url(async_url(url))
        parsed.get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError):
        raise CliError(
            f"{_masked(url)!r} is not a valid database URL "
            "(e.g. sqlite:///var/tiergate.db or postgresql://user@host/db)"
        ) from None
    except ImportError as exc:
        raise CliError(f"no driver for database URL {_masked(url)!r}: {exc}") from None
    where = parsed.render_as_string(hide_password=True)
    file = parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:")
    if migrated and file and not Path(str(parsed.database)).exists():
        raise CliError(f"database {where} does not exist: run `tiergate db upgrade` to create it")
    folder = Path(str(parsed.database)).parent
    if file and not folder.exists() and not folder.parent.is_dir():
        # `db upgrade` creates the file's own directory (./var by default), never a path
        # of them: a mistyped one is an error, not a new tree
        raise CliError(
            f"cannot create database {where}: directory {folder} does not exist "
            f"(nor {folder.parent}): create it first"
        )
    try:
        if migrated:
            require_compatible(sync_url(url))
        else:
            current_revision(sync_url(url))
    except DBAPIError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else exc
        raise CliError(f"cannot connect to database {where}: {reason}") from None
    except ImportError as exc:
        raise CliError(f"no driver for database URL {where}: {exc}") from None


def _masked(url: str) -> str:
    """``url`` with a password in it replaced by ``***`` (a best effort on an unparseable one)."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, at, host = rest.rpartition("@")
    user, colon, _ = creds.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{host}"


TIME_FORMAT = (
    "an ISO 8601 time, e.g. 2026-11-01 or 2026-11-01T00:00:00Z (UTC unless it names a zone)"
)


def iso_time(value: str) -> datetime:
    """An argparse type: ``--since 2026-11-01``; anything else an argparse error naming the
    option and the format."""
    from gateway.admin_ops import parse_time

    try:
        return parse_time(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not {TIME_FORMAT}") from None


def _whole(value: str, low: int, what: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if n < low:
        raise argparse.ArgumentTypeError(f"must be {what}, got {n}")
    return n


def positive_int(value: str) -> int:
    """An argparse type: a whole number above 0."""
    return _whole(value, 1, "positive")


def non_negative_int(value: str) -> int:
    """An argparse type: a whole number, 0 or more."""
    return _whole(value, 0, "0 or more")


def non_negative_float(value: str) -> float:
    """An argparse type: a finite number, 0 or more."""
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not x >= 0 or x == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number, 0 or more, got {value}")
    return x


def port_number(value: str) -> int:
    """An argparse type: a TCP port, 1 to 65535."""
    n = positive_int(value)
    if n > 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 1 to 65535, got {n}")
    return n
