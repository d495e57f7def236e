"""LoRA adapters for the benchmark's roles: the given folder's (one subfolder per role, e.g.
the shipped adapters/ for SmolLM2), or random ones of a fixed rank for any base model.

For a serving benchmark an adapter's values do not matter, its shape does (rank, target
modules: the work per token); random B != 0 so that the adapter really runs.
"""

from __future__ import annotations

from pathlib import Path

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def role_adapters(model: str, roles: list[str], adapters_dir: str | None = None,
                  rank: int = 8) -> dict[str, str]:
    """role -> adapter folder."""
    if adapters_dir is not None:
        found = {r: Path(adapters_dir) / r for r in roles}
        missing = [r for r, p in found.items() if not (p / "adapter_config.json").exists()]
        if missing:
            raise FileNotFoundError(f"no adapter for {missing} in {adapters_dir}")
        return {r: str(p) for r, p in found.items()}
    return {r: random_adapter(model, r, seed=i, rank=rank) for i, r in enumerate(roles)}


def random_adapter(model: str, name: str, seed: int, rank: int) -> str:
    """A PEFT adapter of ``rank`` over ``model`` with random A and B, cached by base and name."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from vllm_runtime.model_assets import cache_dir, resolve_model

    base = resolve_model(model)
    target = cache_dir() / f"bench-lora-{Path(base).name}-{name}-r{rank}"
    if not (target / "adapter_config.json").exists():
        torch.manual_seed(seed)
        weights = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        cfg = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(TARGETS),
                         init_lora_weights=False)
        get_peft_model(weights, cfg).save_pretrained(target)
    return str(target)
