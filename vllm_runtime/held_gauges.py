"""Ray gauges that stay on the Prometheus endpoint while their value does not change.

Ray's metric emitter exports a gauge's value once after each ``set()`` and then forgets it
(its OpenTelemetry recorder clears a gauge's observations after every collection), and Ray's
metrics agent evicts a series that was not refreshed within two export intervals. A gauge set
only on change (an idle engine's hit ratio, a queue depth back at 0) therefore vanished from
``/metrics`` about 20 s after its last change: Grafana panels had gaps and a scrape after a
quiet spell found no series at all (the CI failure of stop 17). HeldGauges keeps each gauge's
last value per tag set and sets it again every ``refresh_s`` from one daemon thread.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Protocol

# Under Ray's default 10 s export interval (metrics_report_interval_ms): every export finds
# a fresh value.
REFRESH_S = 4.0


class SettableGauge(Protocol):
    def set(self, value: float, tags: dict[str, str]) -> None: ...


class HeldGauges:
    def __init__(self, refresh_s: float | None = None) -> None:
        self.refresh_s = REFRESH_S if refresh_s is None else refresh_s  # 0: no thread
        self._held: dict[tuple[int, frozenset[tuple[str, str]]], tuple[Any, float, dict]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def set(self, gauge: SettableGauge, value: float, tags: dict[str, str]) -> None:
        """Sets ``gauge`` now if its value for ``tags`` changed, and holds it from then on."""
        key = (id(gauge), frozenset(tags.items()))
        with self._lock:
            previous = self._held.get(key)
            self._held[key] = (gauge, value, dict(tags))
        if previous is None or previous[1] != value:
            gauge.set(value, tags=tags)
        self._start_refresher()

    def refresh(self) -> None:
        """Sets every held value again (what the refresher thread does each refresh_s)."""
        with self._lock:
            held = list(self._held.values())
        for gauge, value, tags in held:
            gauge.set(value, tags=tags)

    def _start_refresher(self) -> None:
        if self._thread is not None or self.refresh_s <= 0:
            return
        self._thread = threading.Thread(target=self._refresh_forever, name="held-gauges",
                                        daemon=True)
        self._thread.start()

    def _refresh_forever(self) -> None:
        while True:
            time.sleep(self.refresh_s)
            self.refresh()
