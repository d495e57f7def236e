"""Reads a Serve config file (config.yaml) and finds the PrefillShare application in it.
Pure: YAML + pydantic, so `prefillshare validate` and the tests need no cluster."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from contract.config import AppConfig, load_config

IMPORT_PATH = "deployments.app:build_app"


@dataclass(frozen=True)
class ServeFile:
    path: Path
    raw: dict[str, Any]
    app_name: str
    route_prefix: str
    http_host: str
    http_port: int
    app: AppConfig


def load_serve_file(path: str | Path) -> ServeFile:
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise ValueError(f"{p}: no such file") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{p}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("applications"), list):
        raise ValueError(f"{p}: expected a Serve config with an `applications:` list")
    apps = [a for a in raw["applications"] if a.get("import_path") == IMPORT_PATH]
    if len(apps) != 1:
        raise ValueError(f"{p}: expected exactly one application with import_path {IMPORT_PATH}")
    app = apps[0]
    http = raw.get("http_options") or {}
    return ServeFile(
        path=p,
        raw=raw,
        app_name=str(app.get("name", "default")),
        route_prefix=str(app.get("route_prefix", "/")),
        http_host=str(http.get("host", "127.0.0.1")),
        http_port=int(http.get("port", 8000)),
        app=load_config(app.get("args") or {}),
    )
