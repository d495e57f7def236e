"""HeldGauges (vllm_runtime/held_gauges.py): a gauge set on change is set again while its value
stays, because Ray's emitter forgets a gauge after each export and the agent evicts a series
not refreshed within two export intervals."""

from __future__ import annotations

import time

from vllm_runtime.held_gauges import HeldGauges


class FakeGauge:
    def __init__(self) -> None:
        self.sets: list[tuple[float, dict[str, str]]] = []

    def set(self, value: float, tags: dict[str, str]) -> None:
        self.sets.append((value, tags))


def test_sets_on_change_and_holds_every_tag_set():
    held = HeldGauges(refresh_s=0)  # no thread: refresh() by hand
    ratio, depth = FakeGauge(), FakeGauge()
    a, b = {"replica": "a"}, {"replica": "b"}
    held.set(ratio, 0.5, a)
    held.set(ratio, 0.5, a)  # unchanged: not sent again now
    held.set(ratio, 0.25, b)
    held.set(depth, 3, a)
    held.set(depth, 0, a)
    assert ratio.sets == [(0.5, a), (0.25, b)]
    assert depth.sets == [(3, a), (0, a)]

    ratio.sets.clear()
    depth.sets.clear()
    held.refresh()  # the idle spell: every last value goes out again, per tag set
    assert sorted(ratio.sets, key=lambda s: s[1]["replica"]) == [(0.5, a), (0.25, b)]
    assert depth.sets == [(0, a)]


def test_the_refresher_thread_keeps_setting_an_unchanged_value():
    held = HeldGauges(refresh_s=0.05)
    gauge = FakeGauge()
    held.set(gauge, 1.0, {"replica": "a"})
    deadline = time.monotonic() + 10
    while len(gauge.sets) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(gauge.sets) >= 3 and {v for v, _ in gauge.sets} == {1.0}
