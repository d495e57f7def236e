"""The simulated agent workload: sessions of workflows, each 4 agents x T turns over one
growing context (the paper's ReAct/Reflexion shape, numbers from docs/paper.md).

Pure and seeded. A workflow's context grows by appending: call k's prompt is call k-1's prompt
plus the tokens appended since (the previous agent's output and a tool observation). Tokens
are unique integers per segment, so two prompts share a prefix exactly when the workload says
they do; what matters to routing is their block hashes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class WorkloadConfig:
    duration_s: float = 240.0
    """Sessions arrive during this window (Poisson); the run lasts until all finish."""
    session_rate: float = 0.8
    """Session arrivals per second."""
    agents: int = 4
    turns: tuple[int, int] = (3, 5)
    """Turns per session, uniform in [lo, hi]; each turn calls every agent once."""
    initial_tokens: tuple[int, int] = (800, 1200)
    append_tokens: tuple[int, int] = (100, 300)
    call_gap_s: tuple[float, float] = (1.0, 4.0)
    """Decode + tool time between one call's prefill end and the next call of the workflow."""
    heavy_fraction: float = 0.0
    """Skew: this share of sessions is heavy: longer (more turns) and hotter (shorter gaps)."""
    heavy_turns_factor: float = 4.0
    heavy_gap_factor: float = 0.5
    hot_workflows: int = 0
    """Hot-session scenario: one session id (a big tenant) runs this many workflows at once,
    all over one shared prefix; 0 disables it."""
    hot_shared_tokens: int = 3000
    hot_turns: int = 6
    hot_start_s: float = 40.0
    hot_gap_s: tuple[float, float] = (0.5, 1.5)
    seed: int = 0


@dataclass(frozen=True)
class WorkflowPlan:
    """One workflow: its calls' appended token counts (the first one is the initial context)
    and the gaps before each later call."""

    shared_prefix: int  # first tokens shared with the other workflows of the session
    appends: tuple[int, ...]
    gaps_s: tuple[float, ...]


@dataclass(frozen=True)
class SessionPlan:
    session_id: str
    start_s: float
    workflows: tuple[WorkflowPlan, ...]
    stagger_s: float = 0.0  # workflow i starts at start_s + i * stagger_s
    heavy: bool = False


def make_sessions(cfg: WorkloadConfig) -> list[SessionPlan]:
    rng = random.Random(cfg.seed)
    out: list[SessionPlan] = []
    t = 0.0
    while True:
        t += rng.expovariate(cfg.session_rate)
        if t >= cfg.duration_s:
            break
        heavy = rng.random() < cfg.heavy_fraction
        turns = rng.randint(*cfg.turns)
        gap_scale = 1.0
        if heavy:
            turns = round(turns * cfg.heavy_turns_factor)
            gap_scale = cfg.heavy_gap_factor
        wf = _workflow(rng, cfg, 0, rng.randint(*cfg.initial_tokens), turns * cfg.agents,
                       tuple(g * gap_scale for g in cfg.call_gap_s))
        out.append(SessionPlan(f"s{len(out)}", t, (wf,), heavy=heavy))
    if cfg.hot_workflows > 0:
        wfs = tuple(
            _workflow(rng, cfg, cfg.hot_shared_tokens, cfg.hot_shared_tokens
                      + rng.randint(*cfg.append_tokens), cfg.hot_turns * cfg.agents, cfg.hot_gap_s)
            for _ in range(cfg.hot_workflows)
        )
        out.append(SessionPlan("hot", cfg.hot_start_s, wfs, stagger_s=0.05, heavy=True))
    return sorted(out, key=lambda s: (s.start_s, s.session_id))


def _workflow(rng: random.Random, cfg: WorkloadConfig, shared: int, initial: int, calls: int,
              gap: tuple[float, float]) -> WorkflowPlan:
    appends = (initial,) + tuple(rng.randint(*cfg.append_tokens) for _ in range(calls - 1))
    gaps = tuple(rng.uniform(*gap) for _ in range(calls - 1))
    return WorkflowPlan(shared, appends, gaps)
