"""bench/tool_layout_sharing.py: with the paper's workload shape (a long shared context, a few
hundred tokens appended per agent call) the tools-in-the-suffix layout leaves far less to
prefill than tools at the top; with a short context and big tool lists the order flips."""

from __future__ import annotations

from bench.tool_layout_sharing import session
from contract.prompt_layout import PromptBuilder
from tests.api_fixtures import smollm2_tokenizer


def test_suffix_layout_wins_on_long_contexts_and_loses_on_short_ones() -> None:
    b = PromptBuilder(smollm2_tokenizer())
    total, suffix = session(b, "suffix", context_words=700, append_words=110, turns=2)
    total_top, top = session(b, "tools-first", context_words=700, append_words=110, turns=2)
    assert total - suffix < 0.7 * (total_top - top)
    short, short_suffix = session(b, "suffix", context_words=40, append_words=8, turns=2)
    short_top, short_top_cached = session(b, "tools-first", context_words=40, append_words=8,
                                          turns=2)
    assert short - short_suffix > short_top - short_top_cached
