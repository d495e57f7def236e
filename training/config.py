"""Training and evaluation configs (YAML files validated by pydantic): the CLI's edge."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

TaskName = Literal[
    "synthetic_arith", "synthetic_tool", "gsm8k", "bfcl", "humaneval",
    # the default roles in the serving layout (training/roles.py)
    "role_planner", "role_coder", "role_tool_caller", "role_critic",
]
Mode = Literal["prefillshare", "prefillshare_lora", "full_ft"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskConfig(_Strict):
    name: TaskName
    train_limit: int | None = Field(None, ge=1, description="train examples used (seeded subsample)")
    eval_limit: int | None = Field(None, ge=1, description="held-out examples scored")
    seed: int = 0
    validation_size: int = Field(
        0, ge=0, description="train questions held back from training, for choosing the lr "
        "(the same ones in every run: chosen by a hash of the question id)")
    multi_turn_fraction: float = Field(
        0.0, ge=0.0, le=1.0, description="synthetic_arith only: share of two-turn examples"
    )


class LoraConfig(_Strict):
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class TrainConfig(_Strict):
    """One decoder for one task. The base stays frozen; the decoder starts as its copy."""

    base_model: str = Field(description="alias 'smollm2' or an HF folder; the prefill pool's model")
    task: TaskConfig
    mode: Mode = Field(
        "prefillshare",
        description="prefillshare: cache-conditioned full FT; prefillshare_lora: same with a "
        "PEFT adapter; full_ft: conventional full FT (the decoder prefills itself, r = 0)",
    )
    sharing_ratio: float | None = Field(
        None, ge=0.0, le=1.0, description="context share on base KV; default 1 (0 for full_ft)"
    )
    output_dir: Path = Field(description="where the HF folder or PEFT adapter is written")
    storage_dir: Path = Field(Path("runs"), description="Ray Train storage: checkpoints live here")
    run_name: str | None = Field(None, description="checkpoint run name; same name = resume")
    steps: int | None = Field(None, ge=1, description="optimizer steps; default one epoch")
    epochs: float = Field(1.0, gt=0)
    batch_size: int = Field(16, ge=1, description="global (effective) batch in examples")
    micro_batch_size: int = Field(4, ge=1, description="examples per forward on one worker")
    lr: float = Field(1e-5, gt=0)
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    schedule: Literal["linear", "cosine"] = "linear"
    max_length: int = Field(1024, ge=8)
    lora: LoraConfig = LoraConfig()
    num_workers: int = Field(1, ge=1)
    use_gpu: bool | Literal["auto"] = "auto"
    threads_per_worker: int = Field(1, ge=1, description="torch threads (the box is shared)")
    checkpoint_every: int = Field(50, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(10, ge=1)
    save_dtype: Literal["float32", "bfloat16"] = "float32"
    seed: int = 0

    @property
    def boundary_ratio(self) -> float:
        if self.sharing_ratio is not None:
            return self.sharing_ratio
        return 0.0 if self.mode == "full_ft" else 1.0

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.mode == "full_ft" and self.sharing_ratio not in (None, 0.0):
            raise ValueError("full_ft is the conventional baseline: its sharing_ratio is 0")
        if self.batch_size % self.num_workers:
            raise ValueError("batch_size must split evenly across num_workers")
        if self.task.name == "humaneval":
            raise ValueError("humaneval is evaluation-only")
        return self


class DecoderRef(_Strict):
    path: Path
    kind: Literal["full", "lora"] = "full"


class EvalConfig(_Strict):
    """Which decoders to score on which tasks, and the sharing-ratio sweep."""

    base_model: str
    tasks: list[TaskConfig]
    decoders: dict[str, DecoderRef] = Field(
        default_factory=dict,
        description="keys among full_ft, prefillshare, prefillshare_lora (missing ones are skipped)",
    )
    ratios: list[float] = [0.0, 0.25, 0.5, 0.75, 1.0]
    max_new_tokens: int = Field(256, ge=1)
    batch_size: int = Field(8, ge=1)
    multi_turn: bool = Field(True, description="score the multi-turn case on synthetic_arith")
    output_dir: Path = Path("runs/eval")
    threads: int = Field(1, ge=1)
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA if torch sees one")

    @model_validator(mode="after")
    def _check(self) -> EvalConfig:
        unknown = set(self.decoders) - {"full_ft", "prefillshare", "prefillshare_lora"}
        if unknown:
            raise ValueError(f"unknown decoder keys {sorted(unknown)}")
        if any(not 0 <= r <= 1 for r in self.ratios):
            raise ValueError("ratios must lie in [0, 1]")
        return self


class StudyMethod(_Strict):
    """One arm of an accuracy study: a training mode, its lr grid, its own settings."""

    mode: Mode
    lrs: list[float] = Field(min_length=1, description="the lr grid; the study picks one")
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="TrainConfig fields for this arm only (lora, epochs)")


class StudyConfig(_Strict):
    """A paired accuracy study (`python -m training study`): every arm trained at every lr
    and seed with one training budget, its lr chosen on validation questions held back from
    the train split, and the arms compared on the same test questions."""

    base_model: str
    task: TaskConfig
    arms: dict[str, StudyMethod]
    reference: str = Field("full_ft", description="the arm every other arm is compared with")
    seeds: list[int] = Field([0, 1], min_length=1)
    train: dict[str, Any] = Field(
        default_factory=dict, description="TrainConfig fields every run shares (epochs, "
        "batch_size, max_length, ...)")
    also_at_r0: list[str] = Field(
        default_factory=list, description="arms also scored on their own prefill (r = 0) on "
        "the test questions: is a weakness the decoder's or the base KV's?")
    max_new_tokens: int = Field(128, ge=1)
    eval_batch_size: int = Field(32, ge=1)
    threads: int = Field(1, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    output_dir: Path = Path("runs/study")

    def run_config(self, arm: str, lr: float, seed: int) -> TrainConfig:
        method = self.arms[arm]
        name = run_name(arm, lr, seed)
        fields = {**self.train, **method.overrides, "base_model": self.base_model,
                  "task": self.task, "mode": method.mode, "lr": lr, "seed": seed,
                  "output_dir": self.output_dir / "decoders" / name,
                  "storage_dir": self.output_dir / "checkpoints", "run_name": name}
        return TrainConfig.model_validate(fields)

    @model_validator(mode="after")
    def _check(self) -> StudyConfig:
        if self.task.validation_size < 1:
            raise ValueError("task.validation_size: the lr is chosen on held-back train "
                             "questions, never on the test questions")
        for name in [self.reference, *self.also_at_r0]:
            if name not in self.arms:
                raise ValueError(f"{name!r} is not one of the arms {sorted(self.arms)}")
        for arm, method in self.arms.items():
            self.run_config(arm, method.lrs[0], self.seeds[0])  # each arm's runs validate
        return self


def run_name(arm: str, lr: float, seed: int) -> str:
    return f"{arm}-lr{lr:g}-s{seed}"


def load_yaml(path: Path, model: type[_Strict]) -> _Strict:
    return model.model_validate(yaml.safe_load(Path(path).read_text()))
