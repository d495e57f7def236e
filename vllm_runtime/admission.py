"""Admission control at an engine: refuse new work BEFORE memory runs out, with a 503 and a
Retry-After the client can act on, instead of queueing until Ray's memory monitor or the kernel
kills the replica (what a soak run once met: 9 calls 504 after replicas were killed).

Two signals: requests WAITING for a slot (the queue that grows without bound under overload;
each holds its prompt, and on the decode side its pulled KV; see ``waiting_requests``) and the
fraction of KV blocks in use (EngineCounters, from the engine's last step). A refusal comes
before any token; the ingress passes it to the client as is (code ``overloaded``): another
retry would spend one more prefill on an overloaded app (docs/reliability.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from contract.wire import ErrorCode, ServingError


def waiting_requests(inflight: int, slots: int, engine_waiting: int) -> int:
    """Requests at an engine that wait for one of its ``slots`` (max_num_seqs).

    vLLM's own count (``num_waiting_reqs``, last step) leaves out a decode request whose KV
    pull has started (vLLM sets it aside as "skipped" until it runs), so requests that arrive
    together all start their pulls and none counts. What the replica holds beyond the slots
    must wait, whatever vLLM calls it, and the replica's in-flight count is exact now, not as
    of the last step."""
    return max(engine_waiting, inflight - slots)


@dataclass(frozen=True)
class AdmissionLimits:
    max_waiting: int | None = None  # refuse while more requests than this wait in the engine
    max_kv_usage: float | None = None  # refuse while the KV cache is fuller than this (0-1]
    retry_after_s: int = 2

    def refusal(self, waiting: int, kv_usage: float) -> ServingError | None:
        """The 503 to answer now, or None to admit."""
        if self.max_waiting is not None and waiting > self.max_waiting:
            why = f"{waiting} requests waiting (limit {self.max_waiting})"
        elif self.max_kv_usage is not None and kv_usage > self.max_kv_usage:
            why = f"KV cache {kv_usage:.0%} full (limit {self.max_kv_usage:.0%})"
        else:
            return None
        return ServingError(f"The server is overloaded ({why}); retry after "
                            f"{self.retry_after_s} s.", 503, code=ErrorCode.OVERLOADED,
                            retryable=True, headers={"retry-after": str(self.retry_after_s)})
