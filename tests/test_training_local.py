"""The local (in-process, no Ray) backend on a tiny model, eval's partial score log, and the
BFCL data-folder override used on machines without bfcl-eval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from training.__main__ import main
from vllm_runtime.decoder_identity import IDENTITY_FILE, model_identity
from vllm_runtime.model_assets import tiny_llama_folder

torch.set_num_threads(1)  # the box is shared


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory) -> Path:
    return tiny_llama_folder(tmp_path_factory.mktemp("local") / "tiny-base", seed=11)


def _train_yaml(tmp_path: Path, base: Path, mode: str, steps: int) -> Path:
    cfg = {
        "base_model": str(base), "task": {"name": "synthetic_arith", "train_limit": 12}, "mode": mode,
        "output_dir": str(tmp_path / f"dec-{mode}"), "storage_dir": str(tmp_path / "ck"), "steps": steps,
        "batch_size": 4, "micro_batch_size": 2, "lr": 1e-3, "checkpoint_every": 1, "max_length": 256,
        "use_gpu": False,
    }
    path = tmp_path / f"train-{mode}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_local_backend_trains_exports_resumes_and_evaluates(tmp_path, base_folder):
    config = _train_yaml(tmp_path, base_folder, "prefillshare", steps=3)
    assert main(["train", "--backend", "local", "--config", str(config)]) == 0
    out = tmp_path / "dec-prefillshare"
    record = json.loads((out / IDENTITY_FILE).read_text())
    assert record["base"] == model_identity(base_folder) and record["device"] == "cpu"
    assert len(record["losses"]) == 3 and record["sharing_ratio"] == 1.0
    weights = load_file(out / "model.safetensors")
    assert not torch.equal(weights["model.norm.weight"], load_file(base_folder / "model.safetensors")["model.norm.weight"])

    # Same command again: resumes from the final checkpoint, trains nothing, same export.
    assert main(["train", "--backend", "local", "--config", str(config)]) == 0
    again = json.loads((out / IDENTITY_FILE).read_text())
    assert again["losses"] == record["losses"]
    assert all(torch.equal(weights[k], v) for k, v in load_file(out / "model.safetensors").items())

    eval_cfg = {
        "base_model": str(base_folder), "tasks": [{"name": "synthetic_arith", "eval_limit": 3}],
        "decoders": {"prefillshare": {"path": str(out)}}, "ratios": [0.0, 1.0], "max_new_tokens": 4,
        "batch_size": 2, "multi_turn": False, "device": "cpu", "output_dir": str(tmp_path / "eval"),
    }
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(eval_cfg))
    assert main(["eval", "--config", str(tmp_path / "eval.yaml")]) == 0
    final = json.loads((tmp_path / "eval" / "results.json").read_text())["scores"]
    partial = [json.loads(x) for x in (tmp_path / "eval" / "scores.partial.jsonl").read_text().splitlines()]
    # Every score that was actually run is logged as it finishes, with the same numbers.
    assert [(p["variant"], p["ratio"], p["correct"]) for p in partial] == [
        (r["variant"], r["ratio"], r["correct"]) for r in final
    ]


def test_local_backend_refuses_several_workers(tmp_path, base_folder):
    config = _train_yaml(tmp_path, base_folder, "full_ft", steps=1)
    data = yaml.safe_load(config.read_text()) | {"num_workers": 2}
    config.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match="one worker"):
        main(["train", "--backend", "local", "--config", str(config)])


def _bfcl_rows(category: str, count: int) -> tuple[list[dict], list[dict]]:
    questions, answers = [], []
    for i in range(count):
        qid = f"{category}_{i}"
        questions.append({
            "id": qid, "question": [[{"role": "user", "content": f"area of circle {i}"}]],
            "function": [{"name": "area", "parameters": {"properties": {"r": {"type": "integer"}}}}],
        })
        answers.append({"id": qid, "ground_truth": [{"area": {"r": [i], "unit": ["", "cm"]}}]})
    return questions, answers


def test_bfcl_data_folder_override_and_question_split(tmp_path, monkeypatch):
    from training import tasks_benchmarks

    (tmp_path / "possible_answer").mkdir()
    for category in tasks_benchmarks.BFCL_CATEGORIES:
        questions, answers = _bfcl_rows(category, 40)
        (tmp_path / f"BFCL_v4_{category}.json").write_text("".join(json.dumps(q) + "\n" for q in questions))
        (tmp_path / "possible_answer" / f"BFCL_v4_{category}.json").write_text(
            "".join(json.dumps(a) + "\n" for a in answers)
        )
    monkeypatch.setenv("PREFILLSHARE_BFCL_DATA", str(tmp_path))
    train = tasks_benchmarks.load_bfcl("train", None, 0)
    test = tasks_benchmarks.load_bfcl("test", None, 0)
    assert len(train) + len(test) == 40 * len(tasks_benchmarks.BFCL_CATEGORIES)
    assert test and not {e.uid for e in train} & {e.uid for e in test}  # split by question
    example = train[0]
    assert example.target.startswith("area(r=") and "unit" not in example.target  # optional arg omitted
    from training.scoring import score_call

    assert all(score_call(e.target, e.reference) == 1.0 for e in test)  # the canonical call scores


def test_nll_sweep_plot_draws_each_swept_task(tmp_path):
    from training.report import nll_sweep_plot

    rows = {"naive@0": 0.5, "naive@1": 0.7, "prefillshare@0": 0.52, "prefillshare@1": 0.51, "base@0": 1.2}
    assert nll_sweep_plot({"gsm8k": rows, "humaneval": {}}, tmp_path / "nll.png") == tmp_path / "nll.png"
    assert (tmp_path / "nll.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert nll_sweep_plot({"bfcl": {"base@0": 1.0}}, tmp_path / "none.png") is None  # nothing swept
    assert not (tmp_path / "none.png").exists()
