"""The P/D pipeline (router_service/pd_backend.py) with fake prefill and decode clients:
streaming, stats, retries on lost replicas, stage timeouts and cleanup."""

from __future__ import annotations

import pytest

from contract.wire import (
    ErrorCode,
    GenerationDelta,
    KvLoaded,
    SamplingSpec,
    ServingError,
)
from router_service.backend import GenerationRequest
from router_service.pd_backend import ReplicaGone, StageTimeouts
from tests.pd_backend_fakes import (
    SAMPLING,
    FakeDecode,
    FakePrefill,
)
from tests.pd_backend_fakes import backend as _backend
from tests.pd_backend_fakes import collect as _collect
from tests.pd_backend_fakes import kv_pull_failed as _kv_pull_failed
from tests.pd_backend_fakes import request as _request
from tests.pd_backend_fakes import tokens as _tokens


async def test_happy_path_streams_deltas_with_stats_on_the_last():
    prefill, decode = FakePrefill(), FakeDecode()
    deltas = await _collect(_backend(prefill, decode, lora_name="coder-lora"), _request())

    assert [d.text for d in deltas] == ["t0", "t1", "t2"]
    assert [d.finish_reason for d in deltas] == [None, None, "stop"]
    assert deltas[0].stats == {} and deltas[1].stats == {}
    stats = deltas[-1].stats
    assert stats["decode_s"] == 0.5  # the decode side's own stats are kept
    assert stats["prefill_cached_tokens"] == 3.0
    assert 0 <= stats["prefill_s"] <= stats["ttft_s"] < 1.0

    assert prefill.calls == [("req", [5, 6, 7], "s1")]
    [call] = decode.calls
    assert call == {"rid": "req", "prompt": [5, 6, 7], "sampling": SAMPLING,
                    "params": {"remote_request_id": "req"}, "lora": "coder-lora",
                    "session": "s1", "prefilled": None}
    assert decode.closed == ["req"]
    assert decode.released == []  # tokens flowed: decode owns the blocks


async def test_replica_lost_during_prefill_is_retried_with_a_new_id():
    prefill, decode = FakePrefill([ReplicaGone("prefill replica died")]), FakeDecode()
    backend = _backend(prefill, decode)
    deltas = await _collect(backend, _request())

    assert [d.text for d in deltas] == ["t0", "t1", "t2"]
    assert [c[0] for c in prefill.calls] == ["req", "req-r1"]
    assert [c["rid"] for c in decode.calls] == ["req-r1"]
    assert decode.calls[0]["params"] == {"remote_request_id": "req-r1"}
    assert backend.retries == 1


async def test_replica_lost_in_decode_before_a_token_releases_then_retries():
    prefill = FakePrefill()
    decode = FakeDecode([[ReplicaGone("decode replica died")], _tokens(2)])
    backend = _backend(prefill, decode)
    deltas = await _collect(backend, _request())

    assert [d.text for d in deltas] == ["t0", "t1"]
    assert decode.released == [("req-release", {"remote_request_id": "req"})]
    assert [c["rid"] for c in decode.calls] == ["req", "req-r1"]
    assert backend.retries == 1


async def test_retries_exhausted():
    prefill = FakePrefill([ReplicaGone("x"), ReplicaGone("y"), ReplicaGone("z")])
    decode = FakeDecode()
    backend = _backend(prefill, decode, max_retries=2)
    with pytest.raises(ServingError) as info:
        await _collect(backend, _request())

    assert info.value.status_code == 503 and info.value.code == "replica_lost"
    assert "serving replica lost: z" in str(info.value)
    assert [c[0] for c in prefill.calls] == ["req", "req-r1", "req-r2"]
    assert backend.retries == 2
    assert decode.calls == []


async def test_no_retries_configured():
    prefill, decode = FakePrefill([ReplicaGone("x")]), FakeDecode()
    backend = _backend(prefill, decode, max_retries=0)
    with pytest.raises(ServingError, match="serving replica lost"):
        await _collect(backend, _request())
    assert len(prefill.calls) == 1 and backend.retries == 0


async def test_prefill_timeout():
    prefill, decode = FakePrefill(["slow"]), FakeDecode()
    with pytest.raises(ServingError) as info:
        await _collect(_backend(prefill, decode), _request())

    assert info.value.status_code == 504
    assert info.value.error_type == "timeout"
    assert info.value.code == "prefill_timeout"
    assert str(info.value).startswith("prefill timed out after 0.05s")
    assert decode.calls == [] and decode.released == []
    assert len(prefill.calls) == 1  # a timeout is not a lost replica: no retry


KV_LOADED = KvLoaded()


async def test_kv_pull_timeout_names_the_pull_and_releases_prefill_blocks():
    prefill, decode = FakePrefill(), FakeDecode([["slow"]])
    timeouts = StageTimeouts(prefill_s=1.0, kv_pull_s=0.05, first_token_s=1.0, request_s=5.0)
    with pytest.raises(ServingError) as info:
        await _collect(_backend(prefill, decode, timeouts), _request())

    assert info.value.status_code == 504
    assert info.value.code == "kv_pull_timeout"
    assert str(info.value).startswith("KV pull timed out after 0.05s")
    assert decode.closed == ["req"]
    assert decode.released == [("req-release", {"remote_request_id": "req"})]


async def test_first_token_timeout_runs_from_the_kv_loaded_marker():
    # The KV is in at once; the first token then never comes within first_token_s.
    decode = FakeDecode([[KV_LOADED, "slow"]])
    timeouts = StageTimeouts(prefill_s=1.0, kv_pull_s=1.0, first_token_s=0.05, request_s=5.0)
    with pytest.raises(ServingError) as info:
        await _collect(_backend(FakePrefill(), decode, timeouts), _request())

    assert info.value.code == "first_token_timeout"
    assert str(info.value).startswith("first decode token timed out after 0.05s")
    assert decode.released == [("req-release", {"remote_request_id": "req"})]


async def test_kv_loaded_marker_is_not_passed_to_the_client():
    decode = FakeDecode([[KV_LOADED, *_tokens(2)]])
    deltas = await _collect(_backend(FakePrefill(), decode), _request())
    assert [d.text for d in deltas] == ["t0", "t1"]


async def test_a_stage_cut_short_by_the_request_deadline_is_named_request():
    timeouts = StageTimeouts(prefill_s=5.0, kv_pull_s=5.0, first_token_s=5.0, request_s=0.05)
    with pytest.raises(ServingError) as info:
        await _collect(_backend(FakePrefill(["slow"]), FakeDecode(), timeouts), _request())
    assert info.value.code == "request_timeout"
    assert str(info.value).startswith("request timed out after 0.05s")


async def test_failed_kv_pull_releases_and_retries_with_a_fresh_prefill():
    prefill = FakePrefill()
    decode = FakeDecode([[_kv_pull_failed()], _tokens(2)])
    backend = _backend(prefill, decode)
    deltas = await _collect(backend, _request())

    assert [d.text for d in deltas] == ["t0", "t1"]
    assert [c[0] for c in prefill.calls] == ["req", "req-r1"]
    assert decode.released == [("req-release", {"remote_request_id": "req"})]
    assert backend.retries_by_reason == {ErrorCode.KV_PULL_FAILED: 1}


async def test_failed_kv_pulls_exhaust_retries_with_a_503_naming_the_pull():
    decode = FakeDecode([[_kv_pull_failed()], [_kv_pull_failed()]])
    backend = _backend(FakePrefill(), decode, max_retries=1)
    with pytest.raises(ServingError) as info:
        await _collect(backend, _request())
    assert info.value.status_code == 503 and info.value.code == ErrorCode.KV_PULL_FAILED
    assert len(decode.released) == 2 and backend.retries == 1


async def test_other_backend_errors_are_not_retried():
    decode = FakeDecode([[ServingError("adapter missing", 500, retryable=False)]])
    backend = _backend(FakePrefill(), decode)
    with pytest.raises(ServingError, match="adapter missing"):
        await _collect(backend, _request())
    assert len(decode.calls) == 1 and backend.retries == 0


async def test_request_deadline_after_the_first_token():
    timeouts = StageTimeouts(prefill_s=1.0, kv_pull_s=1.0, first_token_s=1.0, request_s=0.1)
    decode = FakeDecode([[*_tokens(2)[:1], "slow"]])
    got: list[GenerationDelta] = []
    with pytest.raises(ServingError) as info:
        await _collect(_backend(FakePrefill(), decode, timeouts), _request(), got)

    assert info.value.status_code == 504
    assert info.value.code == "request_timeout"
    assert str(info.value).startswith("request timed out after 0.1s")
    assert len(got) == 1
    assert decode.closed == ["req"]
    assert decode.released == []


async def test_decode_failing_before_any_token_releases_prefill_blocks():
    decode = FakeDecode([[RuntimeError("engine exploded")]])
    with pytest.raises(RuntimeError, match="engine exploded"):
        await _collect(_backend(FakePrefill(), decode), _request())
    assert decode.released == [("req-release", {"remote_request_id": "req"})]


async def test_a_failing_release_does_not_hide_the_original_error():
    decode = FakeDecode([["slow"]], release_error=RuntimeError("release failed"))
    with pytest.raises(ServingError, match="KV pull timed out"):
        await _collect(_backend(FakePrefill(), decode), _request())
    assert [r[0] for r in decode.released] == ["req-release"]


async def test_consumer_closing_early_closes_the_decode_stream():
    decode = FakeDecode([_tokens(5)])
    stream = _backend(FakePrefill(), decode).generate(_request())
    first = await stream.__anext__()
    assert first.text == "t0"
    assert decode.closed == []
    await stream.aclose()
    assert decode.closed == ["req"]  # at once, not when the loop finalizes the generator
    assert decode.released == []  # a token flowed: the decode engine owns the blocks now


async def test_unknown_role_is_404():
    prefill, decode = FakePrefill(), FakeDecode()
    with pytest.raises(ServingError) as info:
        await _collect(_backend(prefill, decode), _request(role="painter"))

    assert info.value.status_code == 404
    assert info.value.error_type == "invalid_request_error"
    assert info.value.retryable is False
    assert "'painter'" in str(info.value)
    assert prefill.calls == []


async def test_n_choices_prefill_first_then_one_decode_sequence_each():
    prefill, decode = FakePrefill(), FakeDecode()
    request = GenerationRequest("req", "coder", (5, 6, 7), SamplingSpec(max_tokens=3, seed=9),
                                session_id="s1", n=3)
    deltas = await _collect(_backend(prefill, decode), request)

    by_choice = {i: [d.text for d in deltas if d.index == i] for i in range(3)}
    assert by_choice == {i: ["t0", "t1", "t2"] for i in range(3)}
    # Choice 0 prefilled alone; the others followed (and hit the prefix cache in service).
    rids = [c[0] for c in prefill.calls]
    assert rids[0] == "req" and sorted(rids[1:]) == ["req-1", "req-2"]
    assert sorted(c["rid"] for c in decode.calls) == ["req", "req-1", "req-2"]
    # Each choice is its own decode sequence with n=1 semantics and seed + index (as vLLM).
    assert sorted(c["sampling"].seed for c in decode.calls) == [9, 10, 11]
    assert {tuple(c["params"].values()) for c in decode.calls} == {("req",), ("req-1",), ("req-2",)}


async def test_a_failing_choice_ends_every_choice_and_strands_no_blocks():
    prefill = FakePrefill()
    # Choice 0 streams slowly; one of the others fails before its first token.
    decode = FakeDecode([[*_tokens(1, finish=None), "slow"],
                         [ServingError("bad grammar", 400, retryable=False)],
                         ["slow"]])
    request = GenerationRequest("req", "coder", (5, 6, 7), SamplingSpec(max_tokens=3), n=3)
    with pytest.raises(ServingError, match="bad grammar"):
        await _collect(_backend(prefill, decode), request)
    assert sorted(decode.closed) == ["req", "req-1", "req-2"]  # every stream closed
    # The choices that never produced a token gave their prefill blocks back.
    assert {rid for rid, _ in decode.released} == {"req-1-release", "req-2-release"}
