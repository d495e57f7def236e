"""End to end on real engines: Ray Serve, two vLLM engines per role path, a real NIXL pull.

One app for the whole module (engine start is the expensive part): a tiny random base model
prefills; roles `planner` (kv_load_failure_policy fail) and `critic` (recompute) decode with a
second tiny model of the same architecture and different weights.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid

import pytest

from bench.running_app import running_app, tiny_engine, tiny_models, wait_for
from contract.wire import DecodeRequest, GenerationDelta, SamplingSpec

pytestmark = pytest.mark.slow

# vLLM's CPU kernels and transformers' eager attention sum in different orders; in float32
# over these prompt lengths that moves a logprob by ~1e-6. A wrong KV boundary (decoder KV
# instead of base KV anywhere in the context) moves it by >1e-2 with these random weights,
# which test_contract also asserts, so 1e-3 separates the two by an order of magnitude each way.
LOGPROB_ATOL = 1e-3


@pytest.fixture(scope="module")
def models() -> tuple[str, str]:
    return tiny_models()


@pytest.fixture(scope="module")
def app(models):
    base, decoder = models
    args = {
        "base_model": base,
        "prefill_pools": {"shared": {"engine": tiny_engine()}},
        "roles": [
            {"name": "planner", "decoder": decoder, "decode_pool": {"engine": tiny_engine()}},
            {"name": "critic", "decoder": decoder, "kv_load_failure_policy": "recompute",
             "decode_pool": {"engine": tiny_engine()}},
        ],
        "decode_kv_mode": "exact",
    }
    with running_app(args) as running:
        yield running


@pytest.fixture(scope="module")
def hf_models(models):
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    base, decoder = models
    load = lambda p: AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32).eval()  # noqa: E731
    return load(base), load(decoder)


def _served(app, prompt: list[int], max_tokens: int, role: str = "planner"):
    return app.greedy_pd("prefill-shared", f"decode-{role}", prompt, max_tokens)


def _random_prompt(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(100, 40000) for _ in range(n)]


def test_contract_pd_equals_reference_boundary(app, hf_models):
    from training.kv_boundary import reference_greedy_decode

    base, decoder = hf_models
    prompt = _random_prompt(300, seed=1)
    ids, lps, _ = _served(app, prompt, max_tokens=12)
    ref_ids, ref_lps = reference_greedy_decode(base, decoder, prompt, 12, sharing_ratio=1.0)
    assert ids == ref_ids
    assert max(abs(a - b) for a, b in zip(lps, ref_lps)) < LOGPROB_ATOL
    # ... and it is not what the decoder computes alone (its own KV for the whole context).
    alone_ids, alone_lps = reference_greedy_decode(None, decoder, prompt, 12, sharing_ratio=0.0)
    assert alone_ids != ids or max(abs(a - b) for a, b in zip(alone_lps, lps)) > 1e-2


def test_contract_over_http_logprobs(app, hf_models):
    from training.kv_boundary import reference_greedy_decode

    base, decoder = hf_models
    prompt = _random_prompt(150, seed=2)
    r = app.client.post("/v1/completions", json={
        "model": "planner", "prompt": prompt, "max_tokens": 6, "temperature": 0,
        "logprobs": 0, "ignore_eos": True})
    assert r.status_code == 200, r.text
    body = r.json()
    _, ref_lps = reference_greedy_decode(base, decoder, prompt, 6, sharing_ratio=1.0)
    served = body["choices"][0]["logprobs"]["token_logprobs"]
    assert len(served) == 6
    assert max(abs(a - b) for a, b in zip(served, ref_lps)) < LOGPROB_ATOL
    assert body["usage"] == {"prompt_tokens": 150, "completion_tokens": 6, "total_tokens": 156,
                             **{k: v for k, v in body["usage"].items()
                                if k not in ("prompt_tokens", "completion_tokens", "total_tokens")}}


def test_exact_mode_multi_turn_matches_reference(app, hf_models):
    """Turn 2's context holds the decoder's own turn-1 output: in exact mode every context
    token, that output included, must carry base KV (the paper's semantics)."""
    from training.kv_boundary import reference_greedy_decode

    base, decoder = hf_models
    turn1 = _random_prompt(200, seed=3)
    out1, _, _ = _served(app, turn1, max_tokens=60)
    turn2 = turn1 + out1 + _random_prompt(30, seed=4)
    ids, lps, pre = _served(app, turn2, max_tokens=10)
    ref_ids, ref_lps = reference_greedy_decode(base, decoder, turn2, 10, sharing_ratio=1.0)
    assert ids == ref_ids
    assert max(abs(a - b) for a, b in zip(lps, ref_lps)) < LOGPROB_ATOL
    assert pre.num_cached_tokens >= 128  # the prefill pool reused turn 1's full block


def test_openai_client_streams_from_real_engines(app):
    import openai

    client = openai.OpenAI(base_url=f"{app.url}/v1", api_key="unused")
    chunks = list(client.chat.completions.create(
        model="planner", messages=[{"role": "user", "content": "hello"}], max_tokens=5,
        temperature=0, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].usage.completion_tokens == 5


def test_bad_input_gets_openai_errors(app):
    r = app.client.post("/v1/chat/completions", json={"model": "nobody", "messages": [
        {"role": "user", "content": "hi"}]})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = app.client.post("/v1/completions", json={"model": "planner", "prompt": [5] * 1100})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    r = app.client.post("/v1/completions", json={"model": "planner", "prompt": "x", "temperature": 9})
    assert r.status_code == 400 and r.json()["error"]["param"] == "temperature"
    r = app.client.post("/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert app.client.get("/health").status_code == 200  # the ingress is still serving


def test_client_disconnect_aborts_and_frees_kv(app):
    before = app.handle("decode-planner").stats.remote().result()["requests_aborted"]
    with app.client.stream("POST", "/v1/completions", json={
            "model": "planner", "prompt": _random_prompt(200, seed=5), "max_tokens": 400,
            "ignore_eos": True, "stream": True}) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        got = [next(lines) for _ in range(4)]
        assert any(line.startswith("data: ") for line in got)
    # closing the stream mid-generation must abort at decode and leave no block held anywhere
    assert wait_for(lambda: app.handle("decode-planner").stats.remote().result()[
        "requests_aborted"] > before, timeout_s=60)
    for name in ("decode-planner", "prefill-shared"):
        assert wait_for(lambda: app.handle(name).all_blocks_free.remote().result(),
                        timeout_s=60), f"{name} still holds KV blocks"


def _ghost_params(n_tokens: int) -> dict:
    """kv_transfer_params naming a prefill engine that does not exist: the pull must fail."""
    from vllm_runtime.replica_env import free_port

    return {"do_remote_prefill": True, "do_remote_decode": False, "remote_block_ids": [[1, 2]],
            "remote_engine_id": "prefill-ghost", "remote_request_id": uuid.uuid4().hex,
            "remote_host": "127.0.0.1", "remote_port": free_port("127.0.0.1"), "tp_size": 1,
            "dcp_size": 1, "pp_size": 1, "remote_num_tokens": n_tokens, "transfer_mode": "pull"}


def _decode_with(app, role: str, prompt: list[int], params: dict) -> list[int]:
    async def go():
        spec = SamplingSpec(max_tokens=4, temperature=0.0, ignore_eos=True)
        out: list[int] = []
        gen = app.handle(f"decode-{role}").options(stream=True).generate.remote(
            DecodeRequest(uuid.uuid4().hex, tuple(prompt), spec, params))
        async for delta in gen:
            if isinstance(delta, GenerationDelta):  # not the KvLoaded marker
                out.extend(delta.token_ids)
        return out

    return asyncio.run(go())


def test_failed_kv_pull_fail_policy_returns_503_and_keeps_serving(app):
    from contract.wire import ServingError

    prompt = _random_prompt(200, seed=6)
    with pytest.raises(ServingError) as err:
        _decode_with(app, "planner", prompt, _ghost_params(len(prompt)))
    assert err.value.status_code == 503
    r = app.client.post("/v1/completions", json={"model": "planner", "prompt": "still there?",
                                                  "max_tokens": 3})
    assert r.status_code == 200, r.text


def test_failed_kv_pull_recompute_policy_still_answers(app, hf_models):
    from training.kv_boundary import reference_greedy_decode

    _, decoder = hf_models
    prompt = _random_prompt(200, seed=7)
    out = _decode_with(app, "critic", prompt, _ghost_params(len(prompt)))
    # Recompute prefills locally with the decoder's own weights (no base KV to be had).
    alone, _ = reference_greedy_decode(None, decoder, prompt, 4, sharing_ratio=0.0)
    assert out == alone


def test_stats_report_kv_transfers(app):
    stats = app.stats()
    planner = stats["decode"]["decode-planner"]
    assert planner["kv_transfers"] > 0 and planner["kv_bytes"] > 0
    assert stats["prefill"]["prefill-shared"]["prefix_queries"] > 0
    json.dumps(stats)
