"""Role training data (training/roles.py) is laid out exactly as the serving ingress lays out
a request: context ids = PromptBuilder.chat_prompt(conversation, role_suffix(instructions,
tools)) with the tools as the ingress dumps them, response = target + <|im_end|>; and a
tool_caller target is a call that vLLM's hermes parser reads back."""

from __future__ import annotations

import json

import pytest

from contract.prompt_layout import PromptBuilder, Turn, role_suffix
from tests.api_fixtures import smollm2_tokenizer
from training.data import encode_example_context, tokenize_examples
from training.roles import ROLE_INSTRUCTIONS, SYNTHETIC_TOOLS, parse_hermes_call, role_task
from training.tasks_benchmarks import GSM8K_DIR

needs_gsm8k = pytest.mark.skipif(not (GSM8K_DIR / "train.jsonl").exists(), reason="GSM8K data not present")


def _ingress_ids(conversation, instructions, tools) -> tuple[int, ...]:
    """What router_service/api.py builds: conversation turns + role suffix of the rendered tools
    (each tool validated and dumped the way the ingress does)."""
    rendered = None
    if tools:
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionToolsParam

        rendered = [ChatCompletionToolsParam.model_validate(t).model_dump(mode="json", exclude_none=True)
                    for t in tools]
        assert rendered == tools  # the training copy renders byte-identically
    turns = [Turn(m["role"], m["content"]) for m in conversation]
    return PromptBuilder(smollm2_tokenizer()).chat_prompt(turns, role_suffix(instructions, rendered)).token_ids


def _check_layout(example) -> None:
    tok = smollm2_tokenizer()
    meta = example.meta
    assert meta["instructions"] == ROLE_INSTRUCTIONS[meta["role"]]
    ids = encode_example_context(tok, example)
    assert tuple(ids) == _ingress_ids(example.messages, meta["instructions"], meta["tools"])
    text = tok.decode(ids)
    # The role suffix is the last system turn, right before the assistant prompt.
    suffix = role_suffix(meta["instructions"], meta["tools"])
    assert text.endswith(f"<|im_start|>system\n{suffix}<|im_end|>\n<|im_start|>assistant\n")
    (tokenized,) = tokenize_examples(tok, [example], max_length=4096)
    assert tokenized.context == ids
    assert tokenized.response[-1] == tok.convert_tokens_to_ids("<|im_end|>") == tok.eos_token_id
    assert tok.decode(tokenized.response[:-1]) == example.target


@needs_gsm8k
@pytest.mark.parametrize("role", ["planner", "critic"])
def test_gsm8k_roles_use_the_serving_layout(role: str) -> None:
    task = role_task(f"role_{role}")
    (example,) = task.load("train", 1, 0)
    _check_layout(example)
    assert "<<" not in example.target and "<<" not in json.dumps(example.messages)
    assert task.score(example, example.target) == 1.0
    if role == "planner":
        assert example.target.startswith("1. ") and "Answer: " in example.target.splitlines()[-1]
    else:
        assert example.messages[-1]["role"] == "assistant" and example.target.startswith("Step ")
        assert task.score(example, "Step 99 is wrong.") == 0.0


def test_coder_uses_the_serving_layout_and_its_code_passes_its_tests() -> None:
    task = role_task("role_coder")
    (example,) = task.load("train", 1, 0)
    _check_layout(example)
    assert example.target.startswith("```python\ndef ")
    assert task.score(example, example.target) == 1.0
    assert task.score(example, "```python\ndef nothing():\n    pass\n```") == 0.0


def _hermes(tools, text):
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.tool_parsers.hermes_tool_parser import Hermes2ProToolParser

    request = ChatCompletionRequest(model="tool_caller", messages=[{"role": "user", "content": ""}], tools=tools)
    return Hermes2ProToolParser(smollm2_tokenizer(), request.tools).extract_tool_calls(text, request)


def test_tool_caller_targets_parse_with_vllm_hermes_parser() -> None:
    from jsonschema import Draft202012Validator

    task = role_task("role_tool_caller")
    examples = task.load("train", None, 0)
    bfcl = next(ex for ex in examples if ex.uid.startswith("bfcl-"))
    synthetic = next(ex for ex in examples if ex.meta["tools"] == SYNTHETIC_TOOLS)
    for example in (bfcl, synthetic):
        _check_layout(example)
        parsed = _hermes(example.meta["tools"], example.target)
        assert parsed.tools_called and len(parsed.tool_calls) == 1
        call = parsed.tool_calls[0].function
        name, arguments = parse_hermes_call(example.target)
        assert call.name == name and json.loads(call.arguments) == arguments
        assert name in example.reference and task.score(example, example.target) == 1.0
    # Every tool is a valid JSON Schema (the ingress rejects BFCL's python-flavoured types).
    for example in examples:
        for tool in example.meta["tools"]:
            Draft202012Validator.check_schema(tool["function"]["parameters"])
    held_out = {ex.uid for ex in task.load("test", None, 0)}
    assert held_out and not held_out & {ex.uid for ex in examples}
