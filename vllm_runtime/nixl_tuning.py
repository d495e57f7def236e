"""A vLLM general plugin that stops idle NIXL progress threads from spinning.

nixl's Python API builds its C++ agent with ``pthrDelay = 0``, so the UCX progress thread
polls with a zero timeout and burns a whole core per idle engine (measured here: ~99% of a
core for each of a prefill and a decode engine). Turning the thread off hangs transfers, so
instead we keep it and give it a poll delay. vLLM loads general plugins in every process it
starts (API server, EngineCore, workers) before the NIXL agent exists, which makes this the
one place where the delay reliably applies. Registered in pyproject.toml under
``vllm.general_plugins``.

PREFILLSHARE_NIXL_PTHR_DELAY_US sets the delay (default 1000 us; 0 restores nixl's own).
"""

from __future__ import annotations

import logging
import os
from typing import Any

# Under the "vllm" logger namespace so the line shows in engine logs with vLLM's own handlers.
log = logging.getLogger("vllm.prefillshare.nixl_tuning")

DEFAULT_DELAY_US = 1000
_MARK = "_prefillshare_delay_us"


def progress_delay_us() -> int:
    raw = os.environ.get("PREFILLSHARE_NIXL_PTHR_DELAY_US", str(DEFAULT_DELAY_US))
    try:
        return max(0, int(raw))
    except ValueError:
        log.warning("ignoring PREFILLSHARE_NIXL_PTHR_DELAY_US=%r (not an integer)", raw)
        return DEFAULT_DELAY_US


def install(bindings: Any, delay_us: int) -> bool:
    """Wraps ``bindings.nixlAgent`` so every agent config gets ``pthrDelay = delay_us``.

    Idempotent: vLLM may load plugins more than once per process.
    """
    original = bindings.nixlAgent
    if getattr(original, _MARK, None) is not None:
        return False

    def nixl_agent_with_delay(name: str, config: Any) -> Any:
        # Only ever raise the delay: a config that already asks for one keeps it.
        if getattr(config, "pthrDelay", 0) == 0:
            config.pthrDelay = delay_us
        return original(name, config)

    setattr(nixl_agent_with_delay, _MARK, delay_us)
    bindings.nixlAgent = nixl_agent_with_delay
    return True


def register() -> None:
    """The entry point vLLM calls."""
    delay = progress_delay_us()
    if delay == 0:
        return
    try:
        import nixl._api as api  # resolves to the installed nixl_cuXX wheel
    except ImportError:
        return  # no NIXL here: nothing to tune
    if install(api.nixlBind, delay):
        log.info("NIXL progress thread poll delay set to %d us", delay)
