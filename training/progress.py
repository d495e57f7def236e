"""tqdm progress bars for the loops a human watches (training steps, evaluation examples).

On only where someone watches: stderr is a terminal, unless PREFILLSHARE_PROGRESS says
otherwise ("0"/"off": never, e.g. a terminal recording a log; "1"/"on": always). CI and log
files (not TTYs) therefore keep their plain periodic log lines only.
"""

from __future__ import annotations

import os
import sys
from typing import Any

ENV = "PREFILLSHARE_PROGRESS"


def progress_enabled() -> bool:
    choice = os.environ.get(ENV, "").strip().lower()
    if choice in ("0", "off", "false", "no"):
        return False
    if choice in ("1", "on", "true", "yes"):
        return True
    return sys.stderr.isatty()


class _NoBar:
    def update(self, n: int = 1) -> None: ...

    def set_postfix(self, *args: Any, **kwargs: Any) -> None: ...

    def close(self) -> None: ...


def progress_bar(total: int, desc: str, unit: str, initial: int = 0, enabled: bool | None = None) -> Any:
    """A tqdm bar, or a no-op stand-in when progress is off (or tqdm is missing)."""
    if not (progress_enabled() if enabled is None else enabled):
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, leave=True)
