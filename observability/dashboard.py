"""The Grafana dashboard JSON, generated from the panel spec (observability/panels.py).

``python -m observability.dashboard [--out FILE]`` writes it for a manual import; the push
command (observability/grafana_push.py) sends the same JSON. Pure: no Grafana needed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from observability.panels import ROWS, Panel

DASHBOARD_UID = "prefillshare"
DASHBOARD_TITLE = "PrefillShare"
DATASOURCE_UID = "prefillshare-prometheus"

_WIDTH, _HEIGHT, _PER_ROW = 8, 8, 3  # Grafana's grid is 24 columns wide


def _panel(panel: Panel, panel_id: int, x: int, y: int, datasource: dict[str, str]) -> dict[str, Any]:
    return {
        "id": panel_id,
        "type": "timeseries",
        "title": panel.title,
        "description": panel.description,
        "datasource": datasource,
        "gridPos": {"h": _HEIGHT, "w": _WIDTH, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
        "targets": [{"refId": chr(ord("A") + i), "datasource": datasource, "expr": q.expr,
                     "legendFormat": q.legend}
                    for i, q in enumerate(panel.queries)],
    }


def build_dashboard(datasource_uid: str = DATASOURCE_UID) -> dict[str, Any]:
    datasource = {"type": "prometheus", "uid": datasource_uid}
    panels: list[dict[str, Any]] = []
    y = 0
    for row in ROWS:
        panels.append({"id": len(panels) + 1, "type": "row", "title": row.title, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        y += 1
        for i, panel in enumerate(row.panels):
            x = (i % _PER_ROW) * _WIDTH
            panels.append(_panel(panel, len(panels) + 1, x, y + (i // _PER_ROW) * _HEIGHT,
                                 datasource))
        y += -(-len(row.panels) // _PER_ROW) * _HEIGHT
    return {
        "uid": DASHBOARD_UID,
        "title": DASHBOARD_TITLE,
        "tags": ["prefillshare", "ray-serve", "vllm"],
        "timezone": "browser",
        "editable": True,
        "schemaVersion": 39,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": []},
        "panels": panels,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m observability.dashboard", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help="write here instead of stdout")
    p.add_argument("--datasource-uid", default=DATASOURCE_UID,
                   help="the Prometheus data source the panels query")
    args = p.parse_args(argv)
    text = json.dumps(build_dashboard(args.datasource_uid), indent=2) + "\n"
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
