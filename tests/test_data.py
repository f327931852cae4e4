"""Tests for merit.audio and merit.data on tiny corpora written to tmp_path."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import warnings
from pathlib import Path

import datasets
import huggingface_hub
import numpy as np
import pytest
import soundfile as sf
import torch
from datasets import Audio, ClassLabel, Dataset, DatasetDict

import merit.data as data_module
from merit.audio import (
    AudioError,
    AudioWarning,
    audio_info,
    load_audio,
    prepare_waveform,
    write_audio,
)
from merit.data import (
    DataCollatorForMerit,
    NoiseBank,
    NoisyMixer,
    build_eval_sets,
    change_speed,
    check_labels,
    load_speech_dataset,
    mix_at_snr,
)

SR = 16000
LABELS = ("angry", "happy")
SPEAKERS = ("spk0", "spk1", "spk2", "spk3", "spk4")
LABEL2ID = {"angry": 0, "happy": 1}


def tone(freq: float, seconds: float = 0.25, sr: int = SR, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def snr_db(noisy: np.ndarray, clean: np.ndarray) -> float:
    noise = noisy.astype(np.float64) - clean.astype(np.float64)
    return 10 * math.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean(noise**2))


def write_noise(path: Path, seed: int, seconds: float = 0.5, sr: int = SR) -> None:
    rng = np.random.default_rng(seed)
    write_audio(path, 0.2 * rng.standard_normal(int(seconds * sr)), sr)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """An audiofolder: 5 speakers x 2 labels x 2 sentences, metadata.csv without splits."""
    root = tmp_path / "corpus"
    rows = []
    for s, speaker in enumerate(SPEAKERS):
        for k, label in enumerate(LABELS):
            for sentence in range(2):
                name = f"wav/{speaker}_{label}_{sentence}.wav"
                write_audio(root / name, tone(200 + 50 * s + 20 * k + 5 * sentence), SR)
                rows.append([name, label, speaker, str(sentence)])
    with (root / "metadata.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", "label", "speaker", "sentence_id"])
        writer.writerows(rows)
    return root


def pairs(dataset: DatasetDict) -> set[tuple[str, str]]:
    """(file name, label) over all splits: what every source format must agree on."""
    return {
        (Path(row["audio"]["path"]).name, row["label"])
        for split in dataset.values()
        for row in split
    }


def expected_pairs() -> set[tuple[str, str]]:
    return {
        (f"{speaker}_{label}_{sentence}.wav", label)
        for speaker in SPEAKERS
        for label in LABELS
        for sentence in range(2)
    }


# --------------------------------------------------------------------------------------------
# merit.audio
# --------------------------------------------------------------------------------------------


def test_stereo_file_is_mixed_down_to_the_channel_mean(tmp_path):
    left, right = tone(300, amp=0.5), tone(500, amp=0.2)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), SR, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(path), (left + right) / 2, atol=1e-6)


def test_44k1_file_is_resampled_to_16k_with_expected_length_and_content(tmp_path):
    path = tmp_path / "cd.wav"
    sf.write(path, tone(440, seconds=0.3, sr=44100), 44100, subtype="FLOAT")
    audio = load_audio(path)
    assert audio.dtype == np.float32
    assert len(audio) == math.ceil(13230 * 16000 / 44100) == 4800
    # A 440 Hz tone survives resampling; compare away from the filter's edge effects.
    np.testing.assert_allclose(audio[200:-200], tone(440, seconds=0.3)[200:-200], atol=2e-3)


def test_bytes_dict_and_segment_inputs_read_the_same_samples(tmp_path):
    path = tmp_path / "a.wav"
    write_audio(path, tone(300), SR)
    full = load_audio(path)
    raw = path.read_bytes()
    np.testing.assert_array_equal(load_audio(raw), full)
    np.testing.assert_array_equal(load_audio({"path": None, "bytes": raw}), full)
    np.testing.assert_array_equal(load_audio({"path": str(path), "bytes": None}), full)
    np.testing.assert_array_equal(load_audio(path, start=100, stop=600), full[100:600])
    decoded = {"array": full.astype(np.float64), "sampling_rate": 8000, "path": "x.wav"}
    assert len(load_audio(decoded)) == 2 * len(full)


def test_corrupt_file_raises_audio_error_naming_the_file(tmp_path):
    path = tmp_path / "broken_take.wav"
    path.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio")
    with pytest.raises(AudioError, match="broken_take.wav"):
        load_audio(path)
    with pytest.raises(AudioError, match="missing.wav: audio file not found"):
        load_audio(tmp_path / "missing.wav")
    assert issubclass(AudioError, ValueError)


def test_empty_and_non_finite_audio_are_rejected(tmp_path):
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), SR)
    with pytest.raises(AudioError, match="empty.wav: audio is empty"):
        load_audio(empty)
    bad = tone(300)
    bad[10] = np.nan
    nan_path = tmp_path / "nan.wav"
    sf.write(nan_path, bad, SR, subtype="FLOAT")
    with pytest.raises(AudioError, match="nan.wav: .*NaN"):
        load_audio(nan_path)
    with pytest.raises(AudioError, match="NaN or infinite"):
        prepare_waveform(np.array([0.0, np.inf]), SR)


def test_a_header_claiming_more_than_the_file_holds_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "liar.flac"
    sf.write(path, tone(300), SR)  # a real, small FLAC file
    real_info = sf.info

    def lying_info(target):
        info = real_info(target)
        info.frames = 16_000 * SR  # "16,000 s" in a few kilobytes
        return info

    monkeypatch.setattr(sf, "info", lying_info)
    with pytest.raises(AudioError, match=r"liar.flac: the header claims 16000.0 s .* corrupt"):
        load_audio(path)
    with pytest.raises(AudioError, match="corrupt"):
        audio_info(path)


def test_truncated_wav_is_read_with_a_warning(tmp_path):
    full = tmp_path / "full.wav"
    sf.write(full, tone(300, seconds=0.5), SR, subtype="PCM_16")
    data = full.read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(data[: 44 + SR // 2])  # a quarter of the samples, header unchanged
    with pytest.warns(AudioWarning, match=r"cut.wav: truncated WAV: .* 0.50 s, .* holds 0.25 s"):
        audio = load_audio(cut)
    assert audio.shape == (SR // 4,)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_audio(full)  # an intact file warns nothing


def test_prepare_waveform_detects_channel_axis_and_scales_integers():
    left, right = tone(300), tone(700)
    channels_last = np.stack([left, right], axis=1)
    expected = (left + right) / 2
    np.testing.assert_allclose(prepare_waveform(channels_last, SR), expected, atol=1e-7)
    np.testing.assert_allclose(prepare_waveform(channels_last.T, SR), expected, atol=1e-7)
    np.testing.assert_allclose(prepare_waveform(torch.from_numpy(left), SR), left)
    pcm = np.array([16384, -32768, 0], dtype=np.int16)
    np.testing.assert_allclose(prepare_waveform(pcm, SR), [0.5, -1.0, 0.0])
    assert len(prepare_waveform(left, 8000)) == 2 * len(left)
    with pytest.raises(AudioError, match="1-D or 2-D"):
        prepare_waveform(np.zeros((2, 2, 10)), SR)
    with pytest.raises(AudioError, match="empty"):
        prepare_waveform(np.zeros((2, 0)), SR)


def test_write_audio_clips_instead_of_wrapping(tmp_path):
    path = tmp_path / "out" / "loud.wav"
    write_audio(path, np.array([1.5, -2.0, 0.5], dtype=np.float32), SR)
    data, sr = sf.read(path)
    assert sr == SR and sf.info(path).subtype == "PCM_16"
    np.testing.assert_allclose(data, [32767 / 32768, -1.0, 0.5])
    with pytest.raises(AudioError, match="bad.wav: audio contains NaN"):
        write_audio(tmp_path / "bad.wav", np.array([0.1, np.nan]), SR)


# --------------------------------------------------------------------------------------------
# load_speech_dataset
# --------------------------------------------------------------------------------------------


def test_audiofolder_with_metadata_csv_is_normalised_and_split(corpus):
    ds = load_speech_dataset(str(corpus))
    assert list(ds) == ["train", "validation", "test"]
    for split in ds.values():
        assert split.column_names == ["audio", "label", "speaker"]
        assert split.features["audio"] == Audio(decode=False)
    assert pairs(ds) == expected_pairs()
    row = ds["train"][0]
    assert row["audio"]["bytes"] is None and Path(row["audio"]["path"]).is_absolute()
    assert len(load_audio(row["audio"])) == 4000


def test_metadata_jsonl_gives_the_same_dataset_as_metadata_csv(corpus, tmp_path):
    root = tmp_path / "jsonl"
    root.mkdir()
    with (corpus / "metadata.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    with (root / "metadata.jsonl").open("w") as handle:
        for row in rows:
            row["file_name"] = str(corpus / row["file_name"])  # absolute paths work too
            handle.write(json.dumps(row) + "\n")
    from_jsonl, from_csv = load_speech_dataset(str(root)), load_speech_dataset(str(corpus))
    for name in from_csv:
        assert from_jsonl[name].to_dict() == from_csv[name].to_dict()


def test_class_subfolders_give_labels_from_folder_names(tmp_path):
    root = tmp_path / "folders"
    for speaker in SPEAKERS:
        for label in LABELS:
            for sentence in range(2):
                write_audio(root / label / f"{speaker}_{label}_{sentence}.wav", tone(300), SR)
    ds = load_speech_dataset(str(root))
    assert pairs(ds) == expected_pairs()
    assert ds["train"].column_names == ["audio", "label"]
    assert sum(len(split) for split in ds.values()) == 20


def test_class_subfolders_under_split_folders_keep_those_splits(tmp_path):
    root = tmp_path / "split_folders"
    for split in ("train", "dev", "test"):
        for label in LABELS:
            write_audio(root / split / label / f"{split}_{label}.wav", tone(300), SR)
    ds = load_speech_dataset(str(root))
    assert list(ds) == ["train", "validation", "test"]
    assert sorted(ds["validation"]["label"]) == sorted(LABELS)
    assert {Path(r["audio"]["path"]).name for r in ds["test"]} == {
        "test_angry.wav",
        "test_happy.wav",
    }


def test_save_to_disk_folders_round_trip(corpus, tmp_path):
    original = load_speech_dataset(str(corpus))
    original.save_to_disk(str(tmp_path / "saved"))
    reloaded = load_speech_dataset(str(tmp_path / "saved"))
    assert list(reloaded) == list(original)
    for name in original:
        assert reloaded[name]["speaker"] == original[name]["speaker"]
        assert reloaded[name]["label"] == original[name]["label"]
        # save_to_disk embeds the audio bytes, keeping only the file name as the path.
        for before, after in zip(original[name]["audio"], reloaded[name]["audio"], strict=True):
            assert after["bytes"] and after["path"] == Path(before["path"]).name
            np.testing.assert_array_equal(load_audio(after), load_audio(before))


def test_saved_dataset_with_class_labels_string_paths_and_split_column(corpus, tmp_path):
    """A single saved Dataset: ClassLabel ids become names, a split column makes the splits."""
    files = sorted(str(p) for p in (corpus / "wav").glob("*.wav"))
    emotion = ClassLabel(names=list(LABELS))
    table = Dataset.from_dict(
        {
            "wav_path": files,
            "emotion": [emotion.str2int(Path(f).stem.split("_")[1]) for f in files],
            "spk": [Path(f).stem.split("_")[0] for f in files],
            "part": ["test" if "spk4" in f else "train" for f in files],
            "extra": [0] * len(files),
        }
    ).cast_column("emotion", emotion)
    table.save_to_disk(str(tmp_path / "single"))
    ds = load_speech_dataset(
        str(tmp_path / "single"),
        label_column="emotion",
        audio_column="wav_path",
        speaker_column="spk",
        split_column="part",
    )
    assert list(ds) == ["train", "validation", "test"]
    assert set(ds["test"]["speaker"]) == {"spk4"}
    assert ds["train"].column_names == ["audio", "label", "speaker"]
    assert pairs(ds) == expected_pairs()


def test_csv_manifest_with_relative_paths_and_split_aliases(corpus, tmp_path):
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    with (corpus / "metadata.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    with (manifests / "all.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "speaker", "split"])
        for row in rows:
            split = {"spk3": "dev", "spk4": "test"}.get(row["speaker"], "train")
            writer.writerow(["../corpus/" + row["file_name"], row["label"], row["speaker"], split])
    ds = load_speech_dataset(str(manifests / "all.csv"))
    assert list(ds) == ["train", "validation", "test"]
    assert set(ds["validation"]["speaker"]) == {"spk3"}
    assert set(ds["test"]["speaker"]) == {"spk4"}
    assert len(ds["train"]) == 12
    assert pairs(ds) == expected_pairs()


def _rated(corpus: Path) -> dict[str, list[float]]:
    """Made-up ratings per file name: (arousal, valence) from the speaker and sentence."""
    with (corpus / "metadata.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    return {
        Path(r["file_name"]).name: [1.0 + SPEAKERS.index(r["speaker"]), 2.5 + int(r["sentence_id"])]
        for r in rows
    }


def test_dimension_columns_from_a_manifest_and_a_saved_dataset(corpus, noise_dir, tmp_path):
    rated = _rated(corpus)
    with (corpus / "metadata.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    manifest = tmp_path / "rated.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "speaker", "EmoAct", "EmoVal"])
        for row in rows:
            act, val = rated[Path(row["file_name"]).name]
            writer.writerow(
                [str(corpus / row["file_name"]), row["label"], row["speaker"], act, val]
            )
    from_csv = load_speech_dataset(str(manifest), dimension_columns=["EmoAct", "EmoVal"])
    # Columns keep the requested order, whatever the file's order.
    swapped = load_speech_dataset(str(manifest), dimension_columns=["EmoVal", "EmoAct"])
    table = Dataset.from_dict(
        {
            "file": [str(corpus / r["file_name"]) for r in rows],
            "label": [r["label"] for r in rows],
            "speaker": [r["speaker"] for r in rows],
            "EmoAct": [rated[Path(r["file_name"]).name][0] for r in rows],
            "EmoVal": [rated[Path(r["file_name"]).name][1] for r in rows],
        }
    )
    table.save_to_disk(str(tmp_path / "saved"))
    from_disk = load_speech_dataset(
        str(tmp_path / "saved"), audio_column="file", dimension_columns=["EmoAct", "EmoVal"]
    )
    for ds in (from_csv, from_disk):
        assert ds["train"].features["dimensions"] == data_module.DIMENSIONS_FEATURE
        for split in ds.values():
            for example in split:
                name = Path(example["audio"]["path"]).name
                assert example["dimensions"] == pytest.approx(rated[name])
    for split in swapped.values():
        for example in split:
            assert example["dimensions"] == pytest.approx(
                rated[Path(example["audio"]["path"]).name][::-1]
            )

    # The frozen eval sets carry the ratings along, row for row.
    noise = NoiseBank.from_dir(noise_dir, "seen")
    sets = build_eval_sets(from_csv["test"], noise, None, snrs=(0,), include_clean=True)
    for condition in sets.values():
        assert condition["dimensions"] == from_csv["test"]["dimensions"]


def test_corpus_without_labels_loads_and_gets_eval_sets(corpus, noise_dir, tmp_path):
    rated = _rated(corpus)
    manifest = tmp_path / "ratings.jsonl"
    with manifest.open("w") as handle:
        for name, (act, _valence) in rated.items():
            handle.write(json.dumps({"path": str(corpus / "wav" / name), "act": act}) + "\n")
    ds = load_speech_dataset(str(manifest), label_column=None, dimension_columns=["act"])
    assert ds["train"].column_names == ["audio", "dimensions"]
    assert sum(len(split) for split in ds.values()) == len(rated)
    sets = build_eval_sets(ds["test"], NoiseBank.from_dir(noise_dir, "seen"), None, snrs=(0,))
    for condition in sets.values():
        assert "label" not in condition.column_names
        assert condition["dimensions"] == ds["test"]["dimensions"]
    with pytest.raises(ValueError, match="lack.*label"):
        build_eval_sets(ds["test"], None, None, label2id=LABEL2ID)
    # The default still insists on the label column.
    with pytest.raises(ValueError, match="no label column label"):
        load_speech_dataset(str(manifest), dimension_columns=["act"])


def test_bad_dimension_values_and_layouts_are_named(corpus, tmp_path):
    with (corpus / "metadata.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    manifest = tmp_path / "rated.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "arousal"])
        for index, row in enumerate(rows):
            value = "high" if index == 3 else "4.5"
            writer.writerow([str(corpus / row["file_name"]), row["label"], value])
    with pytest.raises(
        ValueError, match=r"row 5: dimensional values must be numbers \(arousal='high'\)"
    ):
        load_speech_dataset(str(manifest), dimension_columns=["arousal"])
    with pytest.raises(ValueError, match="no dimension column valence"):
        load_speech_dataset(str(manifest), dimension_columns=["arousal", "valence"])
    with pytest.raises(ValueError, match="distinct"):
        load_speech_dataset(str(manifest), dimension_columns=["arousal", "arousal"])
    folders = tmp_path / "folders"
    write_audio(folders / "angry" / "a.wav", tone(200), SR)
    with pytest.raises(ValueError, match="class folders carry no dimensional ratings"):
        load_speech_dataset(str(folders), dimension_columns=["arousal"])


def test_jsonl_manifest_with_existing_train_test_gets_a_validation_split(corpus, tmp_path):
    with (corpus / "metadata.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    manifest = tmp_path / "m.jsonl"
    with manifest.open("w") as handle:
        for row in rows:
            split = "test" if row["speaker"] == "spk0" else "train"
            record = {"path": str(corpus / row["file_name"]), "label": row["label"]}
            handle.write(json.dumps(record | {"speaker": row["speaker"], "split": split}) + "\n")
    ds = load_speech_dataset(str(manifest), validation_fraction=0.25)
    assert set(ds["test"]["speaker"]) == {"spk0"}
    assert len(ds["validation"]) == 4  # one whole speaker = 25 % of the 16 train utterances
    assert not set(ds["validation"]["speaker"]) & set(ds["train"]["speaker"])
    assert pairs(ds) == expected_pairs()


def test_parquet_folder_goes_through_datasets_load_dataset(tmp_path, monkeypatch):
    """The Hub code path, fed a local snapshot-like folder (audio as embedded bytes)."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    folder = tmp_path / "snapshot"
    for split, freq in (("train", 300), ("test", 500)):
        buffer = io.BytesIO()
        sf.write(buffer, tone(freq), SR, format="WAV", subtype="PCM_16")
        table = Dataset.from_dict(
            {"audio": [buffer.getvalue()] * 10, "label": list(LABELS) * 5}
        ).cast_column("audio", Audio(decode=False))
        table.to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    ds = load_speech_dataset(str(folder))
    assert list(ds) == ["train", "validation", "test"]
    assert (len(ds["train"]), len(ds["validation"]), len(ds["test"])) == (9, 1, 10)
    np.testing.assert_allclose(load_audio(ds["test"][0]["audio"]), tone(500), atol=1e-4)


def test_unknown_sources_raise_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="cannot load dataset 'no-such-user/no-such-set'"):
        load_speech_dataset("no-such-user/no-such-set")
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        load_speech_dataset(str(tmp_path / "missing.csv"))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="unsupported manifest type"):
        load_speech_dataset(str(tmp_path / "notes.txt"))


def test_bad_metadata_is_reported_with_the_file(corpus):
    metadata = corpus / "metadata.csv"
    text = metadata.read_text()
    metadata.write_text(text + "wav/ghost.wav,angry,spk9,0\n")
    with pytest.raises(ValueError, match="1 audio file\\(s\\) not found.*ghost.wav"):
        load_speech_dataset(str(corpus))
    metadata.write_text(text + "wav/spk0_angry_0.wav,,spk0,0\n")
    with pytest.raises(ValueError, match="row 22 has an empty"):
        load_speech_dataset(str(corpus))
    metadata.write_text(text.replace("label,", "emotion,", 1))
    with pytest.raises(ValueError, match="no label column label"):
        load_speech_dataset(str(corpus))


def test_seeded_split_is_speaker_disjoint_and_deterministic(corpus):
    first = load_speech_dataset(str(corpus), validation_fraction=0.2, test_fraction=0.2)
    again = load_speech_dataset(str(corpus), validation_fraction=0.2, test_fraction=0.2)
    speakers = {name: set(split["speaker"]) for name, split in first.items()}
    assert not speakers["train"] & speakers["validation"]
    assert not speakers["train"] & speakers["test"]
    assert not speakers["validation"] & speakers["test"]
    assert (len(first["validation"]), len(first["test"]), len(first["train"])) == (4, 4, 12)
    for name in first:
        assert first[name].to_dict() == again[name].to_dict()
    test_speakers = {
        frozenset(load_speech_dataset(str(corpus), seed=seed)["test"]["speaker"])
        for seed in range(6)
    }
    assert len(test_speakers) > 1  # the seed matters


def test_too_few_speakers_falls_back_to_an_utterance_split_with_warning(corpus):
    metadata = corpus / "metadata.csv"
    metadata.write_text(re.sub(r",spk\d,", ",solo,", metadata.read_text()))
    with pytest.warns(UserWarning, match="only 1 speaker"):
        ds = load_speech_dataset(str(corpus))
    assert (len(ds["train"]), len(ds["validation"]), len(ds["test"])) == (16, 2, 2)
    assert set(ds["test"]["speaker"]) == {"solo"}


def test_check_labels_names_every_unknown_label():
    label2id = {"neutral": 0, "angry": 1, "happy": 2}
    check_labels(["angry", "happy", "angry"], label2id)
    with pytest.raises(ValueError) as info:
        check_labels(["angry", "sad", "bored", "sad"], label2id)
    message = str(info.value)
    assert "'bored', 'sad'" in message
    assert "'neutral', 'angry', 'happy'" in message


# --------------------------------------------------------------------------------------------
# Mixing and noise
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", [-5.0, 0.0, 5.0, 10.0, 20.0])
@pytest.mark.parametrize("noise_len", [1500, 9000])  # looped and cropped
def test_mix_at_snr_hits_the_requested_snr(target, noise_len):
    clean = tone(220, seconds=0.5, amp=0.1)
    noise = 0.05 * np.random.default_rng(0).standard_normal(noise_len)
    noisy, clean_out = mix_at_snr(torch.from_numpy(clean), noise, target)
    assert noisy.dtype == clean_out.dtype == np.float32
    assert noisy.shape == clean_out.shape == clean.shape
    np.testing.assert_array_equal(clean_out, clean)  # no clipping at this level
    assert abs(snr_db(noisy, clean_out) - target) < 0.1


def test_mix_at_snr_scales_mixture_and_target_together_when_clipping():
    clean = tone(220, seconds=0.5, amp=0.9)
    noise = np.random.default_rng(1).standard_normal(8000)
    noisy, clean_out = mix_at_snr(clean, noise, 0.0)
    assert np.abs(noisy).max() == pytest.approx(1.0, abs=1e-6)
    factor = clean_out[clean != 0] / clean[clean != 0]
    assert factor.max() < 0.9 and np.ptp(factor) < 1e-5  # one common factor
    assert abs(snr_db(noisy, clean_out) - 0.0) < 0.1


def test_mix_at_snr_silent_inputs_return_clean_with_a_warning():
    clean = tone(220)
    with pytest.warns(RuntimeWarning, match="noise is silent"):
        noisy, target = mix_at_snr(clean, np.zeros(100), 5.0)
    np.testing.assert_array_equal(noisy, clean)
    np.testing.assert_array_equal(target, clean)
    with pytest.warns(RuntimeWarning, match="clean signal is silent"):
        noisy, target = mix_at_snr(np.zeros(4000), np.ones(100), 5.0)
    assert not noisy.any() and not target.any()
    with pytest.raises(ValueError, match="noise: audio contains NaN"):
        mix_at_snr(clean, np.array([0.1, np.nan]), 5.0)
    with pytest.raises(ValueError, match="snr_db must be finite"):
        mix_at_snr(clean, clean, math.inf)


@pytest.fixture
def noise_dir(tmp_path: Path) -> Path:
    """The builder's layout: noise/seen, noise/unseen and noise.csv."""
    root = tmp_path / "noise"
    entries = [
        ("seen/babble_0.wav", "babble", "seen"),
        ("seen/hum_0.wav", "hum", "seen"),
        ("seen/hum_1.wav", "hum", "seen"),
        ("unseen/cafe_0.wav", "cafe", "unseen"),
    ]
    for seed, (name, _, _) in enumerate(entries):
        write_noise(root / name, seed)
    with (root / "noise.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", "noise_type", "split"])
        writer.writerows(entries)
    return root


def test_noise_bank_reads_types_and_splits_from_noise_csv(noise_dir):
    seen = NoiseBank.from_dir(noise_dir, split="seen")
    unseen = NoiseBank.from_dir(noise_dir, split="unseen")
    assert seen.noise_types == ["babble", "hum"] and len(seen) == 3
    assert unseen.noise_types == ["cafe"] and len(unseen) == 1
    assert len(NoiseBank.from_dir(noise_dir, split=None)) == 4


def test_noise_bank_infers_types_from_plain_folders(tmp_path):
    root = tmp_path / "musan_like"
    write_noise(root / "DKITCHEN" / "ch01.wav", 0)
    write_noise(root / "DKITCHEN" / "ch02.wav", 1)
    write_noise(root / "babble_01.wav", 2)
    write_noise(root / "traffic-7.wav", 3)
    bank = NoiseBank.from_dir(root)
    assert bank.noise_types == ["DKITCHEN", "babble", "traffic"]
    assert {f.split for f in bank.files} == {"seen"}
    with pytest.raises(ValueError, match="no unseen noise files.*split=None"):
        NoiseBank.from_dir(root, split="unseen")
    # Without noise.csv, top-level seen/unseen folders still set the split.
    write_noise(tmp_path / "split_like" / "unseen" / "cafe" / "a.wav", 4)
    write_noise(tmp_path / "split_like" / "seen" / "hum_3.wav", 5)
    assert NoiseBank.from_dir(tmp_path / "split_like", split="unseen").noise_types == ["cafe"]
    assert NoiseBank.from_dir(tmp_path / "split_like", split="seen").noise_types == ["hum"]


def test_noise_bank_samples_contiguous_segments_and_loops_short_files(tmp_path):
    write_noise(tmp_path / "only" / "hiss_0.wav", 7, seconds=0.1)  # 1600 samples
    bank = NoiseBank.from_dir(tmp_path / "only")
    full = load_audio(tmp_path / "only" / "hiss_0.wav")
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(5):
        segment, noise_type = bank.sample(500, rng)
        assert noise_type == "hiss" and len(segment) == 500
        matches = [s for s in range(len(full) - 499) if np.array_equal(full[s : s + 500], segment)]
        assert len(matches) == 1
        starts.add(matches[0])
    assert len(starts) > 1  # random offsets
    looped, _ = bank.sample(4000, rng)
    assert len(looped) == 4000
    assert any(  # the file repeated from some offset
        np.array_equal(looped, np.resize(np.roll(full, -offset), 4000))
        for offset in np.flatnonzero(full == looped[0])
    )


def test_noise_bank_resamples_other_rates_to_exact_length(tmp_path):
    write_noise(tmp_path / "n8k" / "fan_0.wav", 0, seconds=0.5, sr=8000)
    segment, _ = NoiseBank.from_dir(tmp_path / "n8k").sample(3001, np.random.default_rng(0))
    assert len(segment) == 3001 and segment.dtype == np.float32


# --------------------------------------------------------------------------------------------
# NoisyMixer, eval sets, collator
# --------------------------------------------------------------------------------------------


def test_noisy_mixer_as_transform(corpus, noise_dir):
    split = load_speech_dataset(str(corpus))["train"]
    label2id = LABEL2ID
    mixer = NoisyMixer(NoiseBank.from_dir(noise_dir), label2id, clean_prob=0.0, max_seconds=0.2)
    torch.manual_seed(0)
    batch = split.with_transform(mixer)[:6]
    torch.manual_seed(0)
    assert np.array_equal(
        split.with_transform(mixer)[:6]["input_values"][0], batch["input_values"][0]
    )  # reproducible under torch seeding
    assert set(batch) == {"input_values", "clean_values", "label", "snr", "noise_type"}
    assert batch["label"] == [label2id[name] for name in split["label"][:6]]
    for noisy, clean, snr, noise_type in zip(
        batch["input_values"],
        batch["clean_values"],
        batch["snr"],
        batch["noise_type"],
        strict=True,
    ):
        assert len(noisy) == len(clean) == 3200  # random 0.2 s crop of a 0.25 s clip
        assert -5.0 <= snr <= 20.0 and noise_type in {"babble", "hum"}
        assert abs(snr_db(noisy, clean) - snr) < 0.1
    assert len(set(batch["snr"])) == 6


def test_noisy_mixer_clean_prob_and_unknown_labels(corpus, noise_dir):
    split = load_speech_dataset(str(corpus))["train"]
    bank = NoiseBank.from_dir(noise_dir)
    examples = [split[i] for i in range(3)]
    clean_out = NoisyMixer(bank, None, clean_prob=1.0)(examples)
    for example, out in zip(examples, clean_out, strict=True):
        np.testing.assert_array_equal(out["input_values"], load_audio(example["audio"]))
        assert out["snr"] == math.inf and out["noise_type"] == "clean" and "label" not in out
    with pytest.raises(ValueError, match="unknown label\\(s\\) 'happy'"):
        NoisyMixer(bank, {"angry": 0})([split[i] for i in range(len(split))])
    with pytest.raises(ValueError, match="snr_range"):
        NoisyMixer(bank, snr_range=(10, -5))


def test_change_speed_moves_pitch_and_duration_together():
    sr = 16000
    t = np.arange(sr) / sr
    tone = (0.5 * np.sin(2 * np.pi * 200.0 * t)).astype(np.float32)
    assert change_speed(tone, 1.0) is tone
    for factor in (0.9, 1.1):
        fast = change_speed(tone, factor + 0.003)  # rounded to the 0.01 grid
        assert abs(len(fast) - sr / factor) <= 1
        spectrum = np.abs(np.fft.rfft(fast[100:-100] * np.hanning(len(fast) - 200)))
        peak_hz = np.argmax(spectrum) * sr / (len(fast) - 200)
        assert abs(peak_hz - 200.0 * factor) < 2.0
    with pytest.raises(ValueError, match="speed factor"):
        change_speed(tone, 3.0)


def test_noisy_mixer_speed_perturbation(corpus, noise_dir):
    split = load_speech_dataset(str(corpus))["train"]
    bank = NoiseBank.from_dir(noise_dir)
    examples = [split[i] for i in range(6)]
    lengths = [len(load_audio(example["audio"])) for example in examples]
    torch.manual_seed(0)
    out = NoisyMixer(bank, None, clean_prob=1.0, speed_range=(0.9, 1.1))(examples)
    ratios = [n / len(o["input_values"]) for n, o in zip(lengths, out, strict=True)]
    assert all(0.9 - 1e-3 <= r <= 1.1 + 1e-3 for r in ratios)
    assert len({round(r, 2) for r in ratios}) > 1  # a factor per example, not per batch
    for o in out:  # the SE target is the perturbed clean signal
        np.testing.assert_array_equal(o["input_values"], o["clean_values"])
    # (1, 1) is off: the same examples as without perturbation, noise draws included.
    noisy = [dict(e) for e in examples]
    torch.manual_seed(1)
    off = NoisyMixer(bank, None, clean_prob=0.0, speed_range=(1, 1))(noisy)
    torch.manual_seed(1)
    plain = NoisyMixer(bank, None, clean_prob=0.0)(noisy)
    for a, b in zip(off, plain, strict=True):
        np.testing.assert_array_equal(a["input_values"], b["input_values"])
    for bad in ((1.1, 0.9), (0.2, 1.0), (0.9, 1.0, 1.1)):
        with pytest.raises(ValueError, match="speed_range"):
            NoisyMixer(bank, speed_range=bad)


def test_build_eval_sets_is_deterministic_and_order_independent(corpus, noise_dir):
    test_split = load_speech_dataset(str(corpus))["test"]
    seen = NoiseBank.from_dir(noise_dir, "seen")
    unseen = NoiseBank.from_dir(noise_dir, "unseen")
    sets = build_eval_sets(test_split, seen, unseen, snrs=(-5, 0))
    assert sorted(sets) == sorted(["seen_-5dB", "seen_0dB", "unseen_-5dB", "unseen_0dB", "clean"])
    again = build_eval_sets(test_split, seen, unseen, snrs=(-5, 0))
    only_one = build_eval_sets(test_split, seen, None, snrs=(0,), include_clean=False)
    assert list(only_one) == ["seen_0dB"]
    assert (
        only_one["seen_0dB"].to_dict() == sets["seen_0dB"].to_dict() == again["seen_0dB"].to_dict()
    )
    for name, dataset in sets.items():
        assert dataset.column_names == [
            "input_values",
            "clean_values",
            "label",
            "snr",
            "noise_type",
            "condition",
        ]
        assert set(dataset["condition"]) == {name}
        assert list(dataset["label"]) == list(test_split["label"])
        for row in dataset:
            noisy, clean = np.asarray(row["input_values"]), np.asarray(row["clean_values"])
            if name == "clean":
                assert row["snr"] == math.inf and np.array_equal(noisy, clean)
            else:
                assert abs(snr_db(noisy, clean) - row["snr"]) < 0.1
                types = seen.noise_types if name.startswith("seen") else unseen.noise_types
                assert row["noise_type"] in types
    # The SNR conditions of one bank share each utterance's noise draw: only the level differs.
    for low, high in zip(sets["seen_-5dB"], sets["seen_0dB"], strict=True):
        assert low["noise_type"] == high["noise_type"]
        # Relative to each target, since the clipping guard may rescale a mixture and its target.
        noise_low, noise_high = (
            np.subtract(row["input_values"], row["clean_values"])
            / np.linalg.norm(row["clean_values"])
            for row in (low, high)
        )
        np.testing.assert_allclose(noise_low * 10 ** (-5 / 20), noise_high, atol=1e-5)
    assert list(sets["seen_0dB"]["noise_type"]) != list(sets["unseen_0dB"]["noise_type"])


def test_build_eval_sets_caches_to_out_dir(corpus, noise_dir, tmp_path, monkeypatch):
    test_split = load_speech_dataset(str(corpus))["test"]
    seen = NoiseBank.from_dir(noise_dir, "seen")
    out = tmp_path / "eval_cache"
    built = build_eval_sets(test_split, seen, None, snrs=(5,), out_dir=out, label2id=LABEL2ID)
    assert (out / "seen_5dB" / "dataset_info.json").is_file() and not (out / ".build").exists()
    assert set(built["seen_5dB"]["label"]) == {0, 1}

    def must_not_build(*args, **kwargs):
        raise AssertionError("cache was not used")

    monkeypatch.setattr(data_module, "_eval_example", must_not_build)
    cached = build_eval_sets(test_split, seen, None, snrs=(5,), out_dir=out, label2id=LABEL2ID)
    assert cached["seen_5dB"].to_dict() == built["seen_5dB"].to_dict()
    monkeypatch.undo()
    rebuilt = build_eval_sets(
        test_split, seen, None, snrs=(5,), seed=99, out_dir=out, label2id=LABEL2ID
    )
    assert rebuilt["seen_5dB"]["input_values"] != built["seen_5dB"]["input_values"]


def test_collator_pads_masks_and_stacks_labels():
    features = [
        {
            "input_values": [0.1, 0.2, 0.3],
            "clean_values": [1.0, 2.0, 3.0],
            "label": 1,
            "dimensions": [0.1, 0.2, 0.3],
            "snr": 5.0,
            "noise_type": "hum",
        },
        {
            "input_values": np.arange(1, 6, dtype=np.float32),
            "clean_values": np.ones(5),
            "label": 0,
            "dimensions": [0.4, 0.5, 0.6],
            "snr": 0.0,
            "noise_type": "hum",
        },
    ]
    batch = DataCollatorForMerit()(features)
    assert set(batch) == {
        "input_values",
        "clean_values",
        "attention_mask",
        "labels",
        "dimension_labels",
    }
    torch.testing.assert_close(
        batch["input_values"], torch.tensor([[0.1, 0.2, 0.3, 0, 0], [1, 2, 3, 4, 5.0]])
    )
    torch.testing.assert_close(
        batch["clean_values"], torch.tensor([[1.0, 2.0, 3.0, 0, 0], [1, 1, 1, 1, 1.0]])
    )
    assert batch["attention_mask"].dtype == torch.long
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == [1, 0]
    assert (
        batch["dimension_labels"].shape == (2, 3)
        and batch["dimension_labels"].dtype == torch.float32
    )

    short = DataCollatorForMerit(max_length_seconds=4 / SR)(features)
    assert short["input_values"].shape == (2, 4) and short["attention_mask"][0].sum() == 3


def test_collator_with_feature_extractor_pads_target_on_the_same_side():
    from transformers import Wav2Vec2FeatureExtractor

    extractor = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=SR, padding_value=0.0, return_attention_mask=True
    )
    features = [
        {"input_values": [0.5, 0.5], "clean_values": [0.25, 0.25]},
        {"input_values": [0.1, 0.2, 0.3], "clean_values": [1.0, 1.0, 1.0]},
    ]
    plain = DataCollatorForMerit()(features)
    with_fe = DataCollatorForMerit(feature_extractor=extractor)(features)
    for key in plain:
        torch.testing.assert_close(with_fe[key], plain[key])
    extractor.padding_side = "left"
    left = DataCollatorForMerit(feature_extractor=extractor)(features)
    assert left["attention_mask"].tolist() == [[0, 1, 1], [1, 1, 1]]
    assert left["clean_values"][0].tolist() == [0.0, 0.25, 0.25]
    with pytest.raises(ValueError, match="expects 16000 Hz"):
        DataCollatorForMerit(feature_extractor=extractor, sampling_rate=8000)


def test_collator_rejects_inconsistent_examples():
    collate = DataCollatorForMerit()
    with pytest.raises(ValueError, match="example 0: input_values has 2 samples but"):
        collate([{"input_values": [0.1, 0.2], "clean_values": [0.1]}])
    with pytest.raises(ValueError, match="integer ids"):
        collate([{"input_values": [0.1], "label": "angry"}])
    with pytest.raises(ValueError, match="empty batch"):
        collate([])
    with pytest.raises(ValueError, match="only 1 of 2 examples have 'clean_values'"):
        collate([{"input_values": [0.1], "clean_values": [0.1]}, {"input_values": [0.2]}])
    with pytest.raises(ValueError, match="same number of dimensional values"):
        collate(
            [
                {"input_values": [0.1], "dimensions": [0.1, 0.2]},
                {"input_values": [0.1], "dimensions": [0.1, 0.2, 0.3]},
            ]
        )


def test_command_line_name_lists_and_optional_columns():
    assert data_module.name_list(" arousal, valence ,dominance", "--x") == [
        "arousal",
        "valence",
        "dominance",
    ]
    assert data_module.name_list(None, "--x") is None and data_module.name_list("", "--x") is None
    for bad in ("a,a", " , "):
        with pytest.raises(ValueError, match="--dimension_columns must list distinct names"):
            data_module.name_list(bad, "--dimension_columns")
    assert data_module.optional_column(" EmoClass ") == "EmoClass"
    assert data_module.optional_column("None") is None and data_module.optional_column("") is None


def _clean_and_augmented(tiny_corpus, **augmentation):
    """One training file through a clean-only mixer without and with ``augmentation``: the
    seen noise bank, the plain clean signal and the augmented mixer's output."""
    from merit.data import NoiseBank, NoisyMixer

    bank = NoiseBank.from_dir(tiny_corpus / "noise", split="seen")
    example = {"audio": str(next((tiny_corpus / "train").glob("*.wav")))}
    plain = NoisyMixer(bank, clean_prob=1.0).mix_example(example, np.random.default_rng(0))
    mixer = NoisyMixer(bank, clean_prob=1.0, **augmentation)
    return bank, plain["clean_values"], mixer.mix_example(example, np.random.default_rng(0))


def test_gain_augmentation_scales_level_before_the_noise_and_never_clips(tiny_corpus):
    from merit.data import NoisyMixer

    bank, a, loud = _clean_and_augmented(tiny_corpus, gain_range_db=(6.0, 6.0))
    b = loud["clean_values"]
    example = {"audio": str(next((tiny_corpus / "train").glob("*.wav")))}
    expected = a * 10 ** (6 / 20)
    if np.max(np.abs(expected)) > 1:
        expected = expected / np.max(np.abs(expected))
    np.testing.assert_allclose(b, expected, rtol=1e-5, atol=1e-6)
    off = NoisyMixer(bank, clean_prob=1.0, gain_range_db=(0.0, 0.0))
    assert off.gain_range_db is None
    np.testing.assert_array_equal(
        off.mix_example(example, np.random.default_rng(0))["clean_values"], a
    )
    for bad in [(5.0, -5.0), (-40.0, 0.0), (float("nan"), 1.0), (1.0,)]:
        with pytest.raises(ValueError, match="gain_range_db"):
            NoisyMixer(bank, gain_range_db=bad)


def test_change_brightness_moves_only_what_is_above_the_shelf():
    """A +6 dB shelf doubles a 5 kHz tone and leaves a 200 Hz one alone; -6 halves the high
    one; loud input is not clamped by the biquad; 0 is the identity; bad gains fail."""
    from merit.data import change_brightness

    t = np.arange(16000) / 16000

    def gain_db(freq: float, shelf: float, amplitude: float = 0.5) -> float:
        tone = (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)
        out = change_brightness(tone, shelf)
        return 20 * np.log10(np.std(out[4000:]) / np.std(tone[4000:]))

    assert gain_db(5000, 6.0) == pytest.approx(6.0, abs=0.3)
    assert gain_db(5000, -6.0) == pytest.approx(-6.0, abs=0.3)
    assert abs(gain_db(200, 6.0)) < 0.3
    assert gain_db(5000, 12.0, amplitude=0.99) == pytest.approx(12.0, abs=0.5)  # past 1: kept
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    assert change_brightness(tone, 0.0) is tone
    for bad in (25.0, float("nan")):
        with pytest.raises(ValueError, match="brightness gain"):
            change_brightness(tone, bad)


def _peak_hz(signal: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(signal * np.hanning(len(signal))))
    return float(np.fft.rfftfreq(len(signal), 1 / 16000)[spectrum.argmax()])


def test_change_pitch_moves_pitch_at_the_same_length_and_level():
    """+-2 semitones moves a 440 Hz tone to 440 x 1.12 / 0.89 Hz (the 0.01 speed grid) at the
    same length and RMS; a shift under the grid's step is the identity; bad shifts fail."""
    from merit.data import change_pitch

    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(32000) / 16000)).astype(np.float32)
    for semitones, factor in ((2.0, 1.12), (-2.0, 0.89)):
        out = change_pitch(tone, semitones)
        assert out.shape == tone.shape and out.dtype == np.float32
        assert _peak_hz(out[4000:-4000]) == pytest.approx(440 * factor, abs=2.0)
        level = 20 * np.log10(np.std(out) / np.std(tone))
        assert level == pytest.approx(0.0, abs=0.01)
    assert change_pitch(tone, 0.05) is tone  # 2 ** (0.05 / 12) rounds to 1.00
    for bad in (7.0, float("nan")):
        with pytest.raises(ValueError, match="pitch shift"):
            change_pitch(tone, bad)


def test_pitch_augmentation_reaches_the_se_target_on_its_share_of_utterances(tiny_corpus):
    from merit.data import NoisyMixer, change_pitch

    bank, a, out = _clean_and_augmented(
        tiny_corpus, pitch_shift_semitones=(-2.0, -2.0), pitch_shift_prob=1.0
    )
    expected = change_pitch(a, -2.0)
    expected = expected / max(1.0, float(np.max(np.abs(expected))))
    np.testing.assert_allclose(out["clean_values"], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out["input_values"], out["clean_values"])
    _, a, never = _clean_and_augmented(
        tiny_corpus, pitch_shift_semitones=(-2.0, -2.0), pitch_shift_prob=0.0
    )
    np.testing.assert_array_equal(never["clean_values"], a)
    assert NoisyMixer(bank, pitch_shift_semitones=(0.0, 0.0)).pitch_shift_semitones is None
    for bad in [(2.0, -2.0), (-8.0, 0.0), (1.0,)]:
        with pytest.raises(ValueError, match="pitch_shift_semitones"):
            NoisyMixer(bank, pitch_shift_semitones=bad)
    with pytest.raises(ValueError, match="pitch_shift_prob"):
        NoisyMixer(bank, pitch_shift_semitones=(-1.0, 1.0), pitch_shift_prob=1.5)


def test_brightness_augmentation_reaches_the_se_target_and_stays_under_full_scale(tiny_corpus):
    from merit.data import NoisyMixer, change_brightness

    bank, a, out = _clean_and_augmented(tiny_corpus, brightness_range_db=(9.0, 9.0))
    expected = change_brightness(a, 9.0)
    expected = expected / max(1.0, float(np.max(np.abs(expected))))
    np.testing.assert_allclose(out["clean_values"], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out["input_values"], out["clean_values"])
    assert np.max(np.abs(out["clean_values"])) <= 1.0
    assert NoisyMixer(bank, brightness_range_db=(0.0, 0.0)).brightness_range_db is None
    for bad in [(3.0, -3.0), (-30.0, 0.0), (1.0,)]:
        with pytest.raises(ValueError, match="brightness_range_db"):
            NoisyMixer(bank, brightness_range_db=bad)
