"""One request at a time: PrefillShare's P/D path against one plain vLLM engine.

    python -m bench.pd_single_request --help

Measures engine start time, memory per replica, TTFT and output tokens/s through the whole
stack (HTTP -> ingress -> prefill engine -> NIXL pull -> decode engine -> SSE), the KV
transfer time per request from vLLM's NIXL stats, and the same request on one plain vLLM
engine of the decoder (no connector, no Serve). Runs the two one after the other so they
never share the CPU. Writes JSON and prints a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

import httpx


def _prompts(n: int, length: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(100, 40000) for _ in range(length)] for _ in range(n)]


def _stream_once(client: httpx.Client, prompt: list[int], max_tokens: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    first = None
    tokens = 0
    with client.stream("POST", "/v1/completions", json={
            "model": "planner", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, "stream": True}) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                if json.loads(line[6:])["choices"][0]["text"] and first is None:
                    first = time.perf_counter()
                tokens += 1
    end = time.perf_counter()
    assert first is not None
    return first - t0, (max_tokens - 1) / (end - first)


def measure_pd(model: str, engine: dict[str, Any], prompts: list[list[int]], max_tokens: int) -> dict[str, Any]:
    from bench.running_app import running_app

    args = {"base_model": model, "prefill_pools": {"shared": {"engine": engine}},
            "roles": [{"name": "planner", "decode_pool": {"engine": engine}}]}
    t0 = time.perf_counter()
    with running_app(args) as app:
        deploy_s = time.perf_counter() - t0
        _stream_once(app.client, prompts[0], 4)  # warm-up: the first pull does the NIXL handshake
        ttfts, tps, xfer = [], [], []
        for p in prompts[1:]:
            before = app.stats()["decode"]["decode-planner"]
            ttft, rate = _stream_once(app.client, p, max_tokens)
            after = app.stats()["decode"]["decode-planner"]
            ttfts.append(ttft)
            tps.append(rate)
            n = after["kv_transfers"] - before["kv_transfers"]
            xfer.append(((after["kv_transfer_s"] - before["kv_transfer_s"]) / max(n, 1),
                         (after["kv_bytes"] - before["kv_bytes"]) / max(n, 1)))
        stats = app.stats()
    return {
        "deploy_s": deploy_s,
        "prefill_engine_start_s": stats["prefill"]["prefill-shared"]["start_s"],
        "decode_engine_start_s": stats["decode"]["decode-planner"]["start_s"],
        "prefill_replica_rss_mib": stats["prefill"]["prefill-shared"]["rss_mib"],
        "decode_replica_rss_mib": stats["decode"]["decode-planner"]["rss_mib"],
        "ttft_s": ttfts, "output_tok_s": tps,
        "kv_transfer_s": [x[0] for x in xfer], "kv_bytes": [x[1] for x in xfer],
    }


def measure_plain(model: str, engine: dict[str, Any], prompts: list[list[int]], max_tokens: int) -> dict[str, Any]:
    import os

    import psutil

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(engine.get("kv_cache_space_gib", 1)))
    from vllm import SamplingParams
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.inputs import TokensPrompt
    from vllm.v1.engine.async_llm import AsyncLLM

    from vllm_runtime.engine_args import resolve_dtype

    async def run() -> dict[str, Any]:
        t0 = time.perf_counter()
        llm = AsyncLLM.from_engine_args(AsyncEngineArgs(
            model=model, max_model_len=engine["max_model_len"], enforce_eager=True,
            enable_prefix_caching=True,
            dtype=resolve_dtype(engine.get("dtype", "auto"), on_cpu=True)))
        start_s = time.perf_counter() - t0
        ttfts, tps = [], []
        for i, p in enumerate(prompts):
            n = 4 if i == 0 else max_tokens
            sp = SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)
            t = time.perf_counter()
            first = None
            async for _ in llm.generate(TokensPrompt(prompt_token_ids=p), sp, f"plain-{i}"):
                first = first or time.perf_counter()
            if i:
                ttfts.append(first - t)
                tps.append((n - 1) / (time.perf_counter() - first))
        me = psutil.Process()
        rss = sum(c.memory_info().rss for c in me.children(recursive=True)) / (1 << 20)
        llm.shutdown()
        return {"engine_start_s": start_s, "engine_rss_mib": rss, "ttft_s": ttfts, "output_tok_s": tps}

    return asyncio.run(run())


def _med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.pd_single_request", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2", help="checkpoint folder or alias (default smollm2)")
    p.add_argument("--prompt-tokens", type=int, default=1000)
    p.add_argument("--output-tokens", type=int, default=64)
    p.add_argument("--requests", type=int, default=6, help="measured requests (plus one warm-up)")
    p.add_argument("--out", default="runs/pd_single_request.json")
    args = p.parse_args(argv)

    from vllm_runtime.model_assets import resolve_model

    model = resolve_model(args.model)
    engine = {"max_model_len": 4096, "kv_cache_space_gib": 1}
    prompts = _prompts(args.requests + 1, args.prompt_tokens, seed=0)
    print(f"[bench] P/D through Serve: {args.requests} requests x {args.prompt_tokens} prompt tokens", flush=True)
    pd = measure_pd(args.model, engine, prompts, args.output_tokens)
    print("[bench] plain vLLM engine, same prompts", flush=True)
    plain = measure_plain(model, engine, prompts, args.output_tokens)
    result = {"args": vars(args), "pd": pd, "plain": plain}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print("| metric | P/D (PrefillShare) | plain vLLM |\n|---|---|---|")
    print(f"| engine start (s) | prefill {pd['prefill_engine_start_s']:.1f}, decode {pd['decode_engine_start_s']:.1f} | {plain['engine_start_s']:.1f} |")
    print(f"| memory per replica (MiB) | prefill {pd['prefill_replica_rss_mib']:.0f}, decode {pd['decode_replica_rss_mib']:.0f} | {plain['engine_rss_mib']:.0f} (engine processes) |")
    print(f"| TTFT median (s) | {_med(pd['ttft_s']):.3f} | {_med(plain['ttft_s']):.3f} |")
    print(f"| output tok/s median | {_med(pd['output_tok_s']):.1f} | {_med(plain['output_tok_s']):.1f} |")
    print(f"| KV transfer per request (NIXL) | {_med(pd['kv_transfer_s']) * 1e3:.1f} ms, {_med(pd['kv_bytes']) / 2**20:.1f} MiB | - |")
    print(f"[bench] wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
