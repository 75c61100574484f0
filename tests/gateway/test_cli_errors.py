"""The admin commands, `check-config`, `serve` and the settings on bad input: one
`tiergate: ...` line on stderr and exit status 2 (argparse's usage and error for a bad
option value), never a traceback; and no database file created by a command that only reads.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main
from gateway.settings import Settings

DB_COMMANDS = [
    ["teams", "list"],
    ["teams", "create", "x"],
    ["keys", "list"],
    ["budgets", "list"],
    ["spend", "report"],
    ["spend", "savings"],
    ["router", "labels", "export", "--out", "l.jsonl"],
]
IDS = [" ".join(c[:2]) for c in DB_COMMANDS]


@pytest.fixture(autouse=True)
def _no_logging_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    """`serve` and `ledger drain` configure structlog on pytest's captured stderr, which
    later tests lose."""
    monkeypatch.setattr("gateway.app.configure_logging", lambda *a, **k: None)
    monkeypatch.setattr("gateway.logging.configure_logging", lambda *a, **k: None)


def _stderr_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err.splitlines()[0]


@pytest.fixture
def empty_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory with no database in it, the default (embedded SQLite) URL in use."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TIERGATE_DATABASE_URL", raising=False)
    return tmp_path


@pytest.mark.parametrize("command", DB_COMMANDS, ids=IDS)
def test_a_missing_sqlite_file_is_reported_not_created(
    empty_dir: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    assert main(command) == 2
    assert _stderr_line(capsys) == (
        "tiergate: database sqlite+aiosqlite:///./var/tiergate.db does not exist: "
        "run `tiergate db upgrade` to create it"
    )
    assert list(empty_dir.iterdir()) == []


@pytest.mark.parametrize("command", DB_COMMANDS, ids=IDS)
def test_a_database_without_the_schema_says_to_upgrade(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.db").touch()
    assert main([*command, "--database-url", f"sqlite:///{tmp_path}/empty.db"]) == 2
    line = _stderr_line(capsys)
    assert line.startswith(
        f"tiergate: database sqlite:///{tmp_path}/empty.db has no tiergate schema"
    )
    assert "run `tiergate db upgrade` first" in line


@pytest.mark.parametrize("command", [*DB_COMMANDS, ["db", "upgrade"]], ids=[*IDS, "db upgrade"])
def test_an_unreachable_database_masks_its_password(
    empty_dir: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    url = "postgresql+psycopg://postgres:secret@127.0.0.1:1/x"
    assert main([*command, "--database-url", url]) == 2
    line = _stderr_line(capsys)
    assert line.startswith(
        "tiergate: cannot connect to database postgresql+psycopg://postgres:***@127.0.0.1:1/x: "
    )
    assert "secret" not in line


@pytest.mark.parametrize("url", ["bogus://x", "not a url", "bogus://u:secret@h/x"])
@pytest.mark.parametrize("command", [*DB_COMMANDS, ["db", "current"]], ids=[*IDS, "db current"])
def test_a_bad_database_url(
    empty_dir: Path, capsys: pytest.CaptureFixture[str], command: list[str], url: str
) -> None:
    assert main([*command, "--database-url", url]) == 2
    line = _stderr_line(capsys)
    assert "is not a valid database URL" in line and "secret" not in line
    assert list(empty_dir.iterdir()) == []


WINDOWED = [
    (["spend", "report"], "--since"),
    (["spend", "report"], "--until"),
    (["spend", "savings"], "--since"),
    (["spend", "savings"], "--until"),
    (["router", "labels", "export", "--out", "l"], "--since"),
]


@pytest.mark.parametrize("value", ["yesterday", "2026-13-45"])
@pytest.mark.parametrize(
    ("command", "option"), WINDOWED, ids=[f"{' '.join(c[:2])} {o}" for c, o in WINDOWED]
)
def test_a_bad_time_is_an_argparse_error(
    empty_dir: Path,
    capsys: pytest.CaptureFixture[str],
    command: list[str],
    option: str,
    value: str,
) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*command, option, value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"error: argument {option}: '{value}' is not an ISO 8601 time, e.g. 2026-11-01" in err


def test_a_time_window_is_accepted(migrated: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--since", "2026-11-01", "--until", "2026-12-01T00:00:00+00:00"]
    assert main(["spend", "savings", "--database-url", migrated, *args]) == 0
    assert '"requests": 0' in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "header"),
    [
        ([], "team_id  requests  cache_hit_tokens"),
        (["--group-by", "model,day"], "requested_model  day  requests"),
        (["--csv"], "team_id,requests,cache_hit_tokens,"),
    ],
)
def test_an_empty_spend_report_prints_the_header(
    migrated: str, capsys: pytest.CaptureFixture[str], extra: list[str], header: str
) -> None:
    assert main(["spend", "report", "--database-url", migrated, *extra]) == 0
    out = capsys.readouterr().out
    assert out.startswith(header) and len(out.splitlines()) == 1, out
    assert "[]" not in out


def test_a_bad_group_by_after_the_checks(migrated: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["spend", "report", "--database-url", migrated, "--group-by", "foo"]) == 2
    assert _stderr_line(capsys).startswith("tiergate: cannot group by 'foo'")


@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_a_catalog_that_is_not_utf8(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"\xff\xfe")
    args = [command, str(path)] if command == "check-config" else [command, "--config", str(path)]
    assert main(args) == 2
    assert _stderr_line(capsys) == (
        f"tiergate: catalog {path} is not UTF-8 text (byte 0xff at offset 0): save it as UTF-8"
    )


def test_an_empty_env_var_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ROUTER_WEIGHTS", "CONFIG", "PORT", "REDIS_URL", "METRICS_KEY", "MASTER_KEY"):
        monkeypatch.setenv(f"TIERGATE_{name}", "")
    s, default = Settings(), Settings.model_fields
    assert s.router_weights is None and s.config == default["config"].default
    assert s.port == 8080 and s.redis_url is None
    assert s.metrics_key is None and s.master_key is None


def test_an_empty_value_that_means_something_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATABASE_URL", "SPOOL_DIR", "REDIS_PREFIX"):
        monkeypatch.setenv(f"TIERGATE_{name}", "")
    s = Settings()
    assert (s.database_url, s.spool_dir, s.redis_prefix) == ("", "", "")


def test_serve_with_an_empty_router_weights_is_not_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.app import create_app

    monkeypatch.setenv("TIERGATE_ROUTER_WEIGHTS", "")
    monkeypatch.setenv("TIERGATE_DATABASE_URL", "")
    monkeypatch.chdir(tmp_path)
    create_app(Settings())  # was: ConfigError "cannot read weights file .: Is a directory"


def test_a_bad_setting_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TIERGATE_LOG_LEVEL", "loud")
    assert main(["teams", "list"]) == 2
    assert _stderr_line(capsys).startswith("tiergate: TIERGATE_LOG_LEVEL: Input should be")
    monkeypatch.delenv("TIERGATE_LOG_LEVEL")
    monkeypatch.setenv("TIERGATE_PORT", "70000")
    assert main(["serve"]) == 2
    assert _stderr_line(capsys) == (
        "tiergate: TIERGATE_PORT: Input should be less than or equal to 65535 (got '70000')"
    )


@pytest.mark.parametrize("zone", ["Mars/Olympus", "Europe", "../etc/passwd"])
def test_an_unknown_budget_timezone_stops_the_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], zone: str
) -> None:
    from pydantic import ValidationError

    monkeypatch.setenv("TIERGATE_BUDGET_TIMEZONE", zone)
    with pytest.raises(ValidationError, match="budget_timezone"):
        Settings()  # was: accepted, then a 500 on every request under a budget
    assert main(["serve"]) == 2
    assert _stderr_line(capsys) == (
        "tiergate: TIERGATE_BUDGET_TIMEZONE: Value error, not a known IANA time zone, "
        f"e.g. UTC or Europe/Paris (got {zone!r})"
    )
    monkeypatch.setenv("TIERGATE_BUDGET_TIMEZONE", "America/New_York")
    assert Settings().budget_timezone == "America/New_York"


@pytest.mark.parametrize(
    ("args", "option", "message"),
    [
        (["serve", "--port", "70000"], "--port", "must be a port number from 1 to 65535, got 70000"),
        (["serve", "--port", "0"], "--port", "must be positive, got 0"),
        (["engine", "profile", "flash", "--gpu", "h200", "--gpus", "8", "--port", "-1"], "--port", "must be positive, got -1"),
        (["engine", "profile", "flash", "--gpu", "h200", "--gpus", "8", "--mtp", "-1"], "--mtp", "must be 0 or more, got -1"),
        (["router", "train", "--data", "x", "--l2-hashed", "-1"], "--l2-hashed", "must be a finite number, 0 or more, got -1"),
        (["router", "report", "--l2-hashed", "nan"], "--l2-hashed", "must be a finite number, 0 or more, got nan"),
    ],
)  # fmt: skip
def test_a_number_out_of_range_is_an_argparse_error(
    capsys: pytest.CaptureFixture[str], args: list[str], option: str, message: str
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"error: argument {option}: {message}" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://postgres:secret@127.0.0.1:1/x", "cannot connect to database postgresql+psycopg://postgres:***@127.0.0.1:1/x: "),
        ("bogus://x", "'bogus://x' is not a valid database URL"),
        ("sqlite:///{tmp}/missing.db", "database sqlite+aiosqlite:///{tmp}/missing.db does not exist: run `tiergate db upgrade`"),
        ("sqlite:///{tmp}/empty.db", "database sqlite:///{tmp}/empty.db has no tiergate schema"),
    ],
    ids=["unreachable", "bad URL", "missing file", "no schema"],
)  # fmt: skip
@pytest.mark.parametrize("command", ["serve", "ledger drain"])
def test_serve_and_the_ledger_drain_check_the_database_first(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: str,
    url: str,
    message: str,
) -> None:
    (tmp_path / "empty.db").touch()
    url = url.format(tmp=tmp_path)
    if command == "serve":
        monkeypatch.setenv("TIERGATE_DATABASE_URL", url)
        args = ["serve"]
    else:
        args = ["ledger", "drain", "--once", "--database-url", url, "--redis-url", "redis://127.0.0.1:1/0"]  # fmt: skip
    assert main(args) == 2
    line = _stderr_line(capsys)
    assert line.startswith("tiergate: " + message.format(tmp=tmp_path)), line
    assert "secret" not in line and not (tmp_path / "missing.db").exists()


def _revision(url: str, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["db", "current", "--database-url", url]) == 0
    return capsys.readouterr().out.split(": revision ")[1].split()[0]


def test_db_downgrade_needs_a_revision(migrated: str, capsys: pytest.CaptureFixture[str]) -> None:
    head = _revision(migrated, capsys)
    assert main(["db", "--database-url", migrated, "downgrade"]) == 2
    line = _stderr_line(capsys)
    assert line.startswith("tiergate: db downgrade needs the revision to go down to")
    assert "`tiergate db downgrade base` drops every tiergate table" in line
    assert _revision(migrated, capsys) == head
    assert main(["teams", "list", "--database-url", migrated]) == 0
    assert main(["db", "downgrade", "base", "--database-url", migrated]) == 0
    assert capsys.readouterr().out.endswith(": revision none (head " + head + ")\n")


@pytest.mark.parametrize(
    "args",
    [
        ["db", "downgrade", "--database-url", "{url}", "0003"],
        ["db", "downgrade", "0003", "--database-url", "{url}"],
        ["db", "--database-url", "{url}", "downgrade", "0003"],
    ],
    ids=["option then revision", "revision then option", "option before the action"],
)
def test_db_takes_the_database_anywhere(
    migrated: str, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    assert main([a.format(url=migrated) for a in args]) == 0
    assert _revision(migrated, capsys) == "0003"


@pytest.mark.parametrize("action", ["upgrade", "downgrade"])
def test_db_an_unknown_revision_is_one_line(
    migrated: str, capsys: pytest.CaptureFixture[str], action: str
) -> None:
    assert main(["db", action, "9999", "--database-url", migrated]) == 2
    assert _stderr_line(capsys) == (
        f"tiergate: db {action}: Can't locate revision identified by '9999'"
    )


def test_db_upgrade_creates_no_tree_of_directories(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path}/no/dir/x.db"
    assert main(["db", "upgrade", "--database-url", url]) == 2
    assert _stderr_line(capsys) == (
        f"tiergate: cannot create database sqlite+aiosqlite:///{tmp_path}/no/dir/x.db: "
        f"directory {tmp_path}/no/dir does not exist (nor {tmp_path}/no): create it first"
    )
    assert list(tmp_path.iterdir()) == []
    # the file's own directory is created, as ./var is for the default database
    assert main(["db", "upgrade", "--database-url", f"sqlite:///{tmp_path}/var/x.db"]) == 0
    assert (tmp_path / "var" / "x.db").exists()


def test_a_missing_catalog_named_like_a_shipped_example_says_where_those_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """README's `check-config gateway/examples/selfhosted.yaml` run outside a checkout (an
    installed wheel has the examples in the package)."""
    monkeypatch.chdir(tmp_path)
    assert main(["check-config", "gateway/examples/selfhosted.yaml"]) == 2
    err = capsys.readouterr().err
    assert "the example catalogs ship in the package: " in err
    shipped = err.rsplit(": ", 1)[1].strip()
    assert main(["check-config", shipped]) == 0
