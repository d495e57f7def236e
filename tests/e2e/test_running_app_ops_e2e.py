"""Operating a running app, the user's way: `prefillshare up` a LoRA app (one app for the module).

Roles without a redeploy (`prefillshare roles add|remove` against its dashboard): a role is
added, replaced and removed while requests keep flowing: none fails, no replica restarts (same
Serve replica ids), /v1/models follows, the decode pool serves a new adapter from its folder,
and a bad adapter is refused up front. Admission control: past the LoRA pool's max_waiting the
decode engine answers 503 + Retry-After and the admitted requests all finish (the ingress's
own max_inflight gate is tested through the HTTP API in tests/test_admission.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from bench.running_app import tiny_engine, tiny_lora_adapter, tiny_models
from vllm_runtime.replica_env import free_port

pytestmark = pytest.mark.slow

APP = "prefillshare"
PROMPT = [{"role": "user", "content": "Review this change, please."}]


@pytest.fixture(scope="module")
def app(tmp_path_factory) -> Iterator[dict]:
    base, _ = tiny_models()
    tmp = tmp_path_factory.mktemp("hot")
    http_port, dashboard_port = free_port("127.0.0.1"), free_port("127.0.0.1")
    config = {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": http_port},
        "applications": [{
            "name": APP, "route_prefix": "/", "import_path": "deployments.app:build_app",
            "args": {"base_model": base,
                     "prefill_pools": {"shared": {"engine": tiny_engine()}},
                     # Two sequences at a time and no queue: a third request is refused.
                     "lora_pool": {"engine": tiny_engine(max_num_seqs=2), "max_lora_rank": 8,
                                   "max_loras": 2, "max_waiting": 0},
                     "limits": {"retry_after_s": 3},
                     "roles": [{"name": "coder",
                                "lora_adapter": tiny_lora_adapter(base, "coder", 5)}]},
        }],
    }
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    ray_dir = Path(tempfile.mkdtemp(prefix="psh-", dir="/tmp"))  # AF_UNIX paths stop at 107 B
    cmd = [sys.executable, "-m", "deployments", "up", str(path),
           "--ray-port", str(free_port("127.0.0.1")), "--dashboard-port", str(dashboard_port),
           "--metrics-export-port", str(free_port("127.0.0.1")),
           "--ray-temp-dir", str(ray_dir), "--run-dir", str(tmp / "run")]
    up = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True, env={**os.environ, "VLLM_HOST_IP": "127.0.0.1"})
    seen = []
    try:
        assert up.stdout is not None
        for line in up.stdout:
            seen.append(line)
            if "ready in" in line:
                break
        assert any("ready in" in line for line in seen), "".join(seen[-40:])
        with httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=120) as client:
            token = tmp / "run" / "ray_auth_token"  # `up` turns Ray's token auth on
            yield {"client": client, "dashboard": f"http://127.0.0.1:{dashboard_port}",
                   "base": base, "token": token,
                   "auth": {"Authorization": f"Bearer {token.read_text().strip()}"}}
    finally:
        up.send_signal(signal.SIGINT)  # `up` stops exactly the processes it started
        try:
            up.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)  # our own session only


def roles(app: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deployments", "roles", "--address",
                           app["dashboard"], "--app", APP, "--token-file", str(app["token"]),
                           *args],
                          capture_output=True, text=True, timeout=300)


def answer(app: dict, role: str) -> str:
    r = app["client"].post(f"/roles/{role}/v1/chat/completions",
                           json={"messages": PROMPT, "max_tokens": 8, "temperature": 0})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def models(app: dict) -> set[str]:
    return {m["id"] for m in app["client"].get("/v1/models").json()["data"]}


def replica_ids(app: dict) -> dict[str, set[str]]:
    details = httpx.get(f"{app['dashboard']}/api/serve/applications/", headers=app["auth"],
                        timeout=30).json()
    deployments = details["applications"][APP]["deployments"]
    return {name: {r["replica_id"] for r in d["replicas"]} for name, d in deployments.items()}


class Traffic:
    """Requests to one role, back to back, from a thread, while the roles change."""

    def __init__(self, app: dict, role: str) -> None:
        self.statuses: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(app["client"].base_url, role))

    def _run(self, url: httpx.URL, role: str) -> None:
        with httpx.Client(base_url=url, timeout=120) as client:
            while not self._stop.is_set():
                r = client.post(f"/roles/{role}/v1/chat/completions", json={
                    "messages": PROMPT, "max_tokens": 64, "ignore_eos": True, "stream": True})
                self.statuses.append(r.status_code if '"error"' not in r.text else 599)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=120)


def test_roles_change_on_a_running_app_without_restarts_or_failed_requests(app, tmp_path):
    before = replica_ids(app)
    coder = answer(app, "coder")
    planner_adapter = tiny_lora_adapter(app["base"], "planner", 7)

    with Traffic(app, "coder") as traffic:
        added = roles(app, "add", "planner", "--adapter", planner_adapter,
                      "--instructions", "You are the planner.")
        assert added.returncode == 0, added.stdout[-2000:] + added.stderr[-2000:]
        assert models(app) == {"coder", "planner"}
        planner = answer(app, "planner")
        assert planner != coder  # the pool loaded the new adapter from its folder

        # Replaced under the same name: coder now decodes with planner's adapter; planner's
        # instructions are part of its prompt, so coder gets them too for the same output.
        replaced = roles(app, "add", "coder", "--adapter", planner_adapter,
                         "--instructions", "You are the planner.")
        assert replaced.returncode == 0, replaced.stderr[-2000:]
        assert answer(app, "coder") == planner

        removed = roles(app, "remove", "planner")
        assert removed.returncode == 0, removed.stderr[-2000:]
        assert models(app) == {"coder"}
        gone = app["client"].post("/roles/planner/v1/chat/completions", json={"messages": PROMPT})
        assert gone.status_code == 404
    assert traffic.statuses and set(traffic.statuses) == {200}, traffic.statuses

    listed = json.loads(roles(app, "list").stdout)
    assert [r["name"] for r in listed] == ["coder"]
    assert replica_ids(app) == before  # reconfigured in place: not one replica restarted


def test_a_bad_adapter_is_refused_and_the_roles_keep_serving(app, tmp_path):
    big = tmp_path / "big"
    big.mkdir()
    (big / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 64}))
    (big / "adapter_model.safetensors").write_bytes(b"")
    refused = roles(app, "add", "critic", "--adapter", str(big))
    assert refused.returncode == 2
    assert "rank 64 is above the pool's max_lora_rank 8" in refused.stderr
    missing = roles(app, "add", "critic", "--adapter", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "no adapter_config.json" in missing.stderr
    assert models(app) == {"coder"}
    answer(app, "coder")


def _post_stream(url: httpx.URL, max_tokens: int) -> httpx.Response:
    with httpx.Client(base_url=url, timeout=300) as client:
        return client.post("/roles/coder/v1/chat/completions", json={
            "messages": PROMPT, "max_tokens": max_tokens, "ignore_eos": True, "stream": True})


def _decode_stats(app: dict) -> dict:
    return app["client"].get("/stats").json()["decode"]["decode-lora"]


def test_overload_is_answered_503_with_retry_after(app):
    from concurrent.futures import ThreadPoolExecutor

    from bench.running_app import wait_for

    url = app["client"].base_url
    refused_before = _decode_stats(app)["refused"]
    with ThreadPoolExecutor(4) as pool:
        # Three long requests sent together: two take the engine's two slots, the third
        # waits (each was admitted). All three start their KV pulls at once and vLLM counts
        # none of them in num_waiting_reqs: the replica counts what it holds beyond its slots.
        wave = [pool.submit(_post_stream, url, 900) for _ in range(3)]
        assert wait_for(lambda: _decode_stats(app)["inflight"] == 3, timeout_s=120)
        # The engine is past max_waiting 0: one more is refused there, before any token.
        refused = _post_stream(url, 8)
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "3"
        error = refused.json()["error"]
        assert error["code"] == "overloaded" and "requests waiting (limit 0)" in error["message"]
        assert [f.result().status_code for f in wave] == [200] * 3  # the admitted all finish
    assert _decode_stats(app)["refused"] > refused_before
