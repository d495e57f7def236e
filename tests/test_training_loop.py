"""Cache-conditioned fine-tuning without Ray: loss, gradients, padding, schedule, resume."""

from __future__ import annotations

import pytest
import torch

from training.config import TaskConfig, TrainConfig
from training.data import global_batch, tokenize_examples, worker_micro_batches
from training.loop import LocalCheckpointStore, lr_multiplier, train_decoder
from training.models import load_base, make_decoder
from training.objective import per_sample_nll
from training.tasks import get_task
from vllm_runtime.model_assets import tiny_llama_folder

torch.set_num_threads(1)  # the box is shared; more threads only thrash under load


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory):
    return tiny_llama_folder(tmp_path_factory.mktemp("loop") / "tiny-base", seed=7)


@pytest.fixture(scope="module")
def base(base_folder):
    return load_base(str(base_folder))  # (model, tokenizer, path)


@pytest.fixture(scope="module")
def data(base):
    _, tokenizer, _ = base
    examples = get_task("synthetic_arith", multi_turn_fraction=0.3).load("train", 24, 0)
    return tokenize_examples(tokenizer, examples, max_length=256)


def _cfg(base_folder, tmp_path, **kw) -> TrainConfig:
    fields = dict(
        base_model=str(base_folder), task=TaskConfig(name="synthetic_arith", train_limit=24),
        output_dir=tmp_path / "out", steps=4, batch_size=4, micro_batch_size=2, lr=1e-3,
        checkpoint_every=2, log_every=1,
    )
    fields.update(kw)
    return TrainConfig(**fields)


def _perturbed_decoder(base_path, seed: int):
    decoder = make_decoder(base_path, "prefillshare", TrainConfig.model_fields["lora"].default)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in decoder.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    return decoder


def test_loss_is_response_tokens_only_and_r0_is_conventional(base, data):
    model, _, path = base
    decoder = _perturbed_decoder(path, 0)
    ex = data[0]
    nll, count = per_sample_nll(model, decoder, [ex.context], [ex.response], sharing_ratio=0.0)
    assert int(count[0]) == len(ex.response)
    # HF's own loss with the context masked out (-100) is the conventional objective.
    ids = torch.tensor([ex.context + ex.response])
    labels = torch.tensor([[-100] * len(ex.context) + ex.response])
    want = decoder(input_ids=ids, labels=labels).loss * len(ex.response)
    torch.testing.assert_close(nll[0], want, atol=1e-4, rtol=1e-5)
    # The context tokens carry no loss: changing them as targets changes nothing we score.
    nll_r1, _ = per_sample_nll(model, decoder, [ex.context], [ex.response], sharing_ratio=1.0)
    assert abs(float(nll_r1[0].detach() - nll[0].detach())) > 1e-3  # r matters once weights differ


@pytest.mark.parametrize("ratio", [0.0, 1.0])
def test_padding_does_not_change_per_sample_loss(base, data, ratio):
    model, _, path = base
    decoder = _perturbed_decoder(path, 1)
    rows = data[:5]
    assert len({len(r.context) + len(r.response) for r in rows}) > 1  # really padded
    batched, _ = per_sample_nll(model, decoder, [r.context for r in rows], [r.response for r in rows], ratio)
    for i, r in enumerate(rows):
        alone, _ = per_sample_nll(model, decoder, [r.context], [r.response], ratio)
        torch.testing.assert_close(batched[i], alone[0], atol=1e-4, rtol=1e-5)


def test_no_gradient_reaches_base(base, data, base_folder, tmp_path):
    model, _, path = base
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = _cfg(base_folder, tmp_path, steps=2)
    decoder = make_decoder(path, cfg.mode, cfg.lora)
    losses = train_decoder(cfg, model, decoder, data, LocalCheckpointStore(tmp_path / "ck"))
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    changed = any(not torch.equal(before[k], v) for k, v in decoder.state_dict().items())
    assert changed


@pytest.mark.parametrize("mode", ["prefillshare", "prefillshare_lora"])
def test_resume_equals_uninterrupted(base, data, base_folder, tmp_path, mode):
    model, _, path = base
    cfg = _cfg(base_folder, tmp_path, mode=mode)
    straight = make_decoder(path, mode, cfg.lora)
    train_decoder(cfg, model, straight, data, LocalCheckpointStore(tmp_path / "a"))

    store = LocalCheckpointStore(tmp_path / "b")
    crashed = make_decoder(path, mode, cfg.lora)
    train_decoder(cfg, model, crashed, data, store, stop_after=2)  # "crash" after checkpoint 2
    del crashed
    resumed = make_decoder(path, mode, cfg.lora)  # a fresh process would start from here
    straight_losses = train_decoder(cfg, model, make_decoder(path, mode, cfg.lora), data, LocalCheckpointStore(tmp_path / "c"))
    losses = train_decoder(cfg, model, resumed, data, store)
    assert losses == straight_losses  # steps 1-2 from the checkpoint, 3-4 run again
    want, got = straight.state_dict(), resumed.state_dict()
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_lora_trains_adapter_only(base, data, base_folder, tmp_path):
    model, _, path = base
    cfg = _cfg(base_folder, tmp_path, mode="prefillshare_lora", steps=1)
    decoder = make_decoder(path, cfg.mode, cfg.lora)
    frozen = {k: v.clone() for k, v in decoder.state_dict().items() if "lora_" not in k}
    train_decoder(cfg, model, decoder, data, LocalCheckpointStore(tmp_path / "ck"))
    state = decoder.state_dict()
    assert all(torch.equal(frozen[k], state[k]) for k in frozen)


def test_schedule_warmup_then_decay():
    total = 100
    values = [lr_multiplier(s, total, 0.03, "linear") for s in range(total)]
    assert values[0] == pytest.approx(1 / 3) and values[2] == pytest.approx(1.0)
    assert values[50] < values[10] and values[-1] < 0.02
    cosine = [lr_multiplier(s, total, 0.03, "cosine") for s in range(total)]
    assert cosine[3] == pytest.approx(1.0) and cosine[-1] < 0.01


def test_batches_are_deterministic_and_sharded():
    first = global_batch(10, 4, 0, seed=3)
    assert first == global_batch(10, 4, 0, seed=3)
    epoch = global_batch(10, 4, 0, 3) + global_batch(10, 4, 1, 3) + global_batch(10, 4, 2, 3)[:2]
    assert sorted(epoch) == list(range(10))  # one epoch covers every example once
    shards = [worker_micro_batches(first, r, 2, 1) for r in range(2)]
    assert sorted(i for s in shards for m in s for i in m) == sorted(first)


def test_config_rejects_r_for_conventional_ft(base_folder, tmp_path):
    with pytest.raises(ValueError):
        _cfg(base_folder, tmp_path, mode="full_ft", sharing_ratio=1.0)
    assert _cfg(base_folder, tmp_path, mode="full_ft").boundary_ratio == 0.0
