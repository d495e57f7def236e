"""Chained 64-bit hashes of a prompt's full KV blocks: the keys of the prefix index.

Pure functions, run in the ingress (to tag each request) and in the simulator. A block's hash
covers its parent's hash, so equal hashes at position i mean equal prompts up to the end of
block i: that is what makes "longest matching prefix" a walk along the chain. Only FULL blocks
are hashed because an engine's prefix cache only ever reuses full blocks.

blake2b, not Python's hash(): several ingress replicas (separate processes, separate
PYTHONHASHSEED) must compute the same keys for the same prompt.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

_MASK64 = (1 << 64) - 1


def root_hash(namespace: str = "") -> int:
    """The parent of a chain's first block. The namespace (model id, LoRA/adapter name) is mixed
    in here, so chains of different prefill models never share a single key."""
    digest = hashlib.blake2b(b"prefillshare-root\0" + namespace.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def chain_hash(parent: int, block_token_ids: Sequence[int]) -> int:
    """Hash of one block given its parent's hash."""
    h = hashlib.blake2b(digest_size=8)
    h.update((parent & _MASK64).to_bytes(8, "little"))
    # Signed 64-bit per token: wide enough for any vocabulary, and a fixed width keeps
    # [1, 23] and [12, 3] apart.
    h.update(struct.pack(f"<{len(block_token_ids)}q", *block_token_ids))
    return int.from_bytes(h.digest(), "little")


def extend_block_hashes(known: Sequence[int], token_ids: Sequence[int], block_size: int,
                        namespace: str = "") -> tuple[int, ...]:
    """The full chain of ``token_ids``, reusing ``known``: the chain of a prompt that
    ``token_ids`` extends (a session's previous call). Only the new blocks are hashed, which
    keeps a growing multi-turn context linear instead of quadratic."""
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    n_full = len(token_ids) // block_size
    if len(known) > n_full:
        raise ValueError("known chain is longer than the prompt's full blocks")
    out = list(known)
    parent = out[-1] if out else root_hash(namespace)
    for i in range(len(out), n_full):
        parent = chain_hash(parent, token_ids[i * block_size:(i + 1) * block_size])
        out.append(parent)
    return tuple(out)


def prompt_block_hashes(token_ids: Sequence[int], block_size: int,
                        namespace: str = "") -> tuple[int, ...]:
    """Hashes of the full blocks of ``token_ids``; a trailing partial block is left out."""
    return extend_block_hashes((), token_ids, block_size, namespace)
