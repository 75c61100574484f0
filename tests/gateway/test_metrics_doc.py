"""docs/metrics.md names every metric the gateway exports, as Prometheus exposes it."""

from __future__ import annotations

from pathlib import Path

from gateway.metrics import Metrics

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


def test_every_exported_metric_is_in_the_metrics_table() -> None:
    doc = DOC.read_text()
    exposed = []
    for family in Metrics().registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        exposed.append(name)
    missing = [n for n in exposed if f"`{n}`" not in doc]
    assert exposed and not missing, f"not in docs/metrics.md: {missing}"
