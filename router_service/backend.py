"""The seam between the HTTP API and whatever generates tokens.

Pure data and a Protocol: the API (router_service.api) hands a ``GenerationRequest`` to a
``GenerationBackend`` and streams the ``GenerationDelta`` events back; in service that is the
P/D pipeline (router_service.pd_backend), in tests a fake. No Ray import here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from contract.wire import GenerationDelta, SamplingSpec


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    role: str
    prompt_token_ids: tuple[int, ...]
    sampling: SamplingSpec
    session_id: str | None = None
    n: int = 1  # choices: each its own decode sequence (router_service/choices.py)


class GenerationBackend(Protocol):
    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationDelta]:
        """Streams deltas; closing the iterator early aborts the request on every engine."""
        ...
