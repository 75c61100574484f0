"""``tiergate router train | eval | report | labels export``: train the router, measure it,
write its docs, and export shadow-mode labels as training rows."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from gateway.cli_common import (
    TIME_FORMAT,
    CliError,
    database_url,
    iso_time,
    non_negative_float,
    non_negative_int,
    positive_int,
)
from gateway.cli_common import reported as _reported
from policies.features import from_text
from policies.router import Router
from policies.router.data import Row, accuracies, jsonl_rows, shared_rows, unique_rows
from policies.router.embed import default_embedder
from policies.router.evaluate import (
    PairResult,
    cross_category,
    cross_source,
    evaluate_pair,
    score_rows,
)
from policies.router.model import WEIGHTS
from policies.router.scorer import MIN_CV_ROWS, fit_pair, pair_label, scores_of
from policies.router.shadow import Label, training_row
from policies.router.train import DEFAULT_TARGET, TARGETS, train_rows

_TARGET_HELP = "what the model learns: difficulty (shipped), gain of the stronger model, or a mix"

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "routing"
PAIRS = (
    ("gemini-1.5-flash-002", "gemini-1.5-pro-002"),
    ("Meta-Llama-3_1-8B-Instruct", "Meta-Llama-3_1-70B-Instruct"),
    ("Qwen1.5-7B-Chat", "Qwen1.5-72B-Chat"),
    ("gpt-4o-2024-05-13", "gemini-3.1-pro-preview"),
)
PRO_SHARE, THINK_SHARE = 0.2, 0.3
PAIR_WEIGHTS = "router_pair.npz"


def _warn(message: str) -> None:
    print(f"tiergate: warning: {message}", file=sys.stderr)


def _cannot(path: Path, exc: OSError) -> CliError:
    at = f"{exc.filename}: " if exc.filename and Path(exc.filename) != path else ""
    return CliError(f"cannot write {path}: {at}{exc.strerror or exc}")


def _write(path: Path, data: bytes | str) -> None:
    """Write an output file (its directory created); ``CliError`` naming it and the reason."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, bytes):
            path.write_bytes(data)
        else:
            path.write_text(data, encoding="utf-8")
    except OSError as exc:
        raise _cannot(path, exc) from exc


def _writable(path: Path) -> Path:
    """``path`` if an output file can be written there (checked before any work is done,
    its directory created); ``CliError`` naming it and the reason otherwise."""
    if path.is_dir():
        raise CliError(f"cannot write {path}: Is a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _cannot(path, exc) from exc
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise CliError(f"cannot write {path}: permission denied")
    return path


def _names(rows: list[Row]) -> list[str]:
    return sorted({m for r in rows for m in r.correct})


def _listed(names: list[str]) -> str:
    return ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")


def _labelled(rows: list[Row]) -> str:
    """Which models the rows label, for a message saying the asked-for pair is not there."""
    names = _names(rows)
    return f"the rows label {_listed(names)}" if names else "no row has a 'correct' outcome"


def _read_rows(files: list[str]) -> list[Row]:
    """The rows of JSONL files, the first of each id kept (a warning counts the others)."""
    rows, dropped = unique_rows([r for f in files for r in jsonl_rows(Path(f))])
    if dropped:
        _warn(f"{dropped} row(s) in {', '.join(files)} repeat an earlier id; kept the first")
    if not rows:
        raise CliError(f"{', '.join(files)} has no rows")
    return rows


def _rows(args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    if args.shared_dir:
        rows += shared_rows(Path(args.shared_dir))
    for f in [*(args.data or ()), *(getattr(args, "labels", None) or ())]:
        rows += jsonl_rows(Path(f))
    if not rows:
        raise CliError("no training rows: give --shared-dir, --data and/or --labels")
    return rows


FEW_EVAL_ROWS = 30  # fewer rows than this make an evaluation's figures noise
CHEAPER = "cheaper"  # the pooled weak side of rows that compare one model with several


def pooled(rows: list[Row], weak: str | None, strong: str | None) -> tuple[list[Row], list[str]]:
    """Rows that each compare two models, one of them in every row, as the shadow export
    writes them (the strong option against whichever cheaper option ``auto`` chose): the
    other models pooled as one weak side, ``CHEAPER``, with the names pooled. Rows that do
    not have that shape, or a pair named otherwise, come back as they are (no names)."""
    if weak not in (None, CHEAPER):
        return rows, []
    names = _names(rows)
    pairs = [r for r in rows if len(r.correct) == 2]  # rows of one side only are left out
    if (weak is None and len(names) <= 2) or not pairs:
        return rows, []
    if any(len(r.correct) > 2 for r in rows):
        return rows, []
    common = set(pairs[0].correct).intersection(*(r.correct for r in pairs[1:]))
    side = strong if strong in common else next(iter(common)) if len(common) == 1 else None
    if side is None:
        return rows, []
    out = [_pool(r, side) for r in rows]
    return out, sorted({m for r in pairs for m in r.correct} - {side})


def _pool(r: Row, side: str) -> Row:
    """``r`` with every model but ``side`` named ``CHEAPER`` (a row of one side only keeps
    that side, renamed so: it is left out of the pair all the same)."""
    return replace(r, correct={(k if k == side else CHEAPER): v for k, v in r.correct.items()})


def _dropped(rows: list[Row], kept: int, weak: str, strong: str) -> None:
    """Say how many rows a pair leaves out (they label one side only, or none)."""
    if kept < len(rows):
        _warn(
            f"{len(rows) - kept} of {len(rows)} row(s) do not label both {weak} and {strong} "
            "(no 'correct' for one side or both): left out"
        )


def pair_names(
    rows: list[Row], weak: str | None, strong: str | None, where: str = "the rows"
) -> tuple[str, str]:
    """The (weak, strong) pair of labelled rows: as given, or the two names the rows label,
    the one right more often being the strong one."""
    if weak and strong:
        if weak == strong:
            raise CliError(f"--weak and --strong name the same model ({weak}); a pair needs two")
        return weak, strong
    names = _names(rows)
    if weak or strong:  # one side named: the other is the one other model labelled
        given = weak or strong
        if given not in names:
            raise CliError(f"{where} labels no model {given!r} (it labels {_listed(names)})")
        others = [m for m in names if m != given]
        if len(others) != 1:
            raise CliError(
                f"{where} label {len(names)} models ({_listed(names)}); "
                "name both sides with --weak and --strong"
            )
        return (given, others[0]) if weak else (others[0], given)
    if not names:
        raise CliError(f"{where} has no labelled rows (no row has a 'correct' outcome)")
    if len(names) == 1:
        raise CliError(f"{where} labels one model only ({names[0]}); a pair needs two")
    if len(names) != 2:
        raise CliError(
            f"{where} label {len(names)} models ({_listed(names)}); "
            "name the pair with --weak and --strong"
        )
    acc = accuracies(rows)
    if acc[names[0]] == acc[names[1]]:
        if set(names) == {"weak", "strong"}:
            return "weak", "strong"
        _warn(
            f"{names[0]} and {names[1]} are right equally often in {where}: took {names[1]} as "
            "the strong side; say which with --weak or --strong"
        )
    lo, hi = sorted(names, key=lambda m: (acc[m], m))
    return lo, hi


def _few_labels(n: int, y: list[float]) -> str | None:
    """Why the pair model will keep the generic prior whatever the rows say, if it will."""
    if n < MIN_CV_ROWS:
        return f"only {n} labelled row(s) (cross-validation needs {MIN_CV_ROWS})"
    if len(set(y)) == 1:
        same = {1.0: "only the strong side right", -1.0: "only the weak side right"}
        return f"every labelled row has the same outcome ({same.get(y[0], 'both sides alike')})"
    return None


def _train_pair(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out = _writable(out if out.suffix == ".npz" else out / PAIR_WEIGHTS)
    files = [*(args.data or ()), *(args.labels or ())]
    where = ", ".join(files)
    rows, cheaper = pooled(_read_rows(files), args.weak, args.strong)
    weak, strong = pair_names(rows, args.weak, args.strong, where)
    both = [r for r in rows if weak in r.correct and strong in r.correct]
    if not both:
        raise CliError(f"{where} has no labelled rows for pair {weak}/{strong} ({_labelled(rows)})")
    if cheaper:
        print(
            f"the rows compare {strong if weak == CHEAPER else weak} with {len(cheaper)} other "
            f"option(s) ({_listed(cheaper)}): pooled as one side, {CHEAPER!r}"
        )
    _dropped(rows, len(both), weak, strong)
    feats = [r.features or from_text(r.prompt) for r in both]
    embedder = default_embedder()
    emb = np.stack([embedder.embed(f.task) for f in feats])
    y = [pair_label(r.correct[weak], r.correct[strong]) for r in both]
    few = _few_labels(len(both), y)
    if few:
        _warn(f"{few} for pair {weak}/{strong}: the model keeps the generic prior (length)")
    model = fit_pair(feats, emb, y)
    model.meta.update(weak=weak, strong=strong)
    if model.meta["chosen"] != "prior":
        # Lines for the first requests, until `auto` has seen enough of its own traffic:
        # the configured shares of these rows. A model that kept the prior is the generic
        # router and keeps its lines (the rows may all be alike).
        scores = scores_of(model, feats, emb)
        probs = 1 / (1 + np.exp(-(scores - model.center) / model.spread))
        model.meta.update(
            prior_pro=float(np.quantile(probs, 1 - PRO_SHARE)),
            prior_think=float(np.quantile(probs, 1 - PRO_SHARE - THINK_SHARE)),
        )
    _write(out, model.to_bytes())
    print(
        f"pair {weak} -> {strong}: {len(both)} labelled rows "
        f"(strong alone right {sum(v > 0 for v in y)}, weak alone right {sum(v < 0 for v in y)})\n"
        f"chosen: {model.meta['chosen']}  (cross-validated gain over random per row: "
        f"{model.meta['cv_excess_gain']})\n"
        "  (a candidate replaces the prior only by the largest lead over it less two standard "
        "errors across folds, not by its mean gain alone)\n"
        f"-> {out} ({out.stat().st_size} bytes); serve it with TIERGATE_ROUTER_WEIGHTS={out}"
    )
    return 0


def _train(args: argparse.Namespace) -> int:
    if args.data or args.labels:
        return _train_pair(args)
    out = Path(args.out)
    _writable(out / WEIGHTS)
    rows = _rows(args)
    model = train_rows(rows, steps=args.steps, target=args.target, l2_hashed=args.l2_hashed)
    scores = np.array(score_rows(model, rows))
    model.meta.update(
        prior_pro=float(np.quantile(scores, 1 - PRO_SHARE)),
        prior_think=float(np.quantile(scores, 1 - PRO_SHARE - THINK_SHARE)),
        sources=",".join(sorted({r.source for r in rows})),
    )
    _write(out / WEIGHTS, model.to_bytes())
    print(
        f"trained on {len(rows)} rows -> {out / WEIGHTS} ({(out / WEIGHTS).stat().st_size} bytes)"
    )
    return 0


def _result_dict(r: PairResult) -> dict[str, Any]:
    return {
        "weak": r.weak,
        "strong": r.strong,
        "router": r.router,
        "rows": r.rows,
        "weak_acc": r.weak_acc,
        "strong_acc": r.strong_acc,
        "apgr": r.apgr,
        "cpt50": r.cpt50,
        "cpt80": r.cpt80,
        "ci95": r.ci,
        "pgr": list(r.pgr),
    }


def _eval(args: argparse.Namespace) -> int:
    router = Router.load(args.weights) if args.weights else Router.load_default()
    rows = _read_rows([args.data])
    if args.strong is None:  # as train: the side every row labels, or the pair the rows name
        rows, cheaper = pooled(rows, args.weak, None)
        weak, strong = pair_names(rows, args.weak, None, args.data)
    else:
        rows, cheaper = pooled(rows, args.weak or CHEAPER, args.strong)
        weak, strong = args.weak or CHEAPER, args.strong
    if cheaper:  # on stderr: --json keeps stdout to the results
        print(
            f"tiergate: {strong} against {_listed(cheaper)}, pooled as {CHEAPER!r}",
            file=sys.stderr,
        )
    kept = sum(weak in r.correct and strong in r.correct for r in rows)
    if not kept:
        raise CliError(
            f"no rows in {args.data} label both {weak!r} and {strong!r}, nothing to "
            f"score ({_labelled(rows)})"
        )
    _dropped(rows, kept, weak, strong)
    if kept < FEW_EVAL_ROWS:
        _warn(f"only {kept} labelled row(s): APGR and its interval on so few say little")
    scores = {r.id: router.score_features(r.features or from_text(r.prompt)) for r in rows}
    if args.scores_out:
        lines = (json.dumps({"id": r.id, "score": scores[r.id]}) + "\n" for r in rows)
        _write(Path(args.scores_out), "".join(lines))
    try:
        results = evaluate_pair(rows, scores, weak, strong, boot=args.bootstrap)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    if args.json:
        print(json.dumps([_result_dict(r) for r in results], indent=2))
    else:
        print(_table(results))
    return 0


def _table(results: list[PairResult]) -> str:
    lines = [f"{'router':12} {'rows':>6} {'APGR':>6} {'95% CI':>15} {'CPT50':>6} {'CPT80':>6}"]
    for r in results:
        ci = "-"  # no bootstrap (--bootstrap 0), or no resample where the strong side wins
        if "apgr" in r.ci:
            lo, hi = r.ci["apgr"]
            ci = f"[{lo:.3f}, {hi:.3f}]"
        lines.append(
            f"{r.router:12} {r.rows:>6} {r.apgr:6.3f} {ci:>15} {r.cpt50:6.3f} {r.cpt80:6.3f}"
        )
    return "\n".join(lines)


def _report(args: argparse.Namespace) -> int:
    rows = shared_rows(Path(args.shared_dir))
    if not rows:
        raise CliError(
            f"no public routing data in {args.shared_dir}: `router report` evaluates on the "
            "public datasets (MMLU-Pro, MATH, GSM8K, BBH: see docs/routing.md); give "
            "--shared-dir DIR with their files"
        )
    out: dict[str, Any] = {}
    plots: dict[str, list[PairResult]] = {}
    for split, scores in (
        (
            "cross-category",
            cross_category(rows, steps=args.steps, target=args.target, l2_hashed=args.l2_hashed),
        ),
        (
            "cross-source",
            cross_source(rows, steps=args.steps, target=args.target, l2_hashed=args.l2_hashed),
        ),
    ):
        out[split] = []
        for weak, strong in PAIRS:
            results = evaluate_pair(rows, scores, weak, strong, boot=args.bootstrap)
            out[split] += [_result_dict(r) for r in results]
            if split == "cross-category" and weak.startswith("gemini-1.5"):
                plots[f"{weak} -> {strong}"] = results
            print(f"[{split}] {weak} -> {strong}\n{_table(results)}\n")
    _write(Path(args.json_out), json.dumps(out, indent=2))
    if args.plot:
        _plot(plots, Path(args.plot))
    return 0


def _plot(plots: dict[str, list[PairResult]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for title, results in plots.items():
        for r in results:
            shares = np.linspace(0, 1, len(r.pgr))
            quality = [r.weak_acc + p * (r.strong_acc - r.weak_acc) for p in r.pgr]
            ax.plot(
                shares * 100,
                np.array(quality) * 100,
                marker="o",
                label=f"{r.router} (APGR {r.apgr:.3f})",
            )
        ax.set_title(f"Held-out MMLU-Pro categories: {title}", fontsize=9)
    ax.set_xlabel("share of requests sent to the strong model (%) ~ cost")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


async def export_labels(
    database_url: str, out: Path, *, since: datetime | None = None, team: str | None = None
) -> tuple[int, int]:
    """Write shadow-mode labels as training rows; returns (written, skipped as invalid)."""
    from sqlalchemy import select

    from gateway.db.engine import make_engine, make_sessions
    from gateway.db.models import RouterLabel

    engine = make_engine(database_url)
    written = skipped = 0
    try:
        q = select(RouterLabel).order_by(RouterLabel.id)
        if since is not None:
            q = q.where(RouterLabel.ts >= since)
        out.parent.mkdir(parents=True, exist_ok=True)
        async with make_sessions(engine)() as session:
            if team is not None:
                q = q.where(RouterLabel.team_id == await _team_id(session, team))
            with out.open("w", encoding="utf-8") as fh:
                for r in (await session.scalars(q)).all():
                    row = training_row(
                        Label(
                            r.request_id,
                            r.team_id,
                            r.weak,
                            r.strong,
                            r.verdict,
                            r.better,
                            r.weak_ok,
                            r.strong_ok,
                            r.prompt,
                            r.features,
                        )
                    )
                    if row is None:
                        skipped += 1
                        continue
                    fh.write(json.dumps(row) + "\n")
                    written += 1
    finally:
        await engine.dispose()
    return written, skipped


async def _team_id(session: Any, team: str) -> str:
    """The id of the team ``team`` names (by id or by name); a CliError if none does."""
    from sqlalchemy import or_, select

    from gateway.db.models import Team

    found = (
        await session.scalars(select(Team.id).where(or_(Team.id == team, Team.name == team)))
    ).all()
    if not found:
        raise CliError(f"no team {team!r} (give a team's name or id: `tiergate teams list`)")
    return str(found[0])


def _labels_export(args: argparse.Namespace) -> int:
    url = database_url(args)
    written, skipped = asyncio.run(
        export_labels(url, Path(args.out), since=args.since, team=args.team)
    )
    print(f"wrote {written} label rows to {args.out} ({skipped} without a valid verdict skipped)")
    return 0


_STEPS_HELP = "training steps, 1 or more (default: 300)"
_BOOT_HELP = "bootstrap resamples for the 95%% CI of APGR (default: 200; 0: no CI, shown as -)"
_L2_HELP = (
    "L2 penalty on the hashed n-gram weights (default: the same 1e-4 as the dense ones); "
    "see bench/router/validate_sources.py"
)


def add_router_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    router = sub.add_parser("router", help="train and evaluate the request router")
    rsub = router.add_subparsers(dest="router_command", required=True)
    t = rsub.add_parser(
        "train",
        help="learn a pair from labelled JSONL rows (--data/--labels), or, without them, "
        "the linear model on the public data (measured by `router report`, not shipped)",
    )
    t.add_argument("--shared-dir", default=str(SHARED) if SHARED.exists() else None)
    t.add_argument(
        "--data",
        action="append",
        help="JSONL rows {id, prompt|messages|features, correct: {weak: bool, strong: bool}} "
        "(outcomes true/false or 1/0; a repeated id keeps its first row): "
        "learn that pair, starting from the generic router",
    )
    t.add_argument(
        "--labels",
        action="append",
        help="JSONL from `router labels export` (shadow-mode labels), added as rows",
    )
    t.add_argument("--weak", help="the weak side's name in `correct` (default: inferred)")
    t.add_argument("--strong", help="the strong side's name in `correct` (default: inferred)")
    t.add_argument(
        "--out",
        default=str(ROOT / "policies" / "router"),
        help=f"a directory (weights.npz, or {PAIR_WEIGHTS} with --data) or a .npz file",
    )
    t.add_argument("--steps", type=positive_int, default=300, help=_STEPS_HELP)
    t.add_argument("--target", choices=TARGETS, default=DEFAULT_TARGET, help=_TARGET_HELP)
    t.add_argument("--l2-hashed", type=non_negative_float, help=_L2_HELP)
    t.set_defaults(func=_reported(_train))
    e = rsub.add_parser("eval", help="RouteLLM metrics of the router on labelled rows")
    e.add_argument("--data", required=True)
    e.add_argument(
        "--weak",
        help=f"the weak side's name in `correct` (default, or {CHEAPER!r}: every model the rows "
        "compare with --strong, pooled, as in the shadow export)",
    )
    e.add_argument(
        "--strong", help="the strong side's name in `correct` (default: inferred, as by train)"
    )
    e.add_argument("--weights", help="a pair model or weights.npz (default: the generic router)")
    e.add_argument("--json", action="store_true")
    e.add_argument("--scores-out")
    e.add_argument("--bootstrap", type=non_negative_int, default=200, help=_BOOT_HELP)
    e.set_defaults(func=_reported(_eval))
    r = rsub.add_parser("report", help="held-out evaluation on the public data (docs/routing.md)")
    r.add_argument("--shared-dir", default=str(SHARED))
    r.add_argument("--steps", type=positive_int, default=300, help=_STEPS_HELP)
    r.add_argument("--target", choices=TARGETS, default=DEFAULT_TARGET, help=_TARGET_HELP)
    r.add_argument("--bootstrap", type=non_negative_int, default=200, help=_BOOT_HELP)
    r.add_argument("--l2-hashed", type=non_negative_float, help=_L2_HELP)
    r.add_argument("--json-out", default=str(ROOT / "var" / "bench" / "routing.json"))
    r.add_argument("--plot", default=str(ROOT / "docs" / "img" / "routing_pgr.png"))
    r.set_defaults(func=_reported(_report))
    labels = rsub.add_parser("labels", help="shadow-mode labels stored by the gateway")
    lsub = labels.add_subparsers(dest="labels_command", required=True)
    x = lsub.add_parser("export", help="write labels as training JSONL for `router train`")
    x.add_argument("--out", required=True)
    x.add_argument("--database-url", help="default: TIERGATE_DATABASE_URL / settings")
    x.add_argument("--since", type=iso_time, help=f"labels from this time on: {TIME_FORMAT}")
    x.add_argument("--team", help="only this team's labels (its name or id)")
    x.set_defaults(func=_reported(_labels_export))


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m gateway.cli_router")
    add_router_commands(p.add_subparsers(dest="command", required=True))
    a = p.parse_args()
    sys.exit(a.func(a))
