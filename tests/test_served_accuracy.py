"""bench/served_accuracy.py's scoring: the tool_caller is scored from the API's tool_calls
(JSON arguments, the tool's schema, a call BFCL accepts), and two runs pair per question."""

from __future__ import annotations

import json

from bench.served_accuracy import compare, score_tool_calls
from training.tasks import Example

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city.",
    "parameters": {"type": "object", "required": ["city"],
                   "properties": {"city": {"type": "string"},
                                  "unit": {"type": "string", "enum": ["c", "f"]}}}}}]
EXAMPLE = Example("q1", ({"role": "user", "content": "Weather in Paris?"},), "",
                  {"get_weather": {"city": ["Paris"], "unit": ["", "c"]}},
                  {"tools": TOOLS})


def call(name: str, arguments: object) -> list[dict]:
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return [{"id": "c1", "type": "function", "function": {"name": name, "arguments": text}}]


def test_a_right_call_scores_one():
    assert score_tool_calls(EXAMPLE, call("get_weather", {"city": "Paris"})) == (1.0, "ok")
    assert score_tool_calls(EXAMPLE, call("get_weather", {"city": "Paris", "unit": "c"}))[0] == 1.0


def test_each_way_to_be_wrong_scores_zero_and_says_why():
    assert score_tool_calls(EXAMPLE, []) == (0.0, "no tool call")
    assert score_tool_calls(EXAMPLE, call("get_time", {}))[1] == "unknown function 'get_time'"
    assert score_tool_calls(EXAMPLE, call("get_weather", "{city: Paris"))[1] == "arguments are not JSON"
    score, why = score_tool_calls(EXAMPLE, call("get_weather", {"city": "Paris", "unit": "k"}))
    assert score == 0.0 and why.startswith("schema: 'k' is not one of")
    assert score_tool_calls(EXAMPLE, call("get_weather", {"unit": "c"}))[1].startswith("schema:")
    assert score_tool_calls(EXAMPLE, call("get_weather", {"city": "Rome"})) == (0.0, "wrong values")


def _run(scores: dict[str, float]) -> dict:
    rows = [{"uid": u, "score": s} for u, s in scores.items()]
    k = sum(scores.values())
    return {"roles": {"critic": {"n": len(rows), "correct": k, "ci95": [0.0, 1.0], "rows": rows}}}


def test_compare_counts_the_questions_only_one_run_got_right():
    table = compare(_run({"a": 1, "b": 0, "c": 0, "d": 1}), _run({"a": 1, "b": 1, "c": 1, "d": 0}))
    assert table.splitlines()[-1] == "| critic | 4 | 2/4 | 0.00-1.00 | 3/4 | 0.00-1.00 | 1 | 2 |"
