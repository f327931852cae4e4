"""benchmarks/batching.py on the tiny corpus: one pass per sampler, its report and the step
timing path (two batches, untimed in the assertions)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import batching  # noqa: E402


def test_batching_report_on_the_tiny_corpus(tiny_corpus, tmp_path):
    flags = ["--dataset", str(tiny_corpus), "--backbone", "tiny", "--per_device_train_batch_size"]
    report = batching.main(["--out", str(tmp_path), "--time_batches", "1", *flags, "4"])
    stats = report["samplers"]
    assert set(stats) == set(batching.SAMPLERS)
    # sorting a whole pass by length pads least (the per-class sampler's padding against
    # random batches is tested on larger synthetic splits in test_training.py)
    assert 1.0 <= stats["group_by_length"]["padding_ratio"] < stats["random"]["padding_ratio"]
    # 4 balanced classes in batches of 4: per-class batches hold each class once
    assert stats["per_class"]["majority_share"] == 0.25
    assert set(report["step_seconds"]) == {"random", "per_class"}
    assert json.loads((tmp_path / "batching.json").read_text())["batch_size"] == 4
    text = (tmp_path / "batching.md").read_text()
    assert "`--group_by_length_per_class True`" in text and "per-class / random" in text
