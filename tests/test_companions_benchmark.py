"""The companions benchmark's report says which training augmentation its systems got."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import companions  # noqa: E402

from merit.preparation import DataArguments  # noqa: E402


def test_report_names_the_shared_data_defaults():
    text = companions.training_data_text(DataArguments())
    assert text == (
        "Training data for every system: SNR uniform in [-5, 20] dB, 10 % clean examples, "
        "speed perturbation x0.9-1.1."
    )
    off = companions.training_data_text(DataArguments(speed_range=None, clean_prob=0.3))
    assert "30 % clean examples, no speed perturbation." in off
