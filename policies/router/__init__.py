"""The router: a small linear model over cheap features, trained on public outcome data."""

from policies.router.model import LinearModel, Router, Scores

__all__ = ["LinearModel", "Router", "Scores"]
