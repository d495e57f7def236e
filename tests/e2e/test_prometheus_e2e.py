"""Every query of the Grafana dashboard returns data from a real Prometheus (Debian's package,
on 127.0.0.1) scraping a running app: tiny engines, two roles, requests in two waves.

Prometheus's rate() needs two samples of a series with an increase between them, and Ray's
exporter refreshes about every 10 s, so the first wave makes every series exist and the
second, sent once Prometheus has scraped them, makes every rate non-zero.
"""

from __future__ import annotations

import math
import time

import pytest

from bench.running_app import running_app, tiny_engine, tiny_models, wait_for
from observability.local_prometheus import LocalPrometheus, prometheus_binary, ray_metrics_targets
from observability.panels import RATE, all_queries
from vllm_runtime.replica_env import free_port

pytestmark = pytest.mark.slow

# Long enough that the repeat of a session's context hits whole 128-token blocks.
CONTEXT = " ".join(f"step {i}: check the inventory of shelf {i} and report." for i in range(40))
WINDOW = "2m"


def _wave(client, tag: str) -> None:
    for role in ("planner", "critic"):
        for turn in range(2):
            messages = [{"role": "user", "content": CONTEXT},
                        {"role": "user", "content": f"{tag} turn {turn}: what next?"}]
            r = client.post("/v1/chat/completions", headers={"x-session-id": f"{role}-s"},
                            json={"model": role, "messages": messages, "max_tokens": 4,
                                  "stream": turn == 1})
            assert r.status_code == 200, r.text
    r = client.post("/v1/chat/completions", json={"model": "nobody", "messages": [
        {"role": "user", "content": "hi"}]})
    assert r.status_code == 404


def _has_data(result: list[dict]) -> bool:
    return any(math.isfinite(float(s["value"][1])) for s in result)


def test_every_dashboard_query_returns_data():
    if prometheus_binary() is None:
        pytest.fail("no prometheus binary: run scripts/install.sh")
    base, decoder = tiny_models()
    args = {
        "base_model": base,
        "prefill_pools": {"shared": {"engine": tiny_engine()}},
        "roles": [{"name": role, "decoder": decoder, "decode_pool": {"engine": tiny_engine()}}
                  for role in ("planner", "critic")],
        "decode_kv_mode": "exact",
    }
    with running_app(args) as app:
        targets = ray_metrics_targets()
        assert targets and all(t.startswith("127.0.0.1:") for t in targets), targets
        with LocalPrometheus(targets, port=free_port("127.0.0.1")) as prom:
            _wave(app.client, "first")
            # Every series exists in Prometheus before the second wave increases it.
            assert wait_for(lambda: prom.query("ray_prefillshare_requests_total")
                            and prom.query("ray_prefillshare_kv_transfers_total"), 90, 2)
            time.sleep(5)
            _wave(app.client, "second")
            queries = [(title, q.expr.replace(RATE, WINDOW)) for title, q in all_queries()]
            missing: list[str] = []

            def all_have_data() -> bool:
                missing[:] = [f"{title}: {expr}" for title, expr in queries
                              if not _has_data(prom.query(expr))]
                return not missing

            ok = wait_for(all_have_data, 120, 3)
            names = [r["metric"]["__name__"] for r in prom.query('{__name__=~"ray_(vllm|serve)_.*"}')]
            assert ok, "no data for:\n" + "\n".join(missing) + f"\nexported: {sorted(set(names))}"
            assert set(prom.target_health()) == {"up"}
            # Per-role and per-status labels, as the dashboard groups them.
            by = {(s["metric"]["role"], s["metric"]["status"])
                  for s in prom.query("ray_prefillshare_requests_total")}
            assert {("planner", "200"), ("critic", "200"), ("unknown", "404")} <= by
            pools = {(s["metric"]["kind"], s["metric"]["pool"])
                     for s in prom.query("ray_prefillshare_kv_transfers_total")}
            assert pools == {("decode", "planner"), ("decode", "critic")}
            # vLLM's own metrics, per pool (served_model_name is the deployment's name).
            engines = {s["metric"]["model_name"] for s in prom.query("ray_vllm_prompt_tokens_total")}
            assert engines == {"prefill-shared", "decode-planner", "decode-critic"}
