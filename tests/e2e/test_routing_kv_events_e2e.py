"""Routing on real engines with vLLM KV cache events and two ingress replicas (tiny models).

1. Two ingress replicas, each with its own request router and no shared state: a session's
   turns, taken by either ingress replica, all land on the same prefill replica (the
   rendezvous home, a pure function of session id and live replica ids), so every turn hits
   the prefix cache of the previous one (vLLM's own cached-token count).
2. KV events: the prefill engines publish what they store and remove; a router learns blocks
   other routers placed, and learns a removal it could not have guessed (the engine dropped
   its prefix cache) from the events alone.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid

import pytest

from bench.running_app import running_app, tiny_engine, tiny_models, wait_for
from routing.block_hashes import prompt_block_hashes
from routing.rendezvous import rendezvous_owner

pytestmark = pytest.mark.slow

BLOCK = 32
PREFILL = "prefill-shared"
ROLE = "planner"


@pytest.fixture(scope="module")
def app():
    base, decoder = tiny_models()
    engine = tiny_engine(block_size=BLOCK, max_num_seqs=4)
    args = {
        "base_model": base,
        "prefill_pools": {"shared": {"replicas": 2, "engine": engine}},
        "roles": [{"name": ROLE, "decoder": decoder, "decode_pool": {"engine": engine}}],
        "ingress_replicas": 2,
        "routing": {"kv_events": True, "stats_period_s": 0.5},
    }
    with running_app(args) as running:
        yield running


def _prefill_replica_stats() -> dict[str, dict]:
    """unique replica id -> that prefill replica's routing stats (Serve replica actor method)."""
    from bench.replicas import routing_stats
    from bench.running_app import APP

    return routing_stats(APP, PREFILL, timeout_s=30)


def _sent_by_worker(app) -> dict[tuple[str, str], float]:
    """(ingress worker id, prefill replica) -> requests that worker's router sent there, from
    Ray's Prometheus endpoint (prefillshare_routing_sent)."""
    import httpx
    import ray

    port = ray._private.worker.global_worker.node.metrics_export_port
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    out = {}
    for line in text.splitlines():
        if line.startswith("ray_prefillshare_routing_sent_total{") and f'deployment="{PREFILL}"' in line:
            worker = re.search(r'WorkerId="([^"]+)"', line).group(1)
            replica = re.search(r'replica="([^"]+)"', line).group(1)
            out[(worker, replica)] = float(line.rsplit(" ", 1)[1])
    return out


def _chat(app, messages: list[dict], session: str) -> tuple[str, int, int]:
    return app.session_chat(ROLE, messages, session, max_tokens=8)


def test_session_stays_on_its_home_whichever_ingress_replica_routes_it(app):
    import ray

    replicas = _prefill_replica_stats()
    assert len(replicas) == 2
    session = "session-two-ingress"
    home = rendezvous_owner(session, list(replicas))
    before = _sent_by_worker(app)
    before_finished = {r: s["requests_finished"] for r, s in replicas.items()}
    messages = [{"role": "system", "content": "Shared agent context. " * 30},
                {"role": "user", "content": "Start."}]
    prev = 0
    turns = 10
    for t in range(turns):
        text, n, cached = _chat(app, messages, session)
        if t:  # all full blocks of the previous prompt came from the same engine's cache
            assert cached >= (prev // BLOCK) * BLOCK - BLOCK, (t, prev, n, cached)
        prev = n
        messages += [{"role": "assistant", "content": text},
                     {"role": "user", "content": f"observation {t}: more tool output"}]
    after_finished = {r: s["requests_finished"] for r, s in _prefill_replica_stats().items()}
    assert after_finished[home] - before_finished[home] == turns
    others = [r for r in replicas if r != home]
    assert all(after_finished[r] == before_finished[r] for r in others)

    # Both ingress replicas took turns of the session (Serve's proxy spreads the calls), and
    # both sent them to the same home: agreement without shared state.
    me = ray.get_runtime_context().get_worker_id()

    def ingress_sends() -> dict[tuple[str, str], float]:
        now = _sent_by_worker(app)
        return {k: v - before.get(k, 0.0) for k, v in now.items() if k[0] != me and v > before.get(k, 0.0)}

    assert wait_for(lambda: sum(ingress_sends().values()) >= turns, timeout_s=60)
    sends = ingress_sends()
    assert {replica for _, replica in sends} == {home}
    assert len({worker for worker, _ in sends}) == 2, sends


def _pd_call(app, prefill_handle, session: str, prompt: list[int]) -> str:
    """One prefill + decode through handles made in THIS process: its request router is built
    here, so the test can read its prefix index. The hints are the ones the ingress sends."""
    from contract.wire import DecodeRequest, PrefillRequest, RouteHints, SamplingSpec
    from router_service.serve_clients import ServeDecodeClient, ServePrefillClient

    def hints(deployment: str) -> RouteHints:
        return RouteHints(session_id=session, num_tokens=len(prompt),
                          block_hashes=prompt_block_hashes(prompt, BLOCK, deployment))

    async def run() -> str:
        rid = uuid.uuid4().hex
        pre = await ServePrefillClient(prefill_handle, PREFILL).prefill(
            PrefillRequest(rid, tuple(prompt), hints(PREFILL)))
        decode = f"decode-{ROLE}"
        spec = SamplingSpec(max_tokens=2, temperature=0.0, ignore_eos=True)
        request = DecodeRequest(rid, tuple(prompt), spec, pre.kv_transfer_params,
                                route=hints(decode))
        async for _ in ServeDecodeClient(app.handle(decode), decode).generate(request):
            pass
        return pre.engine_id

    return asyncio.run(run())


def test_router_index_follows_engine_events(app):
    from bench.replicas import live_routers

    replicas = sorted(_prefill_replica_stats())
    # all_blocks_free() carries no session and no blocks: our router sends it to the least
    # loaded replica, ties by id, i.e. the first id. Pick a session whose home that is.
    target = replicas[0]
    session = next(s for s in (f"kv-events-{i}" for i in range(1000))
                   if rendezvous_owner(s, replicas) == target)
    prompt = [(7 * i + 3) % 500 + 10 for i in range(6 * BLOCK + 5)]
    hashes = prompt_block_hashes(prompt, BLOCK, PREFILL)
    # Routers of earlier tests' handles (other apps, same deployment name) may still live in
    # this process: ours is the one that appears with this handle's first call.
    earlier = live_routers(PREFILL)  # held, so no new router can reuse an old one's id
    handle = app.handle(PREFILL)  # one handle: one request router in this process
    _pd_call(app, handle, session, prompt)
    (router,) = [r for r in live_routers(PREFILL) if all(r is not e for e in earlier)]
    index = router.policy.index

    # The engine reports the six blocks it stored (its own event stream, in our hash space).
    assert wait_for(lambda: set(hashes) <= set(_prefill_replica_stats()[target]["kv_blocks"]["blocks"]),
                    timeout_s=30)
    # This router learned blocks that the INGRESS routers placed (the previous test's session),
    # which it never sent itself.
    def learned() -> bool:
        router.apply_kv_snapshots(router.curr_replicas.values())
        return router.metrics.kv_event_changes["added"] > 0

    assert wait_for(learned, timeout_s=30)
    assert index.match_length(target, hashes) == len(hashes)

    # The engine drops its prefix cache (AllBlocksCleared). Nothing the router sent tells it;
    # only the events do.
    router.kv_events_keep_sent_s = 0.0  # don't shield our own recent send in this check
    assert wait_for(lambda: handle.all_blocks_free.remote().result(), timeout_s=60)
    removed_before = router.metrics.kv_event_changes["removed"]
    # vLLM publishes the events a scheduler step collects, and an idle engine takes no step:
    # one more request of the session (another prompt, so no prefix of it) drives one.
    driver = [(11 * i + 5) % 500 + 10 for i in range(2 * BLOCK + 3)]
    _pd_call(app, handle, session, driver)

    def forgotten() -> bool:
        router.apply_kv_snapshots(router.curr_replicas.values())
        return index.match_length(target, hashes) == 0

    assert wait_for(forgotten, timeout_s=30)
    assert router.metrics.kv_event_changes["removed"] - removed_before >= len(hashes)
    # The engine now holds the driving request's blocks and none of the cleared prompt's.
    held = set(_prefill_replica_stats()[target]["kv_blocks"]["blocks"])
    assert held == set(prompt_block_hashes(driver, BLOCK, PREFILL))


def test_routing_and_engine_metrics_reach_prometheus(app):
    """Issue 5's metrics, scraped from Ray's Prometheus endpoint after the traffic above:
    per-replica prefix-cache hit ratio (vLLM's counters), routing decisions, requests sent per
    replica, engine queue depth, decode prompt tokens pulled vs reused, and the index changes
    learned from KV events."""
    import httpx
    import ray

    port = ray._private.worker.global_worker.node.metrics_export_port
    replicas = _prefill_replica_stats()

    def scrape() -> str:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text

    def has(name: str, *labels: str) -> bool:
        return any(line.startswith(name + "{") and all(lb in line for lb in labels)
                   for line in scrape().splitlines())

    served = [rid for rid, st in replicas.items() if st["requests_finished"] > 0]
    assert served
    for rid in served:
        # Engine metrics name the replica by engine id, which ends in the Serve replica id.
        assert wait_for(lambda: has("ray_prefillshare_prefix_cache_hit_ratio", 'kind="prefill"',
                                    f'{rid}"'), timeout_s=60), rid
    assert has("ray_prefillshare_routing_decisions_total", f'deployment="{PREFILL}"',
               'decision="affinity"')
    assert has("ray_prefillshare_routing_sent_total", f'deployment="{PREFILL}"')
    assert has("ray_prefillshare_engine_queue_depth")
    assert has("ray_prefillshare_decode_prompt_tokens_total", 'source="pulled"')
    _drop_blocks_the_ingress_routers_learned(app)
    assert wait_for(lambda: has("ray_prefillshare_routing_kv_event_blocks_total",
                                'change="removed"'), timeout_s=90, interval_s=3)
    # The session of the first test ran at one replica with hits: its engine's ratio is > 0.
    # The engines have idled through the wait above, far past Ray's gauge eviction (two export
    # intervals): the series is still there only because HeldGauges re-sets it.
    def best_ratio() -> float:
        return max([float(line.rsplit(" ", 1)[1]) for line in scrape().splitlines()
                    if line.startswith("ray_prefillshare_prefix_cache_hit_ratio{")
                    and 'kind="prefill"' in line] or [0.0])

    assert wait_for(lambda: best_ratio() > 0.5, timeout_s=60, interval_s=3), best_ratio()


def _drop_blocks_the_ingress_routers_learned(app) -> None:
    """Make the INGRESS routers (their own processes, so their metrics reach Prometheus) count
    a removal: blocks placed by this process's router, which they learn only from the
    engine's events as they route, then dropped by the engine. (A router shields blocks it
    sent itself for kv_events_keep_sent_s, so they must be someone else's.)"""
    from bench.replicas import wait_blocks_free

    replicas = sorted(_prefill_replica_stats())
    target = replicas[0]
    session = next(s for s in (f"kv-removal-{i}" for i in range(1000))
                   if rendezvous_owner(s, replicas) == target)
    handle = app.handle(PREFILL)
    _pd_call(app, handle, session, [(13 * i + 1) % 500 + 10 for i in range(4 * BLOCK + 1)])
    messages = [{"role": "user", "content": "Another agent's turn over the same session."}]
    for _ in range(4):  # both ingress replicas route (and fold the snapshots) a few times
        _chat(app, messages, session)
        time.sleep(0.6)  # > stats_period_s: the next call sees a newer snapshot
    assert wait_blocks_free(handle, target, timeout_s=60)
    # Each call drives an engine step (which publishes the removal) and a routing decision
    # (where an ingress router folds it in); the caller waits for the counter.
    for _ in range(6):
        _chat(app, messages, session)
        time.sleep(0.6)
