"""The recipes under recipes/ on mock layouts of the corpora they name: MSP-Podcast's label CSV
and Audios/ folder, IEMOCAP's session folders and evaluation files, and a noise corpus split
train / dev / test. Each mock keeps the real folder structure, file names and columns, with
generated audio, so a recipe that parses here reads the real corpus the same way."""

from __future__ import annotations

import csv
import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from merit import manifests
from merit.data import NoiseBank
from merit.preparation import build_validation_set, load_noise_banks, prepare_data, validation_noise
from merit.training import parse_args

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
RATE = 16000


def _tone(path: Path, seconds: float, seed: int) -> None:
    """A short voiced-like signal (a harmonic tone with a little noise), unique per file."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    f0 = 100 + 10 * (seed % 20)
    signal = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 4))
    signal = 0.2 * signal / np.abs(signal).max() + 0.01 * rng.standard_normal(t.size)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, signal.astype(np.float32), RATE, subtype="PCM_16")


# --------------------------------------------------------------------------------------------
# MSP-Podcast
# --------------------------------------------------------------------------------------------

MSP_COLUMNS = [
    "FileName",
    "EmoClass",
    "EmoAct",
    "EmoVal",
    "EmoDom",
    "SpkrID",
    "Gender",
    "Split_Set",
]
#: (split value, classes) of the mock: every split has the four classes and extra ones.
MSP_LAYOUT = {
    "Train": ["A", "S", "H", "N"] * 3 + ["X", "X", "O", "C", "D", "F", "U"],
    "Development": ["A", "S", "H", "N", "X"],
    "Test1": ["A", "S", "H", "N", "N", "O"],
    "Test2": ["A", "S", "H", "N"],
}


@pytest.fixture(scope="module")
def msp_podcast(tmp_path_factory) -> Path:
    """``MSP-Podcast/Labels/labels_consensus.csv`` and ``MSP-Podcast/Audios/*.wav``."""
    root = tmp_path_factory.mktemp("msp") / "MSP-Podcast"
    rows = []
    number = 0
    for split, classes in MSP_LAYOUT.items():
        for index, emotion in enumerate(classes):
            number += 1
            name = f"MSP-PODCAST_{number:04d}_{index:04d}.wav"
            _tone(root / "Audios" / name, 0.5, number)
            speaker = {"Train": 10 + index % 4, "Development": 20, "Test1": 30, "Test2": 40}[split]
            rows.append([name, emotion, 3.5, 4.0 + index % 3, 4.5, speaker, "Female", split])
    table = root / "Labels" / "labels_consensus.csv"
    table.parent.mkdir(parents=True)
    with open(table, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(MSP_COLUMNS)
        writer.writerows(rows)
    return root


def _recipe_args(recipe: str, *overrides: str):
    return parse_args([str(RECIPES / recipe), "--backbone", "tiny", *overrides])


def test_msp_podcast_recipe_reads_the_official_splits(msp_podcast, caplog):
    model_args, data_args, args = _recipe_args(
        "msp-podcast.yaml",
        *("--dataset", str(msp_podcast / "Labels" / "labels_consensus.csv")),
        *("--audio_root", str(msp_podcast / "Audios")),
    )
    with caplog.at_level(logging.WARNING, logger="merit.preparation"):
        prepared, _, _ = prepare_data(data_args)
    assert prepared.label_names == ["A", "S", "H", "N"]
    # official splits, not a re-split: Train -> train, Development -> validation, Test1 -> test,
    # Test2 dropped; only the four classes stay
    assert Counter(prepared.train["label"]) == {"A": 3, "S": 3, "H": 3, "N": 3}
    assert Counter(prepared.validation["label"]) == {"A": 1, "S": 1, "H": 1, "N": 1}
    assert Counter(prepared.test["label"]) == {"A": 1, "S": 1, "H": 1, "N": 2}
    with open(msp_podcast / "Labels" / "labels_consensus.csv", newline="") as handle:
        expected = {
            row["FileName"]
            for row in csv.DictReader(handle)
            if row["Split_Set"] == "Test1" and row["EmoClass"] in "ASHN"
        }
    test_files = {Path(a["path"]).name for a in prepared.test.with_format("python")["audio"]}
    assert test_files == expected
    assert set(prepared.train["speaker"]) == {"10", "11", "12", "13"}
    dropped = " ".join(r.getMessage() for r in caplog.records if "dropped" in r.getMessage())
    assert "'X' (2)" in dropped and "'U' (1)" in dropped and "'O' (1)" in dropped
    # classes that --labels drops are counted, not also flagged as possible typos
    assert not any("a typo?" in r.getMessage() for r in caplog.records)
    assert model_args.class_weights == "auto"
    assert (args.output_dir, model_args.variant) == ("outputs/msp-podcast-sparse", "sparse")


def test_msp_podcast_dimensional_recipe_keeps_every_rated_file(msp_podcast):
    _, data_args, _ = _recipe_args(
        "msp-podcast-dimensional.yaml",
        *("--dataset", str(msp_podcast / "Labels" / "labels_consensus.csv")),
        *("--audio_root", str(msp_podcast / "Audios")),
    )
    prepared, _, _ = prepare_data(data_args)
    assert prepared.label_names == []
    assert prepared.dimension_names == ["EmoAct", "EmoVal", "EmoDom"]
    assert len(prepared.train) == len(MSP_LAYOUT["Train"])  # X, O, ... rows are rated too
    assert len(prepared.test) == len(MSP_LAYOUT["Test1"])
    first = prepared.train.with_format("python")[0]["dimensions"]
    assert first == pytest.approx([3.5, 4.0, 4.5])


def test_audio_root_is_required_to_exist_and_paths_resolve_from_it(msp_podcast, tmp_path):
    table = str(msp_podcast / "Labels" / "labels_consensus.csv")
    _, data_args, _ = _recipe_args("msp-podcast.yaml", "--dataset", table)
    data_args.audio_root = str(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="audio root folder not found"):
        prepare_data(data_args)
    data_args.audio_root = None  # relative to Labels/: the files are not there
    with pytest.raises(ValueError, match="audio file\\(s\\) not found"):
        prepare_data(data_args)


# --------------------------------------------------------------------------------------------
# IEMOCAP
# --------------------------------------------------------------------------------------------

#: Per session and speaker gender: the consensus codes of the mock's turns.
IEMOCAP_CODES = ["neu", "hap", "exc", "ang", "sad", "fru", "xxx"]


@pytest.fixture(scope="module")
def iemocap(tmp_path_factory) -> Path:
    """``IEMOCAP_full_release/Session{1..5}/{sentences/wav,dialog/EmoEvaluation}``."""
    root = tmp_path_factory.mktemp("iemocap") / "IEMOCAP_full_release"
    seed = 0
    for number in range(1, 6):
        session = root / f"Session{number}"
        dialogue = f"Ses0{number}F_impro01"
        lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
        for gender in "FM":
            for index, code in enumerate(IEMOCAP_CODES):
                seed += 1
                name = f"{dialogue}_{gender}{index:03d}"
                _tone(session / "sentences" / "wav" / dialogue / f"{name}.wav", 0.4, seed)
                start = 2.0 * index
                lines += [
                    f"[{start:.4f} - {start + 1.5:.4f}]\t{name}\t{code}\t[2.5000, 3.0000, 3.5000]",
                    "C-E2:\tNeutral;\t()",
                    "A-E1:\tval 3; act 2; dom  2;\t()",
                    "",
                ]
        # a labelled turn whose wav is missing: left out with a warning
        lines.append(f"[99.0000 - 100.0000]\t{dialogue}_F099\tneu\t[2.0000, 2.0000, 2.0000]")
        evaluation = session / "dialog" / "EmoEvaluation" / f"{dialogue}.txt"
        evaluation.parent.mkdir(parents=True)
        evaluation.write_text("\n".join(lines) + "\n")
    return root


def test_iemocap_manifest_merges_excited_and_names_speakers_and_sessions(iemocap, tmp_path):
    out = tmp_path / "iemocap.csv"
    assert manifests.main(["iemocap", str(iemocap), "--out", str(out)]) == 0
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 5 * 2 * len(IEMOCAP_CODES)
    first = rows[0]
    assert first == {
        "file_name": "Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav",
        "emotion": "neu",
        "label": "neu",
        "speaker": "Ses01F",
        "session": "Session1",
        "valence": "2.5",
        "arousal": "3",
        "dominance": "3.5",
    }
    excited = [r for r in rows if r["emotion"] == "exc"]
    assert excited and all(r["label"] == "hap" for r in excited)
    assert {r["speaker"] for r in rows} == {f"Ses0{n}{g}" for n in range(1, 6) for g in "FM"}
    # an existing manifest is never replaced without --overwrite
    with pytest.raises(SystemExit):
        manifests.main(["iemocap", str(iemocap), "--out", str(out)])
    with pytest.raises(ValueError, match="no Session1"):
        manifests.iemocap_manifest(tmp_path, tmp_path / "other.csv")


@pytest.mark.parametrize("held_out", [5, 2])
def test_iemocap_recipe_is_leave_one_session_out(iemocap, tmp_path, held_out, caplog):
    table = tmp_path / "iemocap.csv"
    manifests.iemocap_manifest(iemocap, table)
    overrides = ["--dataset", str(table), "--audio_root", str(iemocap)]
    if held_out != 5:  # the other folds: one flag
        overrides += ["--split_map", f"Session{held_out}=test,*=train"]
    _, data_args, _ = _recipe_args("iemocap.yaml", *overrides)
    with caplog.at_level(logging.WARNING, logger="merit.preparation"):
        prepared, _, _ = prepare_data(data_args)
    assert prepared.label_names == ["neu", "hap", "ang", "sad"]
    held = f"Ses0{held_out}"
    assert {s[:5] for s in prepared.test["speaker"]} == {held}
    train_speakers, validation_speakers = (
        set(prepared.train["speaker"]),
        set(prepared.validation["speaker"]),
    )
    assert not {s[:5] for s in train_speakers | validation_speakers} & {held}
    assert len(validation_speakers) == 1 and not train_speakers & validation_speakers
    assert len(train_speakers) == 7
    # happy = hap + exc of each speaker; fru and xxx dropped with counts
    assert Counter(prepared.test["label"]) == {"neu": 2, "hap": 4, "ang": 2, "sad": 2}
    dropped = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    by_split = {m.split("(")[1].split(" split")[0]: m.split("dropped ")[1] for m in dropped}
    assert by_split == {  # one turn of each per speaker: 7 train, 1 validation, 2 test
        "train": "'fru' (7), 'xxx' (7)",
        "validation": "'fru' (1), 'xxx' (1)",
        "test": "'fru' (2), 'xxx' (2)",
    }


def test_iemocap_recipe_trains_and_writes_its_test_table(iemocap, tmp_path):
    """The recipe end to end on the mock (tiny backbone, 2 steps): the test table of the held
    out session lands in results.json."""
    from merit.training import main

    table = tmp_path / "iemocap.csv"
    manifests.iemocap_manifest(iemocap, table)
    out = tmp_path / "fold5"
    results = main(
        [
            str(RECIPES / "iemocap.yaml"),
            *("--dataset", str(table), "--audio_root", str(iemocap)),
            *("--backbone", "tiny", "--output_dir", str(out), "--max_steps", "2"),
            *("--backbone_frozen_steps", "1", "--eval_strategy", "no"),
            *("--load_best_model_at_end", "False", "--save_strategy", "no"),
            *("--eval_snrs", "0", "--report_to", "none", "--disable_tqdm", "True"),
        ]
    )
    assert results["global_step"] == 2
    saved = json.loads((out / "results.json").read_text())
    assert {row["condition"] for row in saved["test_rows"]} >= {"clean", "seen_0dB"}
    assert json.loads((out / "config.json").read_text())["id2label"] == {
        "0": "neu",
        "1": "hap",
        "2": "ang",
        "3": "sad",
    }


# --------------------------------------------------------------------------------------------
# Noise corpora
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def noise_corpus(tmp_path_factory) -> Path:
    """A DEMAND/MUSAN-like folder split three ways: train/, dev/ and test/ noise types."""
    root = tmp_path_factory.mktemp("noise") / "noise"
    seed = 100
    for split, types in {
        "train": ["babble", "hum"],
        "dev": ["cafe"],
        "test": ["street", "kitchen"],
    }.items():
        for noise_type in types:
            for index in range(2):
                seed += 1
                rng = np.random.default_rng(seed)
                path = root / split / noise_type / f"{noise_type}_{index}.wav"
                path.parent.mkdir(parents=True, exist_ok=True)
                sf.write(path, (0.1 * rng.standard_normal(RATE)).astype(np.float32), RATE)
    return root


def test_noise_corpus_splits_three_ways(noise_corpus):
    seen, unseen = load_noise_banks(noise_corpus)
    assert sorted(seen.noise_types) == ["babble", "hum"]
    assert sorted(unseen.noise_types) == ["kitchen", "street"]
    dev = NoiseBank.from_dir(noise_corpus, split="dev")
    assert dev.noise_types == ["cafe"]


def test_noise_protocol_recipe_mixes_dev_at_5_and_test_at_minus_5(
    msp_podcast, noise_corpus, tmp_path
):
    """The paper's protocol flags on the MSP recipe: training at a fixed 5 dB, validation at
    5 dB with dev noise only, test conditions at -5 dB (unseen = the test noise)."""
    import yaml

    protocol = yaml.safe_load((RECIPES / "noise-paper-protocol.yaml").read_text())
    flags = []
    for key, value in protocol.items():
        if key == "noise_dir":
            value = str(noise_corpus)
        values = value if isinstance(value, list) else [value]
        flags += [f"--{key}", *map(str, values)]
    _, data_args, _ = _recipe_args(
        "msp-podcast.yaml",
        *("--dataset", str(msp_podcast / "Labels" / "labels_consensus.csv")),
        *("--audio_root", str(msp_podcast / "Audios")),
        *flags,
    )
    assert (data_args.snr_range, data_args.clean_prob) == ([5.0, 5.0], 0.0)
    assert (data_args.validation_snrs, data_args.eval_snrs) == ([5.0], [-5.0])
    prepared, seen, unseen = prepare_data(data_args)
    dev = validation_noise(prepared, seen)
    assert dev.noise_types == ["cafe"]
    validation = build_validation_set(
        prepared.validation, dev, data_args.validation_snrs, seed=1, label2id=None
    )
    assert set(np.asarray(validation["snr"]).tolist()) == {5.0}
    assert set(np.asarray(validation["noise_type"]).tolist()) == {"cafe"}


def test_noise_folder_without_dev_validates_on_training_noise(tiny_corpus):
    """The embedded corpus (seen/ and unseen/ only): validation noise is the seen bank."""
    _, data_args, _ = parse_args(
        ["--backbone", "tiny", "--dataset", str(tiny_corpus), "--output_dir", "unused"]
    )
    prepared, seen, _ = prepare_data(data_args)
    assert validation_noise(prepared, seen) is seen


def test_noise_table_with_an_unknown_split_is_an_error(tmp_path):
    path = tmp_path / "n.wav"
    sf.write(path, np.zeros(RATE, dtype=np.float32), RATE)
    (tmp_path / "noise.csv").write_text("file_name,noise_type,split\nn.wav,hum,tset\n")
    with pytest.raises(ValueError, match="unknown noise split 'tset'"):
        NoiseBank.from_dir(tmp_path)
