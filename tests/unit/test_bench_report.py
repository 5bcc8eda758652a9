"""The benchmark's pictures (scripts/bench_report.py), drawn for real with matplotlib from a
summary shaped as scripts/bench writes it."""

from __future__ import annotations

import struct
import sys

from helpers import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import bench_report

OURS = {"validate": 0.9, "prepare": 0.1, "stage": 0.7, "fence": 0.1, "freeze": 0.0, "checkpoint": 3.8,
        "transfer": 0.02, "restore": 4.0, "verify": 0.15, "commit": 0.2}
ROWS = [{"method": "direct", "mib": mib, "downtime_s": {"median": 2 + mib / 200, "min": 1.9, "max": 3 + mib / 150},
         "phases": OURS} for mib in (0, 1024)] + \
       [{"method": "floor", "mib": mib, "downtime_s": {"median": 0.1 + mib / 150, "min": 0.1, "max": 0.2 + mib / 150},
         "phases": {"dump": 0.05 + mib / 500, "copy": 0.01 + mib / 400, "restore": 0.09 + mib / 500}}
        for mib in (0, 1024)] + \
       [{"method": "restart", "mib": 1024, "runs": 1, "good": 0}]  # every run failed: no phases, no downtime


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_the_phase_chart_stacks_every_phase_of_every_method_one_panel_per_size(tmp_path):
    path = tmp_path / "phases.png"
    phases = bench_report.phase_chart(ROWS, path, "2 cores")
    # ours in the order they ran, then the floor's own; the restore shared, listed once
    assert phases == [*OURS, "dump", "copy"]
    width, height = png_size(path)
    assert (width, height) == (900, 550)  # two panels of 4.5 in at 100 dpi


def test_the_downtime_plot_is_drawn_for_the_methods_that_have_a_downtime(tmp_path):
    path = tmp_path / "downtime.png"
    bench_report.downtime_plot(ROWS, path, "2 cores")
    assert png_size(path) == (800, 500)
