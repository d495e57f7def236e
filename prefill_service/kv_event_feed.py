"""The prefill replica's subscriber to its own engine's KV cache events.

Runs inside a prefill replica (a daemon thread next to the engine). vLLM's ZMQ publisher
CONNECTS when its endpoint names a host (tcp://127.0.0.1:PORT) and binds only for wildcards,
so to stay on loopback the subscriber binds and the engine is started with the endpoint this
feed bound (``endpoint``). Each batch goes through ``KvEventTranslator`` into a one-replica
PrefixIndex; ``snapshot()`` is what the replica publishes in its routing stats, and the
request router (serve_router.py) folds it into its own index: the engine's truth about
stored and removed blocks, named in the router's hash space.

Why a snapshot of the held set and not a stream of deltas: routing stats are polled by the
Serve controller and broadcast to every router (one per ingress replica); a router that misses
a poll must not miss a removal forever. The set is bounded by the engine's KV pool.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterable
from typing import Any

from routing.kv_events import KvEventTranslator
from routing.prefix_index import PrefixIndex

log = logging.getLogger(__name__)

_SELF = "self"  # the one replica this feed's index describes
DEFAULT_MAX_PUBLISHED_BLOCKS = 200_000
"""Above this many held blocks the snapshot carries no block list (the router then keeps its
own record): a guard on the routing-stats payload, ~9 bytes a block, for very large pools."""


class KvEventState:
    """What the engine holds, from its event batches; pure (no ZMQ), thread-safe."""

    def __init__(self, block_size: int, namespace: str = "",
                 max_published_blocks: int = DEFAULT_MAX_PUBLISHED_BLOCKS) -> None:
        # Events are the truth, so no capacity guess: the engine's own removals bound the set.
        self._index = PrefixIndex(capacity_blocks=1 << 62)
        self._translator = KvEventTranslator(self._index, block_size, namespace)
        self._lock = threading.Lock()
        self.epoch = uuid.uuid4().hex  # a restarted feed starts a new series
        self.version = 0  # batches applied
        self.last_seq: int | None = None
        self.missed_batches = 0  # sequence gaps: events lost between engine and feed
        self.unknown_parent_blocks = 0  # stored blocks we could not name (parent never seen)
        self.max_published_blocks = max_published_blocks

    def apply_batch(self, events: Iterable[Any], seq: int | None = None) -> None:
        """One vLLM KVEventBatch's events (BlockStored / BlockRemoved / AllBlocksCleared,
        told apart by class name so this module needs no vLLM import)."""
        with self._lock:
            if seq is not None:
                if self.last_seq is not None and seq > self.last_seq + 1:
                    self.missed_batches += seq - self.last_seq - 1
                self.last_seq = seq
            for event in events:
                kind = type(event).__name__
                if kind == "BlockStored":
                    ours = self._translator.on_stored(_SELF, event.parent_block_hash,
                                                      event.block_hashes, event.token_ids)
                    if not ours:
                        self.unknown_parent_blocks += len(event.block_hashes)
                elif kind == "BlockRemoved":
                    self._translator.on_removed(_SELF, event.block_hashes)
                elif kind == "AllBlocksCleared":
                    self._translator.on_cleared(_SELF)
            self.version += 1

    def held_blocks(self) -> list[int]:
        with self._lock:
            return self._index.hashes(_SELF)

    def snapshot(self) -> dict[str, Any]:
        """The ``kv_blocks`` entry of the replica's routing stats."""
        with self._lock:
            n = self._index.num_blocks(_SELF)
            blocks = self._index.hashes(_SELF) if n <= self.max_published_blocks else None
            return {"epoch": self.epoch, "version": self.version, "num_blocks": n,
                    "blocks": blocks, "missed_batches": self.missed_batches,
                    "unknown_parent_blocks": self.unknown_parent_blocks}


class KvEventFeed:
    """Binds a ZMQ SUB socket on ``host`` (a free port) and applies every batch vLLM publishes
    to a ``KvEventState``. Start it BEFORE the engine and pass ``kv_events_config()`` to it."""

    def __init__(self, block_size: int, namespace: str = "", host: str = "127.0.0.1",
                 topic: str = "") -> None:
        import zmq

        self.state = KvEventState(block_size, namespace)
        self.topic = topic
        self._ctx = zmq.Context()
        self._sub = self._ctx.socket(zmq.SUB)
        self._sub.setsockopt(zmq.SUBSCRIBE, topic.encode())
        self._sub.setsockopt(zmq.RCVTIMEO, 200)  # lets the thread see close()
        port = self._sub.bind_to_random_port(f"tcp://{host}")
        self.endpoint = f"tcp://{host}:{port}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kv-event-feed", daemon=True)
        self._thread.start()

    def kv_events_config(self) -> dict[str, Any]:
        """vLLM KVEventsConfig fields for the engine this feed listens to."""
        return {"enable_kv_cache_events": True, "publisher": "zmq",
                "endpoint": self.endpoint, "topic": self.topic}

    def _run(self) -> None:
        import msgspec
        import zmq
        from vllm.distributed.kv_events import KVEventBatch

        decoder = msgspec.msgpack.Decoder(type=KVEventBatch)
        while not self._stop.is_set():
            try:
                _topic, seq_bytes, payload = self._sub.recv_multipart()
            except zmq.Again:
                continue
            except zmq.ZMQError:
                if self._stop.is_set():
                    return
                raise
            try:
                batch = decoder.decode(payload)
                self.state.apply_batch(batch.events, int.from_bytes(seq_bytes, "big"))
            except Exception:  # one bad batch must not end the feed; the router falls back
                log.exception("KV event batch could not be applied")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._sub.close(linger=0)
        self._ctx.term()
