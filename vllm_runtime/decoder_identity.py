"""Which base a trained decoder or adapter was conditioned on.

Training writes prefillshare_decoder.json beside every decoder folder and LoRA adapter it
exports: the base's path and the sha256 of its config and weight files. A decoder conditioned
on one base's KV reads another base's KV as noise, and nothing in vLLM notices (its NIXL check
compares model paths, and a LoRA request carries no base at all), so serving checks the hashes.
Pure: hashlib and json only (no torch), so the planner and `prefillshare validate` can use it.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

IDENTITY_FILE = "prefillshare_decoder.json"
_HASHED = ("config.json", "*.safetensors", "*.bin")


def model_identity(path: Path) -> dict[str, Any]:
    """The folder's resolved path and the sha256 of its config and weight files."""
    path = Path(path)
    files = {file.name: _sha256(str(file.resolve()), *_stamp(file))
             for pattern in _HASHED for file in sorted(path.glob(pattern))}
    return {"path": str(path.resolve()), "sha256": files}


def read_identity(folder: Path) -> dict[str, Any] | None:
    path = Path(folder) / IDENTITY_FILE
    return json.loads(path.read_text()) if path.exists() else None


def base_mismatch(trained: Path, base: Path) -> str | None:
    """Why ``trained`` (a decoder or adapter folder) does not belong on ``base``; None when it
    does or when it carries no identity (then nothing can be checked)."""
    record = read_identity(trained)
    if record is None:
        return None
    expected = record.get("base", {}).get("sha256")
    if expected != model_identity(base)["sha256"]:
        return (f"{trained} was trained on base {record.get('base', {}).get('path')!r}, "
                f"whose files differ from the served base {base}")
    return None


def _stamp(file: Path) -> tuple[int, int]:
    st = file.stat()
    return st.st_size, st.st_mtime_ns


@lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """Cached per (path, size, mtime): a plan checks several adapters against one base."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
