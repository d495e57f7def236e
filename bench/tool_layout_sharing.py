"""Where tools go in the prompt, and what that does to prefill sharing (no engines).

Builds the prompts of one multi-agent session (four roles, each with its own tools, over one
growing conversation) with the base tokenizer, in two layouts: ours (tools in the role suffix,
after the shared conversation; contract/prompt_layout.py) and the usual chat-template one
(tools in a leading system turn, so every role's prompt starts differently). For each it
prints the best prefix-cache hit ratio one prefill engine can reach (whole blocks of each
prompt's longest common prefix with an earlier prompt, never the last token) and the prompt
tokens left to compute. The served path reaches that best (tests/e2e/test_agent_api_e2e.py).

    python -m bench.tool_layout_sharing [--context-words 700] [--append-words 110] [--turns 4]
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Sequence

from contract.prompt_layout import PromptBuilder, Turn, role_suffix, tools_text

BLOCK = 32
WORDS = ("the plan hotel price weather city train museum budget day night step tool result "
         "observation").split()


def _tool(name: str, **properties: str) -> dict:
    return {"type": "function", "function": {"name": name, "parameters": {
        "type": "object", "properties": {k: {"type": v} for k, v in properties.items()},
        "required": list(properties)}}}


ROLE_TOOLS = {
    "planner": [_tool("get_time", hour="integer")],
    "coder": [_tool("run_python", code="string")],
    "tool_caller": [_tool("get_weather", city="string"), _tool("get_time", hour="integer")],
    "critic": [_tool("flag", ok="boolean")],
}


def best_cached(prompt: Sequence[int], earlier: Sequence[Sequence[int]], block: int) -> int:
    lcp = 0
    for e in earlier:
        n = next((i for i, (a, b) in enumerate(zip(prompt, e)) if a != b), min(len(prompt), len(e)))
        lcp = max(lcp, n)
    return min(lcp, len(prompt) - 1) // block * block


def session(builder: PromptBuilder, layout: str, context_words: int, append_words: int,
            turns: int, block: int = BLOCK) -> tuple[int, int]:
    """(prompt tokens, best cached tokens) over the session's calls."""
    rng = random.Random(0)

    def text(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n))

    history = [Turn("user", text(context_words))]
    seen: list[tuple[int, ...]] = []
    cached = total = 0
    for _ in range(turns):
        for role, tools in ROLE_TOOLS.items():
            if layout == "suffix":
                ids = builder.chat_prompt(history, role_suffix(None, tools)).token_ids
            else:
                ids = builder.chat_prompt([Turn("system", tools_text(tools)), *history]).token_ids
            cached += best_cached(ids, seen, block)
            total += len(ids)
            seen.append(ids)
            history.append(Turn("assistant", text(append_words)))
        history.append(Turn("user", text(40)))
    return total, cached


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tool_layout_sharing",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--context-words", type=int, default=700,
                        help="initial context (default ~1,000 tokens, the paper's workload)")
    parser.add_argument("--append-words", type=int, default=110,
                        help="words each agent call appends (default ~150 tokens)")
    parser.add_argument("--turns", type=int, default=4)
    args = parser.parse_args(argv)
    from transformers import PreTrainedTokenizerFast

    from vllm_runtime.model_assets import smollm2_folder

    builder = PromptBuilder(PreTrainedTokenizerFast.from_pretrained(smollm2_folder()))
    for layout in ("suffix", "tools-first"):
        total, cached = session(builder, layout, args.context_words, args.append_words,
                                args.turns)
        print(f"{layout:11s} prompt tokens {total:6d}  best cached {cached:6d}  "
              f"hit ratio {cached / total:.3f}  to prefill {total - cached:6d}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
