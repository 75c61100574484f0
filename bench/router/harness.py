"""What task-focused features add: the same public tasks wrapped in agent harness text.

Each labelled row of a source becomes an agent-style conversation: a system prompt of random
length (2k-20k characters, as agent harnesses send), an earlier user turn that starts with
the harness's fixed instructions, an assistant tool call, then the task as a user turn that
repeats the same instructions before it, and finally a user message of tool results only.
The routers compared, by APGR on each pair:
- bare prompt length: the task alone, no harness (the reference);
- conversation length: every message's characters (what a naive length rule sees);
- last user message: the length of the last user message's text, whatever it carries
  (the rule before task-focused features: here a tool-result message, so empty);
- task features: ``extract_features`` + the generic score (newest turn with text of its
  own, reminders dropped, the repeated instructions stripped).

    nice -n 15 .venv/bin/python bench/router/harness.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DCROUTER_PAIRS, MMLU_PAIRS, ROOT, ZEROEVAL_PAIRS, apgr, load  # noqa: E402

from policies.features import extract_features  # noqa: E402
from policies.router.scorer import fallback_score  # noqa: E402

SYSTEM = "You are an autonomous coding agent. Use the tools to inspect and change files. "
INSTRUCTIONS = (
    "<system-reminder>Follow the repository rules: run the tests before you finish, never "
    "commit secrets, keep the change small.</system-reminder>\n"
    "Instructions: answer the task below; use tools when you need them.\n\n"
)


def conversation(prompt: str, rng: np.random.Generator) -> list[dict[str, object]]:
    system = SYSTEM * int(rng.integers(25, 250))
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": INSTRUCTIONS + "List the files in the repository."},
        {"role": "assistant", "content": "Calling the list tool."},
        {"role": "user", "content": INSTRUCTIONS + prompt},
        {"role": "assistant", "content": "Let me check the environment first."},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok " * 40}],
        },
    ]


def last_user_text_length(messages: list[dict[str, object]]) -> float:
    content = next(m["content"] for m in reversed(messages) if m["role"] == "user")
    if isinstance(content, str):
        return float(len(content))
    assert isinstance(content, list)
    return float(sum(len(p.get("text", "")) for p in content if isinstance(p, dict)))


def total_length(messages: list[dict[str, object]]) -> float:
    return float(sum(len(json.dumps(m["content"])) for m in messages))


def main() -> int:
    data = load()
    rng = np.random.default_rng(0)
    groups = {
        "mmlu_pro": (lambda s: s == "mmlu_pro", MMLU_PAIRS),
        "dcrouter": (lambda s: s.startswith("dcrouter/"), DCROUTER_PAIRS),
        "zeroeval": (lambda s: s.startswith("zeroeval/"), ZEROEVAL_PAIRS),
    }
    out = []
    for name, (pick, pairs) in groups.items():
        idx = np.flatnonzero([pick(str(s)) for s in data.source])
        rows = [data.rows[i] for i in idx]
        convs = [conversation(r.prompt, rng) for r in rows]
        scores = {
            "bare prompt length": np.array([float(len(r.prompt)) for r in rows]),
            "conversation length": np.array([total_length(c) for c in convs]),
            "last user message": np.array([last_user_text_length(c) for c in convs]),
            "task features": np.array([fallback_score(extract_features(c)) for c in convs]),
        }
        for weak, strong in pairs:
            res = {k: apgr(rows, v, weak, strong) for k, v in scores.items()}
            if any(v is None for v in res.values()):
                continue
            out.append({"group": name, "weak": weak, "strong": strong, **res})
            cells = "  ".join(f"{k} {v:.3f}" for k, v in res.items())
            print(f"{name:9} {weak[:24]:>24} -> {strong[:26]:26} {cells}", flush=True)
    path = ROOT / "var" / "bench" / "router_harness.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
