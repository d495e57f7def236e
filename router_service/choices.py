"""n > 1: one decode sequence per choice, merged into one stream of indexed deltas.

Runs in the ingress replica; pure asyncio. Choice 0 starts alone; the others start once its
prefill is done, so their prefills hit the prefill engine's prefix cache (only the last,
partial block is computed again, by the same base weights: the same KV). Each choice then
pulls its own leased blocks. vLLM's own n > 1 is not used on the decode engine: its child
requests would all pull the one lease, which the prefill engine frees after the first pull
(vllm/distributed/kv_transfer/kv_connector/v1/nixl, pull_worker), so a late child could read
freed blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable

from contract.wire import GenerationDelta

# (choice index, set once that choice's prefill is done) -> that choice's deltas
OneChoice = Callable[[int, asyncio.Event], AsyncIterator[GenerationDelta]]

_DONE = object()


async def fan_out(one: OneChoice, n: int) -> AsyncIterator[GenerationDelta]:
    """The deltas of ``n`` choices as they come, each tagged with its index. Ends when every
    choice has finished; the first error of any choice ends all of them and is raised."""
    queue: asyncio.Queue[tuple[int, object]] = asyncio.Queue()

    async def pump(index: int, prefilled: asyncio.Event) -> None:
        try:
            async with contextlib.aclosing(one(index, prefilled)) as deltas:
                async for delta in deltas:
                    await queue.put((index, delta))
            await queue.put((index, _DONE))
        except Exception as exc:  # handed to the consumer, who raises it
            await queue.put((index, exc))

    first_prefilled = asyncio.Event()
    tasks = [asyncio.create_task(pump(0, first_prefilled))]

    async def start_the_rest() -> None:
        await first_prefilled.wait()
        tasks.extend(asyncio.create_task(pump(i, asyncio.Event())) for i in range(1, n))

    starter = asyncio.create_task(start_the_rest())
    try:
        finished = 0
        while finished < n:
            index, item = await queue.get()
            if item is _DONE:
                finished += 1
            elif isinstance(item, Exception):
                raise item
            else:
                assert isinstance(item, GenerationDelta)
                yield dataclasses.replace(item, index=index)
    finally:
        # The consumer left, or a choice failed: end every choice (each closes its decode
        # stream and releases what it leased).
        starter.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(starter, *tasks, return_exceptions=True)
