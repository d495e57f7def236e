"""vLLM KV cache events -> the router's prefix index: synthetic event batches (vLLM's own event
classes and its own ZMQ publisher, no engine), the engine snapshot folded into the index, and
the routing decision that changes with it."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from prefill_service.kv_event_feed import KvEventFeed, KvEventState
from routing.block_hashes import prompt_block_hashes
from routing.interface import ReplicaLoad, RouteRequest
from routing.policy import PrefixLocalityPolicy, RoutingPolicyConfig
from routing.prefix_index import PrefixIndex
from routing.rendezvous import rendezvous_order
from routing.serve_router import PrefixLocalityRequestRouter

kv = pytest.importorskip("vllm.distributed.kv_events")

BS = 4
NS = "prefill-shared"


def _stored(engine_hashes, parent, tokens):
    return kv.BlockStored(block_hashes=list(engine_hashes), parent_block_hash=parent,
                          token_ids=list(tokens), block_size=BS, lora_id=None, medium="GPU",
                          lora_name=None)


def _removed(engine_hashes):
    return kv.BlockRemoved(block_hashes=list(engine_hashes), medium="GPU")


def _prompt(n_blocks: int, start: int = 0) -> list[int]:
    return list(range(start, start + n_blocks * BS))


def test_stored_events_name_blocks_as_the_ingress_does():
    state = KvEventState(BS, NS)
    tokens = _prompt(3) + [99]  # a partial last block is never stored
    # The engine stores a prompt's blocks over two scheduler steps (chunked prefill).
    state.apply_batch([_stored([b"e0", b"e1"], None, tokens[:2 * BS])], seq=0)
    state.apply_batch([_stored([b"e2"], b"e1", tokens[2 * BS:3 * BS])], seq=1)
    assert sorted(state.held_blocks()) == sorted(prompt_block_hashes(tokens, BS, NS))
    snap = state.snapshot()
    assert snap["version"] == 2 and snap["num_blocks"] == 3 and snap["missed_batches"] == 0


def test_removed_and_cleared_events_forget_blocks():
    state = KvEventState(BS, NS)
    tokens = _prompt(3)
    ours = prompt_block_hashes(tokens, BS, NS)
    state.apply_batch([_stored([11, 12, 13], None, tokens)])
    state.apply_batch([_removed([13])])  # evicted tail first, as vLLM frees a chain
    assert sorted(state.held_blocks()) == sorted(ours[:2])
    state.apply_batch([kv.AllBlocksCleared()])
    assert state.held_blocks() == []


def test_unknown_parent_and_sequence_gaps_are_counted_not_guessed():
    state = KvEventState(BS, NS)
    state.apply_batch([_stored([7], b"never-seen", _prompt(1))], seq=0)
    state.apply_batch([], seq=3)  # batches 1 and 2 were lost
    snap = state.snapshot()
    assert snap["num_blocks"] == 0 and snap["unknown_parent_blocks"] == 1
    assert snap["missed_batches"] == 2


def test_snapshot_drops_its_block_list_above_the_payload_guard():
    state = KvEventState(BS, NS, max_published_blocks=2)
    state.apply_batch([_stored([1, 2, 3], None, _prompt(3))])
    assert state.snapshot()["blocks"] is None and state.snapshot()["num_blocks"] == 3


class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_engine_snapshot_replaces_guess_but_keeps_recent_sends():
    clock = _Clock()
    index = PrefixIndex(100, clock=clock)
    old = prompt_block_hashes(_prompt(3), BS, NS)
    index.record_sent("r0", old)
    clock.t += 60
    fresh = prompt_block_hashes(_prompt(2, start=500), BS, NS)
    index.record_sent("r0", fresh)  # its prefill may not have finished when the engine reported
    other = prompt_block_hashes(_prompt(2, start=900), BS, NS)  # another router's send
    clock.t += 1
    # The engine evicted the tail of the old chain and holds a block we never sent.
    added, removed = index.apply_engine_snapshot("r0", [old[0], old[1], *other], 30.0)
    assert (added, removed) == (2, 1)
    assert index.match_length("r0", old) == 2
    assert index.match_length("r0", fresh) == 2  # kept: sent 1 s before the snapshot
    assert index.match_length("r0", other) == 2
    clock.t += 60
    added, removed = index.apply_engine_snapshot("r0", [old[0], *other], 30.0)
    assert (added, removed) == (0, 3)  # old[1] and both fresh blocks: not held, not recent
    assert index.match_length("r0", fresh) == 0 and index.match_length("r0", old) == 1


def _router(policy) -> SimpleNamespace:
    """The state apply_kv_snapshots reads, without a Serve controller behind it."""
    return SimpleNamespace(policy=policy, kv_events_keep_sent_s=0.0, _kv_applied={},
                           metrics=SimpleNamespace(kv_event_blocks=lambda a, r: None))


def _replica(rid: str, snap: dict | None) -> SimpleNamespace:
    return SimpleNamespace(replica_id=SimpleNamespace(unique_id=rid),
                           routing_stats={} if snap is None else {"kv_blocks": snap})


def test_router_routes_away_from_a_replica_whose_engine_evicted_the_prefix():
    policy = PrefixLocalityPolicy(RoutingPolicyConfig(block_size=BS, index_capacity_blocks=100))
    ids = ["a", "b"]
    # A sessionless request whose chain we sent to the replica that is NOT first by id order.
    tokens = _prompt(4)
    req = RouteRequest("q1", None, prompt_block_hashes(tokens, BS, NS), len(tokens))
    holder = "b"
    policy.on_sent(holder, req)
    policy.on_finished(holder, "q1")
    loads = [ReplicaLoad(i) for i in ids]
    assert policy.rank(loads, RouteRequest("q2", None, req.block_hashes, len(tokens)))[0] == [holder]

    state = KvEventState(BS, NS)
    state.apply_batch([_stored([1, 2, 3, 4], None, tokens)])
    state.apply_batch([kv.AllBlocksCleared()])  # e.g. the engine reset its prefix cache
    router = _router(policy)
    replicas = [_replica("a", None), _replica(holder, state.snapshot())]
    PrefixLocalityRequestRouter.apply_kv_snapshots(router, replicas)
    assert policy.index.match_length(holder, req.block_hashes) == 0
    # No prefix left anywhere: plain load order (ties by id) decides.
    assert policy.rank(loads, RouteRequest("q3", None, req.block_hashes, len(tokens)))[0] == ["a"]
    # The same snapshot version is folded in once: a later send is not undone by it again.
    policy.on_sent(holder, req)
    PrefixLocalityRequestRouter.apply_kv_snapshots(router, replicas)
    assert policy.index.match_length(holder, req.block_hashes) == 4


def test_router_learns_blocks_another_router_placed():
    policy = PrefixLocalityPolicy(RoutingPolicyConfig(block_size=BS, index_capacity_blocks=100))
    tokens = _prompt(3)
    hashes = prompt_block_hashes(tokens, BS, NS)
    session = "s-1"
    away = rendezvous_order(session, ["a", "b"])[1]  # not the session's home
    state = KvEventState(BS, NS)
    state.apply_batch([_stored([5, 6, 7], None, tokens)])
    PrefixLocalityRequestRouter.apply_kv_snapshots(
        _router(policy), [_replica(away, state.snapshot()), _replica("x", None)])
    ranked = policy.rank([ReplicaLoad("a"), ReplicaLoad("b")],
                         RouteRequest("q", session, hashes, len(tokens)))
    assert ranked[0] == [away]  # prefix first: the context is there, not at home


def test_feed_receives_vllm_publisher_batches_over_loopback():
    feed = KvEventFeed(BS, NS, host="127.0.0.1")
    cfg = feed.kv_events_config()
    assert cfg["endpoint"].startswith("tcp://127.0.0.1:")
    # vLLM's own publisher, configured as the engine would be: it CONNECTS to our endpoint.
    pub = kv.ZmqEventPublisher(data_parallel_rank=0, endpoint=cfg["endpoint"], topic=cfg["topic"])
    try:
        tokens = _prompt(2)
        deadline = time.monotonic() + 10
        # PUB/SUB drops what is sent before the connection is up: resend until seen.
        while feed.state.snapshot()["num_blocks"] == 0 and time.monotonic() < deadline:
            pub.publish(kv.KVEventBatch(ts=time.time(), events=[_stored([b"x", b"y"], None, tokens)]))
            time.sleep(0.1)
        assert sorted(feed.state.held_blocks()) == sorted(prompt_block_hashes(tokens, BS, NS))
        pub.publish(kv.KVEventBatch(ts=time.time(), events=[_removed([b"y"])]))
        deadline = time.monotonic() + 10
        while feed.state.snapshot()["num_blocks"] != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert feed.state.held_blocks() == [prompt_block_hashes(tokens, BS, NS)[0]]
    finally:
        pub.shutdown()
        feed.close()
