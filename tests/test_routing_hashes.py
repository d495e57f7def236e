"""Block hashes, the prefix index and KV-event translation (pure, fast)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from routing.block_hashes import extend_block_hashes, prompt_block_hashes
from routing.kv_events import KvEventTranslator
from routing.prefix_index import PrefixIndex

BS = 4


def test_extension_shares_chain_and_partial_block_is_excluded() -> None:
    a = prompt_block_hashes(list(range(10)), BS)
    b = prompt_block_hashes(list(range(10)) + [99, 98, 97], BS)
    assert len(a) == 2 and len(b) == 3  # 10 tokens: 2 full blocks, the last 2 tokens are left out
    assert b[:2] == a
    assert prompt_block_hashes(list(range(3)), BS) == ()


def test_chain_depends_on_everything_before() -> None:
    a = prompt_block_hashes([1, 2, 3, 4, 5, 6, 7, 8], BS)
    b = prompt_block_hashes([0, 2, 3, 4, 5, 6, 7, 8], BS)
    assert a[0] != b[0] and a[1] != b[1]  # same second block, different parent


def test_namespace_separates_models() -> None:
    toks = list(range(16))
    assert set(prompt_block_hashes(toks, BS, "base")).isdisjoint(prompt_block_hashes(toks, BS, "lora-a"))
    assert prompt_block_hashes(toks, BS, "base") == prompt_block_hashes(toks, BS, "base")


def test_extend_equals_full_and_validates() -> None:
    toks = list(range(23))
    assert extend_block_hashes(prompt_block_hashes(toks[:9], BS), toks, BS) == prompt_block_hashes(toks, BS)
    with pytest.raises(ValueError):
        extend_block_hashes(prompt_block_hashes(toks, BS), toks[:5], BS)


def test_deterministic_across_processes() -> None:
    code = ("from routing.block_hashes import prompt_block_hashes;"
            "print(prompt_block_hashes(list(range(20)), 4, 'm'))")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={"PYTHONHASHSEED": seed}, check=True).stdout for seed in ("1", "2")}
    assert outs == {f"{prompt_block_hashes(list(range(20)), 4, 'm')}\n"}


def test_index_lru_evicts_chain_tails_first() -> None:
    idx = PrefixIndex(capacity_blocks=4)
    a = prompt_block_hashes(list(range(12)), BS)          # 3 blocks
    b = prompt_block_hashes(list(range(100, 112)), BS)    # 3 blocks
    idx.record_sent("r0", a)
    assert idx.match_length("r0", a) == 3
    idx.record_sent("r0", b)  # 6 > 4: two of a's blocks go, tail first
    assert idx.match_length("r0", b) == 3
    assert idx.match_length("r0", a) == 1 and idx.num_blocks("r0") == 4
    assert idx.match_length("r1", a) == 0


def test_index_events() -> None:
    idx = PrefixIndex(capacity_blocks=100)
    a = prompt_block_hashes(list(range(16)), BS)
    idx.on_block_stored("r0", a)
    assert idx.match_length("r0", a) == 4
    idx.on_block_removed("r0", [a[2]])
    assert idx.match_length("r0", a) == 2  # a hole cuts the prefix
    idx.on_replica_cleared("r0")
    assert idx.match_length("r0", a) == 0
    idx.record_sent("r1", a)
    idx.drop_replica("r1")
    assert idx.replicas() == ["r0"]


def test_kv_event_translation_maps_engine_hashes_to_ours() -> None:
    idx = PrefixIndex(capacity_blocks=100)
    tr = KvEventTranslator(idx, BS, namespace="base")
    toks = list(range(16))
    ours = prompt_block_hashes(toks, BS, "base")
    # Two events, like an engine storing a prompt in two steps; engine hashes are opaque bytes.
    assert tr.on_stored("r0", None, [b"e0", b"e1"], toks[:8]) == ours[:2]
    assert tr.on_stored("r0", b"e1", [b"e2", b"e3"], toks[8:]) == ours[2:]
    assert idx.match_length("r0", ours) == 4
    assert tr.on_removed("r0", [b"e3", b"unknown"]) == (ours[3],)
    assert idx.match_length("r0", ours) == 3
    assert tr.on_stored("r0", b"never-seen", [b"x"], toks[:4]) == ()  # missed parent: skip
    tr.on_cleared("r0")
    assert idx.match_length("r0", ours) == 0
