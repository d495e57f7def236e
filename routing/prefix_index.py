"""Which prefill replica holds which KV blocks, as far as the router can tell.

Runs inside the router (one per ingress replica, single asyncio loop: no locks). Two feeds:
- the router's own record of what it sent where (``record_sent``): always available, but it
  guesses at eviction, hence a per-replica LRU bounded like the engine's KV pool;
- the engine's KV cache events (``on_block_stored`` / ``on_block_removed`` /
  ``on_replica_cleared``) when they are wired: these are the truth and correct the guesses.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence


class ReplicaBlocks:
    """One replica's cached block hashes in LRU order (least recent first), each with the
    time the router last sent it there (None: learned from the engine's events only)."""

    def __init__(self, capacity_blocks: int) -> None:
        if capacity_blocks <= 0:
            raise ValueError(f"capacity_blocks must be positive, got {capacity_blocks}")
        self.capacity_blocks = capacity_blocks
        self._lru: OrderedDict[int, float | None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._lru)

    def __contains__(self, block_hash: int) -> bool:
        return block_hash in self._lru

    def touch_chain(self, hashes: Sequence[int], sent_at: float | None = None) -> None:
        """Insert or refresh a request's chain. Touched tail first so that the chain's first
        block ends most recent: like vLLM, which frees a request's blocks in reverse order, an
        eviction then cuts a chain from its end and the surviving part is still a prefix."""
        for h in reversed(hashes):
            if h in self._lru:
                self._lru.move_to_end(h)
                if sent_at is not None:
                    self._lru[h] = sent_at
            else:
                self._lru[h] = sent_at
        self._trim()

    def _trim(self) -> None:
        while len(self._lru) > self.capacity_blocks:
            self._lru.popitem(last=False)

    def hashes(self) -> list[int]:
        return list(self._lru)

    def reconcile(self, held: Iterable[int], keep_sent_after: float) -> tuple[int, int]:
        """Replace our guess by the engine's held set, keeping blocks we sent at or after
        ``keep_sent_after`` (the snapshot may predate their prefill). Blocks the engine holds
        that we did not know (another router's sends) join at the least recent end. Returns
        (added, removed)."""
        held = set(held)
        new: OrderedDict[int, float | None] = OrderedDict((h, None) for h in held if h not in self._lru)
        removed = 0
        for h, sent_at in self._lru.items():
            if h in held or (sent_at is not None and sent_at >= keep_sent_after):
                new[h] = sent_at
            else:
                removed += 1
        added = sum(1 for h in new if h not in self._lru)
        self._lru = new
        self._trim()
        return added, removed

    def remove(self, hashes: Iterable[int]) -> None:
        for h in hashes:
            self._lru.pop(h, None)

    def clear(self) -> None:
        self._lru.clear()

    def match_length(self, hashes: Sequence[int]) -> int:
        n = 0
        for h in hashes:
            if h not in self._lru:
                break
            n += 1
        return n


class PrefixIndex:
    """Per-replica LRU of block hashes; ``match_length`` is the expected prefix-cache hit in
    blocks. Replicas appear on first mention and vanish with ``drop_replica``. ``clock`` times
    our sends (for ``apply_engine_snapshot``); the simulator may pass its own."""

    def __init__(self, capacity_blocks: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity_blocks = capacity_blocks
        self.clock = clock
        self._replicas: dict[str, ReplicaBlocks] = {}

    def _blocks(self, replica_id: str) -> ReplicaBlocks:
        blocks = self._replicas.get(replica_id)
        if blocks is None:
            blocks = self._replicas[replica_id] = ReplicaBlocks(self.capacity_blocks)
        return blocks

    def replicas(self) -> list[str]:
        return sorted(self._replicas)

    def num_blocks(self, replica_id: str) -> int:
        blocks = self._replicas.get(replica_id)
        return len(blocks) if blocks is not None else 0

    def record_sent(self, replica_id: str, hashes: Sequence[int]) -> None:
        """The router sent a prompt with this chain to ``replica_id``: after its prefill the
        engine caches every full block of it."""
        if hashes:
            self._blocks(replica_id).touch_chain(hashes, sent_at=self.clock())

    def on_block_stored(self, replica_id: str, hashes: Sequence[int]) -> None:
        """KV event: the engine stored these blocks (hashes already in our chain's terms,
        see routing.kv_events)."""
        if hashes:
            self._blocks(replica_id).touch_chain(hashes)

    def apply_engine_snapshot(self, replica_id: str, held: Iterable[int],
                              keep_sent_within_s: float) -> tuple[int, int]:
        """The engine's own held set (from its KV events, published in its routing stats,
        prefill_service.kv_event_feed) replaces our guess for ``replica_id``: blocks it
        evicted go, blocks other routers placed there come in. Our sends of the last
        ``keep_sent_within_s`` stay: the snapshot can predate their prefill. (added, removed)."""
        return self._blocks(replica_id).reconcile(held, self.clock() - keep_sent_within_s)

    def hashes(self, replica_id: str) -> list[int]:
        """``replica_id``'s blocks, least recently used first."""
        blocks = self._replicas.get(replica_id)
        return blocks.hashes() if blocks is not None else []

    def on_block_removed(self, replica_id: str, hashes: Iterable[int]) -> None:
        blocks = self._replicas.get(replica_id)
        if blocks is not None:
            blocks.remove(hashes)

    def on_replica_cleared(self, replica_id: str) -> None:
        """KV event AllBlocksCleared (e.g. the engine reset its prefix cache)."""
        blocks = self._replicas.get(replica_id)
        if blocks is not None:
            blocks.clear()

    def drop_replica(self, replica_id: str) -> None:
        """The replica died or drained: nothing it held is reachable any more."""
        self._replicas.pop(replica_id, None)

    def match_length(self, replica_id: str, hashes: Sequence[int]) -> int:
        """Blocks of the longest prefix of ``hashes`` that ``replica_id`` holds."""
        blocks = self._replicas.get(replica_id)
        return blocks.match_length(hashes) if blocks is not None else 0
