"""Each stage's timeout, through the HTTP API on the real P/D pipeline with slow fake clients:
a 504 whose OpenAI body names the stage (code and message), streaming or not; and the
retry/exhaustion errors a client sees during faults (503 with their own codes)."""

from __future__ import annotations

import pytest

from router_service.pd_backend import ReplicaGone, StageTimeouts
from tests.api_fixtures import assert_openai_error, chat_body, http_client, make_app
from tests.test_pd_backend import KV_LOADED, FakeDecode, FakePrefill, _backend, _kv_pull_failed

SHORT = 0.05
LONG = 5.0


def _timeouts(stage: str) -> StageTimeouts:
    """Every stage generous except ``stage``."""
    limits = {"prefill_s": LONG, "kv_pull_s": LONG, "first_token_s": LONG, "request_s": LONG}
    limits[f"{stage}_s"] = SHORT
    return StageTimeouts(**limits)


CASES = {
    # stage -> (prefill outcomes, decode scripts)
    "prefill": (["slow"], []),
    "kv_pull": ([], [["slow"]]),
    "first_token": ([], [[KV_LOADED, "slow"]]),
    "request": (["slow"], []),
}

MESSAGES = {"prefill": "prefill timed out", "kv_pull": "KV pull timed out",
            "first_token": "first decode token timed out", "request": "request timed out"}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("stage", list(CASES))
async def test_each_stage_times_out_with_its_own_504(stage: str, stream: bool) -> None:
    outcomes, scripts = CASES[stage]
    prefill, decode = FakePrefill(list(outcomes)), FakeDecode([list(s) for s in scripts])
    backend = _backend(prefill, decode, _timeouts(stage), role="planner")
    app, _ = make_app(backend)  # type: ignore[arg-type]
    async with http_client(app) as client:
        resp = await client.post("/v1/chat/completions",
                                 json=chat_body(model="planner", stream=stream))
    err = assert_openai_error(resp, 504, code=f"{stage}_timeout", error_type="timeout")
    assert err["message"].startswith(MESSAGES[stage])
    assert f"after {SHORT:g}s" in err["message"]
    if stage in ("kv_pull", "first_token"):
        # Prefilled but never decoded: the prefill engine's leased blocks were released.
        assert [r[0] for r in decode.released] == [f"{decode.calls[0]['rid']}-release"]


@pytest.mark.parametrize("failure, code", [(lambda: ReplicaGone("replica died"), "replica_lost"),
                                           (_kv_pull_failed, "kv_pull_failed")])
async def test_exhausted_retries_answer_503_with_the_cause(failure, code) -> None:
    if code == "replica_lost":
        prefill, decode = FakePrefill([failure() for _ in range(3)]), FakeDecode()
    else:
        prefill, decode = FakePrefill(), FakeDecode([[failure()] for _ in range(3)])
    backend = _backend(prefill, decode, StageTimeouts(LONG, LONG, LONG, LONG), max_retries=2,
                       role="planner")
    app, _ = make_app(backend)  # type: ignore[arg-type]
    async with http_client(app) as client:
        resp = await client.post("/v1/chat/completions", json=chat_body(model="planner"))
    err = assert_openai_error(resp, 503, code=code, error_type="server_error")
    assert "retry" in err["message"]
    assert backend.retries == 2
