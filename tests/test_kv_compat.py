"""KV-layout compatibility between a prefill model and a decoder (deployments/kv_compat.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from deployments.kv_compat import KvIncompatible, KvLayout, check_kv_compatible

LLAMA = {"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
         "hidden_size": 128, "head_dim": 32, "dtype": "float32"}


def _model(root: Path, name: str, **over: Any) -> str:
    cfg = {**LLAMA, **over}
    cfg = {k: v for k, v in cfg.items() if v is not None}  # None: leave the key out
    folder = root / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(cfg))
    return str(folder)


def test_layout_of_a_llama_config(tmp_path):
    assert KvLayout.of(_model(tmp_path, "m")) == KvLayout(2, 2, 32, "float32")


def test_engine_dtype_overrides_the_config_dtype(tmp_path):
    m = _model(tmp_path, "m")
    assert KvLayout.of(m, "bfloat16").dtype == "bfloat16"
    assert KvLayout.of(m, "auto").dtype == "float32"


def test_dtype_falls_back_to_torch_dtype_then_float32(tmp_path):
    old = _model(tmp_path, "old", dtype=None, torch_dtype="torch.float16")
    assert KvLayout.of(old).dtype == "float16"  # "torch." prefix dropped
    bare = _model(tmp_path, "bare", dtype=None)
    assert KvLayout.of(bare).dtype == "float32"


def test_head_dim_derived_when_absent(tmp_path):
    m = _model(tmp_path, "m", head_dim=None, hidden_size=256, num_attention_heads=8)
    assert KvLayout.of(m).head_dim == 32


def test_kv_heads_default_to_attention_heads(tmp_path):
    m = _model(tmp_path, "m", num_key_value_heads=None)
    assert KvLayout.of(m).num_kv_heads == 4


def test_text_config_inside_a_multimodal_wrapper(tmp_path):
    folder = tmp_path / "mm"
    folder.mkdir()
    wrapped = {"vision_config": {"num_hidden_layers": 99},
               "text_config": {**LLAMA, "num_hidden_layers": 6}}
    (folder / "config.json").write_text(json.dumps(wrapped))
    assert KvLayout.of(str(folder)).num_layers == 6


def test_matching_layouts_pass(tmp_path):
    # Different weights, same layout; dtype given explicitly on one side only.
    a = _model(tmp_path, "a")
    b = _model(tmp_path, "b", intermediate_size=999, vocab_size=7)
    check_kv_compatible(a, "auto", b, "float32", where="roles.x.decoder")


@pytest.mark.parametrize("over, field, p, d", [
    ({"num_hidden_layers": 3}, "num_layers", 2, 3),
    ({"num_key_value_heads": 4}, "num_kv_heads", 2, 4),
    ({"head_dim": 64}, "head_dim", 32, 64),
    ({"dtype": "bfloat16"}, "dtype", "float32", "bfloat16"),
])
def test_each_mismatch_is_named(tmp_path, over, field, p, d):
    a = _model(tmp_path, "a")
    b = _model(tmp_path, "b", **over)
    with pytest.raises(KvIncompatible) as info:
        check_kv_compatible(a, "auto", b, "auto", where="roles.coder.decoder")
    msg = str(info.value)
    assert msg.startswith(f"roles.coder.decoder: decoder {b} cannot read the KV cache of {a}")
    assert f"{field}: prefill {p} vs decoder {d}" in msg
    assert msg.count(" vs decoder ") == 1  # only the field that differs


def test_all_mismatches_are_listed(tmp_path):
    a = _model(tmp_path, "a")
    b = _model(tmp_path, "b", num_hidden_layers=4, num_key_value_heads=1, head_dim=16)
    with pytest.raises(KvIncompatible) as info:
        check_kv_compatible(a, "auto", b, "float16", where="lora_pool")
    msg = str(info.value)
    assert msg.startswith("lora_pool: ")
    for part in ("num_layers: prefill 2 vs decoder 4", "num_kv_heads: prefill 2 vs decoder 1",
                 "head_dim: prefill 32 vs decoder 16", "dtype: prefill float32 vs decoder float16"):
        assert part in msg


def test_engine_dtype_mismatch_on_identical_configs(tmp_path):
    a = _model(tmp_path, "a")
    b = _model(tmp_path, "b")
    with pytest.raises(KvIncompatible, match="dtype: prefill bfloat16 vs decoder float32"):
        check_kv_compatible(a, "bfloat16", b, "auto", where="w")


def test_kv_incompatible_is_a_value_error():
    assert issubclass(KvIncompatible, ValueError)  # the CLI maps ValueErrors to exit code 2
