"""A bad router weights file fails with one line naming it: in `tiergate router eval
--weights` and at gateway start-up (``TIERGATE_ROUTER_WEIGHTS``), before any session opens."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from gateway.app import create_app
from gateway.cli import main
from gateway.settings import Settings
from policies.features import DENSE_NAMES, HASH_DIM
from policies.router import Router
from policies.router.model import LinearModel, WeightsError

ROOT = Path(__file__).resolve().parents[2]
A, B = "weak-model", "strong-model"
NOT_A_MODEL = "is not a tiergate router model: "


@pytest.fixture(autouse=True)
def _no_logging_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    """``create_app`` configures logging once per process, on the stream of the moment:
    here pytest's capture, closed after the test; later tests' apps would log into it."""
    monkeypatch.setattr("gateway.app.configure_logging", lambda *a, **k: None)


@pytest.fixture(scope="module")
def pair_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A real pair model, from `router train` on a few rows."""
    d = tmp_path_factory.mktemp("pair")
    rows = [
        {"id": str(i), "prompt": f"question {i}", "correct": {A: i % 2 == 0, B: i % 3 != 0}}
        for i in range(24)
    ]
    (d / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert (
        main(["router", "train", "--data", str(d / "rows.jsonl"), "--out", str(d / "p.npz")]) == 0
    )
    return (d / "p.npz").read_bytes()


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def _edited(data: bytes, **changes: np.ndarray | None) -> bytes:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    for k, v in changes.items():
        if v is None:
            del arrays[k]
        else:
            arrays[k] = v
    return _npz(**arrays)


def _npy() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.zeros(3))
    return buf.getvalue()


# (case, the file's bytes from a good pair model's, the reason after NOT_A_MODEL)
BAD_WEIGHTS: list[tuple[str, Callable[[bytes], bytes], str]] = [
    ("text", lambda _: b"hello, not a model\n", "not an .npz archive"),
    ("empty", lambda _: b"", "not an .npz archive"),
    ("a .npy array", lambda _: _npy(), "not an .npz archive"),
    ("truncated", lambda good: good[: len(good) // 2], "not an .npz archive"),
    ("truncated zip tail", lambda good: good[:-30], "not an .npz archive"),
    ("pickled objects", lambda good: _edited(good, meta=np.array([{"kind": "pair"}], dtype=object)), "array 'meta' holds Python objects"),
    ("missing arrays", lambda good: _edited(good, scale=None, labels=None), "missing array(s) scale, labels"),
    ("neither pair nor linear", lambda _: _npz(x=np.zeros(2)), "missing array(s) dense, hashed, meta (it has: x)"),
    ("linear of another layout", lambda _: _npz(dense=np.zeros(3), hashed=np.zeros(3), meta=np.array([], dtype=str)), "weights do not match the feature layout"),
    ("bad scalars", lambda good: _edited(good, scalars=np.zeros(2)), "'scalars' must hold 4 numbers"),
    ("bad meta", lambda good: _edited(good, meta=np.array(["kind"])), "'meta' entry 'kind' is not key=value"),
    ("coefficients of another shape", lambda good: _edited(good, coef=np.zeros(5)), "'coef' must hold"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("make", "reason"), [c[1:] for c in BAD_WEIGHTS], ids=[c[0] for c in BAD_WEIGHTS]
)
def test_a_bad_weights_file_in_router_eval(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    pair_bytes: bytes,
    make: Callable[[bytes], bytes],
    reason: str,
) -> None:
    weights = tmp_path / "bad.npz"
    weights.write_bytes(make(pair_bytes))
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"id": "1", "prompt": "q", "correct": {A: False, B: True}}) + "\n")
    args = ["--data", str(data), "--weak", A, "--strong", B, "--weights", str(weights)]
    assert main(["router", "eval", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tiergate: weights file {weights} {NOT_A_MODEL}{reason}"), err
    assert len(err.splitlines()) == 1 and "allow_pickle" not in err


def test_the_good_pair_model_loads(pair_bytes: bytes, tmp_path: Path) -> None:
    (tmp_path / "p.npz").write_bytes(pair_bytes)
    assert Router.load(tmp_path / "p.npz").pair is not None


@pytest.mark.parametrize(
    ("name", "reason"), [("missing.npz", "No such file or directory"), (".", "Is a directory")]
)
def test_an_unreadable_weights_path(tmp_path: Path, name: str, reason: str) -> None:
    with pytest.raises(
        WeightsError, match=re.escape(f"cannot read weights file {tmp_path / name}: {reason}")
    ):
        Router.load(tmp_path / name)


@pytest.mark.parametrize(
    ("make", "reason"), [c[1:] for c in BAD_WEIGHTS[:7]], ids=[c[0] for c in BAD_WEIGHTS[:7]]
)
def test_start_up_fails_fast_on_a_bad_weights_file(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    pair_bytes: bytes,
    make: Callable[[bytes], bytes],
    reason: str,
) -> None:
    weights = tmp_path / "bad.npz"
    weights.write_bytes(make(pair_bytes))
    with pytest.raises(
        WeightsError, match=re.escape(f"weights file {weights} {NOT_A_MODEL}{reason}")
    ):
        create_app(Settings(router_weights=weights, database_url="none"))
    monkeypatch.setenv("TIERGATE_ROUTER_WEIGHTS", str(weights))
    monkeypatch.setenv("TIERGATE_DATABASE_URL", "none")
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tiergate: weights file {weights} {NOT_A_MODEL}{reason}")
    assert len(err.splitlines()) == 1


def test_linear_weights_file_still_loads(tmp_path: Path) -> None:
    """``--weights`` takes a linear weights.npz too (no ``coef``: read as LinearModel)."""
    path = tmp_path / "rows.jsonl"
    path.write_text(
        json.dumps({"id": "1", "prompt": "q", "correct": {A: False, B: True}})
        + "\n"
        + json.dumps({"id": "2", "prompt": "q q", "correct": {A: True, B: True}})
        + "\n"
    )
    weights = tmp_path / "weights.npz"
    weights.write_bytes(LinearModel(np.zeros(len(DENSE_NAMES)), np.zeros(HASH_DIM)).to_bytes())
    args = ["--weak", A, "--strong", B, "--weights", str(weights), "--bootstrap", "2"]
    assert main(["router", "eval", "--data", str(path), *args]) == 0


def test_start_up_with_good_weights(tmp_path: Path, pair_bytes: bytes) -> None:
    (tmp_path / "p.npz").write_bytes(pair_bytes)
    create_app(Settings(router_weights=tmp_path / "p.npz", database_url="none"))


def test_tiergate_serve_with_a_bad_weights_file_prints_one_line(tmp_path: Path) -> None:
    """The installed command, end to end: exit 2, one line, no traceback and no aiohttp
    'Unclosed client session' warning."""
    weights = tmp_path / "bad.npz"
    weights.write_bytes(b"PK\x03\x04 truncated")
    env = {**os.environ, "TIERGATE_ROUTER_WEIGHTS": str(weights), "TIERGATE_DATABASE_URL": "none"}
    env["PYTHONWARNINGS"] = "default"
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr == f"tiergate: weights file {weights} {NOT_A_MODEL}not an .npz archive (another format, or a truncated file)\n"  # fmt: skip


def test_np_load_never_allows_pickles() -> None:
    """Every ``np.load`` in the gateway and the policies passes ``allow_pickle=False``."""
    for path in [*ROOT.glob("gateway/**/*.py"), *ROOT.glob("policies/**/*.py")]:
        for call in re.findall(r"np\.load\(([^\n]*)", path.read_text()):
            assert "allow_pickle=False" in call, f"{path}: np.load({call})"


@pytest.mark.parametrize("pair", [True, False])
def test_the_router_auto_uses_is_named_in_the_metrics(
    tmp_path: Path, pair_bytes: bytes, pair: bool
) -> None:
    from fastapi.testclient import TestClient

    weights = None
    if pair:
        weights = tmp_path / "p.npz"
        weights.write_bytes(pair_bytes)
    with TestClient(create_app(Settings(router_weights=weights, database_url="none"))) as c:
        text = c.get("/metrics").text
    (line,) = [ln for ln in text.splitlines() if ln.startswith("tiergate_router_info{")]
    if pair:
        for label in ('kind="pair"', 'weak="weak-model"', 'strong="strong-model"', 'rows="24"'):
            assert label in line, line
    else:
        assert 'kind="generic"' in line, line
    assert line.endswith(" 1.0")
