"""What a benchmark run records: one row per call, one per session, and the engine counters.

Produced by bench/driver.py, read by bench/metrics.py; plain data so a run's JSON can be
re-summarized later without re-running it. Times are seconds relative to the run's start
(a monotonic clock), so they compare across calls but not across runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class CallRecord:
    session: str
    turn: int
    step: int  # position within the session
    role: str
    kind: str  # "agent" or "reflect"
    start_s: float
    end_s: float
    ttft_s: float | None  # to the first chunk with content; None if none came
    prompt_tokens: int | None  # from usage; None when the call failed before it
    completion_tokens: int | None
    cached_tokens: int | None  # usage.prompt_tokens_details.cached_tokens
    status: int | None  # HTTP status; None when no response came
    error: str | None = None
    streamed_tokens: int | None = None  # tokens the stream carried (count_streamed_tokens)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def e2e_s(self) -> float:
        return self.end_s - self.start_s


@dataclass(frozen=True)
class SessionRecord:
    session: str
    index: int
    arrival_s: float
    start_s: float | None  # None: never started (arrived after the start window closed)
    end_s: float | None
    calls_planned: int
    calls_sent: int
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.start_s is not None and self.error is None and (
            self.calls_sent == self.calls_planned)


@dataclass(frozen=True)
class StatsSample:
    """GET /stats at one moment: {"prefill": {deployment: counters}, "decode": {...},
    "retries": n}, as the ingress returns it."""

    t_s: float
    stats: dict[str, Any]


@dataclass
class RunResult:
    url: str
    workload: dict[str, Any]  # Workload.model_dump(), roles resolved
    started_at: float  # wall clock (time.time()) at t_s = 0
    run_tag: str = ""  # in every session id of this run
    calls: list[CallRecord] = field(default_factory=list)
    sessions: list[SessionRecord] = field(default_factory=list)
    # None when no stats URL was given or it did not answer (e.g. 404 on a plain API).
    stats_before: StatsSample | None = None
    stats_after: StatsSample | None = None
    stats_samples: list[StatsSample] = field(default_factory=list)
    stopped_by: str = "done"  # "done" or "max_run_s"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunResult:
        def sample(d: dict[str, Any] | None) -> StatsSample | None:
            return None if d is None else StatsSample(**d)

        return cls(
            url=data["url"], workload=data["workload"], started_at=data["started_at"],
            run_tag=data.get("run_tag", ""),
            calls=[CallRecord(**c) for c in data["calls"]],
            sessions=[SessionRecord(**s) for s in data["sessions"]],
            stats_before=sample(data["stats_before"]), stats_after=sample(data["stats_after"]),
            stats_samples=[StatsSample(**s) for s in data["stats_samples"]],
            stopped_by=data["stopped_by"],
        )
