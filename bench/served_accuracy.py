"""Served accuracy per role: each role's held-out examples (training/roles.py, the split the
adapters never saw) sent through a running app's OpenAI API with the official `openai` client,
greedy, and scored as training scores them; the tool_caller by the tool_calls the API returns
(the arguments must parse as JSON, satisfy the tool's JSON schema and be a call BFCL accepts),
never by reading raw text. One JSON file per app; --compare pairs two of them per question.

    python -m bench.served_accuracy --url http://127.0.0.1:8000 --out runs/acc/lora.json
    python -m bench.served_accuracy --compare runs/acc/base.json runs/acc/lora.json

The same examples and settings as training/configs/role_eval_<role>.yaml (eval_limit 30,
seed 0, the same max tokens), so the served numbers sit beside the HF-path ones.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

# role -> max tokens, as in training/configs/role_eval_<role>.yaml
MAX_TOKENS = {"planner": 192, "coder": 128, "tool_caller": 96, "critic": 48}


def score_tool_calls(example: Any, tool_calls: list[dict[str, Any]]) -> tuple[float, str]:
    """(score, why) for the API's tool_calls: the first call must name one of the example's
    tools, carry JSON arguments valid under that tool's schema, and be a call BFCL accepts."""
    import jsonschema

    from training.roles import score_call

    if not tool_calls:
        return 0.0, "no tool call"
    function = tool_calls[0]["function"]
    tools = {t["function"]["name"]: t["function"] for t in example.meta["tools"]}
    if function["name"] not in tools:
        return 0.0, f"unknown function {function['name']!r}"
    try:
        args = json.loads(function["arguments"])
    except json.JSONDecodeError:
        return 0.0, "arguments are not JSON"
    try:
        jsonschema.validate(args, tools[function["name"]].get("parameters", {}))
    except jsonschema.ValidationError as exc:
        return 0.0, f"schema: {exc.message}"
    score = score_call(example, function["name"], args)
    return score, "ok" if score else "wrong values"


def _ask(client: Any, role: str, example: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if example.meta.get("tools"):
        kwargs.update(tools=example.meta["tools"], tool_choice="auto")
    t0 = time.monotonic()
    resp = client.chat.completions.create(model=role, messages=list(example.messages),
                                          temperature=0, max_tokens=MAX_TOKENS[role], **kwargs)
    choice = resp.choices[0]
    calls = [c.model_dump() for c in (choice.message.tool_calls or [])]
    text = choice.message.content or ""
    return {"uid": example.uid, "text": text, "tool_calls": calls,
            "finish_reason": choice.finish_reason, "seconds": round(time.monotonic() - t0, 2)}


def _score(role: str, task: Any, example: Any, answer: dict[str, Any]) -> dict[str, Any]:
    if role == "tool_caller":
        score, why = score_tool_calls(example, answer["tool_calls"])
    else:
        score = task.score(example, answer["text"])
        why = "ok" if score else "wrong"
    return {**answer, "score": score, "why": why}


def run_role(client: Any, role: str, limit: int, seed: int, concurrency: int) -> dict[str, Any]:
    from training.progress import progress_bar
    from training.roles import role_task

    task = role_task(f"role_{role}")
    examples = task.load("test", limit, seed)
    bar = progress_bar(len(examples), f"{role}", "q")
    t0 = time.monotonic()

    def one(example: Any) -> dict[str, Any]:
        row = _score(role, task, example, _ask(client, role, example))
        bar.update()
        return row

    with ThreadPoolExecutor(concurrency) as pool:
        rows = list(pool.map(one, examples))
    bar.close()
    from training.evaluate import wilson_interval

    correct = sum(r["score"] for r in rows)
    low, high = wilson_interval(int(correct), len(rows))
    return {"role": role, "n": len(rows), "correct": correct, "accuracy": correct / len(rows),
            "ci95": [round(low, 3), round(high, 3)], "seconds": round(time.monotonic() - t0, 1),
            "rows": rows}


def compare(base: dict[str, Any], other: dict[str, Any]) -> str:
    """A markdown table: each role's accuracy in both runs and the paired change (questions
    only one run got right), on the questions both answered."""
    lines = ["| role | n | base | 95% CI | adapter | 95% CI | only base right | only adapter right |",
             "|---|---|---|---|---|---|---|---|"]
    for role, b in base["roles"].items():
        o = other["roles"].get(role)
        if o is None:
            continue
        bs = {r["uid"]: r["score"] for r in b["rows"]}
        os_ = {r["uid"]: r["score"] for r in o["rows"]}
        shared = sorted(bs.keys() & os_.keys())
        only_base = sum(1 for u in shared if bs[u] and not os_[u])
        only_other = sum(1 for u in shared if os_[u] and not bs[u])
        lines.append(f"| {role} | {len(shared)} | {b['correct']:.0f}/{b['n']} | "
                     f"{b['ci95'][0]:.2f}-{b['ci95'][1]:.2f} | {o['correct']:.0f}/{o['n']} | "
                     f"{o['ci95'][0]:.2f}-{o['ci95'][1]:.2f} | {only_base} | {only_other} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.served_accuracy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the running app")
    p.add_argument("--roles", nargs="+", default=list(MAX_TOKENS), choices=list(MAX_TOKENS))
    p.add_argument("--limit", type=int, default=30, help="held-out questions per role")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight per role")
    p.add_argument("--api-key", default="none", help="when the app has API keys on")
    p.add_argument("--label", default=None, help="what this app is (default: the --out stem)")
    p.add_argument("--out", type=Path, help="the JSON result")
    p.add_argument("--compare", nargs=2, type=Path, metavar=("BASE", "OTHER"),
                   help="print the paired table of two result files and exit")
    args = p.parse_args(argv)
    if args.compare:
        base, other = (json.loads(path.read_text()) for path in args.compare)
        print(compare(base, other))
        return 0
    if args.out is None:
        p.error("--out is required unless --compare")
    from openai import OpenAI

    client = OpenAI(base_url=f"{args.url.rstrip('/')}/v1", api_key=args.api_key, timeout=600)
    served = [m.id for m in client.models.list().data]
    missing = [r for r in args.roles if r not in served]
    if missing:
        print(f"served_accuracy: the app at {args.url} serves {served}, not {missing}",
              file=sys.stderr)
        return 2
    result: dict[str, Any] = {"label": args.label or args.out.stem, "url": args.url,
                              "limit": args.limit, "seed": args.seed, "roles": {}}
    for role in args.roles:
        result["roles"][role] = r = run_role(client, role, args.limit, args.seed, args.concurrency)
        print(f"[served_accuracy] {role}: {r['correct']:.0f}/{r['n']} "
              f"(95% CI {r['ci95'][0]:.2f}-{r['ci95'][1]:.2f}) in {r['seconds']} s", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")  # what ran so far is kept
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
