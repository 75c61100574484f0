"""A linear model over dense features and hashed n-grams; weights ship with the package.

``LinearModel.predict`` is the predicted probability that a request is hard; it is no
longer the shipped score (see ``Router``), but ``router report`` still measures it.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from policies.errors import ConfigError
from policies.features import DENSE_NAMES, HASH_DIM, Features, extract_features, from_text
from policies.router.embed import StaticEmbedder, default_embedder
from policies.router.npz import meta_dict, read_arrays, require
from policies.router.scorer import PairModel, fallback_probability

WEIGHTS = "weights.npz"


class WeightsError(ConfigError):
    """A router weights file that cannot be used; the message is one line naming it."""


@dataclass(frozen=True, slots=True)
class Scores:
    hard: float
    features: Features


class LinearModel:
    def __init__(
        self, dense: np.ndarray, hashed: np.ndarray, meta: Mapping[str, Any] | None = None
    ) -> None:
        if dense.shape != (len(DENSE_NAMES),) or hashed.shape != (HASH_DIM,):
            raise ValueError("weights do not match the feature layout of this version")
        self.dense = [float(x) for x in dense]
        self.hashed = hashed.astype(np.float64)
        self._hashed_list = self.hashed.tolist()
        self.meta = dict(meta or {})

    def logit(self, f: Features) -> float:
        h = self._hashed_list
        dense = sum(w * x for w, x in zip(self.dense, f.dense, strict=True))
        return float(dense + sum(h[i] for i in f.hashed))

    def predict(self, f: Features) -> float:
        z = self.logit(f)
        return 1.0 / (1.0 + math.exp(-max(min(z, 30.0), -30.0)))

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        meta = np.array([f"{k}={v}" for k, v in self.meta.items()])
        np.savez_compressed(
            buf, dense=np.array(self.dense), hashed=self.hashed.astype(np.float32), meta=meta
        )
        return buf.getvalue()

    @staticmethod
    def from_bytes(data: bytes) -> LinearModel:
        z = read_arrays(data)
        require(z, "dense", "hashed", "meta")
        return LinearModel(z["dense"], z["hashed"].astype(np.float64), meta_dict(z["meta"]))


@lru_cache(maxsize=1)
def _shipped() -> LinearModel:
    data = resources.files("policies.router").joinpath(WEIGHTS).read_bytes()
    return LinearModel.from_bytes(data)


class Router:
    """Scores how much a request needs the strong option, in [0, 1].

    The generic router (``load_default``) is the fallback: the length of the newest user
    turn (``scorer.fallback_probability``); no learned weight ships, because none beat
    length on every held-out public source (docs/routing.md). A pair model trained on a
    team's own labels (``router train --data``, loaded with ``load``) adds the embedding of
    the task text. ``model`` (the older linear model) is kept for ``router report``.
    """

    def __init__(
        self,
        model: LinearModel | None = None,
        pair: PairModel | None = None,
        embedder: StaticEmbedder | None = None,
    ) -> None:
        self.model = model
        self.pair = pair
        self.embedder = embedder if pair is None or embedder is not None else default_embedder()
        meta = pair.meta if pair is not None else (model.meta if model is not None else {})
        self.meta: dict[str, Any] = dict(meta)

    @staticmethod
    def load_default() -> Router:
        return Router()

    @staticmethod
    def load(path: str | Path) -> Router:
        """A pair model written by ``router train --data`` (or linear weights.npz).

        Raises ``WeightsError`` (one line, naming the file) for a file that cannot be read
        or is not a model of this version; the model scores a probe request here, so that
        a file that loads but cannot score fails now rather than on a request."""
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise WeightsError(f"cannot read weights file {path}: {exc.strerror or exc}") from exc
        try:
            if "coef" in read_arrays(data):
                router = Router(pair=PairModel.from_bytes(data))
            else:
                router = Router(model=LinearModel.from_bytes(data))
            probe = router.score_features(from_text("Is this router model usable?"))
        except (ValueError, TypeError, IndexError) as exc:
            raise WeightsError(
                f"weights file {path} is not a tiergate router model: {exc}"
            ) from exc
        if not math.isfinite(probe):
            raise WeightsError(f"weights file {path} is not a tiergate router model: it scores NaN")
        return router

    def score_features(self, f: Features) -> float:
        if self.pair is not None and self.embedder is not None:
            return self.pair.predict(f, self.embedder.embed(f.task))
        if self.model is not None:
            return self.model.predict(f)
        return fallback_probability(f)

    def score(
        self, messages: Sequence[Mapping[str, Any]], *, tools: bool = False, json_mode: bool = False
    ) -> Scores:
        f = extract_features(
            messages, tools=tools, json_mode=json_mode, ngrams=self.model is not None
        )
        return Scores(self.score_features(f), f)
