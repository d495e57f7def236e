"""Runs a PrefillShare app inside the calling process: a local Ray on 127.0.0.1 and serve.run
of the real app builder (real vLLM engines, real NIXL). Used by the end-to-end tests and the
measurement scripts; one app at a time per process. `prefillshare up` is the path for users."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from vllm_runtime.model_assets import cache_dir, tiny_llama_folder
from vllm_runtime.ray_local import init_local_ray, keep_ray_on_loopback
from vllm_runtime.replica_env import free_port

APP = "ps-e2e"


def tiny_models() -> tuple[str, str]:
    """Base and decoder: same architecture, different random weights (float32)."""
    base = tiny_llama_folder(cache_dir() / "tiny-e2e-base", seed=11)
    decoder = tiny_llama_folder(cache_dir() / "tiny-e2e-decoder", seed=22)
    return str(base), str(decoder)


def tiny_lora_adapter(base_dir: str, name: str, seed: int,
                      target_modules: tuple[str, ...] = ("q_proj", "v_proj", "o_proj")) -> str:
    """A PEFT adapter of rank 8 for a tiny base, cached by name. init_lora_weights=False:
    random A and B, so the adapter really changes the model (PEFT's default B=0 would not)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    target = cache_dir() / f"tiny-e2e-lora-{name}"
    if not (target / "adapter_config.json").exists():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        cfg = LoraConfig(r=8, lora_alpha=16, target_modules=list(target_modules),
                         init_lora_weights=False)
        get_peft_model(model, cfg).save_pretrained(target)
    return str(target)


def tiny_engine(**overrides: Any) -> dict[str, Any]:
    # A tiny engine starts in well under a minute; one that hangs in start is retried sooner.
    return {"max_model_len": 1024, "dtype": "float32", "max_num_seqs": 8,
            "block_size": 128, "start_timeout_s": 300, **overrides}


@dataclass
class RunningApp:
    url: str
    client: httpx.Client

    def handle(self, deployment: str) -> Any:
        from ray import serve

        return serve.get_deployment_handle(deployment, app_name=APP)

    def stats(self) -> dict[str, Any]:
        r = self.client.get("/stats")
        r.raise_for_status()
        return r.json()

    def session_chat(self, role: str, messages: list[dict[str, str]], session: str,
                     max_tokens: int) -> tuple[str, int, int]:
        """One greedy chat call of a session through the HTTP API: the answer's text, its
        prompt tokens and how many of them the prefill engine had cached (vLLM's count)."""
        r = self.client.post("/v1/chat/completions", headers={"x-session-id": session}, json={
            "model": role, "messages": messages, "max_tokens": max_tokens, "temperature": 0})
        assert r.status_code == 200, r.text
        usage = r.json()["usage"]
        return (r.json()["choices"][0]["message"]["content"], usage["prompt_tokens"],
                usage["prompt_tokens_details"]["cached_tokens"])

    def greedy_pd(self, prefill: str, decode: str, prompt: list[int], max_tokens: int,
                  lora_name: str | None = None) -> tuple[list[int], list[float], Any]:
        """One greedy P/D request through the Serve handles (below the HTTP API): the token
        ids, each chosen token's logprob, and the prefill result."""
        from contract.wire import DecodeRequest, GenerationDelta, PrefillRequest, SamplingSpec

        async def run() -> tuple[list[int], list[float], Any]:
            rid = uuid.uuid4().hex
            pre = await self.handle(prefill).prefill.remote(PrefillRequest(rid, tuple(prompt)))
            spec = SamplingSpec(max_tokens=max_tokens, temperature=0.0, logprobs=0, ignore_eos=True)
            ids: list[int] = []
            lps: list[float] = []
            gen = self.handle(decode).options(stream=True).generate.remote(DecodeRequest(
                rid, tuple(prompt), spec, pre.kv_transfer_params, lora_name))
            async for delta in gen:
                if not isinstance(delta, GenerationDelta):
                    continue  # KvLoaded
                ids.extend(delta.token_ids)
                lps.extend(t.logprob for t in delta.logprobs or ())
            return ids, lps, pre

        return asyncio.run(run())


@contextlib.contextmanager
def running_app(app_args: dict[str, Any], ray_address: str | None = None,
                fault_injection: bool = False) -> Iterator[RunningApp]:
    """ray_address: join that running cluster (e.g. a multi-node ray.cluster_utils.Cluster);
    default: start a one-node Ray in this process. fault_injection: decode replicas are
    bench/fault_injection.py's FaultInjectingDecodeServer."""
    import ray
    from ray import serve

    from contract.config import load_config
    from deployments.app import bind_plan
    from deployments.plan import make_plan

    if ray_address is not None:
        keep_ray_on_loopback()
        ray.init(address=ray_address, logging_level="WARNING")
    else:
        init_local_ray()
    port = free_port("127.0.0.1")
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        cfg = load_config(app_args)
        if fault_injection:
            from bench.fault_injection import FaultInjectingDecodeServer

            app = bind_plan(cfg, make_plan(cfg), decode_server=FaultInjectingDecodeServer)
        else:
            app = bind_plan(cfg, make_plan(cfg))
        serve.run(app, name=APP, route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=url, timeout=180) as client:
            yield RunningApp(url, client)
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()


def wait_for(predicate: Any, timeout_s: float = 60, interval_s: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return False
