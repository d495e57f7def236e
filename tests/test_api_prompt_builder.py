"""The prompt layout that makes prefill sharing work: shared context first, role text after."""

from __future__ import annotations

from tests.api_fixtures import smollm2_tokenizer

from contract.prompt_layout import PromptBuilder, Turn

CONVERSATION = [
    Turn("system", "You are a team of agents solving a coding task."),
    Turn("user", "Write a function that reverses a linked list, then test it."),
]


def _common_prefix(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def test_roles_share_the_context_as_a_token_prefix() -> None:
    builder = PromptBuilder(smollm2_tokenizer())
    planner = builder.chat_prompt(CONVERSATION, "You are the planner.")
    coder = builder.chat_prompt(CONVERSATION, "You are the coder. Write Python.")
    plain = builder.chat_prompt(CONVERSATION, None)
    assert planner.context_len == coder.context_len == plain.context_len > 20
    assert planner.token_ids[: planner.context_len] == coder.token_ids[: coder.context_len]
    assert _common_prefix(planner.token_ids, coder.token_ids) >= planner.context_len
    assert _common_prefix(planner.token_ids, plain.token_ids) >= plain.context_len
    assert planner.token_ids != coder.token_ids


def test_role_text_comes_after_context_then_generation_prompt() -> None:
    tok = smollm2_tokenizer()
    built = PromptBuilder(tok).chat_prompt(CONVERSATION, "You are the planner.")
    text = tok.decode(list(built.token_ids))
    context = tok.decode(list(built.token_ids[: built.context_len]))
    assert text.startswith(context)
    assert context.endswith("then test it.<|im_end|>\n")
    assert text[len(context):] == (
        "<|im_start|>system\nYou are the planner.<|im_end|>\n<|im_start|>assistant\n"
    )


def test_tokens_match_the_template_rendered_whole() -> None:
    # Tokenizing per message must not change the tokens for a ChatML template.
    tok = smollm2_tokenizer()
    built = PromptBuilder(tok).chat_prompt(CONVERSATION, None)
    whole = tok.apply_chat_template(
        [{"role": t.role, "content": t.content} for t in CONVERSATION],
        tokenize=False, add_generation_prompt=True,
    )
    assert list(built.token_ids) == tok.encode(whole, add_special_tokens=False)


def test_growing_conversation_keeps_earlier_context_as_prefix() -> None:
    builder = PromptBuilder(smollm2_tokenizer())
    first = builder.chat_prompt(CONVERSATION, "You are the planner.")
    grown = CONVERSATION + [
        Turn("assistant", "Plan: 1) define Node 2) iterate with prev/cur pointers 3) tests."),
        Turn("user", "Coder, implement step 2."),
    ]
    second = builder.chat_prompt(grown, "You are the coder.")
    assert second.context_len > first.context_len
    assert second.token_ids[: first.context_len] == first.token_ids[: first.context_len]


def test_content_boundaries_that_bpe_could_merge_stay_stable() -> None:
    # Text ending without a newline or with odd whitespace right before the next turn.
    builder = PromptBuilder(smollm2_tokenizer())
    turns = [Turn("user", "x = 1   "), Turn("assistant", "  ok"), Turn("user", "again!!")]
    for k in range(1, len(turns)):
        shorter = builder.chat_prompt(turns[:k], "r")
        longer = builder.chat_prompt(turns, "r")
        assert longer.token_ids[: shorter.context_len] == shorter.token_ids[: shorter.context_len]


def test_developer_role_renders_as_system() -> None:
    builder = PromptBuilder(smollm2_tokenizer())
    dev = builder.chat_prompt([Turn("developer", "Be brief."), Turn("user", "hi")])
    sys_ = builder.chat_prompt([Turn("system", "Be brief."), Turn("user", "hi")])
    assert dev == sys_


def test_completion_prompt_tokenized_as_is_or_passed_through() -> None:
    tok = smollm2_tokenizer()
    builder = PromptBuilder(tok)
    assert builder.completion_prompt("def add(a, b):").token_ids == tuple(
        tok.encode("def add(a, b):", add_special_tokens=True)
    )
    assert builder.completion_prompt([5, 6, 7]).token_ids == (5, 6, 7)


class _RewritingTokenizer:
    """A template that is not prefix-stable (it drops old assistant turns)."""

    def apply_chat_template(self, conversation: list[dict[str, str]], tokenize: bool = False,
                            add_generation_prompt: bool = False) -> str:
        keep = [m for i, m in enumerate(conversation)
                if m["role"] != "assistant" or i == len(conversation) - 1]
        text = "".join(f"[{m['role']}]{m['content']}" for m in keep)
        return text + ("[assistant]" if add_generation_prompt else "")

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [ord(c) for c in text]


def test_template_that_is_not_prefix_stable_still_builds_a_prompt() -> None:
    builder = PromptBuilder(_RewritingTokenizer())
    turns = [Turn("user", "a"), Turn("assistant", "b"), Turn("user", "c")]
    built = builder.chat_prompt(turns, None)
    assert "".join(chr(t) for t in built.token_ids) == "[user]a[user]c[assistant]"



class _SystemFirstOnly:
    """A template that, like some real ones, raises on a system turn after the first."""

    def apply_chat_template(self, conversation: list[dict[str, str]], tokenize: bool = False,
                            add_generation_prompt: bool = False) -> str:
        if any(m["role"] == "system" for m in conversation[1:]):
            raise ValueError("System role only allowed at the beginning")
        text = "".join(f"<{m['role']}>{m['content']}</>" for m in conversation)
        return text + ("<assistant>" if add_generation_prompt else "")

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [ord(c) for c in text]


def test_instructions_fall_back_to_a_user_turn_when_the_template_refuses() -> None:
    built = PromptBuilder(_SystemFirstOnly()).chat_prompt([Turn("user", "q")], "be the critic")
    text = "".join(chr(t) for t in built.token_ids)
    assert text == "<user>q</><user>be the critic</><assistant>"
    assert built.context_len == len("<user>q</>")
