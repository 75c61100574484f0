"""The dense task features are counted faster than one regex pass each, with the same values.

``policies.features`` skips a pattern when none of the substrings it needs is in the text
and counts literal math markers with ``str.count``. These tests hold it to the plain
definitions (one ``findall`` per pattern, ``str.isdigit`` per character) on hand-picked
texts and on generated ones, so a trained pair model sees exactly the features it was
trained on.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.features import DENSE_NAMES as _NAMES
from policies.features import from_text

_MATH = re.compile(
    r"\\frac|\\sqrt|\\sum|\\int|\^|\$|\b\d+\s*[-+*/=]\s*\d+|\bequation\b|\bprobability\b"
)
_REASON = re.compile(
    r"\bstep[- ]by[- ]step\b|\bprove\b|\bproof\b|\bderive\b|\bexplain why\b|\bjustify\b|"
    r"\breason\w*\b|\bthink carefully\b|\bshow that\b"
)
_CONSTRAINT = re.compile(
    r"\bmust\b|\bexactly\b|\bat least\b|\bat most\b|\bwithout\b|\bonly\b|\bconstraint|\bensure\b"
)
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def plain(scan: str) -> dict[str, float]:
    """The features the fast paths compute, by their plain definitions."""
    low = scan.lower()
    return {
        "math": min(len(_MATH.findall(scan)), 20) / 5,
        "reasoning": min(len(_REASON.findall(low)), 5) / 2,
        "constraints": min(len(_CONSTRAINT.findall(low)), 10) / 5,
        "numbers": min(len(_NUMBER.findall(scan)), 40) / 10,
        "digit_share": sum(map(str.isdigit, scan)) / max(len(scan), 1),
    }


def fast(scan: str) -> dict[str, float]:
    d = dict(zip(_NAMES, from_text(scan, ngrams=False).dense, strict=True))
    return {k: d[k] for k in ("math", "reasoning", "constraints", "numbers", "digit_share")}


CASES = [
    "",
    "hi",
    "Compute 3+4 and 12 * 7 = 84; then 5/0.",
    "Let $x^2 = 4$, so \\frac{1}{2} + \\sqrt{2} and \\sum_i \\int f; \\intequation",
    "The equation of probability: equations, probabilityx, EQUATION, Probability.",
    "Prove it step by step, step-by-step, stepwise; a proof; derive; explain why; justify",
    "Reasoning, reasons, reason; think carefully and show that it holds.",
    "You must answer exactly at least twice, at most thrice, without notes, only once; "
    "constraints ensure mustard onlyx.",
    "Numbers 1.5, 2., .3, 10000 and ٣ (Arabic-Indic) and ² (superscript) and ５ (fullwidth)",
    "3 $ 4 ^ 5 - 6\n7 =\n8",
    "\\sqrt\\sqrt\\sum$$^^",
    "x" * 3000 + " 1 + 1",
]


@pytest.mark.parametrize("scan", CASES)
def test_fast_feature_counts_equal_the_plain_definitions(scan: str) -> None:
    assert fast(scan[-2000:]) == plain(scan[-2000:])


_ALPHABET = st.sampled_from(
    list("abc xyz 0123456789 .-+*/=^$\\{}\n\t?")
    + ["frac", "sqrt", "sum", "int", "equation", "probability", "step", " by ", "prove"]
    + ["proof", "derive", "explain why", "justify", "reason", "think carefully", "show that"]
    + ["must", "exactly", "at least", "at most", "without", "only", "constraint", "ensure"]
    + ["٣", "²", "５", "é", "Σ"]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_ALPHABET, max_size=80).map("".join))
def test_fast_feature_counts_on_generated_text(scan: str) -> None:
    assert fast(scan) == plain(scan)
