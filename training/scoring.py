"""Task scorers: exact final number, function-call AST match, code run against its tests.

Pure functions of (completion text, reference); the evaluation process calls them.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import tempfile
from typing import Any

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def final_number(text: str) -> str | None:
    """The answer a GSM8K-style completion commits to: after '####', else the last number."""
    tail = text.split("####", 1)[1] if "####" in text else text
    found = _NUMBER.findall(tail)
    if not found:
        return None
    # After '####' the first number is the answer; without it, the last one is.
    raw = found[0] if "####" in text else found[-1]
    return _canonical_number(raw)


def _canonical_number(raw: str) -> str:
    raw = raw.replace(",", "")
    try:
        value = float(raw)
    except ValueError:
        return raw
    return str(int(value)) if value == int(value) else repr(value)


def score_number(completion: str, gold: str) -> float:
    got = final_number(completion)
    return float(got is not None and got == _canonical_number(gold))


def parse_call(text: str) -> tuple[str, dict[str, Any]] | None:
    """`name(a=1, b="x")` (BFCL's AST format, optionally in [...]) -> (name, kwargs)."""
    text = text.strip().split("\n")[0].strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1].strip()
    try:
        node = ast.parse(text, mode="eval").body
    except SyntaxError:
        return None
    if not isinstance(node, ast.Call) or node.args:
        return None
    try:
        args = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg}
    except ValueError:
        return None
    return ast.unparse(node.func), args


def score_call(completion: str, possible: dict[str, dict[str, list[Any]]]) -> float:
    """BFCL-style AST match: one function, every given arg among its possible values, every
    required arg present ('' in the possible list marks an arg as optional)."""
    parsed = parse_call(completion)
    if parsed is None:
        return 0.0
    name, args = parsed
    if name not in possible:
        return 0.0
    allowed = possible[name]
    for key, value in args.items():
        if key not in allowed or not any(_same_value(value, ok) for ok in allowed[key]):
            return 0.0
    for key, values in allowed.items():
        if key not in args and "" not in values:
            return 0.0
    return 1.0


def _same_value(got: Any, want: Any) -> bool:
    if isinstance(got, str) and isinstance(want, str):
        return got.strip().lower() == want.strip().lower()
    if isinstance(got, (int, float)) and isinstance(want, (int, float)):
        return float(got) == float(want)
    return got == want


def extract_code(completion: str) -> str:
    """The code of a completion: the first fenced block if there is one, else the text."""
    match = re.search(r"```(?:python)?\n(.*?)(?:```|$)", completion, flags=re.S)
    return match.group(1) if match else completion


def score_program(program: str, timeout_s: float = 10.0) -> float:
    """Runs a self-checking program in a subprocess; 1.0 if it exits 0 within the timeout."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "check.py")
        with open(path, "w") as f:
            f.write(program)
        try:
            done = subprocess.run(
                [sys.executable, path],
                cwd=tmp,
                capture_output=True,
                timeout=timeout_s,
                env={"PATH": os.environ.get("PATH", ""), "PYTHONHASHSEED": "0"},
            )
        except subprocess.TimeoutExpired:
            return 0.0
    return float(done.returncode == 0)
