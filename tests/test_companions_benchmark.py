"""The companions benchmark's report says which training augmentation its systems got."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import companions  # noqa: E402

from merit.preparation import DataArguments  # noqa: E402


def test_report_names_the_shared_data_defaults():
    text = companions.training_data_text(DataArguments(max_train_seconds=2.0))
    assert text == (
        "Training data for every system: random 2 s crops, no speed perturbation; "
        "SNR uniform in [-5, 20] dB, 10 % clean examples."
    )
    on = companions.training_data_text(
        DataArguments(
            speed_range=[0.9, 1.1],
            gain_range_db=[-3.0, 3.0],
            brightness_range_db=[-8.0, 8.0],
            pitch_shift_semitones=[-2.0, 2.0],
            pitch_shift_prob=0.25,
            clean_prob=0.3,
        )
    )
    assert on == (
        "Training data for every system: whole utterances, speed perturbation x0.9-1.1, "
        "gain -3 to +3 dB, brightness -8 to +8 dB above 2 kHz, pitch -2 to +2 semitones on "
        "25 %; SNR uniform in [-5, 20] dB, "
        "30 % clean examples."
    )
    assert companions.training_data_text(DataArguments(speed_range=None)) == (
        companions.training_data_text(DataArguments(speed_range=[1.0, 1.0]))
    )
