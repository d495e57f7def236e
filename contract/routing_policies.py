"""The routing policies a pool can name in the config: the one list of them.

routing/registry.py maps each name to its implementation (and checks at import that the two
agree); contract/config.py takes its choices from here, so `prefillshare validate` knows them
without importing any routing code.
"""

from __future__ import annotations

from typing import Literal

ROUTING_POLICIES: dict[str, str] = {
    "prefix_locality": "ours: longest cached prefix, then the session's home, under a load bound",
    "session_sticky": "the paper's: every call of a session to one replica",
    "power_of_two": "the less loaded of two random replicas",
    "prefix_affinity": "Ray Serve LLM's PrefixCacheAffinityRouter, on token blocks",
    "least_loaded": "the replica with the fewest requests in flight",
}

# Derived, so a new policy is one line above (pydantic reads the Literal at runtime).
RoutingPolicyName = Literal[tuple(ROUTING_POLICIES)]  # type: ignore[valid-type]
