"""Mid-stream migration on real engines (tiny models, Ray Serve, NIXL), under the engine lock.

A decode replica is killed (Ray actor kill, as the fault run does) while it streams a greedy
completion; the ingress continues the request on the other replica of the pool, which pulls
the prompt's base KV again and computes the sent tokens' KV with the decoder. Both kinds of
decode pool: a role's own full decoder (planner) and the shared LoRA pool (coder, an adapter:
what the default app serves). The client's
stream must equal an uninterrupted run token for token, and no engine may keep a KV block.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest

from bench import replicas as rep
from bench.running_app import (
    APP,
    running_app,
    tiny_engine,
    tiny_lora_adapter,
    tiny_models,
    wait_for,
)

pytestmark = pytest.mark.slow

MAX_TOKENS = 400  # long enough that the stream is still running when the kill lands


@pytest.fixture(scope="module")
def app():
    base, decoder = tiny_models()
    engine = tiny_engine(kv_cache_space_gib=0.25)
    args = {
        "base_model": base,
        "prefill_pools": {"shared": {"engine": engine}},
        "roles": [{"name": "planner", "decoder": decoder,
                   "decode_pool": {"replicas": 2, "engine": engine}},
                  {"name": "coder", "lora_adapter": tiny_lora_adapter(base, "coder", 5)}],
        "lora_pool": {"replicas": 2, "engine": engine, "max_lora_rank": 8, "max_loras": 2},
        "routing": {"max_retries": 2},
    }
    with running_app(args) as running:
        yield running


POOLS = {"planner": "decode-planner", "coder": "decode-lora"}


def _body(role: str, prompt: str) -> dict:
    return {"model": role, "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0.0,
            "ignore_eos": True, "logprobs": 0, "stream": True}


def _stream(app, body: dict, on_token=None) -> tuple[list[str], str | None, list[float]]:
    """The streamed tokens (from logprobs: one per token), the finish reason and when each
    event of the stream arrived."""
    tokens: list[str] = []
    finish = None
    times: list[float] = []
    with httpx.stream("POST", f"{app.url}/v1/completions", json=body, timeout=300) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            times.append(time.monotonic())
            event = json.loads(line[6:])
            assert "error" not in event, event
            choice = event["choices"][0]
            tokens.extend((choice.get("logprobs") or {}).get("tokens") or [])
            finish = choice.get("finish_reason") or finish
            if on_token is not None:
                on_token(len(tokens))
    return tokens, finish, times


def _longest_gap_after_the_first_token(times: list[float]) -> float:
    return max(b - a for a, b in zip(times[1:], times[2:]))


def _busy_replica(app, pool: str) -> rep.Replica:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for replica in rep.live_replicas(APP):
            if replica.deployment == pool and rep.probe(
                    app.handle(pool), "stats", replica.replica_id)["inflight"] > 0:
                return replica
        time.sleep(0.02)
    raise AssertionError(f"no {pool} replica is serving the stream")


@pytest.mark.parametrize("role", ["planner", "coder"])
def test_a_stream_continues_exactly_after_its_decode_replica_is_killed(app, role):
    pool = POOLS[role]
    assert wait_for(lambda: rep.serve_app_running(APP), timeout_s=300)  # every replica serves
    body = _body(role, f"the {role} reads the shared context and " * 30)
    t0 = time.monotonic()
    reference, finish, times = _stream(app, body)  # uninterrupted
    reference_s = time.monotonic() - t0
    reference_gap = _longest_gap_after_the_first_token(times)
    assert len(reference) == MAX_TOKENS and finish == "length"
    retries_before = app.stats()["retries_by_reason"].get("migrated", 0)
    before = rep.live_replicas(APP)

    killed: list[rep.Replica] = []

    def kill_after_some_tokens(n: int) -> None:
        if n >= 20 and not killed:
            replica = _busy_replica(app, pool)
            rep.kill(replica)
            killed.append(replica)

    t0 = time.monotonic()
    migrated, finish, times = _stream(app, body, on_token=kill_after_some_tokens)
    migrated_s = time.monotonic() - t0
    print(f"\n[migration {role}] uninterrupted {reference_s:.2f}s, longest gap between tokens "
          f"{reference_gap:.2f}s; with the kill {migrated_s:.2f}s, longest gap "
          f"{_longest_gap_after_the_first_token(times):.2f}s (the migration)")
    assert killed, "the kill never happened"
    assert app.stats()["retries_by_reason"].get("migrated", 0) == retries_before + 1
    # One uninterrupted stream: every token once, in order, the same as without the kill.
    assert finish == "length" and len(migrated) == MAX_TOKENS
    if migrated != reference:
        first = next(i for i, (a, b) in enumerate(zip(reference, migrated)) if a != b)
        pytest.fail(f"the migrated stream differs from token {first} on: "
                    f"{migrated[first:first + 5]} != {reference[first:first + 5]}")
    # Neither the prefill engine nor the surviving decode engine keeps a block (replacements
    # may still be starting: they never saw the request).
    for replica in before:
        if replica.deployment in (pool, "prefill-shared") and replica != killed[0]:
            assert rep.wait_blocks_free(app.handle(replica.deployment), replica.replica_id,
                                        timeout_s=60), f"{replica.actor_name} holds KV blocks"
