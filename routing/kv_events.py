"""Translate vLLM KV cache events into PrefixIndex updates in our hash space.

vLLM names blocks with its own hashes (sha256 or builtin, per-engine settings, bytes or int):
they never equal ours. A BlockStored event carries the parent's engine hash and the blocks'
token ids, so we recompute our chain hash for each stored block and remember the mapping
engine hash -> ours per replica; BlockRemoved then looks it up. Runs next to the router (the
ZMQ subscriber that feeds it is Ray/vLLM glue and lives elsewhere).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from routing.block_hashes import chain_hash, root_hash
from routing.prefix_index import PrefixIndex


class KvEventTranslator:
    def __init__(self, index: PrefixIndex, block_size: int, namespace: str = "") -> None:
        self.index = index
        self.block_size = block_size
        self.namespace = namespace
        self._ours: dict[str, dict[Hashable, int]] = {}

    def on_stored(self, replica_id: str, parent_hash: Hashable | None,
                  block_hashes: Sequence[Hashable], token_ids: Sequence[int]) -> tuple[int, ...]:
        """BlockStored(block_hashes, parent_block_hash, token_ids, ...). Returns our hashes of
        the blocks recorded; empty if the parent is unknown (an event we missed: the blocks
        still exist in the engine but we cannot name them, so we stay conservative)."""
        mapping = self._ours.setdefault(replica_id, {})
        if parent_hash is None:
            parent = root_hash(self.namespace)
        elif parent_hash in mapping:
            parent = mapping[parent_hash]
        else:
            return ()
        bs = self.block_size
        if len(token_ids) < bs * len(block_hashes):
            raise ValueError("BlockStored carries fewer tokens than its blocks hold")
        ours: list[int] = []
        for i, engine_hash in enumerate(block_hashes):
            parent = chain_hash(parent, token_ids[i * bs:(i + 1) * bs])
            mapping[engine_hash] = parent
            ours.append(parent)
        self.index.on_block_stored(replica_id, ours)
        return tuple(ours)

    def on_removed(self, replica_id: str, block_hashes: Sequence[Hashable]) -> tuple[int, ...]:
        mapping = self._ours.get(replica_id, {})
        ours = tuple(mapping.pop(h) for h in block_hashes if h in mapping)
        self.index.on_block_removed(replica_id, ours)
        return ours

    def on_cleared(self, replica_id: str) -> None:
        self._ours.pop(replica_id, None)
        self.index.on_replica_cleared(replica_id)

    def drop_replica(self, replica_id: str) -> None:
        self._ours.pop(replica_id, None)
