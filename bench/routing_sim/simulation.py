"""Discrete-event simulation of the prefill pool under a routing policy.

One loop, one heap of timed events: a workflow issues a call, the router ranks replicas, the
call runs on the chosen replica's FIFO, and when its prefill ends the workflow issues its next
call after a decode + tool gap. Cluster events kill (in-flight calls are retried elsewhere,
like the ingress does on ActorDiedError), add or drain replicas. Single-threaded and seeded:
the same scenario and policy give the same numbers.
"""

from __future__ import annotations

import heapq
import itertools
import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from bench.routing_sim.sim_replica import ServiceModel, SimJob, SimReplica
from bench.routing_sim.workload import SessionPlan, WorkflowPlan, WorkloadConfig, make_sessions
from routing.block_hashes import extend_block_hashes
from routing.interface import ReplicaLoad, RouteRequest, RoutingPolicy


@dataclass(frozen=True)
class ClusterEvent:
    at_s: float
    kind: Literal["kill", "add", "drain"]
    replica_id: str


@dataclass(frozen=True)
class Scenario:
    name: str
    workload: WorkloadConfig
    service: ServiceModel = ServiceModel()
    replicas: int = 4
    events: tuple[ClusterEvent, ...] = ()
    routers: int = 1
    """Ingress replicas, each with its own policy instance; a call goes to a random one (the
    HTTP proxy spreads requests, so one session's calls meet different routers)."""
    max_ongoing_requests: int = 32
    """Serve skips a ranked group whose replicas all hold this many requests."""
    queue_len_refresh_s: float = 1.0
    """Age of Serve's queue-length cache as the policies see it."""
    retry_delay_s: float = 0.05


@dataclass(frozen=True)
class RunResult:
    scenario: str
    policy: str
    requests: int
    prompt_tokens: int
    hit_ratio: float
    best_hit_ratio: float
    p50_s: float
    p95_s: float
    util_mean: float
    util_max_over_mean: float
    util_cv: float
    retries: int
    latencies_s: tuple[float, ...] = field(repr=False, default=())


@dataclass
class _Workflow:
    session_id: str
    plan: WorkflowPlan
    tokens: list[int]
    hashes: tuple[int, ...] = ()
    next_call: int = 0


class Simulation:
    def __init__(self, scenario: Scenario, make_policy: Callable[[], RoutingPolicy],
                 namespace: str = "sim") -> None:
        self.sc = scenario
        self.namespace = namespace
        self.policies = [make_policy() for _ in range(scenario.routers)]
        self.replicas: dict[str, SimReplica] = {
            f"r{i}": SimReplica(f"r{i}", scenario.service) for i in range(scenario.replicas)}
        self._rng = random.Random(scenario.workload.seed + 1)
        self._heap: list[tuple[float, int, str, object]] = []
        self._seq = itertools.count()
        self._tokens = itertools.count(1)
        self._seen_blocks: set[int] = set()
        self._snapshot: dict[str, int] = {}
        self._snapshot_s = -1e9
        self.now = 0.0
        self.done: list[tuple[SimJob, int]] = []  # (job, best cached tokens)
        self._best: dict[str, int] = {}
        self.retries = 0

    # ---- event plumbing ----
    def _at(self, t: float, kind: str, payload: object) -> None:
        heapq.heappush(self._heap, (t, next(self._seq), kind, payload))

    def run(self) -> list[tuple[SimJob, int]]:
        for s in make_sessions(self.sc.workload):
            self._start_session(s)
        for ev in self.sc.events:
            self._at(ev.at_s, ev.kind, ev.replica_id)
        while self._heap:
            self.now, _, kind, payload = heapq.heappop(self._heap)
            getattr(self, f"_on_{kind}")(payload)
        for r in self.replicas.values():
            if r.ended_s is None:
                r.ended_s = self.now
        return self.done

    def _start_session(self, s: SessionPlan) -> None:
        shared = [next(self._tokens) for _ in range(max(wf.shared_prefix for wf in s.workflows))]
        for i, plan in enumerate(s.workflows):
            wf = _Workflow(s.session_id, plan, shared[:plan.shared_prefix])
            self._at(s.start_s + i * s.stagger_s, "issue", wf)

    # ---- events ----
    def _on_issue(self, wf: _Workflow) -> None:
        k = wf.next_call
        n_new = wf.plan.appends[k] - (len(wf.tokens) if k == 0 else 0)
        wf.tokens.extend(next(self._tokens) for _ in range(n_new))
        wf.hashes = extend_block_hashes(wf.hashes, wf.tokens, self.sc.service.block_size,
                                        self.namespace)
        job = SimJob(f"{wf.session_id}/{id(wf)}/{k}", wf.session_id, wf.hashes, len(wf.tokens),
                     self.now, wf, router=self._rng.randrange(self.sc.routers))
        self._best[job.request_id] = self._best_cached(job)
        self._seen_blocks.update(job.hashes)
        self._route(job)

    def _on_done(self, payload: tuple[SimJob, int]) -> None:
        job, attempt = payload
        if attempt != job.attempt:
            return  # an attempt lost with its replica; the retry has its own event
        replica = self.replicas[job.replica_id]
        self._started(replica.finish(job, self.now))
        if replica.draining and replica.outstanding == 0:
            replica.ended_s = self.now
        self.policies[job.router].on_finished(replica.replica_id, self._rid(job))
        self.done.append((job, self._best.pop(job.request_id)))
        wf = job.workflow
        assert isinstance(wf, _Workflow)
        wf.next_call += 1
        if wf.next_call < len(wf.plan.appends):
            self._at(self.now + wf.plan.gaps_s[wf.next_call - 1], "issue", wf)

    def _on_retry(self, job: SimJob) -> None:
        self._route(job)

    def _on_kill(self, replica_id: str) -> None:
        lost = self.replicas[replica_id].kill(self.now)
        for p in self.policies:
            p.on_replica_removed(replica_id)
        for job in lost:
            self.retries += 1
            job.attempt += 1
            self._at(self.now + self.sc.retry_delay_s, "retry", job)

    def _on_drain(self, replica_id: str) -> None:
        replica = self.replicas[replica_id]
        replica.draining = True  # finishes what it holds, takes nothing new
        if replica.outstanding == 0:
            replica.ended_s = self.now
        for p in self.policies:
            p.on_replica_removed(replica_id)

    def _on_add(self, replica_id: str) -> None:
        self.replicas[replica_id] = SimReplica(replica_id, self.sc.service, created_s=self.now)

    # ---- routing (what Serve does with a policy's ranking) ----
    def _route(self, job: SimJob) -> None:
        live = [r for r in self.replicas.values() if r.alive and not r.draining]
        if self.now - self._snapshot_s >= self.sc.queue_len_refresh_s:
            self._snapshot = {r.replica_id: r.outstanding for r in self.replicas.values()}
            self._snapshot_s = self.now
        cands = [ReplicaLoad(r.replica_id, self._snapshot.get(r.replica_id, 0)) for r in live]
        request = RouteRequest(self._rid(job), job.session_id, job.hashes, job.num_tokens)
        policy = self.policies[job.router]
        pick = self._serve_pick(policy.rank(cands, request), live)
        job.replica_id = pick
        policy.on_sent(pick, request)
        self._started(self.replicas[pick].enqueue(job, self.now))

    def _started(self, jobs: list[SimJob]) -> None:
        for job in jobs:
            self._at(self.now + job.service_s, "done", (job, job.attempt))

    def _serve_pick(self, groups: list[list[str]], live: list[SimReplica]) -> str:
        """Serve: the least-queued replica of the first group with one under
        max_ongoing_requests; if none has room we take the least queued of all (Serve would
        wait for room instead; the difference only shows at saturation)."""
        by_id = {r.replica_id: r for r in live}
        for group in groups:
            room = [by_id[r] for r in group if r in by_id
                    and by_id[r].outstanding < self.sc.max_ongoing_requests]
            if room:
                return min(room, key=lambda r: (self._snapshot.get(r.replica_id, 0), r.replica_id)).replica_id
        return min(live, key=lambda r: (r.outstanding, r.replica_id)).replica_id

    def _best_cached(self, job: SimJob) -> int:
        """The workload's ceiling: full blocks seen before by anyone (here: the same session),
        minus vLLM's last-token rule."""
        n = 0
        for h in job.hashes:
            if h not in self._seen_blocks:
                break
            n += 1
        return min(n, (job.num_tokens - 1) // self.sc.service.block_size) * self.sc.service.block_size

    @staticmethod
    def _rid(job: SimJob) -> str:
        return job.request_id if job.attempt == 0 else f"{job.request_id}-r{job.attempt}"


def summarize(sim: Simulation, policy_name: str) -> RunResult:
    done = sim.done
    prompt = sum(j.num_tokens for j, _ in done)
    lat = sorted(j.started_s + j.service_s - j.issued_s for j, _ in done)  # type: ignore[operator]
    conc = sim.sc.service.concurrency
    utils = [r.busy_s / (conc * max(1e-9, (r.ended_s or sim.now) - r.created_s))
             for r in sim.replicas.values()]
    mean_u = statistics.fmean(utils)
    return RunResult(
        scenario=sim.sc.name, policy=policy_name, requests=len(done), prompt_tokens=prompt,
        hit_ratio=sum(j.cached_tokens for j, _ in done) / max(1, prompt),
        best_hit_ratio=sum(b for _, b in done) / max(1, prompt),
        p50_s=_quantile(lat, 0.50), p95_s=_quantile(lat, 0.95),
        util_mean=mean_u, util_max_over_mean=max(utils) / mean_u if mean_u else 0.0,
        util_cv=statistics.pstdev(utils) / mean_u if mean_u else 0.0,
        retries=sim.retries, latencies_s=tuple(lat),
    )


def _quantile(sorted_xs: list[float], q: float) -> float:
    if not sorted_xs:
        return 0.0
    return sorted_xs[min(len(sorted_xs) - 1, int(q * len(sorted_xs)))]


def simulate(scenario: Scenario, make_policy: Callable[[], RoutingPolicy], policy_name: str) -> RunResult:
    sim = Simulation(scenario, make_policy)
    sim.run()
    return summarize(sim, policy_name)
