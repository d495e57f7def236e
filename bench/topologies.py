"""The two systems a benchmark compares, on the same engines and the same hardware budget.

- baseline: the paper's multi-model disaggregated serving: every role is its own model with
  its own prefill pool and its own decode pool; no KV is shared across roles.
- prefillshare: one shared base-model prefill pool (as many replicas as the baseline has
  prefill engines, routed by session + prefix locality) and one decode pool per role.
Both get the same number of engines, each with the same engine options. Pure: app args only.
"""

from __future__ import annotations

from typing import Any, Literal

Topology = Literal["baseline", "prefillshare"]


def app_args(topology: Topology, roles: list[str], model: str, engine: dict[str, Any], *,
             decode_kv_mode: str = "exact", prefill_policy: str = "prefix_locality",
             decode_engine: dict[str, Any] | None = None) -> dict[str, Any]:
    """``engine``: every prefill engine's options; ``decode_engine``: every decode engine's
    (default: the same). Both topologies get the same two, so a KV-capacity setting applies
    to the same engines on each side."""
    decode = {"engine": decode_engine if decode_engine is not None else engine}
    if topology == "baseline":
        return {
            "base_model": model,
            # Each role prefills with its own checkpoint (here: a copy of the same weights;
            # what matters for serving is that the caches are separate).
            "prefill_pools": {r: {"model": model, "engine": engine} for r in roles},
            "roles": [{"name": r, "decoder": model, "prefill_pool": r, "decode_pool": decode}
                      for r in roles],
            "routing": {"prefill_policy": "session_sticky"},
        }
    return {
        "base_model": model,
        "prefill_pools": {"shared": {"replicas": len(roles), "engine": engine}},
        "roles": [{"name": r, "decode_pool": decode} for r in roles],
        "decode_kv_mode": decode_kv_mode,
        "routing": {"prefill_policy": prefill_policy},
    }
