"""The KV-pull-over signal (vllm_runtime/kv_pull_probe.py) and how the decode server turns it
into the KV_LOADED marker ahead of the first output, with a fake engine: no vLLM."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

from decode_service.server import KV_LOADED, DecodeServer
from vllm_runtime.kv_pull_probe import KvPullWatcher


class FakeEngine:
    """collective_rpc("kv_pulls_in_flight") answers from a script, one reply per poll (the
    last one repeats); one list per worker."""

    def __init__(self, script: list[list[str]] | Exception) -> None:
        self.script = script
        self.polls = 0

    async def collective_rpc(self, method: str, timeout: float | None = None) -> list[list[str]]:
        assert method == "kv_pulls_in_flight"
        self.polls += 1
        if isinstance(self.script, Exception):
            raise self.script
        return [self.script[min(self.polls - 1, len(self.script) - 1)]]


async def test_a_pull_is_over_once_seen_and_then_gone():
    # vLLM suffixes request ids: matched by prefix.
    engine = FakeEngine([[], ["req-1-x9"], ["req-1-x9", "other"], ["other"]])
    watcher = KvPullWatcher(engine, interval_s=0.001)
    loaded = watcher.watch("req-1")
    await asyncio.wait_for(loaded.wait(), timeout=2)
    assert engine.polls == 4
    assert watcher.waiting == {}
    await watcher.close()


async def _until(predicate, timeout_s: float = 5.0) -> None:
    """Wait for the watcher's task to get that far (the suite may run on a loaded box)."""
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.001)


async def test_a_pull_never_seen_is_not_reported_over():
    engine = FakeEngine([["other"]])
    watcher = KvPullWatcher(engine, interval_s=0.001)
    loaded = watcher.watch("req-2")
    await _until(lambda: engine.polls > 3)
    assert not loaded.is_set()
    watcher.forget("req-2")
    await _until(lambda: watcher.task is not None and watcher.task.done())  # nothing to watch


async def test_a_broken_probe_stops_polling():
    engine = FakeEngine(RuntimeError("no such method"))
    watcher = KvPullWatcher(engine, interval_s=0.001)
    loaded = watcher.watch("req-3")
    await _until(lambda: watcher.broken)
    assert engine.polls == 1 and not loaded.is_set()
    watcher.watch("req-4")
    await asyncio.sleep(0.05)
    assert engine.polls == 1  # a broken probe is not asked again


async def _outputs(delay_s: float, items: list[str]) -> AsyncIterator[str]:
    await asyncio.sleep(delay_s)
    for item in items:
        yield item


async def _first_items(script: list[list[str]], delay_s: float) -> list[Any]:
    server = SimpleNamespace(kv_pulls=KvPullWatcher(FakeEngine(script), interval_s=0.001))
    out = _outputs(delay_s, ["token-1", "token-2"])
    return [x async for x in DecodeServer._until_first_output(server, "req", out)]


async def test_decode_sends_kv_loaded_before_a_late_first_output():
    # The output comes long after the pull ends (generous: the suite runs on a loaded box).
    assert await _first_items([["req-a"], []], delay_s=2.0) == [KV_LOADED, "token-1"]


async def test_decode_sends_no_marker_when_the_output_comes_first():
    assert await _first_items([["req-a"]], delay_s=0.0) == ["token-1"]
