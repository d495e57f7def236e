"""A simulated prefill replica: an LRU KV cache and a FIFO service model.

Service time = per_request_overhead_s + UNCACHED prompt tokens / prefill_tok_s, with up to
``concurrency`` requests running at once (each at the full rate: a simplification of vLLM's
batched prefill, which shares a token budget). The cache is the same tail-first LRU as the
router's index (prefix_index.ReplicaBlocks), but it is the engine's truth: the router only
ever sees it through its own bookkeeping.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from routing.prefix_index import ReplicaBlocks


@dataclass(frozen=True)
class ServiceModel:
    prefill_tok_s: float = 8000.0
    """Uncached prompt tokens per second per running request."""
    per_request_overhead_s: float = 0.02
    concurrency: int = 2
    kv_capacity_blocks: int = 500
    block_size: int = 128


@dataclass(eq=False)  # identity: two attempts with equal fields are still different jobs
class SimJob:
    """One attempt of one prefill request on one replica (mutable: the simulator's record)."""

    request_id: str
    session_id: str
    hashes: tuple[int, ...]
    num_tokens: int
    issued_s: float
    workflow: object  # the simulator's workflow state, opaque here
    router: int = 0
    attempt: int = 0
    replica_id: str = ""
    cached_tokens: int = 0
    started_s: float | None = None
    service_s: float = 0.0


@dataclass
class SimReplica:
    replica_id: str
    model: ServiceModel
    created_s: float = 0.0
    alive: bool = True
    draining: bool = False
    ended_s: float | None = None
    busy_s: float = 0.0
    queue: deque[SimJob] = field(default_factory=deque)
    running: list[SimJob] = field(default_factory=list)
    cache: ReplicaBlocks = field(init=False)

    def __post_init__(self) -> None:
        self.cache = ReplicaBlocks(self.model.kv_capacity_blocks)

    @property
    def outstanding(self) -> int:
        return len(self.queue) + len(self.running)

    def enqueue(self, job: SimJob, now: float) -> list[SimJob]:
        """Returns the jobs that started now (their finish time is started_s + service_s)."""
        self.queue.append(job)
        return self._start_ready(now)

    def finish(self, job: SimJob, now: float) -> list[SimJob]:
        self.running.remove(job)
        self.cache.touch_chain(job.hashes)  # the engine caches every full block it computed
        return self._start_ready(now)

    def kill(self, now: float) -> list[SimJob]:
        """Dies: the work done so far on running jobs is spent; all jobs come back for retry."""
        for job in self.running:
            assert job.started_s is not None
            self.busy_s += max(0.0, now - job.started_s) - job.service_s  # undo the full charge
        lost = list(self.running) + list(self.queue)
        self.running.clear()
        self.queue.clear()
        self.cache.clear()
        self.alive = False
        self.ended_s = now
        return lost

    def _start_ready(self, now: float) -> list[SimJob]:
        started = []
        while self.queue and len(self.running) < self.model.concurrency:
            job = self.queue.popleft()
            bs = self.model.block_size
            # vLLM always computes the last prompt token: a hit covers at most (n-1) tokens.
            max_blocks = (job.num_tokens - 1) // bs
            job.cached_tokens = min(self.cache.match_length(job.hashes), max_blocks) * bs
            job.started_s = now
            job.service_s = (self.model.per_request_overhead_s
                             + (job.num_tokens - job.cached_tokens) / self.model.prefill_tok_s)
            self.busy_s += job.service_s
            self.running.append(job)
            started.append(job)
        return started
