"""Who this Serve replica is: a unique engine id (NIXL keys remote agents by it) and its rank
(used to spread engines over CPU cores). Falls back sanely outside Serve (tests)."""

from __future__ import annotations

import uuid


def replica_unique_id() -> str | None:
    """The Serve replica id (the tail of the replica's actor name); None outside Serve."""
    try:
        from ray import serve

        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:  # not inside a Serve replica
        return None


def replica_engine_id(kind: str, pool: str) -> str:
    tag = replica_unique_id() or uuid.uuid4().hex[:8]
    return f"{kind}-{pool}-{tag}"


def replica_rank() -> int:
    try:
        from ray import serve

        return int(serve.get_replica_context().rank.rank)
    except Exception:
        return 0
