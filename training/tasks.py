"""Tasks as data: examples (chat context + target response + scoring reference) and scorers.

A task is chosen by name in the training/eval config. The synthetic tasks (multi-step
arithmetic with an exact answer, fixed-schema tool calls) are generated from a seed so that
tests and quick studies need no files; the benchmarks live in tasks_benchmarks.py.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from training import scoring

Split = Literal["train", "test"]
Message = dict[str, str]


@dataclass(frozen=True)
class Example:
    uid: str
    messages: tuple[Message, ...]  # the chat context, ending with a user turn
    target: str  # the response trained on (eos is added at tokenization)
    reference: Any  # what the scorer compares a completion with
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Task:
    name: str
    load: Callable[[Split, int | None, int], list[Example]]  # (split, limit, seed)
    score: Callable[[Example, str], float]
    trainable: bool = True


# ---------------------------------------------------------------- synthetic arithmetic
_OPS = {"add": ("+", lambda a, b: a + b), "subtract": ("-", lambda a, b: a - b), "multiply by": ("*", lambda a, b: a * b)}


def _arith_steps(
    rng: random.Random, start: int, n_steps: int
) -> tuple[list[str], list[str], int, tuple[str, int]]:
    """Random steps on a running value: (question phrases, worked lines, result, last step)."""
    value, phrases, lines = start, [], []
    verb, operand = "add", 0
    for _ in range(n_steps):
        verb = rng.choice(list(_OPS))
        operand = rng.randint(2, 5) if verb == "multiply by" else rng.randint(1, 30)
        symbol, fn = _OPS[verb]
        new = fn(value, operand)
        phrases.append(f"{verb.capitalize()} {operand}.")
        lines.append(f"{value} {symbol} {operand} = {new}")
        value = new
    return phrases, lines, value, (verb, operand)


def _arith_example(rng: random.Random, uid: str, multi_turn: bool) -> Example:
    start = rng.randint(1, 20)
    phrases, lines, result, _ = _arith_steps(rng, start, rng.randint(2, 3))
    question = f"Start with {start}. " + " ".join(phrases) + " What is the result?"
    answer = "\n".join(lines) + f"\n#### {result}"
    messages: tuple[Message, ...] = ({"role": "user", "content": question},)
    if not multi_turn:
        return Example(uid, messages, answer, str(result), {"turns": 1})
    follow_phrases, follow_lines, final, (verb, operand) = _arith_steps(rng, result, 1)
    follow = f"Now {follow_phrases[0][0].lower()}{follow_phrases[0][1:]} What is the new result?"
    messages = messages + ({"role": "assistant", "content": answer}, {"role": "user", "content": follow})
    meta = {"turns": 2, "followup": follow, "op": verb, "operand": operand}
    return Example(uid, messages, "\n".join(follow_lines) + f"\n#### {final}", str(final), meta)


def load_arithmetic(split: Split, limit: int | None, seed: int, multi_turn_fraction: float = 0.0) -> list[Example]:
    # Disjoint random streams per split; collisions are possible but rare and harmless.
    rng = random.Random(f"arith-{split}-{seed}")
    count = limit if limit is not None else (2000 if split == "train" else 200)
    return [_arith_example(rng, f"arith-{split}-{i}", rng.random() < multi_turn_fraction) for i in range(count)]


def apply_followup(previous: str, example: Example) -> str | None:
    """Gold answer of a follow-up turn computed from the answer actually given before it."""
    number = scoring.final_number(previous)
    if number is None or "." in number:
        return None
    return str(_OPS[example.meta["op"]][1](int(number), example.meta["operand"]))


# ---------------------------------------------------------------- synthetic tool calls
TOOL_SCHEMA = [
    {"name": "get_weather", "parameters": {"city": "string", "unit": "celsius|fahrenheit"}},
    {"name": "convert_currency", "parameters": {"amount": "number", "source": "3-letter code", "target": "3-letter code"}},
    {"name": "set_timer", "parameters": {"minutes": "integer", "label": "string"}},
]
_CITIES = ["Paris", "Tokyo", "Lima", "Oslo", "Cairo", "Seoul", "Austin", "Porto", "Delhi", "Quito"]
_CURRENCIES = ["USD", "EUR", "JPY", "KRW", "GBP", "INR", "CHF"]
_LABELS = ["tea", "pasta", "laundry", "meeting", "bread", "nap"]
TOOL_SYSTEM = (
    "You call tools. Available functions: " + json.dumps(TOOL_SCHEMA)
    + ". Reply with exactly one call like name(arg=value, ...)."
)


def _tool_example(rng: random.Random, uid: str) -> Example:
    kind = rng.randrange(3)
    if kind == 0:
        city, unit = rng.choice(_CITIES), rng.choice(["celsius", "fahrenheit"])
        question = f"How warm is it in {city} right now? Give me {unit}."
        name, args = "get_weather", {"city": city, "unit": unit}
    elif kind == 1:
        amount = rng.randint(1, 900)
        source, target = rng.sample(_CURRENCIES, 2)
        question = f"How much is {amount} {source} in {target}?"
        name, args = "convert_currency", {"amount": amount, "source": source, "target": target}
    else:
        minutes, label = rng.randint(1, 90), rng.choice(_LABELS)
        question = f"Remind me about the {label} in {minutes} minutes."
        name, args = "set_timer", {"minutes": minutes, "label": label}
    call = f"{name}(" + ", ".join(f"{k}={v!r}" for k, v in args.items()) + ")"
    messages = ({"role": "system", "content": TOOL_SYSTEM}, {"role": "user", "content": question})
    return Example(uid, messages, call, {name: {k: [v] for k, v in args.items()}})


def load_tool_calls(split: Split, limit: int | None, seed: int) -> list[Example]:
    rng = random.Random(f"tool-{split}-{seed}")
    count = limit if limit is not None else (1000 if split == "train" else 200)
    return [_tool_example(rng, f"tool-{split}-{i}") for i in range(count)]


# ---------------------------------------------------------------- validation split
def _uid_rank(example: Example) -> str:
    return hashlib.sha256(example.uid.encode()).hexdigest()


def split_validation(examples: list[Example], size: int) -> tuple[list[Example], list[Example]]:
    """(train, validation): the ``size`` examples whose uid hashes lowest are held back. By
    uid, not position or seed, so every run of a study holds back the same questions."""
    held = {ex.uid for ex in sorted(examples, key=_uid_rank)[:size]}
    return [ex for ex in examples if ex.uid not in held], [ex for ex in examples if ex.uid in held]


def training_examples(task: Task, limit: int | None, seed: int, validation_size: int = 0) -> list[Example]:
    """The train split less the validation questions, then ``limit`` of them (seeded)."""
    if not validation_size:
        return task.load("train", limit, seed)
    train, _ = split_validation(task.load("train", None, seed), validation_size)
    if limit is None or limit >= len(train):
        return train
    return random.Random(seed).sample(train, limit)


def validation_examples(task: Task, validation_size: int, seed: int = 0) -> list[Example]:
    return split_validation(task.load("train", None, seed), validation_size)[1]


# ---------------------------------------------------------------- registry
def _score_number(example: Example, completion: str) -> float:
    return scoring.score_number(completion, example.reference)


def _score_call(example: Example, completion: str) -> float:
    return scoring.score_call(completion, example.reference)


def get_task(name: str, multi_turn_fraction: float = 0.0) -> Task:
    """The task named in a config; benchmarks import lazily (their packages are optional)."""
    if name == "synthetic_arith":
        return Task(name, lambda s, n, seed: load_arithmetic(s, n, seed, multi_turn_fraction), _score_number)
    if name == "synthetic_tool":
        return Task(name, load_tool_calls, _score_call)
    if name.startswith("role_"):
        from training.roles import role_task

        return role_task(name)
    from training import tasks_benchmarks

    if name == "gsm8k":
        return Task(name, tasks_benchmarks.load_gsm8k, _score_number)
    if name == "bfcl":
        return Task(name, tasks_benchmarks.load_bfcl, _score_call)
    if name == "humaneval":
        return Task(name, tasks_benchmarks.load_humaneval, tasks_benchmarks.score_humaneval, trainable=False)
    raise ValueError(f"unknown task {name!r}")
