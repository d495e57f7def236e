"""The pure parts of vllm_runtime/: the NIXL poll-delay plugin, engine kwargs, the replica
environment and the engine counters. Fakes stand in for nixl and vLLM's stats objects."""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import fields
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from contract.config import EngineOptions
from vllm_runtime import nixl_tuning
from vllm_runtime.engine_args import EngineSpec, cpu_has_fast_bf16, engine_kwargs, resolve_dtype
from vllm_runtime.engine_stats import EngineCounters
from vllm_runtime.replica_env import (
    LISTEN_PORTS_FROM,
    apply,
    cpu_bind_for,
    engine_environment,
    ephemeral_port_low,
    free_port,
    node_host,
)

# --- nixl_tuning --------------------------------------------------------------------------


class RecordingAgent:
    """Stands in for nixl's nixlAgent constructor: records what it was built with."""

    def __init__(self) -> None:
        self.built: list[tuple[str, int]] = []

    def __call__(self, name: str, config: Any) -> str:
        self.built.append((name, config.pthrDelay))
        return f"agent:{name}"


def test_install_sets_the_delay_on_zero_delay_configs():
    agent = RecordingAgent()
    bindings = SimpleNamespace(nixlAgent=agent)
    assert nixl_tuning.install(bindings, 500) is True
    assert bindings.nixlAgent is not agent

    assert bindings.nixlAgent("a", SimpleNamespace(pthrDelay=0)) == "agent:a"
    bindings.nixlAgent("b", SimpleNamespace())  # no pthrDelay at all: counts as 0
    bindings.nixlAgent("c", SimpleNamespace(pthrDelay=7))  # asked for its own: kept
    assert agent.built == [("a", 500), ("b", 500), ("c", 7)]


def test_install_is_idempotent():
    agent = RecordingAgent()
    bindings = SimpleNamespace(nixlAgent=agent)
    assert nixl_tuning.install(bindings, 500) is True
    wrapped = bindings.nixlAgent
    assert nixl_tuning.install(bindings, 900) is False
    assert bindings.nixlAgent is wrapped

    bindings.nixlAgent("a", SimpleNamespace(pthrDelay=0))
    assert agent.built == [("a", 500)]  # built once, with the first delay


@pytest.mark.parametrize("raw, expected", [
    (None, nixl_tuning.DEFAULT_DELAY_US), ("250", 250), ("0", 0), ("-5", 0),
    ("abc", nixl_tuning.DEFAULT_DELAY_US), ("1.5", nixl_tuning.DEFAULT_DELAY_US),
])
def test_progress_delay_from_the_environment(monkeypatch, raw, expected):
    if raw is None:
        monkeypatch.delenv("PREFILLSHARE_NIXL_PTHR_DELAY_US", raising=False)
    else:
        monkeypatch.setenv("PREFILLSHARE_NIXL_PTHR_DELAY_US", raw)
    assert nixl_tuning.progress_delay_us() == expected


@pytest.fixture
def fake_nixl(monkeypatch) -> SimpleNamespace:
    """A fake ``nixl._api`` module so register() never touches the real bindings."""
    bindings = SimpleNamespace(nixlAgent=RecordingAgent())
    api = ModuleType("nixl._api")
    api.nixlBind = bindings  # type: ignore[attr-defined]
    pkg = ModuleType("nixl")
    pkg._api = api  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "nixl", pkg)
    monkeypatch.setitem(sys.modules, "nixl._api", api)
    return bindings


def test_register_with_delay_zero_does_nothing(monkeypatch, fake_nixl):
    original = fake_nixl.nixlAgent
    monkeypatch.setenv("PREFILLSHARE_NIXL_PTHR_DELAY_US", "0")
    nixl_tuning.register()
    assert fake_nixl.nixlAgent is original


def test_register_installs_the_delay(monkeypatch, fake_nixl):
    original = fake_nixl.nixlAgent
    monkeypatch.setenv("PREFILLSHARE_NIXL_PTHR_DELAY_US", "300")
    nixl_tuning.register()
    fake_nixl.nixlAgent("x", SimpleNamespace(pthrDelay=0))
    assert original.built == [("x", 300)]


# --- engine_args --------------------------------------------------------------------------


def test_producer_kwargs_on_cpu():
    spec = EngineSpec(model="/models/base", side="producer", options=EngineOptions(),
                      prefix_caching=True, engine_id="prefill-shared")
    kw = engine_kwargs(spec, on_cpu=True)
    assert kw["kv_transfer_config"] == {
        "kv_connector": "NixlConnector",
        "kv_connector_module_path": "vllm_runtime.nixl_connector",
        "kv_role": "kv_both",
        "engine_id": "prefill-shared",
        "kv_buffer_device": "cpu",
        "kv_connector_extra_config": {"kv_lease_duration": 30},  # no handshake override
        "kv_load_failure_policy": "fail",
    }
    assert kw["model"] == kw["tokenizer"] == kw["served_model_name"] == "/models/base"
    assert kw["enable_prefix_caching"] is True
    assert (kw["max_model_len"], kw["block_size"], kw["max_num_seqs"]) == (2048, 128, 32)
    assert kw["dtype"] == resolve_dtype("auto", on_cpu=True) and kw["enforce_eager"] is True
    assert kw["disable_log_stats"] is False
    assert kw["kv_cache_memory_bytes"] == 1 << 30
    for absent in ("max_num_batched_tokens", "enable_lora"):
        assert absent not in kw


def test_auto_dtype_is_float32_on_a_cpu_without_fast_bf16():
    assert resolve_dtype("auto", on_cpu=True, fast_bf16=False) == "float32"
    assert resolve_dtype("auto", on_cpu=True, fast_bf16=True) == "auto"
    assert resolve_dtype("auto", on_cpu=False, fast_bf16=False) == "auto"
    assert resolve_dtype("bfloat16", on_cpu=True, fast_bf16=False) == "bfloat16"  # asked for
    assert cpu_has_fast_bf16("flags : fpu avx2 avx512_bf16") is True
    assert cpu_has_fast_bf16("flags : fpu avx2") is False


def test_consumer_kwargs_off_cpu_with_lora_and_overrides():
    opts = EngineOptions(kv_cache_space_gib=1.5, kv_lease_duration_s=7, max_num_batched_tokens=256,
                         max_num_seqs=8, extra={"max_num_seqs": 5, "seed": 1})
    spec = EngineSpec(model="/models/base", side="consumer", options=opts, prefix_caching=False,
                      engine_id="decode-lora", kv_load_failure_policy="recompute",
                      enforce_handshake_compat=False, lora=(16, 4), served_model_name="coder")
    kw = engine_kwargs(spec, on_cpu=False)
    kv = kw["kv_transfer_config"]
    assert kv["kv_buffer_device"] == "cuda"
    assert kv["engine_id"] == "decode-lora"
    assert kv["kv_load_failure_policy"] == "recompute"
    assert kv["kv_connector_extra_config"] == {"kv_lease_duration": 7,
                                               "enforce_handshake_compat": False}
    assert kw["enable_prefix_caching"] is False
    assert kw["served_model_name"] == "coder"
    assert kw["kv_cache_memory_bytes"] == 3 * (1 << 29)
    assert kw["max_num_batched_tokens"] == 256
    assert (kw["enable_lora"], kw["max_lora_rank"], kw["max_loras"]) == (True, 16, 4)
    assert kw["max_num_seqs"] == 5  # `extra` is passed through last and wins
    assert kw["seed"] == 1


# --- replica_env --------------------------------------------------------------------------


def test_engine_environment_on_cpu(monkeypatch):
    monkeypatch.delenv("UCX_TLS", raising=False)
    monkeypatch.setenv("UCX_NET_DEVICES", "eth9")
    env = engine_environment(host="10.0.0.5", side_channel_port=5601,
                             cpu_threads_bind="2,3", on_cpu=True)
    assert env == {
        "VLLM_HOST_IP": "10.0.0.5",
        "VLLM_NIXL_SIDE_CHANNEL_HOST": "10.0.0.5",
        "VLLM_NIXL_SIDE_CHANNEL_PORT": "5601",
        "VLLM_WORKER_MULTIPROC_METHOD": "spawn",
        "VLLM_CPU_OMP_THREADS_BIND": "2,3",
        "UCX_TLS": "tcp,sm,self",
        "UCX_NET_DEVICES": "eth9",  # the operator's choice wins
    }


def test_kv_space_under_one_gib_reaches_the_engine_exactly(monkeypatch):
    # The legacy whole-GiB env var would round 0.25 up to 1 GiB and override the engine arg.
    spec = EngineSpec(model="/m", side="producer", options=EngineOptions(kv_cache_space_gib=0.25),
                      prefix_caching=True, engine_id="p")
    assert engine_kwargs(spec, on_cpu=True)["kv_cache_memory_bytes"] == 1 << 28
    env = engine_environment(host="h", side_channel_port=1, cpu_threads_bind="0", on_cpu=True)
    assert "VLLM_CPU_KVCACHE_SPACE" not in env
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "3")
    apply(env)
    assert "VLLM_CPU_KVCACHE_SPACE" not in os.environ


def test_engine_environment_off_cpu_sets_no_cpu_or_ucx_settings():
    env = engine_environment(host="127.0.0.1", side_channel_port=5700,
                             cpu_threads_bind="0", on_cpu=False)
    assert set(env) == {"VLLM_HOST_IP", "VLLM_NIXL_SIDE_CHANNEL_HOST",
                        "VLLM_NIXL_SIDE_CHANNEL_PORT", "VLLM_WORKER_MULTIPROC_METHOD"}
    assert env["VLLM_NIXL_SIDE_CHANNEL_PORT"] == "5700"


@pytest.mark.parametrize("index, threads, cores, expected", [
    (0, 1, 4, "0"), (1, 1, 4, "1"), (5, 1, 4, "1"),
    (1, 2, 4, "2,3"), (1, 2, 3, "2,0"), (0, 8, 2, "0,1"),
])
def test_cpu_bind_round_robin(index, threads, cores, expected):
    assert cpu_bind_for(index, threads, cores) == expected


def test_free_port_is_bindable_and_outside_the_ephemeral_range():
    ports = [free_port("127.0.0.1") for _ in range(20)]
    assert len(set(ports)) == 20  # never the same port twice in one process
    for port in ports:
        assert LISTEN_PORTS_FROM <= port < ephemeral_port_low()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", port))


def test_free_port_skips_a_port_in_use(monkeypatch):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", LISTEN_PORTS_FROM))
        taken.listen()
        monkeypatch.setattr("vllm_runtime.replica_env._handed_out", set())
        monkeypatch.setattr("vllm_runtime.replica_env.ephemeral_port_low",
                            lambda: LISTEN_PORTS_FROM + 2)
        assert free_port("127.0.0.1") == LISTEN_PORTS_FROM + 1  # the other port of two
        # Both handed out or taken: the OS's own pick, which is bindable.
        assert free_port("127.0.0.1") not in (LISTEN_PORTS_FROM, LISTEN_PORTS_FROM + 1)


def test_node_host_precedence(monkeypatch):
    monkeypatch.delenv("PREFILLSHARE_HOST", raising=False)
    monkeypatch.delenv("VLLM_HOST_IP", raising=False)
    assert node_host() == "127.0.0.1"
    monkeypatch.setenv("VLLM_HOST_IP", "10.1.1.1")
    assert node_host() == "10.1.1.1"
    monkeypatch.setenv("PREFILLSHARE_HOST", "10.2.2.2")
    assert node_host() == "10.2.2.2"


# --- engine_stats -------------------------------------------------------------------------


def _step(**over: Any) -> SimpleNamespace:
    stats: dict[str, Any] = dict(kv_cache_usage=0.0, num_running_reqs=0, num_waiting_reqs=0,
                                 prefix_cache_stats=None, connector_prefix_cache_stats=None,
                                 kv_connector_stats=None)
    stats.update(over)
    return SimpleNamespace(**stats)


def test_counters_add_up_scheduler_stats():
    c = EngineCounters()
    c.add_scheduler_stats(_step(
        kv_cache_usage=0.25, num_running_reqs=2, num_waiting_reqs=1,
        prefix_cache_stats=SimpleNamespace(reset=False, queries=100, hits=40),
        connector_prefix_cache_stats=SimpleNamespace(queries=60, hits=60),
        kv_connector_stats={"data": {"transfer_duration": [0.1, 0.2],
                                     "bytes_transferred": [100, 200],
                                     "num_failed_transfers": [1.0],
                                     "num_kv_expired_reqs": []}},
    ))
    c.add_scheduler_stats(_step(
        kv_cache_usage=0.5, num_running_reqs=1,
        prefix_cache_stats=SimpleNamespace(reset=True, queries=999, hits=999),  # ignored
        kv_connector_stats={"transfer_duration": [0.3], "bytes_transferred": [50],
                            "num_kv_expired_reqs": ["r1", "r2"]},  # the flat shape
    ))
    assert (c.prefix_queries, c.prefix_hits) == (100, 40)
    assert (c.connector_queries, c.connector_hits) == (60, 60)
    assert c.kv_transfers == 3
    assert c.kv_transfer_s == pytest.approx(0.6)
    assert c.kv_bytes == 350
    assert c.kv_failed_transfers == 1
    assert c.kv_expired_leases == 2
    # Gauges hold the last step's value.
    assert (c.kv_cache_usage, c.running, c.waiting) == (0.5, 1, 0)
    assert c.prefix_hit_ratio == pytest.approx(0.4)


def test_empty_connector_stats_are_skipped():
    c = EngineCounters()
    c.add_scheduler_stats(_step(kv_connector_stats={}))
    c.add_nixl_stats({"data": {}})
    assert (c.kv_transfers, c.kv_bytes, c.kv_transfer_s) == (0, 0, 0.0)


def test_snapshot_and_hit_ratio_without_queries():
    c = EngineCounters()
    assert c.prefix_hit_ratio == 0.0
    snap = c.snapshot()
    assert set(snap) == {f.name for f in fields(EngineCounters)} | {"prefix_hit_ratio"}
    assert snap["prefix_hit_ratio"] == 0.0
    c.prefix_queries, c.prefix_hits = 8, 2
    assert c.snapshot()["prefix_hit_ratio"] == 0.25
    assert c.snapshot()["prefix_queries"] == 8
