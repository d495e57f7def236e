"""Mid-stream migration's pure parts: which requests continue exactly
(router_service/migration.py) and which KV the new decode engine pulls
(vllm_runtime/kv_resume.py)."""

from __future__ import annotations

import pytest

from contract.wire import SamplingSpec, StructuredOutput
from router_service.migration import continued_sampling, why_not_resumable
from vllm_runtime.engine_args import CONNECTOR_MODULE
from vllm_runtime.kv_resume import BASE_KV_TOKENS, resumed_kv_params, resumed_pull_count


@pytest.mark.parametrize("spec", [
    SamplingSpec(max_tokens=4, temperature=0.0),
    SamplingSpec(max_tokens=4, temperature=0.0, seed=3),  # greedy: the seed is never used
    SamplingSpec(max_tokens=4, temperature=0.7),  # unseeded: any continuation is a fair sample
    SamplingSpec(max_tokens=4, temperature=0.0, repetition_penalty=1.2, stop=("\n",),
                 logit_bias=((5, 2.0),)),
])
def test_requests_whose_engine_state_is_their_tokens_are_resumable(spec):
    assert why_not_resumable(spec) is None


@pytest.mark.parametrize("spec, words", [
    (SamplingSpec(4, temperature=0.0, structured_output=StructuredOutput(json_object=True)),
     "grammar"),
    (SamplingSpec(4, presence_penalty=0.1), "penalties"),
    (SamplingSpec(4, temperature=1.0, seed=0), "random state"),
])
def test_requests_with_state_beyond_their_tokens_are_not(spec, words):
    assert words in why_not_resumable(spec)


def test_the_continuation_generates_only_what_is_left():
    spec = SamplingSpec(max_tokens=10, min_tokens=4, temperature=0.0)
    rest = continued_sampling(spec, 3)
    assert (rest.max_tokens, rest.min_tokens) == (7, 1)
    assert continued_sampling(spec, 6).min_tokens == 0
    assert continued_sampling(spec, 3).temperature == 0.0
    with pytest.raises(ValueError):
        continued_sampling(spec, 10)


def _prefill_params(num_blocks: int) -> dict:
    return {"do_remote_prefill": True, "remote_block_ids": [list(range(100, 100 + num_blocks))],
            "remote_engine_id": "p", "remote_num_tokens": 999}


@pytest.mark.parametrize("prompt_len, block_size, blocks_kept", [
    (300, 128, 3),  # base KV for 299 tokens: blocks 0..2, as the prefill holds
    (257, 128, 2),  # 256 tokens of base KV fill 2 blocks; the prefill's 3rd holds x_n only
    (129, 128, 1),
    (1, 128, 0),  # a one-token prompt: the decoder computes everything
])
def test_resumed_params_pull_the_base_kv_of_all_prompt_tokens_but_the_last(
        prompt_len, block_size, blocks_kept):
    params = _prefill_params(-(-prompt_len // block_size))
    out = resumed_kv_params(params, prompt_len, block_size)
    assert out[BASE_KV_TOKENS] == out["remote_num_tokens"] == prompt_len - 1
    # The FIRST blocks: vLLM pairs blocks from the end of the remote list.
    assert out["remote_block_ids"] == [list(range(100, 100 + blocks_kept))]
    assert params["remote_block_ids"] == [list(range(100, 100 + -(-prompt_len // block_size)))]
    assert BASE_KV_TOKENS not in params  # the prefill's own params are not changed


def test_the_connector_pulls_the_base_tokens_only_for_a_continuation():
    resumed = resumed_kv_params(_prefill_params(3), 300, 128)
    # prompt 300 + 20 sent tokens: pull 299, the decoder computes 21.
    assert resumed_pull_count(resumed, 320, 0) == 299
    assert resumed_pull_count(resumed, 320, 256) == 43  # a local prefix-cache hit (reuse mode)
    assert resumed_pull_count(resumed, 320, 320) == 0
    # Not a continuation, or the pull was already started: vLLM's own count.
    assert resumed_pull_count(_prefill_params(3), 300, 0) is None
    assert resumed_pull_count({**resumed, "do_remote_prefill": False}, 320, 0) is None
    assert resumed_pull_count(None, 320, 0) is None
    with pytest.raises(ValueError):
        resumed_kv_params(_prefill_params(1), 0, 128)


def test_engines_load_the_resumable_connector_under_vllms_name():
    import importlib

    module = importlib.import_module(CONNECTOR_MODULE)
    from vllm.distributed.kv_transfer.kv_connector.v1.nixl import NixlConnector

    # vLLM's config turns NIXL behaviour on by the class NAME; the factory loads it by path.
    assert module.NixlConnector.__name__ == "NixlConnector"
    assert issubclass(module.NixlConnector, NixlConnector)
