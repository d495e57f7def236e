"""The accuracy study: validation split, lr choice on validation only, the paired gap, and a
whole tiny study that resumes without redoing anything."""

from __future__ import annotations

import json

import pytest
import torch
from pydantic import ValidationError

from training.config import StudyConfig, TaskConfig
from training.study import run_study
from training.study_report import choose_lr, paired_gap, study_summary
from training.tasks import get_task, split_validation, training_examples, validation_examples
from vllm_runtime.model_assets import tiny_llama_folder

torch.set_num_threads(1)


def _row(arm, lr, seed, split, uid, correct, ratio=1.0):
    return {"run": f"{arm}-{lr}-{seed}", "arm": arm, "lr": lr, "seed": seed, "split": split,
            "ratio": ratio, "uid": uid, "correct": correct}


def test_validation_questions_are_fixed_by_id_and_never_trained_on():
    task = get_task("synthetic_tool")
    everything = task.load("train", None, 0)
    train, held = split_validation(everything, 10)
    assert len(held) == 10 and len(train) == len(everything) - 10
    assert not {e.uid for e in train} & {e.uid for e in held}
    # The same questions whatever the order or the subsample of the rest.
    assert {e.uid for e in split_validation(everything[::-1], 10)[1]} == {e.uid for e in held}
    assert validation_examples(task, 10) == held
    picked = training_examples(task, 50, seed=3, validation_size=10)
    assert len(picked) == 50 and not {e.uid for e in picked} & {e.uid for e in held}


def test_the_lr_is_chosen_on_validation_even_where_test_prefers_another():
    rows = ([_row("a", 1e-4, s, "validation", f"v{i}", int(i < 3)) for s in (0, 1) for i in range(4)]
            + [_row("a", 1e-3, s, "validation", f"v{i}", int(i < 1)) for s in (0, 1) for i in range(4)]
            + [_row("a", 1e-4, 0, "test", f"t{i}", 0) for i in range(4)]
            + [_row("a", 1e-3, 0, "test", f"t{i}", 1) for i in range(4)])
    assert choose_lr(rows, "a", [1e-4, 1e-3], ratio=1.0) == 1e-4
    # A tie goes to the smaller lr; rows at another ratio do not count.
    tie = [_row("b", lr, 0, "validation", "v0", 1) for lr in (1e-3, 1e-4)]
    tie.append(_row("b", 1e-3, 0, "validation", "v1", 1, ratio=0.0))
    assert choose_lr(tie, "b", [1e-3, 1e-4], ratio=1.0) == 1e-4


def test_paired_gap_counts_each_question_and_seed():
    # 10 questions x 2 seeds; the arm is right on q0-q5, the reference on q2-q9.
    arm = [_row("ps", 1, s, "test", f"q{i}", int(i < 6)) for s in (0, 1) for i in range(10)]
    ref = [_row("ft", 1, s, "test", f"q{i}", int(i >= 2)) for s in (0, 1) for i in range(10)]
    gap = paired_gap(arm, ref)
    assert gap.gap == pytest.approx(0.6 - 0.8)
    assert (gap.only_arm, gap.only_reference, gap.questions) == (4, 8, 10)
    assert gap.ci95[0] < gap.gap < gap.ci95[1]
    with pytest.raises(ValueError, match="different questions"):
        paired_gap(arm, ref + [_row("ft", 1, 0, "test", "q10", 1)])


def test_summary_reports_chosen_lrs_gaps_and_the_r0_check():
    rows = []
    for arm, lr, good, ratio in (("full_ft", 1e-5, 3, 0.0), ("ps", 1e-4, 2, 1.0), ("ps", 1e-3, 1, 1.0)):
        for split in ("validation", "test"):
            rows += [_row(arm, lr, 0, split, f"{split}{i}", int(i < good), ratio) for i in range(4)]
    rows += [_row("ps", 1e-4, 0, "test", f"test{i}", int(i < 1), 0.0) for i in range(4)]
    summary = study_summary(rows, {"full_ft": ("full_ft", [1e-5]), "ps": ("prefillshare", [1e-4, 1e-3])},
                            "full_ft", [0])
    assert summary["chosen_lr"] == {"full_ft": 1e-5, "ps": 1e-4}
    assert summary["arms"]["ps"]["test_accuracy"] == 0.5
    assert summary["arms"]["ps"]["gap_vs_reference"]["gap"] == pytest.approx(-0.25)
    assert summary["r0"]["ps"] == {"own_prefill": 0.25, "base_kv": 0.5}


def _study(tmp_path, **kw) -> StudyConfig:
    base = tiny_llama_folder(tmp_path / "tiny-base", seed=7)
    fields = dict(
        base_model=str(base),
        task={"name": "synthetic_tool", "train_limit": 8, "eval_limit": 4, "validation_size": 4},
        arms={"full_ft": {"mode": "full_ft", "lrs": [1e-3]},
              "ps_lora": {"mode": "prefillshare_lora", "lrs": [1e-3, 1e-2],
                          "overrides": {"lora": {"r": 2, "alpha": 4, "target_modules": ["q_proj"]}}}},
        seeds=[0, 1], also_at_r0=["ps_lora"],
        train={"steps": 2, "batch_size": 2, "micro_batch_size": 2, "max_length": 256,
               "use_gpu": False, "checkpoint_every": 1},
        max_new_tokens=4, eval_batch_size=4, device="cpu", output_dir=tmp_path / "study")
    fields.update(kw)
    return StudyConfig.model_validate(fields)


def test_study_config_refuses_choosing_the_lr_on_test(tmp_path):
    cfg = _study(tmp_path)
    with pytest.raises(ValidationError, match="validation_size"):
        _study(tmp_path, task=cfg.task.model_copy(update={"validation_size": 0}).model_dump())
    with pytest.raises(ValidationError, match="not one of the arms"):
        _study(tmp_path, reference="naive")
    run = cfg.run_config("ps_lora", 1e-2, 1)
    assert (run.mode, run.lr, run.seed, run.lora.r) == ("prefillshare_lora", 1e-2, 1, 2)
    assert run.output_dir == cfg.output_dir / "decoders" / "ps_lora-lr0.01-s1"
    assert isinstance(run.task, TaskConfig) and run.task.validation_size == 4


def test_a_tiny_study_runs_end_to_end_and_resumes_without_redoing_work(tmp_path):
    cfg = _study(tmp_path)
    report = run_study(cfg)
    rows = [json.loads(x) for x in (cfg.output_dir / "rows.jsonl").read_text().splitlines()]
    runs = {r["run"] for r in rows}
    assert runs == {"base", "full_ft-lr0.001-s0", "full_ft-lr0.001-s1", "ps_lora-lr0.001-s0",
                    "ps_lora-lr0.001-s1", "ps_lora-lr0.01-s0", "ps_lora-lr0.01-s1"}
    keys = {(r["run"], r["split"], r["ratio"]) for r in rows}
    assert ("full_ft-lr0.001-s0", "test", 0.0) in keys  # Full-FT is served on its own prefill
    assert ("ps_lora-lr0.01-s1", "validation", 1.0) in keys  # the others on base KV
    assert ("ps_lora-lr0.01-s1", "test", 0.0) in keys  # also_at_r0
    assert len(rows) == 4 + 2 * (4 + 4) + 4 * (4 + 4 + 4)
    summary = json.loads((cfg.output_dir / "summary.json").read_text())
    assert summary["chosen_lr"]["ps_lora"] in (1e-3, 1e-2)
    assert "gap vs full_ft" in report.read_text()
    # Rerun: every decoder exported and every row present, so nothing is trained or scored.
    exported = {p: p.stat().st_mtime_ns for p in (cfg.output_dir / "decoders").rglob("*.json")}
    size = (cfg.output_dir / "rows.jsonl").stat().st_size
    run_study(cfg)
    assert {p: p.stat().st_mtime_ns for p in exported} == exported
    assert (cfg.output_dir / "rows.jsonl").stat().st_size == size
