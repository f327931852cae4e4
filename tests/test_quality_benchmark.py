"""Statistics, per-utterance recording and report writers of benchmarks/quality.py, on
synthetic numbers (no training)."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from benchmarks import quality
from merit.metrics import ser_metrics


def _cell(values):
    mean, std = quality.mean_std(values)
    return {"mean": mean, "std": std, "values": list(values)}


def test_mean_std_is_the_sample_deviation_of_finite_values():
    mean, std = quality.mean_std([0.40, 0.45, 0.50])
    assert mean == pytest.approx(0.45)
    assert std == pytest.approx(0.05)  # sqrt((0.05^2 + 0 + 0.05^2) / 2)
    assert quality.mean_std([1.0, math.nan, 3.0]) == pytest.approx((2.0, math.sqrt(2.0)))
    mean, std = quality.mean_std([7.0])
    assert mean == 7.0 and math.isnan(std)
    assert all(math.isnan(v) for v in quality.mean_std([math.nan]))


def test_summarize_groups_rows_by_system_and_condition_in_seed_order():
    rows = [
        {"seed": 2, "system": "sparse", "condition": "clean", "f1_macro": 0.5, "ssnr": 3.0},
        {"seed": 0, "system": "sparse", "condition": "clean", "f1_macro": 0.4, "ssnr": 1.0},
        {"seed": 1, "system": "sparse", "condition": "clean", "f1_macro": 0.45, "ssnr": 2.0},
        {"seed": 0, "system": "ser-only", "condition": "clean", "f1_macro": 0.3},
    ]
    summary = quality.summarize(rows)
    cell = summary["sparse", "clean"]
    assert cell["f1_macro"]["values"] == [0.4, 0.45, 0.5]
    assert cell["f1_macro"]["mean"] == pytest.approx(0.45)
    assert cell["ssnr"]["std"] == pytest.approx(1.0)
    assert "ssnr" not in summary["ser-only", "clean"]


def test_relative_improvement_uses_the_magnitude_of_the_baseline():
    assert quality.relative_improvement(0.56, 0.50) == pytest.approx(12.0)
    assert quality.relative_improvement(-2.0, -4.0) == pytest.approx(50.0)  # less negative SSNR
    assert quality.relative_improvement(-5.0, -4.0) == pytest.approx(-25.0)
    assert math.isnan(quality.relative_improvement(1.0, 0.0))
    assert math.isnan(quality.relative_improvement(math.nan, 1.0))


def test_improvements_at_minus_5_db_seen_unseen_and_average():
    summary = {
        ("sparse", "seen_-5dB"): {"f1_macro": _cell([0.56]), "ssnr": _cell([-2.0])},
        ("sparse", "unseen_-5dB"): {"f1_macro": _cell([0.40]), "ssnr": _cell([-1.0])},
        ("cascade", "seen_-5dB"): {"f1_macro": _cell([0.50]), "ssnr": _cell([-4.0])},
        ("cascade", "unseen_-5dB"): {"f1_macro": _cell([0.40]), "ssnr": _cell([-2.0])},
    }
    out = quality.improvements_at(summary, -5.0)
    f1 = out["cascade"]["f1_macro"]
    assert f1["seen_percent"] == pytest.approx(12.0)
    assert f1["unseen_percent"] == pytest.approx(0.0)
    assert f1["average_percent"] == pytest.approx(6.0)  # mean of the two gains
    assert f1["paper_percent"] == 12.0
    ssnr = out["cascade"]["ssnr"]
    assert ssnr["average_percent"] == pytest.approx(50.0)
    assert ssnr["seen_difference"] == pytest.approx(2.0)
    assert math.isnan(out["naive-mtl"]["f1_macro"]["seen_percent"])  # not in the summary
    out["cascade"]["ssnr"]["unseen_baseline"] = -0.5  # relative SSNR gains near 0 dB are flagged
    rows = quality.format_improvements({"cascade": out["cascade"]}).splitlines()
    assert rows[2] == (
        "| SE -> SER cascade | F1-macro | +12.0 % (+6.00 pt) | +0.0 % (+0.00 pt) "
        "| +6.0 % (+3.00 pt) | +12.0 % |"
    )
    assert rows[3] == (
        "| SE -> SER cascade | SSNR | +50.0 % (+2.00 dB) | +50.0 %‡ (+1.00 dB) "
        "| +50.0 %‡ (+1.50 dB) | +28.2 % |"
    )


def test_bootstrap_observed_difference_is_the_f1_macro_difference():
    refs = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    a = refs.copy()
    b = np.array([0, 1, 1, 1, 2, 0, 3, 3])
    test = quality.paired_bootstrap_f1(a, b, refs, 4, num_resamples=200)
    expected = 1.0 - ser_metrics(b, refs, 4)["f1_macro"]
    assert test["delta"] == pytest.approx(expected)
    assert test["ci_low"] <= test["delta"] <= test["ci_high"]
    # Seeds: the statistic is the mean over paired seeds.
    two = quality.paired_bootstrap_f1([a, b], [b, b], refs, 4, num_resamples=50)
    assert two["delta"] == pytest.approx(expected / 2)
    assert two["seeds"] == 2


def test_bootstrap_p_value_separates_real_and_null_differences():
    rng = np.random.default_rng(0)
    refs = rng.integers(0, 4, 300)
    good = np.where(rng.random(300) < 0.8, refs, rng.integers(0, 4, 300))
    poor = np.where(rng.random(300) < 0.3, refs, rng.integers(0, 4, 300))
    better = quality.paired_bootstrap_f1(good, poor, refs, 4, num_resamples=500)
    assert better["delta"] > 0.3 and better["p_value"] < 0.01
    worse = quality.paired_bootstrap_f1(poor, good, refs, 4, num_resamples=500)
    assert worse["delta"] == pytest.approx(-better["delta"])
    assert worse["p_value"] < 0.01
    same = quality.paired_bootstrap_f1(good, good, refs, 4, num_resamples=100)
    assert same["delta"] == 0.0 and same["p_value"] == 1.0


def test_bootstrap_rejects_unpaired_inputs():
    with pytest.raises(ValueError, match="do not pair"):
        quality.paired_bootstrap_f1([0, 1, 2], [0, 1], [0, 1, 2], 3)
    with pytest.raises(ValueError, match="do not pair"):
        quality.paired_bootstrap_f1([[0, 1]], [[0, 1], [1, 0]], [0, 1], 2)


def test_wilcoxon_on_seed_averaged_differences():
    # Differences 1..5, all positive: exact two-sided p = 2 / 2^5.
    test = quality.paired_wilcoxon([1.0, 2.0, 3.0, 4.0, 5.0], np.zeros(5))
    assert test["p_value"] == pytest.approx(0.0625)
    assert test["delta"] == pytest.approx(3.0)
    # Seeds are averaged per utterance; an utterance with a nan is left out.
    a = [[1.0, 3.0, math.nan], [3.0, 5.0, 1.0]]
    b = [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    test = quality.paired_wilcoxon(a, b)
    assert test["utterances"] == 2 and test["delta"] == pytest.approx(3.0)
    assert quality.paired_wilcoxon([1.0, 2.0], [1.0, 2.0])["p_value"] == 1.0
    with pytest.raises(ValueError, match="no utterance"):
        quality.paired_wilcoxon([math.nan], [1.0])
    with pytest.raises(ValueError, match="do not pair"):
        quality.paired_wilcoxon([1.0, 2.0], [1.0])


def test_tables_show_mean_std_marks_and_p_values():
    summary = {
        ("sparse", "clean"): {"f1_macro": _cell([0.40, 0.45, 0.50]), "ssnr": _cell([1.0, 3.0])},
        ("sparse", "seen_-5dB"): {"f1_macro": _cell([0.3])},
        ("ser-only", "clean"): {"f1_macro": _cell([0.2, 0.2])},
    }
    conditions = ["clean", "seen_-5dB"]
    table = quality.format_mean_std_table(
        summary, "f1_macro", ["sparse", "ser-only"], conditions, marks={("ser-only", "clean"): "†"}
    )
    lines = table.splitlines()
    assert lines[0] == "| System | Clean | Seen -5 dB |"
    assert lines[2] == "| Sparse MERIT | 45.0 ± 5.0 | 30.0 |"  # one seed: no deviation
    assert lines[3] == "| SER-only (noisy training) | 20.0 ± 0.0† | - |"
    ssnr = quality.format_mean_std_table(summary, "ssnr", ["sparse", "ser-only"], conditions)
    assert "| Sparse MERIT | 2.00 ± 1.41 | - |" in ssnr
    assert "SER-only" not in ssnr  # no SE output at all: no row
    tests = {
        quality.pair_key("sparse", "cascade"): {
            "clean": {"delta": 0.04, "p_value": 0.012},
            "seen_-5dB": {"delta": -0.01, "p_value": 0.5},
        }
    }
    row = quality.format_significance_table(tests, "f1_macro", conditions).splitlines()[2]
    assert row == "| Sparse MERIT - SE -> SER cascade | +4.0 (p=0.012)* | -1.0 (p=0.5) |"
    # the reference of a Sparse MERIT pair is marked where the test is significant
    assert quality._sparse_marks(tests) == {("cascade", "clean"): "†"}


def test_csv_and_plot_writers(tmp_path):
    summary = {
        ("sparse", "seen_-5dB"): {"f1_macro": _cell([0.3, 0.5])},
        ("sparse", "clean"): {"f1_macro": _cell([0.6, 0.7]), "ssnr": _cell([20.0, 22.0])},
        ("unprocessed", "clean"): {"ssnr": _cell([35.0])},
    }
    path = tmp_path / "q.csv"
    quality.write_summary_csv(summary, path)
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["metric"], r["system"], r["condition"]) for r in rows] == [
        ("f1_macro", "sparse", "clean"),
        ("f1_macro", "sparse", "seen_-5dB"),
        ("ssnr", "sparse", "clean"),
        ("ssnr", "unprocessed", "clean"),
    ]
    first = rows[1]
    assert (first["noise"], first["snr_db"], first["seeds"]) == ("seen", "-5", "2")
    assert float(first["mean"]) == pytest.approx(0.4)
    assert float(first["std"]) == pytest.approx(math.sqrt(0.02), rel=1e-5)  # 6 digits
    assert first["per_seed"] == "0.3;0.5"
    plot = tmp_path / "q.png"
    quality.plot_f1_bands(summary, ["sparse"], plot, "test")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_release_suite_changes_one_block_per_ablation(tmp_path):
    """Each system of ``--suite release`` builds the model its name says: the preset, and the
    preset with exactly one block replaced (what the paired tests attribute a difference to)."""
    from merit.training import build_model, parse_args

    suite = quality.SUITES["release"]
    budget = suite.budgets["quick"]
    configs = {}
    for name, system in suite.trained.items():
        argv = quality.train_args(system, 0, budget, tmp_path / name, progress=False)
        model_args, _, _ = parse_args([*argv, "--backbone", "tiny"])
        configs[name] = build_model(model_args, {0: "a", 1: "b"}).config.to_dict()
    release = configs["release"]
    assert (release["integration"], release["router_weighting"]) == ("concat", "hard")
    assert (release["se_head_type"], release["router_top_k"], release["num_experts"]) == (
        "blstm",
        1,
        3,
    )
    assert configs["sparse"]["integration"] == "weighted_sum"
    assert configs["sparse"]["se_head_type"] == "mask_mlp"
    ignored = {"_name_or_path", "transformers_version", "backbone_config"}

    def changed(name: str) -> set[str]:
        return {
            key
            for key in release.keys() | configs[name].keys()
            if key not in ignored and release.get(key) != configs[name].get(key)
        }

    assert changed("release-learned-gate") == {
        "router_weighting",
        "load_balance_coef",
        "router_z_loss_coef",
    }
    assert changed("release-weighted-sum") == {"integration"}
    for system, reference in suite.pairs:
        assert system in suite.systems and reference in suite.systems


def test_training_settings_state_the_default_recipes_smoothing_and_precision():
    """The report says what the systems trained with, train.py's defaults resolved here."""
    from merit.training import native_bf16

    settings = quality.training_settings(quality.BUDGETS["quick"])
    assert settings["label_smoothing_factor"] == 0.1
    assert settings["precision"] == ("bf16" if native_bf16() else "fp32")
    assert settings["backbone"] == "whisper-tiny.en"
