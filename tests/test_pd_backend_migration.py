"""Mid-stream migration in the P/D pipeline (router_service/pd_backend.py): a decode replica
lost after tokens were sent, with fake clients. The real-engine test is
tests/e2e/test_migration_e2e.py."""

from __future__ import annotations

import pytest

from contract.wire import ErrorCode, GenerationDelta, SamplingSpec, ServingError
from router_service.backend import GenerationRequest
from router_service.pd_backend import ReplicaGone
from tests.pd_backend_fakes import FakeDecode, FakePrefill
from tests.pd_backend_fakes import backend as _backend
from tests.pd_backend_fakes import collect as _collect
from tests.pd_backend_fakes import kv_pull_failed as _kv_pull_failed
from tests.pd_backend_fakes import one_token_deltas as _ids
from tests.pd_backend_fakes import request as _request


async def test_decode_replica_lost_mid_stream_continues_on_another_from_the_sent_tokens():
    sampling = SamplingSpec(max_tokens=5, min_tokens=4, temperature=0.0, seed=7)
    prefill = FakePrefill()
    decode = FakeDecode([[*_ids(0, 5)[:2], ReplicaGone("gone mid-stream")], _ids(2, 3)])
    backend = _backend(prefill, decode)
    request = GenerationRequest("req", "coder", (5, 6, 7), sampling, session_id="s1")
    deltas = await _collect(backend, request)

    assert [d.token_ids for d in deltas] == [(0,), (1,), (2,), (3,), (4,)]  # none twice, none lost
    assert deltas[-1].finish_reason == "length"
    # The prompt is prefilled again as it was; the new decode gets it plus the sent tokens,
    # says which part was prefilled, and generates only what is left.
    assert [c[1] for c in prefill.calls] == [[5, 6, 7], [5, 6, 7]]
    first, second = decode.calls
    assert first["prefilled"] is None and first["sampling"] == sampling
    assert second["rid"] == "req-r1" and second["prompt"] == [5, 6, 7, 0, 1]
    assert second["prefilled"] == 3 and second["params"] == {"remote_request_id": "req-r1"}
    assert (second["sampling"].max_tokens, second["sampling"].min_tokens) == (3, 2)
    assert backend.retries_by_reason == {"migrated": 1}
    assert decode.released == []


async def test_a_continuation_whose_kv_pull_fails_is_prefilled_and_continued_again():
    # Found by the fault run: the continuation landed on a replica whose pulls were failing.
    prefill = FakePrefill()
    decode = FakeDecode([[*_ids(0, 4)[:1], ReplicaGone("gone mid-stream")], [_kv_pull_failed()],
                         _ids(1, 3)])
    backend = _backend(prefill, decode)
    deltas = await _collect(backend, GenerationRequest("req", "coder", (5, 6), SamplingSpec(4)))
    assert [d.token_ids for d in deltas] == [(0,), (1,), (2,), (3,)]
    assert [c["prompt"] for c in decode.calls] == [[5, 6], [5, 6, 0], [5, 6, 0]]
    assert [c["prefilled"] for c in decode.calls] == [None, 2, 2]
    assert backend.retries_by_reason == {"migrated": 1, ErrorCode.KV_PULL_FAILED: 1}


async def test_a_dead_decode_engine_mid_stream_is_a_lost_replica_too():
    prefill = FakePrefill()
    dead = ServingError("the decode engine of this replica died", 503,
                        code=ErrorCode.REPLICA_LOST)
    decode = FakeDecode([[*_ids(0, 3)[:1], dead], _ids(1, 2)])
    deltas = await _collect(_backend(prefill, decode), _request())
    assert [d.token_ids for d in deltas] == [(0,), (1,), (2,)]


@pytest.mark.parametrize("sampling, why", [
    (SamplingSpec(max_tokens=3, temperature=0.8, seed=1), "random state"),
    (SamplingSpec(max_tokens=3, frequency_penalty=0.5), "penalties"),
])
async def test_a_stream_that_cannot_continue_exactly_ends_with_an_error_saying_why(sampling, why):
    prefill = FakePrefill()
    decode = FakeDecode([[*_ids(0, 2)[:1], ReplicaGone("gone mid-stream")]])
    backend = _backend(prefill, decode)
    got: list[GenerationDelta] = []
    with pytest.raises(ServingError) as info:
        await _collect(backend, GenerationRequest("req", "coder", (5, 6, 7), sampling), got)

    assert info.value.status_code == 503 and info.value.code == "replica_lost"
    assert "gone mid-stream" in str(info.value) and why in str(info.value)
    assert [d.text for d in got] == ["t0"]  # no token repeated by a retry
    assert len(prefill.calls) == 1 and len(decode.calls) == 1
    assert backend.retries == 0


async def test_migrations_are_bounded_by_max_retries():
    prefill = FakePrefill()
    decode = FakeDecode([[*_ids(0, 9)[:1], ReplicaGone("a")], [*_ids(1, 8)[:1], ReplicaGone("b")],
                         [*_ids(2, 7)[:1], ReplicaGone("c")]])
    backend = _backend(prefill, decode, max_retries=2)
    got: list[GenerationDelta] = []
    with pytest.raises(ServingError) as info:
        await _collect(backend, GenerationRequest("req", "coder", (5,), SamplingSpec(9)), got)
    assert "serving replica lost: c (on each of 3 tries)" in str(info.value)
    assert [d.token_ids for d in got] == [(0,), (1,), (2,)]
    assert backend.retries_by_reason == {"migrated": 2}


async def test_a_replica_lost_after_the_last_token_ends_the_stream_normally():
    prefill = FakePrefill()
    decode = FakeDecode([[*_ids(0, 2), ReplicaGone("gone after the end")]])
    backend = _backend(prefill, decode)
    deltas = await _collect(backend, _request())
    assert [d.token_ids for d in deltas] == [(0,), (1,)]
    assert len(decode.calls) == 1 and backend.retries == 0
