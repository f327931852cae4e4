"""benchmarks/default_seeds.py's summary, on synthetic run rows (no training)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import default_seeds  # noqa: E402


def _rows(f1_clean: float, f1_noisy: float, ssnr_noisy: float) -> list[dict]:
    return [
        {"system": "sparse", "condition": "clean", "f1_macro": f1_clean, "ssnr": 32.0},
        {"system": "sparse", "condition": "seen_0dB", "f1_macro": f1_noisy, "ssnr": ssnr_noisy},
        {"system": "unprocessed", "condition": "clean", "f1_macro": None, "ssnr": 32.9},
        {"system": "unprocessed", "condition": "seen_0dB", "f1_macro": None, "ssnr": -3.35},
    ]


def test_mean_and_sample_std_per_condition_with_the_input_ssnr():
    table = default_seeds.summarize(
        {42: _rows(0.6, 0.7, 3.0), 1: _rows(0.7, 0.7, 2.0), 2: _rows(0.8, 0.7, 1.0)}
    )
    assert list(table) == ["clean", "seen_0dB"]
    assert table["clean"]["f1_macro_mean"] == pytest.approx(0.7)
    assert table["clean"]["f1_macro_std"] == pytest.approx(0.1)  # sample std, n - 1
    assert table["seen_0dB"]["f1_macro_std"] == 0.0
    assert table["seen_0dB"]["ssnr_mean"] == pytest.approx(2.0)
    assert table["seen_0dB"]["ssnr"] == {42: 3.0, 1: 2.0, 2: 1.0}
    assert table["seen_0dB"]["input_ssnr"] == -3.35
    lines = default_seeds.report(table, [42, 1, 2], {42: None, 1: 600.0, 2: 610.0})
    assert "| clean | 60.0 / 70.0 / 80.0 | 70.0 ± 10.0 |" in "\n".join(lines)
    assert "42: earlier run, 1: 600, 2: 610" in "\n".join(lines)


def test_runs_that_scored_different_conditions_are_an_error():
    other = [r for r in _rows(0.6, 0.7, 3.0) if r["condition"] == "clean"]
    with pytest.raises(ValueError, match="seed 1 scored"):
        default_seeds.summarize({42: _rows(0.6, 0.7, 3.0), 1: other})
