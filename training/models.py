"""Loading the frozen base, making and exporting decoders, and recording what base they fit.

A decoder is only valid on the KV of the base it was conditioned on, so every export carries
prefillshare_decoder.json with the base's path and the sha256 of its config and weights;
evaluation (and serving) can refuse a decoder whose base changed.
"""

from __future__ import annotations

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
from vllm_runtime.decoder_identity import IDENTITY_FILE, base_mismatch, read_identity
from vllm_runtime.model_assets import resolve_model

log = logging.getLogger(__name__)



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


def check_base_matches(decoder_dir: Path, base_path: Path) -> None:
    """Warns loudly if a decoder was conditioned on other base weights than the ones in use."""
    if read_identity(decoder_dir) is None:
        log.warning("%s has no %s: cannot check its base", decoder_dir, IDENTITY_FILE)
        return
    problem = base_mismatch(decoder_dir, base_path)
    if problem:
        raise ValueError(problem)


def load_decoder(ref: DecoderRef, base_path: Path) -> PreTrainedModel:
    check_base_matches(ref.path, base_path)
    if ref.kind == "lora":
        from peft import PeftModel

        return PeftModel.from_pretrained(load_causal_lm(base_path), str(ref.path)).eval()
    return load_causal_lm(ref.path).eval()
