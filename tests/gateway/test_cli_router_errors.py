"""`tiergate router train | eval` on bad input: one `tiergate: ...` line on stderr, exit 2.

Each case runs the CLI entry point (``gateway.cli.main``) on a file written for it and
checks the exit status and the message: the file and line of a bad row, the reason a file
cannot be read or written, why there is nothing to score or learn.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.cli import main
from policies.router.data import jsonl_rows

A, B = "weak-model", "strong-model"


def _row(i: int, **kw: object) -> str:
    row: dict[str, object] = {
        "id": f"r{i}",
        "prompt": f"question {i}",
        "correct": {A: True, B: True},
    }
    row.update(kw)
    return json.dumps(row)


GOOD = _row(1, correct={A: False, B: True})


def _stderr_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if not line.startswith("tiergate: warning:")]
    assert len(lines) == 1, err
    return lines[0]


# (case, file bytes, message after "tiergate: {path}")
BAD_FILES = [
    ("invalid JSON", f"{GOOD}\n{{oops\n".encode(), ":2: invalid JSON: Expecting property name"),
    ("not UTF-8", GOOD.encode() + b"\n" + _row(2).encode("latin-1")[:-2] + b"\xff}\n", ":2: not UTF-8"),
    ("a list", f"{GOOD}\n\n[1, 2]\n".encode(), ":3: expected a JSON object, got an array"),
    ("a number", b"42\n", ":1: expected a JSON object, got a number"),
    ("no id", json.dumps({"prompt": "q"}).encode(), ":1: row has no 'id'"),
    ("null id", _row(1, id=None).encode(), ":1: 'id' must be a string or an integer"),
    ("prompt not a string", _row(1, prompt=["q"]).encode(), ":1: 'prompt' must be a string, got an array"),
    ("no prompt", json.dumps({"id": "x", "correct": {A: True}}).encode(), ":1: row 'x' has neither 'prompt'"),
    ("correct not an object", _row(1, correct=[True]).encode(), ":1: 'correct' must be an object"),
    ("label string", _row(1, correct={A: "true", B: True}).encode(), f":1: 'correct' of '{A}' must be true/false or 1/0, got \"true\""),
    ("label 2", _row(1, correct={A: True, B: 2}).encode(), f":1: 'correct' of '{B}' must be true/false or 1/0, got 2"),
    ("label 0.5", _row(1, correct={A: 0.5, B: 1}).encode(), f":1: 'correct' of '{A}' must be true/false or 1/0, got 0.5"),
    ("label null", _row(1, correct={A: None, B: 1}).encode(), f":1: 'correct' of '{A}' must be true/false or 1/0, got null"),
    ("bad features", json.dumps({"id": "x", "features": {"dense": [1]}}).encode(), ":1: 'features.dense' must list"),
]  # fmt: skip


@pytest.mark.parametrize("command", ["train", "eval"])
@pytest.mark.parametrize(
    ("data", "message"), [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES]
)
def test_a_bad_row_names_the_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, data: bytes, message: str
) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_bytes(data)
    args = (
        ["--out", str(tmp_path / "o.npz")] if command == "train" else ["--weak", A, "--strong", B]
    )
    assert main(["router", command, "--data", str(path), *args]) == 2
    assert _stderr_line(capsys).startswith(f"tiergate: {path}{message}")


@pytest.mark.parametrize(
    ("name", "message"),
    [("missing.jsonl", "No such file or directory"), (".", "Is a directory")],
)
def test_an_unreadable_data_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, message: str
) -> None:
    path = tmp_path / name
    assert main(["router", "eval", "--data", str(path), "--weak", A, "--strong", B]) == 2
    assert _stderr_line(capsys) == f"tiergate: cannot read {path}: {message}"


def test_a_bom_is_skipped_and_lone_surrogates_are_replaced(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    lone = _row(2, prompt="half an emoji: \ud83d!")  # json.dumps writes the \ud83d escape
    pair = _row(3, prompt="a whole one: \U0001f600")
    path.write_bytes(b"\xef\xbb\xbf" + f"{GOOD}\r\n{lone}\n{pair}\n".encode())
    rows = jsonl_rows(path)
    assert [r.id for r in rows] == ["r1", "r2", "r3"]
    assert rows[1].prompt == "half an emoji: \ufffd!" and rows[2].prompt.endswith("\U0001f600")
    # and the whole path (features, embedding, scores file) encodes them
    out = tmp_path / "scores.jsonl"
    assert main(["router", "eval", "--data", str(path), "--weak", A, "--strong", B, "--scores-out", str(out), "--bootstrap", "2"]) == 0  # fmt: skip
    assert len(out.read_text().splitlines()) == 3


@pytest.mark.parametrize(
    ("value", "label"),
    [(True, True), (False, False), (1, True), (0, False), (1.0, True), (0.0, False)],
)
def test_labels_may_be_numbers_0_and_1(tmp_path: Path, value: object, label: bool) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text(_row(1, correct={A: value, B: not label}) + "\n")
    assert jsonl_rows(path)[0].correct == {A: label, B: not label}


def test_numeric_labels_train_like_booleans(tmp_path: Path) -> None:
    rows = [_row(i, correct={A: i % 3 == 0, B: i % 2 == 0}) for i in range(30)]
    numeric = [_row(i, correct={A: int(i % 3 == 0), B: float(i % 2 == 0)}) for i in range(30)]
    for name, lines in (("bool", rows), ("num", numeric)):
        (tmp_path / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
        out = tmp_path / f"{name}.npz"
        assert main(["router", "train", "--data", str(tmp_path / f"{name}.jsonl"), "--out", str(out)]) == 0  # fmt: skip
    assert (tmp_path / "bool.npz").read_bytes() == (tmp_path / "num.npz").read_bytes()


# (case, rows, extra arguments, message after "tiergate: ", with {path} for the file)
NOTHING_TO_SCORE = [
    ("empty file", [], (A, B), "{path} has no rows"),
    ("blank lines", ["", "  "], (A, B), "{path} has no rows"),
    ("pair not in data", [GOOD], ("x", "y"), f"no rows in {{path}} label both 'x' and 'y', nothing to score (the rows label {B}, {A})"),
    ("one side missing", [_row(1, correct={A: True})], (A, B), f"no rows in {{path}} label both '{A}' and '{B}', nothing to score (the rows label {A})"),
    ("no labels", [_row(1, correct={})], (A, B), f"no rows in {{path}} label both '{A}' and '{B}', nothing to score (no row has a 'correct' outcome)"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("rows", "pair", "message"),
    [c[1:] for c in NOTHING_TO_SCORE],
    ids=[c[0] for c in NOTHING_TO_SCORE],
)
def test_eval_with_nothing_to_score_fails(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    rows: list[str],
    pair: tuple[str, str],
    message: str,
) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(r + "\n" for r in rows))
    assert (
        main(["router", "eval", "--data", str(path), "--weak", pair[0], "--strong", pair[1]]) == 2
    )
    assert _stderr_line(capsys) == "tiergate: " + message.format(path=path)


NOTHING_TO_LEARN = [
    ("empty file", [], (), "{path} has no rows"),
    ("no labels", [_row(1, correct={})], (), "{path} has no labelled rows (no row has a 'correct' outcome)"),
    ("one model", [_row(1, correct={A: True})], (), f"{{path}} labels one model only ({A}); a pair needs two"),
    ("three models", [_row(1, correct={A: True, B: True, "c": False})], (), f"{{path}} label 3 models (c, {B}, {A}); name the pair with --weak and --strong"),
    ("pair not in data", [GOOD], ("--weak", "x", "--strong", "y"), f"{{path}} has no labelled rows for pair x/y (the rows label {B}, {A})"),
    ("one side not in data", [GOOD], ("--weak", "x"), f"{{path}} labels no model 'x' (it labels {B}, {A})"),
    ("one side of three", [_row(1, correct={A: True, B: True, "c": False})], ("--strong", B), f"{{path}} label 3 models (c, {B}, {A}); name both sides with --weak and --strong"),
    ("the same model twice", [GOOD], ("--weak", A, "--strong", A), f"--weak and --strong name the same model ({A}); a pair needs two"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("rows", "extra", "message"),
    [c[1:] for c in NOTHING_TO_LEARN],
    ids=[c[0] for c in NOTHING_TO_LEARN],
)
def test_train_with_nothing_to_learn_says_so(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    rows: list[str],
    extra: tuple[str, ...],
    message: str,
) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(r + "\n" for r in rows))
    out = tmp_path / "o.npz"
    assert main(["router", "train", "--data", str(path), "--out", str(out), *extra]) == 2
    line = _stderr_line(capsys)
    assert line == "tiergate: " + message.format(path=path)
    assert ("--weak" in line) == (len(_names_in(rows)) > 2 or A in extra)  # where they help
    assert not out.exists()


def _names_in(rows: list[str]) -> set[str]:
    return {m for r in rows for m in json.loads(r)["correct"]}


# (case, rows, warnings expected on stderr)
FEW_ROWS = [
    ("one row", [GOOD], ["only 1 labelled row(s) (cross-validation needs 10)"]),
    ("two rows", [GOOD, _row(2)], ["only 2 labelled row(s)"]),
    ("one outcome", [_row(i) for i in range(40)], ["every labelled row has the same outcome (both sides alike)"]),
    ("duplicates", [_row(i % 3, correct={A: i % 2 == 0, B: True}) for i in range(9)], ["6 row(s) in {path} repeat an earlier id; kept the first", "only 3 labelled row(s)"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("rows", "warnings"), [c[1:] for c in FEW_ROWS], ids=[c[0] for c in FEW_ROWS]
)
def test_train_on_few_rows_warns_and_keeps_the_prior(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], rows: list[str], warnings: list[str]
) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(r + "\n" for r in rows))
    out = tmp_path / "o.npz"
    assert main(["router", "train", "--data", str(path), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    for w in warnings:
        assert f"tiergate: warning: {w.format(path=path)}" in captured.err
    assert "chosen: prior" in captured.out and out.exists()


def test_duplicate_ids_keep_the_first_row(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text(f"{GOOD}\n{_row(1, correct={A: True, B: False})}\n{_row(2)}\n")
    out = tmp_path / "s.jsonl"
    assert main(["router", "eval", "--data", str(path), "--weak", A, "--strong", B, "--scores-out", str(out), "--json", "--bootstrap", "2"]) == 0  # fmt: skip
    captured = capsys.readouterr()
    assert (
        f"tiergate: warning: 1 row(s) in {path} repeat an earlier id; kept the first"
        in captured.err
    )
    result = json.loads(captured.out)[0]
    assert (result["rows"], result["weak_acc"], result["strong_acc"]) == (2, 0.5, 1.0)
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["r1", "r2"]


@pytest.mark.parametrize(
    ("out", "reason"),
    [
        ("/proc/tiergate-test.npz", "No such file or directory"),
        ("/proc/no-such-dir/pair.npz", "/proc/no-such-dir: No such file or directory"),
        ("{tmp}/rows.jsonl/pair.npz", "{tmp}/rows.jsonl: File exists"),
    ],
)
def test_an_unwritable_out_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], out: str, reason: str
) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text(f"{GOOD}\n{_row(2)}\n")
    out = out.format(tmp=tmp_path)
    assert main(["router", "train", "--data", str(path), "--out", out]) == 2
    assert _stderr_line(capsys) == f"tiergate: cannot write {out}: {reason.format(tmp=tmp_path)}"


def test_the_out_path_is_checked_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text(f"{GOOD}\n{_row(2)}\n")
    out = tmp_path / "taken.npz"
    out.mkdir()
    assert main(["router", "train", "--data", str(path), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == f"tiergate: cannot write {out}: Is a directory"
    assert "labelled rows" not in captured.out  # nothing was trained


def test_an_unwritable_scores_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text(f"{GOOD}\n")
    out = tmp_path  # a directory
    args = ["--weak", A, "--strong", B, "--scores-out", str(out)]
    assert main(["router", "eval", "--data", str(path), *args]) == 2
    assert _stderr_line(capsys) == f"tiergate: cannot write {out}: Is a directory"


@pytest.mark.parametrize(
    ("command", "option", "value", "message"),
    [
        ("train", "--steps", "0", "must be positive, got 0"),
        ("train", "--steps", "-1", "must be positive, got -1"),
        ("train", "--steps", "many", "'many' is not a whole number"),
        ("report", "--steps", "0", "must be positive, got 0"),
        ("eval", "--bootstrap", "-5", "must be 0 or more, got -5"),
        ("report", "--bootstrap", "-1", "must be 0 or more, got -1"),
    ],
)
def test_a_count_out_of_range_is_an_argparse_error(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    command: str,
    option: str,
    value: str,
    message: str,
) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text(f"{GOOD}\n")
    args = {
        "train": ["--data", str(path), "--out", str(tmp_path / "o.npz")],
        "eval": ["--data", str(path), "--weak", A, "--strong", B],
        "report": ["--shared-dir", str(tmp_path)],
    }[command]
    with pytest.raises(SystemExit) as exc:
        main(["router", command, *args, option, value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"error: argument {option}: {message}" in err and "Traceback" not in err
    assert not (tmp_path / "o.npz").exists()


def test_eval_without_bootstrap_prints_no_ci(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text(f"{GOOD}\n{_row(2, correct={A: False, B: True})}\n{_row(3)}\n")
    args = ["router", "eval", "--data", str(path), "--weak", A, "--strong", B, "--bootstrap"]
    assert main([*args, "0"]) == 0
    out = capsys.readouterr().out
    assert "nan" not in out
    rows = out.splitlines()[1:]
    assert len(rows) == 3 and all(line.split()[3] == "-" for line in rows), out
    assert main([*args, "0", "--json"]) == 0
    assert all(r["ci95"] == {} for r in json.loads(capsys.readouterr().out))


@pytest.mark.parametrize("flag", ["--weak", "--strong"])
def test_one_side_named_takes_the_other_from_the_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str
) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(_row(i, correct={A: i % 3 == 0, B: True}) + "\n" for i in range(30)))
    out = tmp_path / "o.npz"
    named = A if flag == "--weak" else B
    assert main(["router", "train", "--data", str(path), "--out", str(out), flag, named]) == 0
    assert f"pair {A} -> {B}:" in capsys.readouterr().out


def test_a_model_that_keeps_the_prior_keeps_the_generic_lines(tmp_path: Path) -> None:
    """Both sides always right: nothing to learn. The file is the generic router, with no
    first-request lines of its own (those of rows all alike would send every longer
    request to the strong side)."""
    from policies.router import Router

    path = tmp_path / "rows.jsonl"
    path.write_text("".join(_row(i) + "\n" for i in range(200)))
    out = tmp_path / "o.npz"
    assert main(["router", "train", "--data", str(path), "--out", str(out)]) == 0
    meta = Router.load(out).meta
    assert meta["chosen"] == "prior"
    assert "prior_pro" not in meta and "prior_think" not in meta


def test_report_without_the_public_data_says_where_it_looked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An installed wheel has no ../shared data: one line naming the folder (it was a
    numpy traceback)."""
    assert main(["router", "report", "--shared-dir", str(tmp_path), "--plot", ""]) == 2
    line = _stderr_line(capsys)
    assert f"no public routing data in {tmp_path}" in line and "--shared-dir" in line
