"""Draw a Grafana dashboard's panels from a Prometheus server's data into one PNG.

Each panel's queries run through Prometheus's ``/api/v1/query_range`` API over the chosen
time span; the panels are laid out in a grid in the dashboard's order (top to bottom, left
to right) with the dashboard's titles and legend formats. Used for the picture of the Cost
dashboard in docs/metrics.md, rendered from the data of tests/deploy's Prometheus workload
(``TIERGATE_RENDER_DASHBOARD=docs/img/dashboard_cost.png``), or against any Prometheus:

    python scripts/render_dashboard.py --prometheus http://127.0.0.1:9090 \\
        --dashboard helm/tiergate/files/dashboards/cost.json --minutes 60 --out cost.png
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DASHBOARD = ROOT / "helm" / "tiergate" / "files" / "dashboards" / "cost.json"


@dataclass(frozen=True)
class Series:
    label: str
    times: list[float]
    values: list[float]


@dataclass(frozen=True)
class PanelData:
    title: str
    unit: str
    series: list[Series]


def expand(expr: str, values: dict[str, str] | None = None) -> str:
    """Grafana's ``$var`` / ``${var}`` in a query: the given value, else the All value ``.*``."""
    chosen = values or {}
    return re.sub(
        r"\$(?:{(\w+)}|(\w+))",
        lambda m: chosen.get(m.group(1) or m.group(2), ".*"),
        expr,
    )


def legend(fmt: str, metric: dict[str, str]) -> str:
    """Grafana's ``{{label}}`` legend format; without one, the label set."""
    if fmt:
        return re.sub(r"{{\s*(\w+)\s*}}", lambda m: metric.get(m.group(1), ""), fmt).strip()
    return ", ".join(f"{k}={v}" for k, v in sorted(metric.items())) or "value"


def query_range(
    client: httpx.Client, prometheus: str, expr: str, start: float, end: float, step: float
) -> list[dict]:
    r = client.get(
        prometheus.rstrip("/") + "/api/v1/query_range",
        params={"query": expr, "start": start, "end": end, "step": step},
    )
    body = r.json()
    if r.status_code != 200 or body.get("status") != "success":
        raise RuntimeError(f"Prometheus refused {expr!r}: {body}")
    result: list[dict] = body["data"]["result"]
    return result


def fetch(
    prometheus: str, dashboard: dict, start: float, end: float, step: float
) -> list[PanelData]:
    """Every panel's series over [start, end], in the dashboard's reading order."""
    ordered = sorted(dashboard["panels"], key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"]))
    out = []
    with httpx.Client(timeout=30) as client:
        for panel in ordered:
            series = []
            for target in panel["targets"]:
                expr = expand(target["expr"])
                for s in query_range(client, prometheus, expr, start, end, step):
                    points = [(float(t), float(v)) for t, v in s["values"]]
                    series.append(
                        Series(
                            legend(target.get("legendFormat", ""), s["metric"]),
                            [t for t, _ in points],
                            [v for _, v in points],
                        )
                    )
            unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
            out.append(PanelData(panel["title"], unit, series))
    return out


def _axis_label(unit: str) -> str:
    return {"currencyUSD": "USD", "percentunit": "fraction", "s": "seconds"}.get(unit, "")


def draw(title: str, panels: list[PanelData], out: Path, columns: int = 3) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.3 * rows), squeeze=False)
    t0 = min((s.times[0] for p in panels for s in p.series if s.times), default=0.0)
    for ax, panel in zip(axes.flat, panels, strict=False):
        ax.set_title(panel.title, fontsize=10)
        for s in panel.series:
            ax.plot([t - t0 for t in s.times], s.values, label=s.label[:40], linewidth=1.4)
        if not panel.series:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("seconds", fontsize=8)
        ax.set_ylabel(_axis_label(panel.unit), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4), useOffset=False)
        ax.yaxis.get_offset_text().set_fontsize(7)
        if panel.series:
            ax.legend(fontsize=7, loc="upper left")
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=13)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def render(
    prometheus: str,
    out: Path,
    *,
    dashboard: Path = DEFAULT_DASHBOARD,
    start: float,
    end: float,
    step: float = 1.0,
) -> list[PanelData]:
    spec = json.loads(dashboard.read_text())
    panels = fetch(prometheus, spec, start, end, step)
    draw(spec["title"], panels, out)
    return panels


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--prometheus", required=True, help="base URL, e.g. http://127.0.0.1:9090")
    ap.add_argument("--dashboard", type=Path, default=DEFAULT_DASHBOARD)
    ap.add_argument("--minutes", type=float, default=60.0, help="time span ending now")
    ap.add_argument("--step", type=float, default=15.0, help="seconds between points")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    end = time.time()
    panels = render(
        args.prometheus,
        args.out,
        dashboard=args.dashboard,
        start=end - args.minutes * 60,
        end=end,
        step=args.step,
    )
    empty = [p.title for p in panels if not p.series]
    print(f"wrote {args.out} ({len(panels)} panels, {len(empty)} without data)")
    for t in empty:
        print(f"  no data: {t}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
