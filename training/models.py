"""Loading the frozen base, making and exporting decoders, and recording what base they fit.

A decoder is only valid on the KV of the base it was conditioned on, so every export carries
prefillshare_decoder.json with the base's path and the sha256 of its config and weights;
evaluation (and serving) can refuse a decoder whose base changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from training.config import DecoderRef, LoraConfig, Mode
from vllm_runtime.model_assets import resolve_model

log = logging.getLogger(__name__)

IDENTITY_FILE = "prefillshare_decoder.json"
_HASHED = ("config.json", "*.safetensors", "*.bin")


def load_causal_lm(path: str | Path, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    # bf16 checkpoints are loaded in float32: CPU bf16 matmuls are slow and lose small updates.
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)


def load_base(base_model: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, Path]:
    """The frozen base: eval mode, no parameter requires grad."""
    path = Path(resolve_model(base_model))
    model = load_causal_lm(path).eval()
    model.requires_grad_(False)
    return model, AutoTokenizer.from_pretrained(str(path)), path


def make_decoder(base_path: Path, mode: Mode, lora: LoraConfig, seed: int = 0) -> PreTrainedModel:
    """A fresh copy of the base weights, to be fine-tuned (LoRA: only the adapter trains)."""
    model = load_causal_lm(base_path)
    if mode != "prefillshare_lora":
        return model.train()
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_cfg = PeftLoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=0.0, target_modules=lora.target_modules, task_type="CAUSAL_LM"
    )
    # Seeded: the adapter's random A init must not depend on what ran before in the process.
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return get_peft_model(model, peft_cfg).train()


def trainable_state(decoder: PreTrainedModel) -> dict[str, torch.Tensor]:
    if _is_peft(decoder):
        from peft import get_peft_model_state_dict

        return {k: v.detach().clone() for k, v in get_peft_model_state_dict(decoder).items()}
    return {k: v.detach().clone() for k, v in decoder.state_dict().items()}


def load_trainable_state(decoder: PreTrainedModel, state: dict[str, torch.Tensor]) -> None:
    if _is_peft(decoder):
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(decoder, state)
        if getattr(result, "unexpected_keys", None):
            raise ValueError(f"unexpected adapter keys {result.unexpected_keys[:3]}")
        return
    decoder.load_state_dict(state)


def _is_peft(model: Any) -> bool:
    return hasattr(model, "peft_config")


def model_identity(path: Path) -> dict[str, Any]:
    """The folder's resolved path and the sha256 of its config and weight files."""
    files: dict[str, str] = {}
    for pattern in _HASHED:
        for file in sorted(path.glob(pattern)):
            digest = hashlib.sha256()
            with file.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
            files[file.name] = digest.hexdigest()
    return {"path": str(path.resolve()), "sha256": files}


def export_decoder(
    decoder: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: Path,
    record: dict[str, Any],
    save_dtype: str = "float32",
) -> Path:
    """Writes an HF folder (full) or a PEFT adapter folder (LoRA) that vLLM loads as is."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if _is_peft(decoder):
        # save_dtype applies to the adapter weights only (PEFT upcasts them again on load).
        lora = [p for n, p in decoder.named_parameters() if "lora_" in n]
        for p in lora:
            p.data = p.data.to(getattr(torch, save_dtype))
        decoder.save_pretrained(str(out_dir))
        for p in lora:
            p.data = p.data.to(torch.float32)
    else:
        dtype = getattr(torch, save_dtype)
        decoder.to(dtype).save_pretrained(str(out_dir), safe_serialization=True)
        decoder.to(torch.float32)
        tokenizer.save_pretrained(str(out_dir))
    (out_dir / IDENTITY_FILE).write_text(json.dumps(record, indent=2, default=str))
    return out_dir


def read_identity(folder: Path) -> dict[str, Any] | None:
    path = Path(folder) / IDENTITY_FILE
    return json.loads(path.read_text()) if path.exists() else None


def check_base_matches(decoder_dir: Path, base_path: Path) -> None:
    """Warns loudly if a decoder was conditioned on other base weights than the ones in use."""
    record = read_identity(decoder_dir)
    if record is None:
        log.warning("%s has no %s: cannot check its base", decoder_dir, IDENTITY_FILE)
        return
    if record["base"]["sha256"] != model_identity(base_path)["sha256"]:
        raise ValueError(f"{decoder_dir} was conditioned on another base than {base_path}")


def load_decoder(ref: DecoderRef, base_path: Path) -> PreTrainedModel:
    check_base_matches(ref.path, base_path)
    if ref.kind == "lora":
        from peft import PeftModel

        return PeftModel.from_pretrained(load_causal_lm(base_path), str(ref.path)).eval()
    return load_causal_lm(ref.path).eval()
