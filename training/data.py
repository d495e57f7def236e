"""Examples -> token ids across the boundary, and the deterministic batch order.

context  = the chat-formatted messages with the generation prompt (what the router sends
           to the prefill pool: tokenized with the BASE tokenizer's chat template);
response = the target text + eos (the decoder learns to stop).
The batch order is a pure function of (seed, step), so a resumed run needs only its step.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from training.tasks import Example, Message

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenizedExample:
    uid: str
    context: list[int]  # x_1..x_n
    response: list[int]  # y_1..y_m, ending with eos


def encode_context(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message]) -> list[int]:
    encoded = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
    # transformers 5 returns a BatchEncoding here; 4.x returned a plain list.
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


def encode_example_context(tokenizer: PreTrainedTokenizerBase, example: Example) -> list[int]:
    """An example's context ids. Role examples (meta carries "instructions"/"tools") are laid out
    exactly as the serving ingress lays them out: PromptBuilder.chat_prompt(conversation,
    role_suffix(instructions, tools)) (contract/prompt_layout.py); others use the plain chat
    template with the generation prompt."""
    meta = example.meta or {}
    if "instructions" not in meta and "tools" not in meta:
        return encode_context(tokenizer, example.messages)
    from contract.prompt_layout import PromptBuilder, Turn, role_suffix

    turns = [Turn(m["role"], m["content"]) for m in example.messages]
    built = PromptBuilder(tokenizer).chat_prompt(turns, role_suffix(meta.get("instructions"), meta.get("tools")))
    return list(built.token_ids)


def encode_response(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def tokenize_examples(
    tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example], max_length: int
) -> list[TokenizedExample]:
    """Drops (and counts) examples longer than max_length rather than cutting an answer."""
    out, dropped = [], 0
    for ex in examples:
        context = encode_example_context(tokenizer, ex)
        response = encode_response(tokenizer, ex.target)
        if len(context) + len(response) > max_length:
            dropped += 1
            continue
        out.append(TokenizedExample(ex.uid, context, response))
    if dropped:
        log.warning("dropped %d of %d examples longer than %d tokens", dropped, len(examples), max_length)
    if not out:
        raise ValueError("no example fits max_length")
    return out


def global_batch(num_examples: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Example indices of global batch `step`: epochs are seeded permutations, concatenated."""
    indices: list[int] = []
    start = step * batch_size
    while len(indices) < batch_size:
        epoch, offset = divmod(start + len(indices), num_examples)
        order = list(range(num_examples))
        random.Random(f"{seed}-{epoch}").shuffle(order)
        indices.extend(order[offset : offset + batch_size - len(indices)])
    return indices


def worker_micro_batches(batch: list[int], rank: int, world: int, micro_batch_size: int) -> list[list[int]]:
    """This worker's share of a global batch (strided), cut into micro-batches."""
    mine = batch[rank::world]
    return [mine[i : i + micro_batch_size] for i in range(0, len(mine), micro_batch_size)]
