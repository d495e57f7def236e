"""The dashboard spec and its Grafana JSON (observability/): every PrefillShare metric a query
names is one the code defines, and the layout is a valid, non-overlapping Grafana grid."""

from __future__ import annotations

import re

from observability.dashboard import build_dashboard, main
from observability.panels import ROWS, all_queries
from router_service import metrics as ingress_metrics
from vllm_runtime import engine_metrics

ROUTING_DECISIONS = "prefillshare_routing_decisions"  # routing/metrics.py


def test_every_prefillshare_metric_in_a_query_is_defined():
    defined = {*ingress_metrics.NAMES, *engine_metrics.NAMES, ROUTING_DECISIONS}
    used = set()
    for _, q in all_queries():
        for name in re.findall(r"\bray_(prefillshare_\w+)", q.expr):
            used.add(re.sub(r"_(total|bucket|sum|count)$", "", name))
    assert used - defined == set()
    # ... and the dashboard shows every metric the ingress and engines define but two that
    # are views of the same data (the cumulative hit-ratio gauge; transfer failures are rare
    # events with no panel of their own).
    assert defined - used == {engine_metrics.HIT_RATIO, engine_metrics.KV_TRANSFER_FAILURES}


def test_source_file_check_of_routing_metric_name():
    from pathlib import Path

    source = Path(__file__).resolve().parents[1] / "routing/metrics.py"
    assert f'"{ROUTING_DECISIONS}"' in source.read_text()


def test_grid_is_valid_and_nothing_overlaps():
    dash = build_dashboard("ds")
    panels = dash["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells = set()
    for p in panels:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, p["title"]
                cells.add((x, y))
    assert [p["title"] for p in panels if p["type"] == "row"] == [r.title for r in ROWS]
    for p in panels:
        if p["type"] == "timeseries":
            refs = [t["refId"] for t in p["targets"]]
            assert len(set(refs)) == len(refs) and all(t["expr"] for t in p["targets"])


def test_labels_used_by_legends_are_grouped_by():
    # A legend {{x}} shows nothing unless the query keeps label x.
    for title, q in all_queries():
        for label in re.findall(r"\{\{(\w+)\}\}", q.legend):
            assert re.search(rf"by \([^)]*\b{label}\b", q.expr), (title, q.expr)


def test_module_entry_point_writes_json(tmp_path):
    import json

    out = tmp_path / "dash.json"
    assert main(["--out", str(out), "--datasource-uid", "x"]) == 0
    assert json.loads(out.read_text())["panels"][1]["datasource"] == {"type": "prometheus", "uid": "x"}
