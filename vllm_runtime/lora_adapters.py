"""Can a LoRA decode pool serve this adapter folder? Checked before vLLM sees it, because vLLM
loads an adapter lazily on its first request (a bad one then fails that request, not the
deploy) and never checks which base it was trained on.

Pure: reads JSON files and hashes the base (decoder_identity); no torch, no vLLM.
"""

from __future__ import annotations

import json
from pathlib import Path

from vllm_runtime.decoder_identity import base_mismatch

# Relative adapter paths not found from the current directory are looked up here: the
# checkout that holds the code and its committed adapters/ (`serve deploy` builds the app in a
# Ray task whose current directory is not the one the user typed the command in).
PROJECT_ROOT = Path(__file__).resolve().parents[1]


class AdapterRejected(ValueError):
    """The adapter cannot be served by this pool; the message says why and what to change."""


def find_adapter(path: str) -> Path:
    """The adapter folder: ``path`` as given (absolute or from the current directory), else
    relative to the project checkout."""
    given = Path(path).expanduser()
    candidates = [given] if given.is_absolute() else [given, PROJECT_ROOT / given]
    for folder in candidates:
        if (folder / "adapter_config.json").exists():
            return folder.resolve()
    tried = " or ".join(str(c.resolve()) for c in candidates)
    raise AdapterRejected(f"LoRA adapter {path!r}: no adapter_config.json in {tried}")


def check_adapter(path: str, base: str, max_lora_rank: int) -> Path:
    """The resolved folder of an adapter this pool can serve; AdapterRejected otherwise."""
    folder = find_adapter(path)
    try:
        config = json.loads((folder / "adapter_config.json").read_text())
    except json.JSONDecodeError as exc:
        raise AdapterRejected(f"LoRA adapter {folder}: adapter_config.json is not JSON ({exc})") from None
    if config.get("peft_type", "LORA") != "LORA":
        raise AdapterRejected(f"LoRA adapter {folder}: peft_type {config['peft_type']!r}, "
                              "only LORA adapters are served")
    rank = int(config.get("r", 0))
    if rank > max_lora_rank:
        raise AdapterRejected(f"LoRA adapter {folder}: rank {rank} is above the pool's "
                              f"max_lora_rank {max_lora_rank} (raise lora_pool.max_lora_rank)")
    if not any(folder.glob("adapter_model.*")):
        raise AdapterRejected(f"LoRA adapter {folder}: no adapter_model.safetensors or .bin")
    problem = base_mismatch(folder, Path(base))
    if problem:
        raise AdapterRejected(f"LoRA adapter {problem}")
    return folder
