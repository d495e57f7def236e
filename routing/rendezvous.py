"""Rendezvous (highest-random-weight) hashing of session ids onto replicas.

Why rendezvous: every ingress replica has its own router state, and they must agree on a
session's home without talking to each other. A pure function of (session id, live replica
ids) gives that. Removing a replica moves only the sessions it was home to (each to its own
next choice, so they spread over the survivors); adding one takes ~1/N of the sessions, all
onto the new replica, and leaves every other session where it was.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from functools import lru_cache


@lru_cache(maxsize=65536)
def rendezvous_weight(key: str, replica_id: str) -> int:
    # Length-prefixed so that ("ab", "c") and ("a", "bc") differ.
    data = f"{len(key)}:{key}|{replica_id}".encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def rendezvous_order(key: str, replica_ids: Iterable[str]) -> list[str]:
    """Replicas from most to least preferred for ``key``; ties (never in practice) by id."""
    return sorted(replica_ids, key=lambda r: (-rendezvous_weight(key, r), r))


def rendezvous_owner(key: str, replica_ids: Iterable[str]) -> str | None:
    best: str | None = None
    best_w = -1
    for r in replica_ids:
        w = rendezvous_weight(key, r)
        if w > best_w or (w == best_w and best is not None and r < best):
            best, best_w = r, w
    return best
