"""Continuing a stream on another decode replica after its replica died mid-stream.

The continuation is the same request: the original prompt is prefilled again (a prefix-cache
hit on the prefill pool), and a new decode replica gets that prompt plus the tokens already
sent, computes their KV with the decoder (vllm_runtime/kv_resume.py) and generates the rest.
Exact where the decode engine's state is a function of the tokens alone; where it is not, the
request ends with an error as before, saying why.
"""

from __future__ import annotations

import dataclasses

from contract.wire import SamplingSpec


def why_not_resumable(spec: SamplingSpec) -> str | None:
    """Why a continuation could differ from the uninterrupted stream (None: it cannot)."""
    if spec.structured_output is not None:
        return "its structured output's grammar state cannot be carried to another engine"
    if spec.presence_penalty or spec.frequency_penalty:
        return ("presence/frequency penalties count only generated tokens, and a continuation "
                "sees the sent ones as prompt")
    if spec.temperature > 0 and spec.seed is not None:
        return "the seeded sampler's random state cannot be carried to another engine"
    return None


def continued_sampling(spec: SamplingSpec, num_sent: int) -> SamplingSpec:
    """The sampling of the rest of a stream of which ``num_sent`` tokens were sent."""
    if num_sent >= spec.max_tokens:
        raise ValueError("nothing is left to generate")
    return dataclasses.replace(spec, max_tokens=spec.max_tokens - num_sent,
                               min_tokens=max(0, spec.min_tokens - num_sent))
