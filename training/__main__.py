"""`python -m training {train,eval,nll,example-config}`: the training CLI (runs in the driver).

train: one decoder for one task on Ray Train (--backend local: the same loop in-process);
       rerun the same command after a crash to resume from the latest checkpoint (same run
       name and storage dir).
eval:  scores base / Full-FT / naive sharing / PrefillShare (+LoRA) and the r sweep; writes
       results.json, table.md and sweep.png to the eval config's output_dir.
nll:   teacher-forced held-out NLL per response token for the same variants and r sweep.
study: a paired accuracy study: every arm at every lr and seed, the lr chosen on validation
       questions, the arms compared on the same test questions; rerun to resume.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

EXAMPLE_TRAIN = """\
base_model: smollm2            # or an HF folder; the prefill pool's model
task: {name: gsm8k, train_limit: 2000, seed: 0}
mode: prefillshare             # prefillshare | prefillshare_lora | full_ft
output_dir: runs/decoders/gsm8k-prefillshare
storage_dir: runs/ray-train    # checkpoints; rerun with the same run_name to resume
steps: 125
batch_size: 16                 # global
micro_batch_size: 4
lr: 2.0e-5
warmup_ratio: 0.03
schedule: linear
max_length: 1024
num_workers: 1
use_gpu: auto
checkpoint_every: 25
"""

EXAMPLE_EVAL = """\
base_model: smollm2
tasks:
  - {name: gsm8k, eval_limit: 200}
  - {name: synthetic_arith, eval_limit: 200}
decoders:
  full_ft: {path: runs/decoders/gsm8k-full_ft}
  prefillshare: {path: runs/decoders/gsm8k-prefillshare}
  prefillshare_lora: {path: runs/decoders/gsm8k-lora, kind: lora}
ratios: [0.0, 0.25, 0.5, 0.75, 1.0]
max_new_tokens: 256
batch_size: 8
output_dir: runs/eval/gsm8k
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="fine-tune one decoder (Ray Train TorchTrainer)")
    train.add_argument("--config", type=Path, required=True, help="training YAML (see example-config train)")
    train.add_argument("--ray-temp-dir", default=None, help="Ray's temp dir when starting a local Ray")
    train.add_argument("--max-failures", type=int, default=0, help="worker crashes Ray Train retries in-run")
    train.add_argument(
        "--backend",
        choices=["ray", "local"],
        default="ray",
        help="ray: Ray Train TorchTrainer (default); local: the same worker loop in this process, "
        "one worker on CUDA if present (for machines without Ray)",
    )
    evaluate = sub.add_parser("eval", help="score decoders across the KV boundary")
    evaluate.add_argument("--config", type=Path, required=True, help="evaluation YAML (see example-config eval)")
    nll = sub.add_parser("nll", help="held-out response NLL per token across the r sweep")
    nll.add_argument("--config", type=Path, required=True, help="the same evaluation YAML")
    nll.add_argument("--limit", type=int, default=96, help="held-out examples per task")
    study = sub.add_parser("study", help="paired accuracy study across methods, lrs and seeds")
    study.add_argument("--config", type=Path, required=True, help="study YAML (e.g. training/configs/study_bfcl_parity.yaml)")
    study.add_argument("--backend", choices=["local", "ray"], default="local",
                       help="local (default): every run in this process, one device; ray: each run on Ray Train")
    study.add_argument("--report-only", action="store_true", help="rewrite report.md from rows.jsonl")
    example = sub.add_parser("example-config", help="print an example YAML")
    example.add_argument("kind", choices=["train", "eval"])
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.command == "example-config":
        print(EXAMPLE_TRAIN if args.kind == "train" else EXAMPLE_EVAL, end="")
        return 0
    from training.config import EvalConfig, StudyConfig, TrainConfig, load_yaml

    if args.command == "study":
        from training.study import run_study

        print(run_study(load_yaml(args.config, StudyConfig), args.backend, args.report_only))
        return 0

    if args.command == "train":
        cfg = load_yaml(args.config, TrainConfig)
        if args.backend == "local":
            from training.local_train import run_local_training

            print(run_local_training(cfg))
            return 0
        from training.ray_train import run_training

        print(run_training(cfg, ray_temp_dir=args.ray_temp_dir, max_failures=args.max_failures))
        return 0
    if args.command == "nll":
        from training.heldout_nll import write_nll

        print(write_nll(load_yaml(args.config, EvalConfig), args.limit))
        return 0
    from training.evaluate import run_evaluation

    print(run_evaluation(load_yaml(args.config, EvalConfig)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
