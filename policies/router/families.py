"""Task families: the 57 public topics (policies/router/topics.npz) grouped by what the task
asks for, fixed by subject before any pair was scored.

A per-topic prior splits a team's labels into many small groups; where the gain between two
models follows a coarser line (code against mathematics, say), the topic priors are noise
around it, and a prior per family finds it from fewer labels (docs/routing.md).
"""

from __future__ import annotations

import io
from functools import lru_cache
from importlib import resources

import numpy as np

FAMILIES = ("math", "code", "science", "social", "trivia", "language", "logic")

_MATH = {
    "gsm8k",
    "mmlu_pro:math",
    "dcrouter/math",
    "zeroeval/math-l5",
    "bbh:multistep_arithmetic_two",
}
_CODE = {"dcrouter/human_eval", "dcrouter/mbpp", "zeroeval/crux", "mmlu_pro:computer science"}
_SCIENCE = {
    "mmlu_pro:biology",
    "mmlu_pro:chemistry",
    "mmlu_pro:physics",
    "mmlu_pro:engineering",
    "dcrouter/gpqa",
    "dcrouter/arc_challenge",
    "dcrouter/openbook_qa",
}
_SOCIAL = {"mmlu_pro:business", "mmlu_pro:economics", "mmlu_pro:psychology"}
_TRIVIA = {"dcrouter/natural_qa", "dcrouter/trivia_qa"}
_LANGUAGE = {"dcrouter/commonsense_qa", "dcrouter/commongen"} | {
    "bbh:" + t
    for t in (
        "causal_judgement",
        "date_understanding",
        "disambiguation_qa",
        "hyperbaton",
        "movie_recommendation",
        "ruin_names",
        "salient_translation_error_detection",
        "snarks",
        "sports_understanding",
    )
}


def family_of(topic: str) -> str:
    """The family of a topic name; the other BBH tasks and logic grids are ``logic``."""
    if topic.startswith("math:") or topic in _MATH:
        return "math"
    for name, members in (
        ("code", _CODE),
        ("science", _SCIENCE),
        ("social", _SOCIAL),
        ("trivia", _TRIVIA),
        ("language", _LANGUAGE),
    ):
        if topic in members:
            return name
    return "logic"


def family_matrix(names: list[str]) -> np.ndarray:
    """Topics x families, 1 where the topic belongs (each topic to exactly one)."""
    out = np.zeros((len(names), len(FAMILIES)))
    for i, name in enumerate(names):
        out[i, FAMILIES.index(family_of(name))] = 1.0
    return out


@lru_cache(maxsize=1)
def topic_names() -> tuple[str, ...]:
    """The shipped topics' names, in their order."""
    data = resources.files("policies.router").joinpath("topics.npz").read_bytes()
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return tuple(str(n) for n in z["names"])


@lru_cache(maxsize=1)
def shipped_families() -> np.ndarray:
    """``family_matrix`` of the shipped topics, in their order."""
    return family_matrix(list(topic_names()))
