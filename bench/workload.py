"""The multi-agent workload the benchmark driver replays: what a session sends, and when.

Pure Python (no HTTP, no Ray): the driver (bench/driver.py) turns these steps into requests.

A SESSION is one agent workflow over one growing conversation. Each turn calls the roles in
order over the shared context and appends every answer to it, so consecutive calls share a
long token prefix (the paper's Sec. 3.3 / App. B workload; numbers in docs/paper.md):

- ``react``: per turn, every role in ``roles`` once. Each call's output is appended as an
  assistant message; right after the tool role's call a tool OBSERVATION (a user message of
  ``observation_tokens`` tokens, drawn per turn) is appended too.
- ``reflexion``: the same turns, and after the last role of every turn one more call: a
  fixed short reflection request (a user message) is appended, the critic role answers, and
  that reflection is appended before the next turn. So a session makes
  ``turns * (len(roles) + 1)`` calls instead of ``turns * len(roles)``, and every turn's
  context grows by the reflection request and the reflection as well.

Text is synthesized from a fixed word list with a seeded RNG, so a run is reproducible and
token counts are roughly controlled (each word is one token for the SmolLM2 / GPT-2 style BPE
vocabularies; the driver records the real counts from ``usage``). The first message of every
session starts with the session id (which carries a per-run tag) so that sessions, and
reruns, share (almost) no prefix: cross-session cache hits would otherwise blur the
per-session hit ratio the benchmark is about.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Common short English words that are a single token each (with the leading space) for the
# SmolLM2 tokenizer; other BPE vocabularies give close to one token per word as well.
WORDS = tuple("""
the of and to in is was for on that with as by at from his her are be this an which or had
not were but they have one all their has been also more its new who after first two other
when time into only most over some would there can out these about than up year him city may
many such between made under during known used three world while later where being part then
state both well school film same another each
""".split())

REFLECTION_REQUEST = ("Reflect on the attempt so far: say what went wrong and what to do "
                      "differently in the next step.")


class Workload(BaseModel):
    """One benchmark workload. Lengths are in tokens of the base model (approximate: the
    driver measures the real prompt lengths from ``usage``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    pattern: Literal["react", "reflexion"] = Field(
        "react", description="Agent workflow per turn; see the module docstring.")
    roles: tuple[str, ...] | None = Field(
        None, min_length=1,
        description="Roles called in this order every turn; None: the first four of /v1/models.")
    tool_role: str | None = Field(
        None, description="The role whose call is followed by a tool observation; "
                          "None: the third role (the last if fewer).")
    critic_role: str | None = Field(
        None, description="reflexion: the role that writes the reflection; None: the last role.")
    turns: int = Field(3, ge=1, le=100, description="Turns per session.")
    initial_context_tokens: int = Field(
        1000, ge=1, description="Length of the session's first message (task + documents).")
    output_tokens: int = Field(
        64, ge=1, description="Tokens every call generates (fixed: sent with ignore_eos).")
    observation_tokens: tuple[int, int] = Field(
        (100, 300), description="Tool observation length, drawn uniformly in [min, max].")
    arrival_rate: float = Field(1.0, gt=0, description="Session arrivals per second (Poisson).")
    max_concurrent_sessions: int = Field(
        16, ge=1, description="Closed loop: an arrived session waits until fewer run.")
    num_sessions: int | None = Field(20, ge=1, description="Sessions to run; None: no limit.")
    duration_s: float | None = Field(
        None, gt=0, description="No session starts after this many seconds; None: no limit.")
    max_run_s: float = Field(
        900.0, gt=0, description="Hard limit: whatever still runs then is cancelled.")
    request_timeout_s: float = Field(120.0, gt=0, description="Per call, whole stream.")
    count_streamed_tokens: bool = Field(
        False, description="Ask for logprobs and count every token streamed (the fault run "
                           "checks none was sent twice or lost); off in benchmarks, where "
                           "computing logprobs would cost decode time.")
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> Workload:
        if self.num_sessions is None and self.duration_s is None:
            raise ValueError("set num_sessions or duration_s (or both): a run must end")
        low, high = self.observation_tokens
        if not 0 <= low <= high:
            raise ValueError("observation_tokens must be (min, max) with 0 <= min <= max")
        if self.roles is not None:
            for name in (self.tool_role, self.critic_role):
                if name is not None and name not in self.roles:
                    raise ValueError(f"{name!r} is not one of roles {list(self.roles)}")
        return self

    def with_roles(self, available: list[str]) -> Workload:
        """This workload with ``roles`` filled in from the server's role list."""
        if self.roles is not None:
            missing = [r for r in self.roles if r not in available]
            if missing:
                raise ValueError(f"roles {missing} are not served (served: {available})")
            return self
        if not available:
            raise ValueError("the server lists no roles")
        return self.model_copy(update={"roles": tuple(available[:4])})

    def calls_per_session(self) -> int:
        assert self.roles is not None
        return self.turns * (len(self.roles) + (self.pattern == "reflexion"))


@dataclass(frozen=True)
class Step:
    """One call of a session, with what is appended to the context around it."""

    turn: int
    index: int  # position within the session, 0-based
    role: str
    kind: Literal["agent", "reflect"]
    before: str | None  # a user message appended right before the call
    observation_tokens: int | None  # a tool observation of this length appended after it


def session_steps(workload: Workload, session: int) -> list[Step]:
    """The calls one session makes, in order. Observation lengths are drawn per session from
    (seed, session) so every run of a workload sends the same lengths."""
    roles = workload.roles
    assert roles is not None, "call Workload.with_roles first"
    tool = workload.tool_role or roles[min(2, len(roles) - 1)]
    critic = workload.critic_role or roles[-1]
    rng = random.Random(f"{workload.seed}:observations:{session}")
    steps: list[Step] = []
    for turn in range(workload.turns):
        for role in roles:
            obs = rng.randint(*workload.observation_tokens) if role == tool else None
            steps.append(Step(turn, len(steps), role, "agent", None, obs))
        if workload.pattern == "reflexion":
            steps.append(Step(turn, len(steps), critic, "reflect", REFLECTION_REQUEST, None))
    return steps


def synthetic_text(n_tokens: int, rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_tokens))


def session_id(workload: Workload, session: int, run_tag: str) -> str:
    """The x-session-id header and the tag that opens the session's text. ``run_tag`` differs
    per run: a rerun of the same seed on a warm server would otherwise hit the previous run's
    cached prefixes and report a hit ratio no fresh session could get."""
    return f"bench-{run_tag}-{workload.seed}-{session:05d}"


def initial_messages(workload: Workload, session: int, run_tag: str) -> list[dict[str, str]]:
    """The session's opening context. A system message of our own comes first: otherwise
    templates like SmolLM2's insert a default system prompt that every session would share."""
    rng = random.Random(f"{workload.seed}:context:{session}")
    body = synthetic_text(max(workload.initial_context_tokens - 12, 1), rng)
    tag = session_id(workload, session, run_tag)
    return [{"role": "system", "content": f"Session {tag}. Task: {body}"}]


def observation_message(workload: Workload, session: int, step: Step) -> dict[str, str]:
    assert step.observation_tokens is not None
    rng = random.Random(f"{workload.seed}:observation-text:{session}:{step.index}")
    # "user", not "tool": not every chat template accepts a tool turn without a tool call.
    return {"role": "user",
            "content": "Observation: " + synthetic_text(step.observation_tokens, rng)}


def arrival_times(workload: Workload) -> Iterator[float]:
    """Seconds after the start at which sessions arrive: a Poisson process, the same for
    every run with this seed, so two topologies see the same arrivals."""
    rng = random.Random(f"{workload.seed}:arrivals")
    t, n = 0.0, 0
    while workload.num_sessions is None or n < workload.num_sessions:
        if workload.duration_s is not None and t > workload.duration_s:
            return
        yield t
        n += 1
        t += rng.expovariate(workload.arrival_rate)
