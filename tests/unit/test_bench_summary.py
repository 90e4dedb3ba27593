"""scripts/bench.py's summary of its rounds, on its own."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from bench import Measurement, summarize


def test_a_reference_that_answered_nothing_gives_no_ratios_and_no_error():
    # 1 s rounds at 256 connections on a slow machine: bare mitmdump may finish no request.
    measurements = [
        Measurement("c256", "mitmdump", 0, 0.0, 0.0, 0.0, 0),
        Measurement("c256", "lean runner, 1 worker", 0, 400.0, 300.0, 450.0, 0),
    ]
    summary = summarize(measurements, "c256", ["mitmdump", "lean runner, 1 worker"])
    assert summary["lean runner, 1 worker"]["requests_per_second"] == 400.0
    assert "rps_vs_mitmdump" not in summary["lean runner, 1 worker"]


def test_ratios_are_to_the_reference_when_it_answered():
    measurements = [
        Measurement("c16", "mitmdump", 0, 200.0, 10.0, 40.0, 0),
        Measurement("c16", "lean runner, 1 worker", 0, 400.0, 5.0, 20.0, 0),
    ]
    summary = summarize(measurements, "c16", ["mitmdump", "lean runner, 1 worker"])
    assert summary["lean runner, 1 worker"]["rps_vs_mitmdump"] == 2.0
    assert summary["lean runner, 1 worker"]["p99_vs_mitmdump"] == 0.5
