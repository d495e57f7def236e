"""Role tasks: data for the four default roles (planner, coder, tool_caller, critic), in the
exact prompt layout the serving ingress builds (contract/prompt_layout.py).

An example's ``messages`` are the SHARED conversation; its ``meta`` carries the role's
``instructions`` and (tool_caller) its OpenAI ``tools``. data.encode_example_context turns
that into token ids with PromptBuilder.chat_prompt(turns, role_suffix(instructions, tools)),
i.e. the ids the ingress sends to the prefill pool, so a decoder is trained on the prompt it
is served with. Targets are plain assistant text (+ eos at tokenization); a tool call is
written by contract.prompt_layout.tool_call_text (Hermes format, vLLM's ``hermes`` parser).

Sources (all offline):
    planner      GSM8K train questions -> numbered step plans from the GSM8K solution lines
                 (calculator annotations stripped), ending "Answer: <number>". Eval: GSM8K
                 test, final number.
    coder        synthetic: small Python functions from templates (randomized names and
                 constants) with a one-line spec; eval runs hidden asserts (in-distribution).
    tool_caller  BFCL simple_python + multiple (bfcl-eval; held-out split by question-id
                 hash, as tasks_benchmarks.load_bfcl) as OpenAI tools + a Hermes call, plus
                 synthetic calls from tasks.py's tool generator. Eval: BFCL held-out, AST
                 match of the parsed Hermes call.
    critic       synthetic: a GSM8K solution (numbered steps, as an assistant turn) with one
                 injected arithmetic error -> "Step k is wrong: a*b = c, not d." Eval: the
                 critique names the right step.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from typing import Any

from contract.prompt_layout import tool_call_text
from training import scoring
from training.tasks import TOOL_SCHEMA, Example, Split, Task, _tool_example

ROLE_INSTRUCTIONS = {
    "planner": "You are the planner. Break the task into steps.",
    "coder": "You are the coder. Write the code for the current step.",
    "tool_caller": "You are the tool caller. Call the right function.",
    "critic": "You are the critic. Point out what is wrong, briefly.",
}
ROLE_TASKS = {f"role_{r}": r for r in ROLE_INSTRUCTIONS}


def _example(uid: str, messages: Sequence[dict[str, str]], role: str, target: str, reference: Any,
             tools: list[dict[str, Any]] | None = None, **meta: Any) -> Example:
    return Example(uid, tuple(messages), target, reference,
                   {"role": role, "instructions": ROLE_INSTRUCTIONS[role], "tools": tools, **meta})


def _subsample(items: list[Any], limit: int | None, seed: int) -> list[Any]:
    if limit is None or limit >= len(items):
        return items
    return random.Random(seed).sample(items, limit)


# ---------------------------------------------------------------- GSM8K helpers
_ANNOTATION = re.compile(r"<<([^=>]*)=([^>]*)>>")


def _gsm8k_rows(split: Split) -> list[dict[str, str]]:
    from training.tasks_benchmarks import GSM8K_DIR

    return [json.loads(x) for x in (GSM8K_DIR / f"{split}.jsonl").read_text().splitlines() if x]


def _solution_lines(answer: str) -> tuple[list[str], str]:
    """(the worked lines with their <<..>> annotations kept, the gold number)."""
    body, _, gold = answer.rpartition("####")
    return [x.strip() for x in body.strip().splitlines() if x.strip()], gold.strip()


def _strip(line: str) -> str:
    return _ANNOTATION.sub("", line)


def numbered(lines: Sequence[str]) -> str:
    return "\n".join(f"{i}. {x}" for i, x in enumerate(lines, 1))


# ---------------------------------------------------------------- planner
def load_planner(split: Split, limit: int | None, seed: int) -> list[Example]:
    out = []
    for i, row in enumerate(_gsm8k_rows(split)):
        lines, gold = _solution_lines(row["answer"])
        plan = numbered([_strip(x) for x in lines] + [f"Answer: {gold}"])
        out.append(_example(f"planner-{split}-{i}", [{"role": "user", "content": row["question"]}],
                            "planner", plan, gold))
    return _subsample(out, limit, seed if split == "train" else 0)


def score_planner(example: Example, completion: str) -> float:
    return scoring.score_number(completion, example.reference)


# ---------------------------------------------------------------- critic
def _wrong_value(rng: random.Random, value: float) -> float:
    if value == int(value) and abs(value) >= 10 and rng.random() < 0.3:
        return value * 10 if rng.random() < 0.5 else value + 10
    delta = rng.choice([-3, -2, -1, 1, 2, 3, 4, 5])
    return value + delta if value + delta >= 0 else value + abs(delta)


def _fmt(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:g}"


def _critic_example(rng: random.Random, uid: str, row: dict[str, str]) -> Example | None:
    lines, gold = _solution_lines(row["answer"])
    candidates = []
    for k, line in enumerate(lines):
        m = re.search(r"<<([^=>]*)=([^>]*)>>(\d[\d,]*(?:\.\d+)?)", line)
        if m is None:
            continue
        try:
            value = float(m.group(2))
        except ValueError:
            continue
        candidates.append((k, m, value))
    if not candidates:
        return None
    k, m, value = rng.choice(candidates)
    wrong = _wrong_value(rng, value)
    bad_line = _strip(line_with(lines[k], m, _fmt(wrong)))
    shown = [_strip(x) for x in lines]
    shown[k] = bad_line
    solution = numbered(shown + [f"Answer: {gold}"])
    expr = m.group(1).strip()
    target = f"Step {k + 1} is wrong: {expr} = {_fmt(value)}, not {_fmt(wrong)}."
    messages = [{"role": "user", "content": row["question"]}, {"role": "assistant", "content": solution}]
    return _example(uid, messages, "critic", target, k + 1)


def line_with(line: str, match: re.Match[str], shown: str) -> str:
    return line[: match.start()] + shown + line[match.end():]


def load_critic(split: Split, limit: int | None, seed: int) -> list[Example]:
    rng = random.Random(f"critic-{split}-{seed}")
    out = [ex for i, row in enumerate(_gsm8k_rows(split))
           if (ex := _critic_example(rng, f"critic-{split}-{i}", row)) is not None]
    return _subsample(out, limit, seed if split == "train" else 0)


def score_critic(example: Example, completion: str) -> float:
    m = re.search(r"[Ss]tep (\d+)", completion)
    return float(m is not None and int(m.group(1)) == example.reference)


# ---------------------------------------------------------------- coder (synthetic)
_NAMES = ["solve", "compute", "helper", "process", "transform", "calc", "do_it", "f", "run", "apply"]


def _coder_templates(rng: random.Random) -> list[tuple[str, str, str, list[str]]]:
    """(signature, spec, body, asserts) for each template, with fresh constants."""
    k = rng.randint(2, 9)
    c = rng.choice("aeiostxyz")
    n = rng.randint(2, 8)
    lo, hi = sorted(rng.sample(range(-20, 40), 2))
    return [
        ("(xs)", f"returns the sum of the numbers in the list xs that are divisible by {k}",
         f"    return sum(x for x in xs if x % {k} == 0)",
         [f"_f([{k}, 1, {2 * k}]) == {3 * k}", "_f([]) == 0"]),
        ("(s)", f"returns how many times the character {c!r} occurs in the string s",
         f"    return s.count({c!r})", [f"_f({(c * 3 + 'b')!r}) == 3", "_f('') == 0"]),
        ("(s)", "returns the words of the string s in reverse order, joined by single spaces",
         "    return ' '.join(reversed(s.split()))", ["_f('a b  c') == 'c b a'"]),
        ("(x)", f"clamps the number x to the range [{lo}, {hi}]",
         f"    return max({lo}, min({hi}, x))", [f"_f({lo - 5}) == {lo}", f"_f({hi + 5}) == {hi}", f"_f({lo}) == {lo}"]),
        ("(n)", "returns n factorial for a non-negative integer n",
         "    result = 1\n    for i in range(2, n + 1):\n        result *= i\n    return result",
         ["_f(0) == 1", "_f(5) == 120"]),
        ("(n)", "returns the n-th Fibonacci number, with fib(0) = 0 and fib(1) = 1",
         "    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a",
         ["_f(0) == 0", "_f(10) == 55"]),
        ("(s)", "returns True if the string s reads the same backwards, ignoring case",
         "    t = s.lower()\n    return t == t[::-1]", ["_f('Abba') is True", "_f('abc') is False"]),
        ("(words)", f"returns the strings in the list words that are longer than {n} characters",
         f"    return [w for w in words if len(w) > {n}]",
         [f"_f(['x' * {n}, 'y' * {n + 1}]) == ['{'y' * (n + 1)}']"]),
        ("(xs)", f"returns a new list with every number in xs multiplied by {k}",
         f"    return [x * {k} for x in xs]", [f"_f([1, 2]) == [{k}, {2 * k}]"]),
        ("(xs)", "returns the largest number in xs, or None if xs is empty",
         "    return max(xs) if xs else None", ["_f([3, 9, 2]) == 9", "_f([]) is None"]),
        ("(a, b)", "returns the greatest common divisor of two positive integers a and b",
         "    while b:\n        a, b = b, a % b\n    return a", ["_f(12, 18) == 6", "_f(7, 5) == 1"]),
        ("(s)", "returns the number of vowels (a, e, i, o, u) in the string s, ignoring case",
         "    return sum(1 for ch in s.lower() if ch in 'aeiou')", ["_f('Education') == 5"]),
        ("(xs)", "returns the running totals of the list xs",
         "    out, total = [], 0\n    for x in xs:\n        total += x\n        out.append(total)\n    return out",
         ["_f([1, 2, 3]) == [1, 3, 6]"]),
        ("(xs)", "removes duplicates from the list xs, keeping the first occurrence of each item in order",
         "    seen, out = set(), []\n    for x in xs:\n        if x not in seen:\n            seen.add(x)\n            out.append(x)\n    return out",
         ["_f([3, 1, 3, 2, 1]) == [3, 1, 2]"]),
        ("(c)", f"converts a temperature c in degrees Celsius to Fahrenheit, rounded to {n % 3} decimals",
         f"    return round(c * 9 / 5 + 32, {n % 3})", ["_f(100) == 212", "_f(0) == 32"]),
        ("(s)", f"returns the string s repeated {k} times, separated by {c!r}",
         f"    return {c!r}.join([s] * {k})", [f"_f('ab') == {c!r}.join(['ab'] * {k})"]),
        ("(d)", "returns the key of the dictionary d with the largest value, or None if d is empty",
         "    return max(d, key=d.get) if d else None", ["_f({'a': 1, 'b': 5}) == 'b'", "_f({}) is None"]),
        ("(xs)", f"returns how many numbers in xs are greater than {lo}",
         f"    return sum(1 for x in xs if x > {lo})", [f"_f([{lo}, {lo + 1}, {lo + 2}]) == 2"]),
    ]


def _coder_example(rng: random.Random, uid: str) -> Example:
    signature, spec, body, asserts = rng.choice(_coder_templates(rng))
    name = rng.choice(_NAMES) + rng.choice(["", "_values", "_items", "_result", "_it"])
    ask = rng.choice([
        "Write a Python function `{name}{sig}` that {spec}.",
        "Implement `{name}{sig}` in Python: it {spec}.",
        "Step: add a function `{name}{sig}` that {spec}.",
    ]).format(name=name, sig=signature, spec=spec)
    code = f"def {name}{signature}:\n{body}\n"
    target = f"```python\n{code}```"
    tests = "\n".join(f"assert {a.replace('_f(', name + '(')}" for a in asserts)
    return _example(uid, [{"role": "user", "content": ask}], "coder", target,
                    {"entry_point": name, "tests": tests})


def load_coder(split: Split, limit: int | None, seed: int) -> list[Example]:
    rng = random.Random(f"coder-{split}-{seed}")
    count = limit if limit is not None else (2000 if split == "train" else 200)
    return [_coder_example(rng, f"coder-{split}-{i}") for i in range(count)]


def score_coder(example: Example, completion: str) -> float:
    return scoring.score_program(scoring.extract_code(completion) + "\n\n" + example.reference["tests"] + "\n")


# ---------------------------------------------------------------- tool_caller
_JSON_TYPES = {"dict": "object", "float": "number", "tuple": "array", "list": "array", "int": "integer",
               "str": "string", "bool": "boolean", "any": None, "String": "string", "Boolean": "boolean"}


def json_schema(schema: Any) -> Any:
    """BFCL's python-flavoured parameter schemas -> JSON Schema (what an OpenAI client sends)."""
    if isinstance(schema, list):
        return [json_schema(x) for x in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "type" and isinstance(value, str) and value in _JSON_TYPES:
            if _JSON_TYPES[value] is None:
                continue
            out[key] = _JSON_TYPES[value]
        elif key == "properties" and isinstance(value, dict):
            out[key] = {k: json_schema(v) for k, v in value.items()}
        else:
            out[key] = json_schema(value)
    return out


def openai_tool(function: dict[str, Any]) -> dict[str, Any]:
    """One OpenAI ``tools`` entry, as the ingress dumps it (type, function{name, description,
    parameters})."""
    fn = {"name": function["name"]}
    if function.get("description"):
        fn["description"] = function["description"]
    fn["parameters"] = json_schema(function.get("parameters") or {"type": "object", "properties": {}})
    return {"type": "function", "function": fn}


SYNTHETIC_TOOLS = [
    openai_tool({"name": "get_weather", "description": "Current weather in a city.",
                 "parameters": {"type": "object", "properties": {
                     "city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                     "required": ["city", "unit"]}}),
    openai_tool({"name": "convert_currency", "description": "Convert an amount between currencies.",
                 "parameters": {"type": "object", "properties": {
                     "amount": {"type": "number"}, "source": {"type": "string", "description": "3-letter code"},
                     "target": {"type": "string", "description": "3-letter code"}},
                     "required": ["amount", "source", "target"]}}),
    openai_tool({"name": "set_timer", "description": "Start a timer with a label.",
                 "parameters": {"type": "object", "properties": {
                     "minutes": {"type": "integer"}, "label": {"type": "string"}}, "required": ["minutes", "label"]}}),
]
assert [t["function"]["name"] for t in SYNTHETIC_TOOLS] == [t["name"] for t in TOOL_SCHEMA]


def canonical_arguments(allowed: dict[str, list[Any]]) -> dict[str, Any]:
    """BFCL possible answers -> one call's arguments: first allowed value, optional args omitted."""
    return {key: values[0] for key, values in allowed.items() if values and values[0] != ""}


def load_tool_caller(split: Split, limit: int | None, seed: int, synthetic_share: float = 0.4) -> list[Example]:
    from training.tasks_benchmarks import BFCL_CATEGORIES, _bfcl_dir, _bfcl_held_out

    data = _bfcl_dir()
    out = []
    for category in BFCL_CATEGORIES:
        questions = [json.loads(x) for x in (data / f"BFCL_v4_{category}.json").read_text().splitlines() if x]
        answers = {row["id"]: row["ground_truth"][0] for row in
                   map(json.loads, (data / "possible_answer" / f"BFCL_v4_{category}.json").read_text().splitlines())}
        for q in questions:
            if (split == "test") != _bfcl_held_out(q["id"]) or q["id"] not in answers:
                continue
            truth = answers[q["id"]]
            name, allowed = next(iter(truth.items()))
            tools = [openai_tool(f) for f in q["function"]]
            out.append(_example(f"bfcl-{q['id']}", q["question"][0], "tool_caller",
                                tool_call_text(name, canonical_arguments(allowed)), truth, tools))
    if split == "test":  # the held-out score is BFCL's
        return _subsample(out, limit, 0)
    rng = random.Random(f"role-tool-{seed}")
    n_synth = round(len(out) * synthetic_share / (1 - synthetic_share))
    for i in range(n_synth):
        ex = _tool_example(rng, f"tool-{split}-{i}")
        name, allowed = next(iter(ex.reference.items()))
        out.append(_example(ex.uid, ex.messages[1:], "tool_caller",
                            tool_call_text(name, canonical_arguments(allowed)), ex.reference, SYNTHETIC_TOOLS))
    return _subsample(out, limit, seed)


_HERMES_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)


def parse_hermes_call(text: str) -> tuple[str, dict[str, Any]] | None:
    """The first ``<tool_call>{json}</tool_call>`` of a completion -> (name, arguments)."""
    m = _HERMES_CALL.search(text)
    if m is None:
        return None
    try:
        call = json.loads(m.group(1))
    except json.JSONDecodeError:
        return None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return None
    args = call.get("arguments", {})
    return (call["name"], args) if isinstance(args, dict) else None


def score_tool_caller(example: Example, completion: str) -> float:
    parsed = parse_hermes_call(completion)
    return 0.0 if parsed is None else score_call(example, *parsed)


def score_call(example: Example, name: str, args: dict[str, Any]) -> float:
    """1 when the call is one BFCL accepts: a function of the question's, every argument given
    an allowed value, every required argument present."""
    allowed = example.reference.get(name)
    if allowed is None:
        return 0.0
    for key, value in args.items():
        if key not in allowed or not any(scoring._same_value(value, ok) for ok in allowed[key]):
            return 0.0
    return float(all(key in args or "" in values for key, values in allowed.items()))


# ---------------------------------------------------------------- registry
_ROLE_TASKS = {
    "planner": (load_planner, score_planner),
    "coder": (load_coder, score_coder),
    "tool_caller": (load_tool_caller, score_tool_caller),
    "critic": (load_critic, score_critic),
}


def role_task(name: str) -> Task:
    load, score = _ROLE_TASKS[ROLE_TASKS[name]]
    return Task(name, load, score)
