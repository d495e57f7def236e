"""A decoder trained by `training` (cache-conditioned, a few steps on a tiny base) serves as
it is: its next-token log-probabilities through the served P/D path (Serve, two vLLM
engines, a NIXL pull) equal the training-side forward (training.kv_boundary) on the same
context. The contract test checks random decoders; this one checks the training output."""

from __future__ import annotations

import pytest
import torch

from bench.running_app import running_app, tiny_engine, tiny_models

pytestmark = pytest.mark.slow

LOGPROB_ATOL = 1e-3  # the same bound and reasoning as tests/e2e/test_serving_e2e.py


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from training.config import TaskConfig, TrainConfig
    from training.loop import LocalCheckpointStore, train_decoder
    from training.models import export_decoder, load_base, make_decoder
    from vllm_runtime.decoder_identity import model_identity
    from training.ray_train import load_training_data

    torch.set_num_threads(1)
    base_dir, _ = tiny_models()
    tmp = tmp_path_factory.mktemp("trained")
    cfg = TrainConfig(base_model=base_dir, task=TaskConfig(name="synthetic_arith", train_limit=8),
                      mode="prefillshare", output_dir=tmp / "dec", storage_dir=tmp / "ck",
                      steps=3, batch_size=4, micro_batch_size=4, lr=1e-2, max_length=256)
    base, tokenizer, path = load_base(base_dir)
    decoder = make_decoder(path, cfg.mode, cfg.lora)
    data = load_training_data(cfg, tokenizer)
    train_decoder(cfg, base, decoder, data, LocalCheckpointStore(tmp / "ck"))
    out = export_decoder(decoder, tokenizer, tmp / "dec",
                         {"mode": cfg.mode, "base": model_identity(path)})
    return base_dir, str(out), data


def test_trained_decoder_serves_with_training_logprobs(trained):
    from training.kv_boundary import conditioned_logits
    from training.models import load_causal_lm

    base_dir, decoder_dir, data = trained
    args = {"base_model": base_dir, "prefill_pools": {"shared": {"engine": tiny_engine()}},
            "roles": [{"name": "solver", "decoder": decoder_dir,
                       "decode_pool": {"engine": tiny_engine()}}]}
    with running_app(args) as app:
        example = data[0]
        context, answer = list(example.context), list(example.response)

        ids, lps, _ = app.greedy_pd("prefill-shared", "decode-solver", context, 6)

    base = load_causal_lm(base_dir).eval()
    decoder = load_causal_lm(decoder_dir).eval()
    base_sd = base.state_dict()
    assert any(not torch.equal(v, base_sd[k]) for k, v in decoder.state_dict().items())  # trained
    with torch.no_grad():
        # Teacher-force the served tokens through the training-side forward (r = 1).
        logits = conditioned_logits(base, decoder, [context], [ids], sharing_ratio=1.0)
    logp = torch.log_softmax(logits[0].float(), dim=-1)  # (M, V)
    train_ids = logp.argmax(-1).tolist()
    train_lps = [float(logp[i, t]) for i, t in enumerate(ids)]
    assert ids == train_ids  # greedy under the training forward picks the same tokens
    assert max(abs(a - b) for a, b in zip(lps, train_lps)) < LOGPROB_ATOL
    assert answer  # the example had a response to train on
