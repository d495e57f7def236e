"""The vLLM LoRARequest of each (adapter name, folder) a LoRA decode pool has been asked for.

vLLM loads an adapter on the first request that carries its LoRARequest and keeps it in an LRU
cache keyed by the request's integer id. A role added to a running app reaches this pool only
as (name, folder) on its requests, so a new pair gets a new id here: a role REPLACED under the
same name (another folder) is loaded afresh, while requests already running on the old adapter
finish on it. Nothing is unloaded explicitly: vLLM evicts adapters no request uses once its
cache (max_loras on the device, max_cpu_loras in memory) is full.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def vllm_lora_request(name: str, lora_id: int, path: str) -> Any:
    from vllm.lora.request import LoRARequest

    return LoRARequest(name, lora_id, path)


class LoraRequests:
    def __init__(self, preloaded: dict[str, str],
                 make: Callable[[str, int, str], Any] = vllm_lora_request) -> None:
        """``preloaded``: name -> folder of the adapters the app was deployed with."""
        self._make = make
        self._by_pair: dict[tuple[str, str], Any] = {}
        self._latest: dict[str, Any] = {}
        for name, path in sorted(preloaded.items()):
            self.get(name, path)

    def get(self, name: str, path: str | None) -> Any | None:
        """The request for ``name`` at ``path``; without a path, the latest folder this pool
        saw for the name (requests of callers that send names only). None: unknown name."""
        if path is None:
            return self._latest.get(name)
        request = self._by_pair.get((name, path))
        if request is None:
            request = self._make(name, len(self._by_pair) + 1, path)
            self._by_pair[(name, path)] = request
        self._latest[name] = request
        return request
