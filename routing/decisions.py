"""Names one routing decision for metrics: why the chosen replica won. Pure."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from routing.interface import ReplicaLoad, RouteRequest

DECISIONS = ("affinity", "prefix", "fallback", "load", "failover")


def classify_decision(policy: Any, loads: Sequence[ReplicaLoad], request: RouteRequest,
                      chosen: str) -> str:
    """affinity: the session's home; prefix: another replica holding the request's prefix;
    fallback: the session has a home but it was skipped (over the load bound); load: no
    session or prefix preference applied (plain load balancing)."""
    ids = [c.replica_id for c in loads]
    home_of = getattr(policy, "home", None)
    home = home_of(request.session_id, ids) if home_of and request.session_id else None
    if home is not None and chosen == home:
        return "affinity"
    index = getattr(policy, "index", None)
    if index is not None and request.block_hashes and index.match_length(chosen, request.block_hashes) > 0:
        return "prefix"
    if home is not None:
        return "fallback"
    return "load"
