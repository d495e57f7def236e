"""The engine-start deadline stops a start that hangs, and leaves a quick one alone."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from vllm_runtime.start_deadline import EngineStartTimeout, start_deadline

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def test_a_hung_start_is_stopped_and_raises():
    # As vLLM does: the start waits on a child process, which the deadline kills.
    child = subprocess.Popen(SLEEPER)
    began = time.monotonic()
    with pytest.raises(EngineStartTimeout, match="start_timeout_s=1"):
        with start_deadline(1.0, "engine e1"):
            if child.wait(timeout=30) != 0:
                raise RuntimeError("Engine core initialization failed")
    assert time.monotonic() - began < 20
    assert child.poll() is not None


def test_a_quick_start_keeps_its_processes():
    child = subprocess.Popen(SLEEPER)
    try:
        with start_deadline(5.0, "engine e2"):
            time.sleep(0.1)
        time.sleep(0.2)
        assert child.poll() is None  # the deadline was cancelled, nothing was stopped
    finally:
        child.kill()
        child.wait()


def test_other_errors_pass_through_unchanged():
    with pytest.raises(ValueError, match="bad model"):
        with start_deadline(5.0, "engine e3", stop=lambda: None):
            raise ValueError("bad model")


def test_ready_just_at_the_deadline_still_fails():
    # The deadline stopped the processes while the start returned: the engine is unusable.
    with pytest.raises(EngineStartTimeout):
        with start_deadline(0.05, "engine e4", stop=lambda: None):
            time.sleep(0.3)
