"""Benchmark v2's report (bench/v2_report.py): every table from the sweep's raw rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.v2_report import main, splice, system_lines, systems_table
from tests.test_bench_compare import row


def _sweep(tmp_path: Path) -> Path:
    """Two steps as the sweep writes them: each system in its own folder, three repeats."""
    out = tmp_path / "sweep"
    steps = {"load-baseline": [row("baseline", 1.0, 6, 0.25, s, 0, repeat=i, memory=10.0)
                               for i, s in enumerate((4.0, 6.0, 5.0))],
             "load-prefillshare": [row("prefillshare", 1.0, 6, 0.25, s, 200, repeat=i,
                                       memory=9.0) for i, s in enumerate((1.0, 2.0, 1.5))]}
    for name, rows in steps.items():
        (out / name).mkdir(parents=True)
        (out / name / "results.json").write_text(json.dumps(rows))
    return out


def test_each_system_is_its_median_over_repeats_with_the_spread(tmp_path: Path):
    from bench.v2_report import load_rows

    lines = system_lines(load_rows(_sweep(tmp_path)))
    assert [line["topology"] for line in lines] == ["baseline", "prefillshare"]
    base = lines[0]
    assert base["repeats"] == 3
    assert base["p95_s"] == pytest.approx(5.0) and base["spread"]["p95_s"] == (4.0, 6.0)
    assert base["tput_per_gib"] == pytest.approx(base["tput"] / 10.0)
    table = systems_table(lines)
    assert "| 1.0/s ≤6 | 0.25 | baseline | 3 | " in table
    assert "5.00 (4.00-6.00)" in table


def test_splice_replaces_only_between_its_markers():
    doc = "a\n<!-- v2:systems -->\nold\n<!-- /v2:systems -->\nb\n<!-- v2:x -->\nkeep\n<!-- /v2:x -->\n"
    new = splice(doc, "systems", "new\n")
    assert new == doc.replace("old\n", "new\n")
    with pytest.raises(KeyError):
        splice(doc, "missing", "t\n")


def test_one_command_writes_every_table_and_fills_the_doc(tmp_path: Path):
    rows_dir = _sweep(tmp_path)
    doc = tmp_path / "bench.md"
    doc.write_text("<!-- v2:systems -->\n<!-- /v2:systems -->\n"
                   "<!-- v2:prefillshare_vs_baseline -->\nstale\n<!-- /v2:prefillshare_vs_baseline -->\n")
    out = tmp_path / "docs"
    assert main([str(rows_dir), "--out-dir", str(out), "--doc", str(doc)]) == 0
    text = doc.read_text()
    assert "stale" not in text and "| baseline | 3 |" in text
    # Pairs whose systems both ran get a table and plots; the LoRA pairs did not run.
    assert (out / "v2_prefillshare_vs_baseline_summary.md").exists()
    assert (out / "v2_prefillshare_vs_baseline_p95.png").exists()
    assert not list(out.glob("v2_prefillshare-lora*"))
    ratios = json.loads((out / "v2_prefillshare_vs_baseline_ratios.json").read_text())
    assert ratios[0]["repeats"] == 3 and ratios[0]["p95_ratio"] > 1


def test_box_memory_per_step_names_its_system(tmp_path: Path):
    from bench.v2_report import box_memory, load_rows

    rows = load_rows(_sweep(tmp_path))
    samples = ("12:00:00 idle 0.90\n12:00:20 load-baseline 18.00\n12:00:40 load-baseline 20.50\n"
               "12:01:00 load-baseline: 19.00\n12:01:20 load-prefillshare 17.25\nbad line\n")
    table = box_memory(samples, rows)
    assert "| load-baseline | baseline | 0.25 | 3 | 20.5 | 19.0 |" in table
    assert "| load-prefillshare | prefillshare | 0.25 | 1 | 17.2 | 17.2 |" in table
    assert table.strip().endswith("| idle | - | - | 1 | 0.9 | 0.9 |")


def test_no_rows_is_a_usage_error(tmp_path: Path):
    assert main([str(tmp_path)]) == 2
