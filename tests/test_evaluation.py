"""Evaluation: frozen test sets, systems (model, cascade, unprocessed), tables, plots, CLI."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import soundfile as sf
from conftest import make_model
from datasets import Audio, Dataset

from merit import evaluation
from merit.evaluation import (
    CascadeSystem,
    EvaluationResult,
    ModelSystem,
    Prediction,
    UnprocessedInput,
    evaluate_systems,
    format_markdown,
    table_columns,
    write_report,
)
from merit.metrics import segmental_snr, ser_metrics
from merit.preparation import build_test_sets, drop_unreadable
from modeling_merit import MeritFeatureExtractor

SNRS = (-5, 0, 5, 10)
CONDITIONS = [
    "clean",
    "seen_-5dB",
    "seen_0dB",
    "seen_5dB",
    "seen_10dB",
    "unseen_-5dB",
    "unseen_0dB",
    "unseen_5dB",
    "unseen_10dB",
]


@pytest.fixture(scope="module")
def eval_sets(tiny_corpus, tmp_path_factory):
    sets, name = build_test_sets(
        str(tiny_corpus),
        snrs=SNRS,
        max_utterances=3,
        cache_dir=tmp_path_factory.mktemp("eval-sets"),
    )
    assert name == str(tiny_corpus)
    return sets


@pytest.fixture(scope="module")
def systems():
    se = ModelSystem(make_model(seed=1, tasks=["se"]))
    ser = ModelSystem(make_model(seed=2, tasks=["ser"]))
    return {
        "sparse": ModelSystem(make_model(seed=0)),
        "cascade": CascadeSystem(se, ser),
        "unprocessed": UnprocessedInput(),
    }


@pytest.fixture(scope="module")
def result(systems, eval_sets):
    return evaluate_systems(systems, eval_sets, batch_size=3, progress=False)


def test_eval_sets_are_frozen_and_cover_every_condition(tiny_corpus, eval_sets, tmp_path):
    assert table_columns(eval_sets) == CONDITIONS
    again, _ = build_test_sets(str(tiny_corpus), snrs=SNRS, max_utterances=3, cache_dir=tmp_path)
    for condition in ("seen_0dB", "unseen_-5dB", "clean"):
        first = eval_sets[condition].with_format("numpy")
        second = again[condition].with_format("numpy")
        assert len(first) == 3
        for a, b in zip(first["input_values"], second["input_values"], strict=True):
            np.testing.assert_array_equal(a, b)
    noisy = eval_sets["seen_0dB"].with_format("numpy")[0]
    clean = eval_sets["clean"].with_format("numpy")[0]
    # Same utterance, with noise added in the noisy condition only.
    assert not np.allclose(noisy["input_values"], noisy["clean_values"])
    np.testing.assert_array_equal(clean["input_values"], clean["clean_values"])


def test_rows_cover_systems_times_conditions_with_finite_metrics(result):
    assert result.systems == ["sparse", "cascade", "unprocessed"]
    assert len(result.rows) == 3 * len(CONDITIONS)
    for row in result.rows:
        assert row["num_utterances"] == 3
        has_ser = row["system"] != "unprocessed"
        assert ("f1_macro" in row) == has_ser
        keys = ["ssnr", "si_sdr"] + ["f1_macro", "accuracy", "uar"] * has_ser
        for key in keys:
            assert math.isfinite(row[key]), (row["system"], row["condition"], key)
        assert (row["snr"] is None) == (row["condition"] == "clean")
    assert result.get("sparse", "unseen_5dB")["noise"] == "unseen"
    assert result.get("sparse", "unseen_5dB")["snr"] == 5.0


def test_unprocessed_ssnr_is_the_noisy_input_score(result, eval_sets):
    data = eval_sets["seen_0dB"].with_format("numpy")
    expected = np.mean(
        [
            segmental_snr(c, n)
            for c, n in zip(data["clean_values"], data["input_values"], strict=True)
        ]
    )
    assert result.get("unprocessed", "seen_0dB")["ssnr"] == pytest.approx(expected, abs=1e-9)


def test_scores_match_one_by_one_inference_and_ignore_batching(systems, eval_sets, result):
    model = systems["sparse"]
    data = eval_sets["unseen_0dB"].with_format("numpy")
    predictions = [int(model.predict([x]).logits.argmax()) for x in data["input_values"]]
    references = [model.label_names.index(label) for label in data["label"]]
    expected = ser_metrics(predictions, references, len(model.label_names))
    row = result.get("sparse", "unseen_0dB")
    assert row["f1_macro"] == pytest.approx(expected["f1_macro"])
    assert result.decisions["sparse"]["unseen_0dB"] == (predictions, references)
    single = evaluate_systems(
        {"sparse": model}, {"unseen_0dB": eval_sets["unseen_0dB"]}, batch_size=1, progress=False
    )
    assert single.rows[0]["ssnr"] == pytest.approx(row["ssnr"], abs=1e-4)
    assert single.rows[0]["f1_macro"] == row["f1_macro"]


class _Reverser:
    """A stand-in enhancer whose output is obviously different from its input."""

    label_names = None
    enhances = True

    def predict(self, waveforms):
        return Prediction(enhanced=[np.ascontiguousarray(w[::-1]) for w in waveforms])


def test_cascade_classifies_the_enhanced_audio(systems, eval_sets):
    recognizer = systems["cascade"].recognizer
    cascade = CascadeSystem(_Reverser(), recognizer)
    waves = list(eval_sets["seen_-5dB"].with_format("numpy")["input_values"][:2])
    out = cascade.predict(waves)
    reversed_waves = [w[::-1] for w in waves]
    np.testing.assert_array_equal(out.enhanced[1], reversed_waves[1])
    np.testing.assert_allclose(out.logits, recognizer.predict(reversed_waves).logits, atol=1e-6)
    assert np.abs(out.logits - recognizer.predict(waves).logits).max() > 1e-4
    assert cascade.label_names == recognizer.label_names
    with pytest.raises(ValueError, match="must enhance"):
        CascadeSystem(recognizer, systems["cascade"].enhancer)
    with pytest.raises(ValueError, match="must classify"):
        CascadeSystem(_Reverser(), _Reverser())


def test_markdown_and_csv_tables(result, tmp_path):
    markdown = format_markdown(result)
    sections = markdown.split("### ")[1:]
    assert [s.splitlines()[0] for s in sections] == ["F1-macro (%)", "Segmental SNR (dB)"]
    f1_lines = [line for line in sections[0].splitlines() if line.startswith("| ")]
    ssnr_lines = [line for line in sections[1].splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in f1_lines[0].strip("|").split("|")]
    assert header[:4] == ["System", "Clean", "Seen -5 dB", "Seen 0 dB"]
    assert header[-1] == "Unseen 10 dB" and len(header) == 1 + len(CONDITIONS)
    assert [line.split("|")[1].strip() for line in f1_lines[1:]] == ["sparse", "cascade"]
    assert [line.split("|")[1].strip() for line in ssnr_lines[1:]] == [
        "sparse",
        "cascade",
        "unprocessed",
    ]
    f1_clean = result.get("sparse", "clean")["f1_macro"] * 100
    assert f"| sparse | {f1_clean:.1f} |" in markdown

    paths = write_report(result, tmp_path)
    with open(paths["table_csv"], newline="") as handle:
        table = list(csv.reader(handle))
    assert table[0] == ["metric", "system", *CONDITIONS]
    assert [(r[0], r[1]) for r in table[1:]] == [
        ("f1_macro", "sparse"),
        ("f1_macro", "cascade"),
        ("ssnr", "sparse"),
        ("ssnr", "cascade"),
        ("ssnr", "unprocessed"),
    ]
    unprocessed = table[-1]
    assert float(unprocessed[3]) == pytest.approx(result.get("unprocessed", "seen_-5dB")["ssnr"])
    assert paths["table_md"].read_text().count("| sparse |") == 2
    rows = json.loads(paths["rows"].read_text())
    assert len(rows) == len(result.rows)


def test_plot_and_confusion_matrices_are_written(result, tmp_path):
    paths = write_report(result, tmp_path)
    expected = ["f1_vs_snr.png"] + [
        f"confusion_{system}_{noise}_0dB.png"
        for system in ("sparse", "cascade")
        for noise in ("seen", "unseen")
    ]
    for name in expected:
        data = (tmp_path / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5000, name
    assert paths["plot"] == tmp_path / "f1_vs_snr.png"
    assert not list(tmp_path.glob("confusion_unprocessed*"))


def test_unknown_label_names_fail_before_inference(systems):
    data = Dataset.from_dict(
        {
            "input_values": [np.zeros(800, np.float32)],
            "clean_values": [np.zeros(800, np.float32)],
            "label": ["bored"],
        }
    )
    with pytest.raises(ValueError, match="'bored'"):
        evaluate_systems({"sparse": systems["sparse"]}, {"clean": data}, progress=False)
    with pytest.raises(ValueError, match="no systems"):
        evaluate_systems({}, {"clean": data}, progress=False)


def test_drop_unreadable_names_or_skips_broken_files(tmp_path):
    good = tmp_path / "good.wav"
    sf.write(good, np.sin(np.arange(4000) / 10.0).astype(np.float32), 16000)
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not really a wav")
    short = tmp_path / "short.wav"
    sf.write(short, np.ones(100, np.float32) * 0.1, 16000)
    data = Dataset.from_dict(
        {"audio": [str(good), str(broken), str(short)], "label": ["a", "b", "c"]}
    ).cast_column("audio", Audio(decode=False))
    with pytest.raises(ValueError, match=r"2 unreadable .*broken\.wav.*--skip_bad_files"):
        drop_unreadable(data, skip=False, name="train")
    kept, skipped = drop_unreadable(data, skip=True)
    assert kept["label"] == ["a"]
    assert len(skipped) == 2 and "broken.wav" in skipped[0] and "too short" in skipped[1]


def test_command_line_with_saved_models_and_cascade(tiny_corpus, tmp_path, capsys):
    folders = {}
    for name, tasks in (("mtl", ["ser", "se"]), ("se", ["se"]), ("ser", ["ser"])):
        folders[name] = tmp_path / name
        make_model(seed=3, tasks=tasks).save_pretrained(folders[name])
        MeritFeatureExtractor().save_pretrained(folders[name])
    out = tmp_path / "results"
    result = evaluation.main(
        [
            "--models",
            str(folders["mtl"]),
            "--names",
            "Sparse MERIT",
            "--cascade",
            str(folders["se"]),
            str(folders["ser"]),
            "--dataset",
            str(tiny_corpus),
            "--snrs",
            "0",
            "--max_utterances",
            "2",
            "--out",
            str(out),
            "--no_progress",
        ]
    )
    assert result.systems == ["unprocessed", "Sparse MERIT", "cascade"]
    assert result.conditions == ["seen_0dB", "unseen_0dB", "clean"]
    for name in ("table.md", "table.csv", "rows.json", "f1_vs_snr.png"):
        assert (out / name).is_file()
    assert (out / "confusion_Sparse_MERIT_seen_0dB.png").is_file()
    assert "| Sparse MERIT |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        evaluation.main(["--models", str(folders["mtl"]), "--names", "a", "b", "--out", str(out)])
    with pytest.raises(SystemExit):
        evaluation.main(["--out", str(out)])


def test_dimensional_systems_are_scored_by_ccc_against_the_ratings(tiny_corpus, tmp_path):
    from merit.corpus import DIMENSIONS
    from merit.metrics import ccc

    sets, _ = build_test_sets(
        str(tiny_corpus),
        snrs=(0,),
        max_utterances=4,
        cache_dir=tmp_path,
        dimension_columns=list(DIMENSIONS),
    )
    model = ModelSystem(make_model(seed=3, dimension_names=list(DIMENSIONS)))
    se = ModelSystem(make_model(seed=1, tasks=["se"]))
    systems = {"dims": model, "cascade": CascadeSystem(se, model)}
    result = evaluate_systems(systems, sets, batch_size=3, progress=False)
    for condition, dataset in sets.items():
        data = dataset.with_format("numpy")
        rated = np.stack(list(data["dimensions"]))
        predicted = np.concatenate(
            [model.predict([np.asarray(w)]).dimensions for w in data["input_values"]]
        )
        row = result.get("dims", condition)
        for i, name in enumerate(DIMENSIONS):
            assert row[f"ccc_{name}"] == pytest.approx(ccc(predicted[:, i], rated[:, i]), abs=1e-4)
        assert row["ccc"] == pytest.approx(np.mean([row[f"ccc_{n}"] for n in DIMENSIONS]))
        assert "ccc" in result.get("cascade", condition)
    assert "### CCC (mean over dimensions)" in format_markdown(result)

    wrong = ModelSystem(make_model(seed=3, dimension_names=["arousal", "valence"]))
    with pytest.raises(ValueError, match="3 dimensional values per utterance"):
        evaluate_systems({"wrong": wrong}, sets, progress=False)


def test_per_utterance_se_scores_are_kept_in_row_order():
    rng = np.random.default_rng(0)
    # Unsorted lengths: evaluate_systems batches by length, the scores must come back by row.
    clean = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (3200, 1600, 2400)]
    sets = {
        name: Dataset.from_dict(
            {
                "input_values": [
                    c + scale * rng.standard_normal(len(c)).astype(np.float32) for c in clean
                ],
                "clean_values": clean,
                "label": ["a", "b", "a"],
            }
        )
        for name, scale in (("seen_0dB", 0.1), ("seen_5dB", 0.05))
    }
    result = evaluate_systems(
        {"unprocessed": UnprocessedInput()}, sets, batch_size=2, progress=False
    )
    for name, dataset in sets.items():
        expected = [
            evaluation.utterance_se_scores(np.asarray(c, np.float32), np.asarray(x, np.float32))
            for c, x in zip(dataset["clean_values"], dataset["input_values"], strict=True)
        ]
        kept = result.utterance_scores["unprocessed"][name]
        for key in ("ssnr", "si_sdr"):
            np.testing.assert_allclose(kept[key], [e[key] for e in expected], rtol=1e-6)
        assert result.get("unprocessed", name)["ssnr"] == pytest.approx(np.mean(kept["ssnr"]))


def test_clean_eval_set_scores_clean_input_and_refuses_ragged_columns():
    from merit.preparation import clean_eval_set

    rng = np.random.default_rng(0)
    audio = [rng.standard_normal(n).astype(np.float64) * 0.1 for n in (8000, 12000)]
    dataset = clean_eval_set(audio, ["sad", "angry"], speaker=["a", "b"])
    assert dataset.column_names == ["input_values", "clean_values", "label", "speaker"]
    data = dataset.with_format("numpy")
    np.testing.assert_allclose(data[1]["input_values"], audio[1].astype(np.float32))
    np.testing.assert_array_equal(data[1]["input_values"], data[1]["clean_values"])
    with pytest.raises(ValueError, match="one entry per utterance"):
        clean_eval_set(audio, ["sad"])
    with pytest.raises(ValueError, match="one entry per utterance"):
        clean_eval_set(audio, ["sad", "angry"], speaker=["a"])
    with pytest.raises(ValueError, match="at least one"):
        clean_eval_set([], [])


def test_habit_sweep_set_is_the_sweep_of_the_split_ready_to_evaluate(tiny_corpus, tmp_path):
    from merit.corpus import habit_sweep
    from merit.preparation import habit_sweep_set

    params = json.loads((tiny_corpus / "corpus.json").read_text())["params"]
    rows = habit_sweep(params, "validation", with_audio=False, progress=False)
    dataset = habit_sweep_set("validation", corpus_dir=tiny_corpus, progress=False)
    assert len(dataset) == len(rows) == 8 * 16  # 1 validation speaker x 16 utterances x 8
    assert dataset["label"] == [r["label"] for r in rows]
    assert dataset["setting"] == [r["setting"] for r in rows]
    model = ModelSystem(make_model(seed=3))
    result = evaluate_systems({"m": model}, {"sweep": dataset}, progress=False)
    assert 0.0 <= result.get("m", "sweep")["f1_macro"] <= 1.0
    with pytest.raises(FileNotFoundError, match="embedded corpus only"):
        habit_sweep_set("validation", corpus_dir=tmp_path, progress=False)


def test_grouped_f1_scores_each_group_from_the_pooled_decisions():
    # Group "b": class 0 has precision 1/2 and recall 1, class 1 precision 1 and recall 1/2,
    # class 2 is right: F1-macro (2/3 + 2/3 + 1) / 3 = 7/9. Group "a" is all right.
    predicted = [0, 0, 1, 0, 2, 2, 1]
    reference = [0, 1, 1, 0, 2, 2, 1]
    groups = ["b", "b", "b", "a", "a", "b", "a"]
    result = EvaluationResult(
        decisions={"m": {"clean": (predicted, reference)}},
        label_names={"m": ["x", "y", "z"]},
    )
    assert result.grouped_f1("m", "clean", groups) == pytest.approx({"a": 1.0, "b": 7 / 9})
    assert list(result.grouped_f1("m", "clean", groups)) == ["a", "b"]
    with pytest.raises(ValueError, match="6 group names for 7 decisions"):
        result.grouped_f1("m", "clean", groups[:-1])
