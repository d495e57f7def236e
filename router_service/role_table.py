"""The roles an ingress replica serves, replaceable while it runs.

The ingress gets its roles as Serve ``user_config`` (``{"roles": [RoleConfig, ...]}``), so a
`serve deploy` that changes only that (``prefillshare roles add|remove``) reaches the running
replicas through ``reconfigure`` with no restart: no request in flight is dropped (it already
holds its ServedRole), the next ones see the new table, and /v1/models follows.

What a running app can take without a redeploy: adding, replacing or removing a LoRA role (the
LoRA decode pool loads a new adapter on its first request), removing any role, and changing any
role's instructions or default_max_tokens. A role that needs an engine the app does not run
(its own decoder, an unknown prefill pool, a LoRA role without a LoRA pool) or a bad adapter
(missing files, rank above the pool's, trained on another base) is REJECTED: left out with its
reason, while every other role keeps serving. Pure: no Ray.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter, ValidationError

from contract.config import RoleConfig
from contract.roles import ServedRole, served_role
from vllm_runtime.lora_adapters import AdapterRejected, check_adapter


@dataclass(frozen=True)
class RejectedRole:
    name: str
    reason: str


@dataclass(frozen=True)
class ServingFacts:
    """What the running app has, against which a role list is checked."""

    base_model: str  # the resolved base folder (adapters must have been trained on it)
    prefill_deployments: frozenset[str]
    decode_deployments: frozenset[str]
    max_lora_rank: int | None  # None: the app runs no LoRA pool


class RoleTable:
    """Name -> ServedRole, swapped whole (readers never see half an update)."""

    def __init__(self, roles: Iterable[ServedRole] = ()) -> None:
        self._by_name = {r.name: r for r in roles}
        self.rejected: tuple[RejectedRole, ...] = ()

    def get(self, name: str) -> ServedRole | None:
        return self._by_name.get(name)

    def names(self) -> list[str]:
        return list(self._by_name)

    def roles(self) -> list[ServedRole]:
        return list(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)

    def replace(self, roles: Sequence[ServedRole], rejected: Sequence[RejectedRole] = ()) -> None:
        self._by_name = {r.name: r for r in roles}
        self.rejected = tuple(rejected)


_ROLE_LIST = TypeAdapter(list[RoleConfig])


def resolve_roles(user_config: dict[str, Any], facts: ServingFacts
                  ) -> tuple[list[ServedRole], list[RejectedRole]]:
    """The servable roles of a ``{"roles": [...]}`` user_config, and the rejected ones.
    Raises ValueError only when the whole list is unusable (not a list of roles, duplicate
    names): Serve then keeps the replicas on their current roles."""
    try:
        configs = _ROLE_LIST.validate_python(user_config.get("roles"))
    except ValidationError as exc:
        raise ValueError(f"user_config.roles: {exc}") from None
    names = [r.name for r in configs]
    if len(set(names)) != len(names):
        raise ValueError(f"user_config.roles: duplicate role names in {names}")
    served: list[ServedRole] = []
    rejected: list[RejectedRole] = []
    for role in configs:
        try:
            served.append(_served(role, facts))
        except (AdapterRejected, LookupError) as exc:
            rejected.append(RejectedRole(role.name, str(exc)))
    return served, rejected


def _served(role: RoleConfig, facts: ServingFacts) -> ServedRole:
    candidate = served_role(role)
    if candidate.prefill_deployment not in facts.prefill_deployments:
        raise LookupError(f"no prefill pool {role.prefill_pool!r} in this app")
    if role.lora_adapter is None:
        if candidate.decode_deployment not in facts.decode_deployments:
            raise LookupError(f"role {role.name!r} needs a decode pool of its own (a `decoder` "
                              "or the base): that is a new engine, deploy the config instead")
        return candidate
    if facts.max_lora_rank is None or candidate.decode_deployment not in facts.decode_deployments:
        raise LookupError("this app runs no LoRA pool (add `lora_pool` and redeploy)")
    folder = check_adapter(role.lora_adapter, facts.base_model, facts.max_lora_rank)
    return served_role(role, str(folder))
