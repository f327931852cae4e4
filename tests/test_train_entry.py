"""train.py dispatches --method to the right training module."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "args, expected",
    [
        ([], "--variant"),
        (["--method", "mlkd"], "--student_layers"),
        (["--method=adapter"], "--mask_rate"),
    ],
)
def test_method_dispatch_help(args, expected):
    result = subprocess.run(
        [sys.executable, "train.py", *args, "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert expected in result.stdout


def test_unknown_method_is_a_clear_error():
    result = subprocess.run(
        [sys.executable, "train.py", "--method", "nope"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode != 0 and "Unknown --method 'nope'" in result.stderr
