"""ServedRole: the one shape of an agent role below the validated config.

The app builder (deployments/plan.py) makes one per ``RoleConfig``; the ingress serves it (its
name is the OpenAI ``model``, its instructions follow the shared context in the prompt) and
the P/D pipeline routes it (which prefill and decode deployments, which LoRA adapter).
"""

from __future__ import annotations

from dataclasses import dataclass

from contract.config import RoleConfig

LORA_POOL = "lora"  # the pool name of the shared multi-LoRA decode pool


@dataclass(frozen=True)
class ServedRole:
    name: str
    instructions: str | None = None
    prefill_deployment: str = ""  # Serve deployment names; empty where no pipeline runs (tests)
    decode_deployment: str = ""
    lora_name: str | None = None  # the adapter the decode pool applies; None: its own weights
    lora_path: str | None = None  # its folder, as the decode pool loads it (resolved, checked)
    default_max_tokens: int | None = None  # without max_tokens; None: the rest of the window


def prefill_deployment_name(pool: str) -> str:
    return f"prefill-{pool}"


def decode_deployment_name(role: RoleConfig) -> str:
    """A LoRA role decodes on the shared LoRA pool; any other on its own pool."""
    return f"decode-{LORA_POOL}" if role.lora_adapter else f"decode-{role.name}"


def served_role(role: RoleConfig, lora_path: str | None = None) -> ServedRole:
    """The ServedRole of a config role; ``lora_path``: its adapter folder once resolved."""
    return ServedRole(role.name, role.instructions, prefill_deployment_name(role.prefill_pool),
                      decode_deployment_name(role),
                      lora_name=role.name if role.lora_adapter else None,
                      lora_path=lora_path if role.lora_adapter else None,
                      default_max_tokens=role.default_max_tokens)
