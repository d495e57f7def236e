"""A deadline on a vLLM engine's start: an engine that hangs in start fails instead.

vLLM waits without a timeout for its EngineCore process to report ready, and that process can
hang in start for good: when its NIXL side-channel port is taken, the handshake listener
thread dies on bind and the scheduler waits on that thread's ready event forever (seen in CI:
a prefill replica 50 minutes in its constructor). Serve never times out a replica constructor.
So past the deadline the replica stops its own engine processes; vLLM watches their sentinels
and raises, the constructor fails, and Serve starts the replica again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)


class EngineStartTimeout(RuntimeError):
    pass


def stop_child_processes() -> None:
    """Kills every process this one started (in a replica: vLLM's EngineCore and workers)."""
    import psutil

    for child in psutil.Process().children(recursive=True):
        try:
            child.kill()
        except psutil.Error:  # already gone
            pass


@contextmanager
def start_deadline(seconds: float, what: str,
                   stop: Callable[[], None] = stop_child_processes) -> Iterator[None]:
    """Runs the block; if it is still running after ``seconds``, calls ``stop`` (which must
    make the block return or raise) and raises EngineStartTimeout."""
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        log.error("%s not ready after %.0fs: stopping its processes so the replica can start "
                  "again", what, seconds)
        stop()

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    message = (f"{what} was not ready within start_timeout_s={seconds:.0f}; its processes "
               "were stopped so that Serve starts the replica again")
    try:
        yield
    except Exception as error:
        if expired.is_set():
            raise EngineStartTimeout(message) from error
        raise
    finally:
        timer.cancel()
    if expired.is_set():  # it got ready just as the deadline stopped it
        raise EngineStartTimeout(message)
