"""The default-recipe rule of benchmarks/recipe_search.py, on synthetic rows (no training)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import recipe_search  # noqa: E402


def _row(name: str, f1: float, ssnr: float, clean_ssnr: float) -> dict:
    return {
        "name": name,
        "val_f1_macro": f1,
        "val_ssnr": ssnr,
        "val_clean_ssnr": clean_ssnr,
        "val_clean_input_ssnr": 30.0,
    }


REFERENCE = _row("two-stage-x0.1", 0.78, 3.7, 15.0)  # 15 dB clean cost


def test_best_f1_among_cheap_candidates_that_keep_the_enhancement():
    rows = [
        REFERENCE,
        _row("keeps", 0.74, 3.3, 27.5),  # 2.5 dB cost, SSNR -0.4 dB
        _row("passes-clean", 0.79, 1.8, 29.9),  # cheaper and better F1, but halves SSNR
        _row("expensive", 0.80, 3.8, 26.0),  # 4 dB cost
    ]
    name, why = recipe_search.pick(rows)
    assert name == "keeps" and "within 0.5 dB" in why


def test_falls_back_to_the_clean_cost_alone_then_to_f1():
    rows = [REFERENCE, _row("a", 0.70, 1.0, 29.0), _row("b", 0.72, 2.0, 28.0)]
    assert recipe_search.pick(rows) == ("b", "clean cost <= 3 dB (none keeps the noisy SSNR)")
    rows = [REFERENCE, _row("c", 0.70, 3.7, 20.0)]
    assert recipe_search.pick(rows)[0] == "two-stage-x0.1"
    with pytest.raises(ValueError, match="two-stage-x0.1"):
        recipe_search.pick([_row("no-reference", 0.7, 3.0, 29.0)])
