"""Routing on real engines: a four-role multi-turn session over two prefill replicas hits the
prefill prefix cache on everything but its new tokens (vLLM's own counters, reported as
usage.prompt_tokens_details.cached_tokens), and when its prefill replica is killed the
session goes on at the other replica with no failed request."""

from __future__ import annotations

import pytest

from bench.running_app import (
    APP,
    running_app,
    tiny_engine,
    tiny_lora_adapter,
    tiny_models,
    wait_for,
)
from routing.rendezvous import rendezvous_owner

pytestmark = pytest.mark.slow

BLOCK = 32  # vLLM CPU attention takes multiples of 32
ROLES = ("planner", "coder", "tool_caller", "critic")


@pytest.fixture(scope="module")
def app():
    base, _ = tiny_models()
    adapters = {r: tiny_lora_adapter(base, r, 30 + i) for i, r in enumerate(ROLES)}
    engine = tiny_engine(block_size=BLOCK)
    args = {
        "base_model": base,
        "prefill_pools": {"shared": {"replicas": 2, "engine": engine}},
        "lora_pool": {"engine": engine, "max_lora_rank": 8, "max_loras": 4},
        "roles": [{"name": r, "lora_adapter": p} for r, p in adapters.items()],
    }
    with running_app(args) as running:
        yield running


def _prefill_replicas() -> dict[str, str]:
    """unique replica id -> actor name, for the live prefill replicas."""
    from bench.replicas import live_replicas

    return {r.replica_id: r.actor_name for r in live_replicas(APP) if r.deployment == "prefill-shared"}


def _prefill_pool_stats(app) -> dict:
    return app.stats()["prefill"]["prefill-shared"]


def _call(app, role: str, messages: list[dict], session: str) -> tuple[str, int, int]:
    return app.session_chat(role, messages, session, max_tokens=12)


def _turns(app, session: str, messages: list[dict], turns: int, start: int = 0) -> list[tuple[int, int, int]]:
    """Each agent call appends its output and a tool observation: (prev_len, len, cached)."""
    out = []
    prev = 0
    for t in range(start, start + turns):
        for role in ROLES:
            text, n, cached = _call(app, role, messages, session)
            out.append((prev, n, cached))
            prev = n
            messages.append({"role": "assistant", "content": f"[{role}] {text}"})
            messages.append({"role": "user", "content": f"observation {t}: tool output for {role}"})
    return out


def test_session_hits_prefix_cache_then_survives_replica_death(app):
    import ray

    session = "session-e2e-1"
    messages = [{"role": "system", "content": "Shared agent context. " * 40},
                {"role": "user", "content": "Solve the task together."}]
    calls = _turns(app, session, messages, turns=2)
    # Every call after the first reuses all the full blocks of the previous prompt: the shared
    # context (the previous prompt is a token prefix of this one) minus its partial last block.
    for prev, n, cached in calls[1:]:
        assert cached >= (prev // BLOCK) * BLOCK - BLOCK, (prev, n, cached)
        assert cached <= n
    hit = sum(c for _, _, c in calls[1:]) / sum(n for _, n, _ in calls[1:])
    assert hit > 0.8

    replicas = _prefill_replicas()
    assert len(replicas) == 2
    home = rendezvous_owner(session, list(replicas))
    # GET /stats reads both replicas, not whichever one a handle call reaches: the session's
    # cached tokens were all counted by its home replica, and the pool's sum includes them.
    cached = sum(c for _, _, c in calls)
    assert wait_for(lambda: _prefill_pool_stats(app)["prefix_hits"] >= cached, timeout_s=30)
    pool = _prefill_pool_stats(app)
    assert set(pool["replicas"]) == set(replicas) and pool["missing"] == []
    assert pool["replicas"][home]["prefix_hits"] >= cached
    ray.kill(ray.get_actor(replicas[home], namespace="serve"), no_restart=True)

    # The session goes on: no failed call; the first call after the kill is cold on the
    # survivor, the ones after it hit again.
    after = _turns(app, session, messages, turns=1, start=2)
    assert all(cached <= n for _, n, cached in after)
    assert sum(c for _, _, c in after[1:]) / sum(n for _, n, _ in after[1:]) > 0.8
