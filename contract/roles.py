"""ServedRole: the one shape of an agent role below the validated config.

The app builder (deployments/plan.py) makes one per ``RoleConfig``; the ingress serves it (its
name is the OpenAI ``model``, its instructions follow the shared context in the prompt) and
the P/D pipeline routes it (which prefill and decode deployments, which LoRA adapter).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServedRole:
    name: str
    instructions: str | None = None
    prefill_deployment: str = ""  # Serve deployment names; empty where no pipeline runs (tests)
    decode_deployment: str = ""
    lora_name: str | None = None  # the adapter the decode pool applies; None: its own weights
    default_max_tokens: int | None = None  # without max_tokens; None: the rest of the window
