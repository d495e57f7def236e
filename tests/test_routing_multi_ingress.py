"""Several ingress replicas = several routers with separate state. A session stays pinned only
if they all rank the same way without talking: the home is a pure function of (session id,
live replica ids), and the prefix index each keeps never outranks that home on a tie."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

from routing import PrefixLocalityPolicy, ReplicaLoad, RouteRequest, RoutingPolicyConfig
from routing.block_hashes import extend_block_hashes

BS = 16
REPLICAS = ["replica-a", "replica-b", "replica-c"]


def _turns(session: int, n: int) -> list[list[int]]:
    """A growing context: each turn's prompt extends the previous one."""
    rng = random.Random(session)
    tokens: list[int] = []
    out = []
    for _ in range(n):
        tokens = tokens + [rng.randrange(50_000) for _ in range(rng.randint(20, 90))]
        out.append(list(tokens))
    return out


def _route(policy: PrefixLocalityPolicy, replicas: list[str], rid: str, session: str,
           tokens: list[int]) -> str:
    req = RouteRequest(rid, session, extend_block_hashes((), tokens, BS), len(tokens))
    # Serve's queue-length view is shared by every router (replicas report it): all idle here.
    # Candidate order differs per router (Serve does not promise one).
    loads = [ReplicaLoad(r) for r in replicas]
    random.Random(rid).shuffle(loads)
    chosen = policy.rank(loads, req)[0][0]
    policy.on_sent(chosen, req)
    policy.on_finished(chosen, rid)
    return chosen


def test_turns_split_over_two_routers_land_on_one_replica() -> None:
    routers = [PrefixLocalityPolicy(RoutingPolicyConfig(block_size=BS)) for _ in range(2)]
    pick = random.Random(0)
    placed: dict[int, set[str]] = {}
    for step in range(8):  # sessions interleaved, each turn to a random ingress replica
        for s in range(40):
            tokens = _turns(s, 8)[step]
            router = routers[pick.randrange(2)]
            placed.setdefault(s, set()).add(_route(router, REPLICAS, f"{s}-{step}", f"sess-{s}", tokens))
    assert all(len(v) == 1 for v in placed.values()), placed
    # And the homes spread over the pool (rendezvous, not everything on one replica).
    assert {next(iter(v)) for v in placed.values()} == set(REPLICAS)


def test_after_a_death_every_router_moves_the_session_to_the_same_replica() -> None:
    routers = [PrefixLocalityPolicy(RoutingPolicyConfig(block_size=BS)) for _ in range(3)]
    homes = {s: _route(routers[s % 3], REPLICAS, f"{s}-0", f"sess-{s}", _turns(s, 2)[0])
             for s in range(30)}
    dead = "replica-b"
    for r in routers:
        r.on_replica_removed(dead)
    live = [r for r in REPLICAS if r != dead]
    for s, home in homes.items():
        tokens = _turns(s, 2)[1]
        picks = {_route(r, live, f"{s}-1-{i}", f"sess-{s}", tokens) for i, r in enumerate(routers)}
        assert len(picks) == 1, (s, picks)
        if home != dead:
            assert picks == {home}  # only the dead replica's sessions move


def test_home_does_not_depend_on_the_process_hash_seed() -> None:
    """Ingress replicas are separate processes with separate PYTHONHASHSEEDs."""
    code = ("import json; from routing.policy import PrefixLocalityPolicy as P; "
            f"print(json.dumps([P().home(f's{{i}}', {REPLICAS!r}) for i in range(64)]))")
    homes = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                             check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
        homes.append(json.loads(out.stdout))
    assert homes[0] == homes[1]
    here = PrefixLocalityPolicy()
    assert homes[0] == [here.home(f"s{i}", REPLICAS) for i in range(64)]
