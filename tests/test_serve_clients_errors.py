"""A lost replica reaches the client as a short message naming the pool: Ray's own text
(actor ids, pids, node addresses) stays in the ingress log."""

from __future__ import annotations

import pytest
from ray.exceptions import ActorUnavailableError

from contract.wire import PrefillRequest
from router_service.pd_backend import ReplicaGone
from router_service.serve_clients import ServePrefillClient

RAY_TEXT = "node 10.1.2.3 pid 4242 connection lost"


class _DeadHandle:
    def options(self, **_: object) -> _DeadHandle:
        return self

    @property
    def prefill(self) -> _DeadHandle:
        return self

    async def remote(self, *args: object, **kwargs: object) -> None:
        raise ActorUnavailableError(RAY_TEXT, None)


async def test_replica_loss_message_names_the_pool_only():
    client = ServePrefillClient(_DeadHandle(), "prefill-shared")
    with pytest.raises(ReplicaGone) as info:
        await client.prefill(PrefillRequest("r1", tuple(range(40))))
    assert str(info.value) == "a prefill-shared replica died"
    assert "10.1.2.3" not in str(info.value)
    assert RAY_TEXT in str(info.value.__cause__)  # kept for the log
