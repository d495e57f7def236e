"""The KV-boundary reference (training/kv_boundary.py) on tiny random Llamas."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from training.kv_boundary import (
    base_prefix_cache,
    clone_cache,
    conditioned_logits,
    layout_batch,
    reference_greedy_decode,
    shared_prefix_length,
)
from vllm_runtime.model_assets import tiny_llama_folder

ATOL = 1e-5
RATIOS = [0.0, 0.25, 0.5, 0.75, 1.0]

torch.set_num_threads(1)  # the box is shared; more threads only thrash under load


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("kvb")
    loaded = []
    for seed in (1, 2):
        folder = tiny_llama_folder(root / f"tiny-{seed}", seed=seed)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        loaded.append(model)
    return loaded  # [base, other-weights decoder]


def _plain_response_logits(model, ctx: list[int], resp: list[int]) -> torch.Tensor:
    ids = torch.tensor([ctx + resp])
    logits = model(input_ids=ids).logits[0]  # (n + m, V)
    return logits[len(ctx) - 1 : len(ctx) + len(resp) - 1]  # (m, V) predicting y_1..y_m


def _sample(seed: int, n: int, m: int) -> tuple[list[int], list[int]]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, 40000, (n + m,), generator=g).tolist()
    return ids[:n], ids[n:]


def test_shared_prefix_length():
    assert shared_prefix_length(10, 0.0) == 0
    assert shared_prefix_length(10, 1.0) == 9  # x_n always run by the decoder
    assert shared_prefix_length(10, 0.5) == 4
    assert shared_prefix_length(101, 0.29) == 29  # no float floor surprise
    assert shared_prefix_length(1, 1.0) == 0
    with pytest.raises(ValueError):
        shared_prefix_length(10, 1.5)


def test_ratio_zero_is_plain_forward(models):
    base, decoder = models
    ctx, resp = _sample(0, 17, 6)
    got = conditioned_logits(base, decoder, [ctx], [resp], sharing_ratio=0.0)[0]
    want = _plain_response_logits(decoder, ctx, resp)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


@pytest.mark.parametrize("ratio", RATIOS)
def test_same_weights_any_ratio_is_plain_forward(models, ratio):
    base, _ = models
    ctx, resp = _sample(1, 23, 5)
    got = conditioned_logits(base, base, [ctx], [resp], sharing_ratio=ratio)[0]
    want = _plain_response_logits(base, ctx, resp)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_different_weights_ratio_matters(models):
    base, decoder = models
    ctx, resp = _sample(2, 20, 4)
    full = conditioned_logits(base, decoder, [ctx], [resp], sharing_ratio=1.0)
    none = conditioned_logits(base, decoder, [ctx], [resp], sharing_ratio=0.0)
    assert (full - none).abs().max() > 1e-2


@pytest.mark.parametrize("ratio", [0.0, 0.5, 1.0])
def test_padding_does_not_change_rows(models, ratio):
    base, decoder = models
    samples = [_sample(10 + i, n, m) for i, (n, m) in enumerate([(5, 7), (19, 2), (1, 4), (11, 11)])]
    ctxs, resps = [c for c, _ in samples], [r for _, r in samples]
    batched = conditioned_logits(base, decoder, ctxs, resps, sharing_ratio=ratio)
    assert not torch.isnan(batched).any()
    for b, (ctx, resp) in enumerate(samples):
        alone = conditioned_logits(base, decoder, [ctx], [resp], sharing_ratio=ratio)[0]
        torch.testing.assert_close(batched[b, : len(resp)], alone, atol=ATOL, rtol=0)
        assert batched[b, len(resp) :].abs().sum() == 0


def test_tensor_input_any_padding_side(models):
    base, decoder = models
    (c1, r1), (c2, r2) = _sample(20, 6, 3), _sample(21, 9, 2)
    # Row 0: context left-padded, response right-padded; row 1 full.
    ctx = torch.tensor([[0, 0, 0] + c1, c2])
    resp = torch.tensor([r1, r2 + [0]])
    mask = torch.tensor([[0, 0, 0] + [1] * 6 + [1, 1, 1], [1] * 9 + [1, 1, 0]])
    got = conditioned_logits(base, decoder, ctx, resp, sharing_ratio=1.0, attention_mask=mask)
    want = conditioned_logits(base, decoder, [c1, c2], [r1, r2], sharing_ratio=1.0)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_gradient_reaches_decoder_only(models):
    base, decoder = models
    ctx, resp = _sample(3, 12, 5)
    logits = conditioned_logits(base, decoder, [ctx], [resp], sharing_ratio=1.0)
    logits.sum().backward()
    assert all(p.grad is None for p in base.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in decoder.parameters())
    decoder.zero_grad(set_to_none=True)


@pytest.mark.parametrize("ratio", [0.0, 0.5, 1.0])
def test_greedy_decode_matches_teacher_forcing(models, ratio):
    base, decoder = models
    ctx, _ = _sample(4, 15, 1)
    tokens, logprobs = reference_greedy_decode(base, decoder, ctx, max_new_tokens=8, sharing_ratio=ratio)
    assert len(tokens) == len(logprobs) == 8
    logits = conditioned_logits(base, decoder, [ctx], [tokens], sharing_ratio=ratio)[0]
    assert logits.argmax(-1).tolist() == tokens
    want = torch.log_softmax(logits.float(), -1).gather(1, torch.tensor(tokens).unsqueeze(1)).squeeze(1)
    torch.testing.assert_close(torch.tensor(logprobs), want, atol=1e-4, rtol=0)


def test_greedy_stops_at_eos_only_when_asked(models):
    base, decoder = models
    ctx, _ = _sample(5, 8, 1)
    tokens, _ = reference_greedy_decode(base, decoder, ctx, max_new_tokens=3)
    decoder.generation_config.eos_token_id = tokens[0]
    try:
        assert len(reference_greedy_decode(base, decoder, ctx, 3)[0]) == 3
        assert reference_greedy_decode(base, decoder, ctx, 3, stop_at_eos=True)[0] == tokens[:1]
    finally:
        decoder.generation_config.eos_token_id = decoder.config.eos_token_id


def test_clone_cache_is_independent(models):
    base, _ = models
    ctx, _ = _sample(6, 10, 1)
    cache = base_prefix_cache(base, ctx)
    copy = clone_cache(cache, base.config)
    base(input_ids=torch.tensor([[5]]), past_key_values=cache, use_cache=True)
    assert cache.get_seq_length() == 11 and copy.get_seq_length() == 10
    torch.testing.assert_close(copy.layers[0].keys, cache.layers[0].keys[:, :, :10])


def test_layout_targets_point_at_boundary():
    batch = layout_batch([[1, 2, 3, 4]], [[7, 8]], sharing_ratio=1.0)
    assert batch.base_ids.tolist() == [[1, 2, 3]]
    assert batch.decoder_ids.tolist() == [[4, 7]]
    assert batch.decoder_positions.tolist() == [[3, 4]]
    assert batch.target_index.tolist() == [[0, 1]]
