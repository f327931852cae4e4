"""Tests for the embedded synthetic corpus (merit.corpus), on tiny corpora so they stay fast."""

from __future__ import annotations

import csv
import hashlib
import json
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy import signal

from merit import corpus

TINY = dict(num_speakers=6, num_sentences=4, noise_seconds=1.0, progress=False)
# Smallest valid corpus: 3 speakers (one per split), 1 sentence in 4 emotions each.
MICRO = dict(
    num_speakers=3, num_sentences=1, utterances_per_speaker=4, noise_seconds=0.25, progress=False
)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return corpus.build_corpus(tmp_path_factory.mktemp("tiny") / "corpus", seed=0, **TINY)


# ------------------------------------------------------------------------------------------
# Built corpus: layout, metadata, splits
# ------------------------------------------------------------------------------------------


def test_metadata_matches_files_on_disk(tiny: Path) -> None:
    rows = _read_csv(tiny / "metadata.csv")
    assert list(rows[0]) == [
        "file_name",
        "label",
        "speaker",
        "sentence_id",
        "split",
        "arousal",
        "valence",
        "dominance",
    ]
    # 6 speakers x 4 sentences (min(4, 20)) x 4 emotions
    assert len(rows) == 96
    on_disk = {str(p.relative_to(tiny)) for s in corpus.SPLITS for p in (tiny / s).glob("*.wav")}
    assert on_disk == {r["file_name"] for r in rows}
    for r in rows:
        split, name = r["file_name"].split("/")
        assert split == r["split"]
        assert name == f"{r['label']}_{r['speaker']}_s{int(r['sentence_id']):03d}.wav"
    info = json.loads((tiny / "corpus.json").read_text())
    assert info["counts"]["utterances"] == 96
    assert info["params"]["utterances_per_speaker"] == 16
    assert (tiny / "README.md").read_text().startswith("# merit default corpus")


def test_dimensional_ratings_follow_class_centres_and_prosody() -> None:
    for emotion, centre in corpus.DIMENSION_CENTRES.items():
        at_centre = corpus.dimensional_ratings(emotion, corpus.emotion_prosody(emotion))
        assert list(at_centre.values()) == pytest.approx(centre)
    # One jitter standard deviation faster and louder: arousal moves by slope * 2/4, dominance
    # (volume only) by slope * 1/3, valence (pitch only) not at all.
    base = corpus.emotion_prosody("neutral")
    j = corpus._UTTERANCE_JITTER
    moved = corpus.dimensional_ratings(
        "neutral", replace(base, rate=base.rate + j.rate, volume=base.volume + j.volume)
    )
    slope = corpus._DIMENSION_SLOPE
    assert moved["arousal"] == pytest.approx(4.0 + slope / 2, abs=1e-3)
    assert moved["dominance"] == pytest.approx(4.0 + slope / 3, abs=1e-3)
    assert moved["valence"] == pytest.approx(4.0)
    with pytest.raises(ValueError, match="no dimensional centre for 'bored'"):
        corpus.dimensional_ratings("bored", base)


def test_built_ratings_are_on_the_1_to_7_scale_and_separate_the_classes(tiny: Path) -> None:
    rows = _read_csv(tiny / "metadata.csv")
    means = {}
    for emotion in corpus.EMOTIONS:
        values = np.array(
            [[float(r[d]) for d in corpus.DIMENSIONS] for r in rows if r["label"] == emotion]
        )
        assert ((values >= 1) & (values <= 7)).all()
        assert values.std(axis=0).min() > 0.1  # ratings vary inside a class
        means[emotion] = dict(zip(corpus.DIMENSIONS, values.mean(axis=0), strict=True))
    assert means["angry"]["arousal"] > means["neutral"]["arousal"] > means["sad"]["arousal"]
    assert means["happy"]["valence"] > means["neutral"]["valence"] > means["angry"]["valence"]
    assert means["angry"]["dominance"] > means["sad"]["dominance"]


def test_audio_is_16k_mono_pcm16_and_not_silent(tiny: Path) -> None:
    for r in _read_csv(tiny / "metadata.csv")[::7]:
        info = sf.info(tiny / r["file_name"])
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        x, _ = sf.read(tiny / r["file_name"], dtype="float32")
        assert 0.5 < x.size / 16000 < 8.0
        assert np.sqrt(np.mean(x**2)) > 0.005
        assert np.max(np.abs(x)) < 0.999  # headroom: no clipping


def test_splits_are_speaker_disjoint_and_contain_every_class(tiny: Path) -> None:
    rows = _read_csv(tiny / "metadata.csv")
    speakers: dict[str, set[str]] = defaultdict(set)
    labels: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        speakers[r["split"]].add(r["speaker"])
        labels[r["split"]].add(r["label"])
    assert {s: len(v) for s, v in speakers.items()} == {"train": 4, "validation": 1, "test": 1}
    assert not speakers["train"] & speakers["validation"]
    assert not speakers["train"] & speakers["test"]
    assert not speakers["validation"] & speakers["test"]
    assert all(labels[s] == set(corpus.EMOTIONS) for s in corpus.SPLITS)


def test_each_speaker_says_the_same_sentences_in_every_emotion(tiny: Path) -> None:
    said: dict[tuple[str, str], set[str]] = defaultdict(set)
    for r in _read_csv(tiny / "metadata.csv"):
        said[(r["speaker"], r["label"])].add(r["sentence_id"])
    for spk in {s for s, _ in said}:
        assert len({frozenset(said[(spk, e)]) for e in corpus.EMOTIONS}) == 1


def test_default_split_is_14_3_3_with_both_genders_held_out() -> None:
    speakers = corpus._plan_speakers(0, 20)
    by_split: dict[str, list] = defaultdict(list)
    for s in speakers:
        by_split[s.split].append(s)
    assert {k: len(v) for k, v in by_split.items()} == {"train": 14, "validation": 3, "test": 3}
    assert {s.voice.gender for s in by_split["test"]} == {"male", "female"}
    assert {s.voice.gender for s in by_split["validation"]} == {"male", "female"}


def test_speaker_habits_describe_the_built_corpus(tiny: Path) -> None:
    info = json.loads((tiny / "corpus.json").read_text())
    habits = corpus.speaker_habits(info["params"]["seed"], info["params"]["num_speakers"])
    assert [(h["speaker"], h["voice"], h["split"]) for h in habits] == [
        (s["speaker"], s["voice"], s["split"]) for s in info["speakers"]
    ]
    for h in habits:  # within the uniform half-widths, and not all zero
        assert abs(h["pitch_offset"]) <= 10 and abs(h["rate_offset"]) <= 12
        assert abs(h["range_offset"]) <= 8
    assert len({round(h["rate_offset"], 3) for h in habits}) == len(habits)
    assert corpus.speaker_habits(info["params"]["seed"], 6) == habits


def test_noise_bank_layout_and_levels(tiny: Path) -> None:
    rows = _read_csv(tiny / "noise" / "noise.csv")
    assert list(rows[0]) == ["file_name", "noise_type", "split"]
    assert len(rows) == len(corpus.NOISE_TYPES) * corpus.NOISE_FILES_PER_TYPE
    for r in rows:
        expected = "seen" if r["noise_type"] in corpus.SEEN_NOISES else "unseen"
        assert r["split"] == expected
        assert r["file_name"].startswith(f"{expected}/{r['noise_type']}_")
        x, sr = sf.read(tiny / "noise" / r["file_name"], dtype="float64")
        assert (sr, x.ndim, x.size) == (16000, 1, 16000)
        rms = np.sqrt(np.mean(x**2))
        if r["noise_type"] == "clicks":  # peak-limited, so quieter than NOISE_RMS
            assert rms <= corpus.NOISE_RMS + 1e-3
            assert np.max(np.abs(x)) == pytest.approx(corpus.PEAK_LIMIT, abs=1e-3)
        else:
            assert rms == pytest.approx(corpus.NOISE_RMS, rel=0.02)
    assert not set(corpus.SEEN_NOISES) & set(corpus.UNSEEN_NOISES)
    assert set(corpus.SEEN_NOISES) | set(corpus.UNSEEN_NOISES) == set(corpus.NOISE_TYPES)


# ------------------------------------------------------------------------------------------
# Determinism, caching, atomic builds
# ------------------------------------------------------------------------------------------


def test_same_seed_gives_identical_bytes(tiny: Path, tmp_path: Path) -> None:
    again = corpus.build_corpus(tmp_path / "again", seed=0, **TINY)
    assert _hashes(again) == _hashes(tiny)


def test_different_seed_gives_different_audio(tiny: Path, tmp_path: Path) -> None:
    other = corpus.build_corpus(tmp_path / "other", seed=1, **TINY)
    audio = {k: v for k, v in _hashes(tiny).items() if k.endswith(".wav")}
    audio_other = {k: v for k, v in _hashes(other).items() if k.endswith(".wav")}
    assert len(audio) == len(audio_other)
    assert not set(audio.values()) & set(audio_other.values())


def test_ensure_corpus_reuses_then_rebuilds_on_changed_params(tmp_path, monkeypatch) -> None:
    calls = []
    real_build = corpus.build_corpus

    def counting_build(*args, **kwargs):
        calls.append(kwargs)
        return real_build(*args, **kwargs)

    monkeypatch.setattr(corpus, "build_corpus", counting_build)
    root = tmp_path / "cache"
    assert corpus.ensure_corpus(root, seed=0, **MICRO) == root
    stamp = (root / "corpus.json").stat().st_mtime_ns
    assert corpus.ensure_corpus(root, seed=0, **MICRO) == root
    assert len(calls) == 1
    assert (root / "corpus.json").stat().st_mtime_ns == stamp

    corpus.ensure_corpus(root, seed=3, **MICRO)
    assert len(calls) == 2
    assert json.loads((root / "corpus.json").read_text())["params"]["seed"] == 3
    assert len(_read_csv(root / "metadata.csv")) == 12
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]  # no temp folders left behind


def test_build_refuses_to_clobber_without_overwrite(tmp_path: Path) -> None:
    root = tmp_path / "c"
    root.mkdir()
    (root / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        corpus.build_corpus(root, **MICRO)
    assert (root / "precious.txt").read_text() == "keep me"
    corpus.build_corpus(root, overwrite=True, **MICRO)
    assert not (root / "precious.txt").exists()
    assert (root / "corpus.json").is_file()


def test_interrupted_build_leaves_nothing_at_root(tmp_path, monkeypatch) -> None:
    def crash(root, params, progress):
        (root / "train").mkdir(parents=True)
        (root / "train" / "half.wav").write_bytes(b"RIFF")
        raise KeyboardInterrupt

    monkeypatch.setattr(corpus, "_build_into", crash)
    with pytest.raises(KeyboardInterrupt):
        corpus.build_corpus(tmp_path / "c", **MICRO)
    assert list(tmp_path.iterdir()) == []


def test_default_corpus_dir(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MERIT_CORPUS_DIR", str(tmp_path / "here"))
    assert corpus.default_corpus_dir() == tmp_path / "here"
    monkeypatch.delenv("MERIT_CORPUS_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert (
        corpus.default_corpus_dir()
        == tmp_path / ".cache" / "merit" / f"corpus-v{corpus.CORPUS_VERSION}"
    )
    assert (
        corpus.default_corpus_dir(24)
        == tmp_path / ".cache" / "merit" / f"corpus-v{corpus.CORPUS_VERSION}-extra24"
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"num_speakers": 2}, "num_speakers"),
        ({"num_speakers": len(corpus.CORPUS_VOICES) + 1}, "num_speakers"),
        ({"num_sentences": 0}, "num_sentences"),
        ({"num_sentences": len(corpus.SENTENCES) + 1}, "num_sentences"),
        ({"utterances_per_speaker": 6}, "multiple"),
        ({"utterances_per_speaker": 0}, "multiple"),
        ({"emotions": ("neutral", "bored")}, "bored"),
        ({"emotions": ()}, "emotions"),
        ({"noise_seconds": 0.0}, "noise_seconds"),
        ({"noise_seconds": float("nan")}, "noise_seconds"),
        ({"extra_train_voices": -1}, "extra_train_voices"),
        ({"extra_train_voices": len(corpus.EXTRA_TRAIN_VOICES) + 1}, "extra_train_voices"),
        ({"extra_train_voices": 1.5}, "extra_train_voices"),
        ({"extra_train_voices": True}, "extra_train_voices"),
    ],
)
def test_bad_build_parameters(tmp_path: Path, override: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        corpus.build_corpus(tmp_path / "c", **{**MICRO, **override})
    assert not (tmp_path / "c").exists()


def test_cli_builds_and_reports_counts(tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli"
    argv = ["--out", str(out), "--num-speakers", "3", "--num-sentences", "1"]
    argv += ["--utterances-per-speaker", "4", "--noise-seconds", "0.25", "--no-progress"]
    assert corpus._main(argv) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed
    assert "utterances: 12" in printed and "noise_files: 14" in printed
    with pytest.raises(SystemExit):
        corpus._main(["--out", str(tmp_path / "bad"), "--num-speakers", "1"])


# ------------------------------------------------------------------------------------------
# eSpeak synthesis and emotion prosody
# ------------------------------------------------------------------------------------------


def _median_f0(x: np.ndarray, sr: int = 16000) -> float:
    """Autocorrelation pitch of the louder half of 40 ms frames (speech here is 60-400 Hz)."""
    n = int(0.04 * sr)
    frames = np.lib.stride_tricks.sliding_window_view(x, n)[:: n // 2]
    energy = (frames**2).mean(axis=1)
    lo, hi = sr // 400, sr // 60
    f0 = []
    for fr in frames[energy > np.median(energy)]:
        fr = fr - fr.mean()
        ac = np.correlate(fr, fr, "full")[n - 1 :]
        f0.append(sr / (lo + np.argmax(ac[lo:hi])))
    return float(np.median(f0))


def _say(emotion: str, voice: str = "en-us+m3") -> np.ndarray:
    p = corpus.emotion_prosody(emotion)
    return corpus.synthesize(corpus.SENTENCES[0], voice, p.rate, p.pitch, p.pitch_range, p.volume)


def test_emotion_prosody_changes_duration_loudness_and_pitch() -> None:
    audio = {e: _say(e) for e in corpus.EMOTIONS}
    dur = {e: x.size / 16000 for e, x in audio.items()}
    rms = {e: float(np.sqrt(np.mean(x**2))) for e, x in audio.items()}
    f0 = {e: _median_f0(x) for e, x in audio.items()}
    assert dur["sad"] > dur["neutral"] > dur["happy"] > dur["angry"]
    assert dur["sad"] > 1.15 * dur["neutral"]
    assert rms["angry"] > rms["happy"] > rms["neutral"] > rms["sad"]
    assert rms["angry"] > 1.5 * rms["sad"]
    assert f0["happy"] > f0["angry"] > f0["neutral"] > f0["sad"]
    assert 70 < f0["neutral"] < 150  # a male voice


def test_synthesize_is_order_independent() -> None:
    # eSpeak keeps static state across utterances; the engine must reset it every time.
    first = corpus.synthesize("Hello there, how are you?", "en+f2", seed=7)
    corpus.synthesize("Something else entirely.", "en-us+m7", rate=300, pitch=90)
    again = corpus.synthesize("Hello there, how are you?", "en+f2", seed=7)
    assert first.dtype == np.float32
    np.testing.assert_array_equal(first, again)


def test_every_corpus_and_babble_voice_speaks() -> None:
    names = [v.name for v in corpus.CORPUS_VOICES] + list(corpus.BABBLE_VOICES)
    names += [v.name for v in corpus.EXTRA_TRAIN_VOICES]
    assert len(set(names)) == len(names)
    assert len(corpus.CORPUS_VOICES) >= 20 and len(corpus.SENTENCES) >= 50
    for name in names:
        x = corpus.synthesize("Good morning.", name)
        assert np.sqrt(np.mean(x**2)) > 0.005, name


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"text": ""}, "non-empty"),
        ({"text": "   "}, "non-empty"),
        ({"voice": "en+nosuchvariant"}, "variant"),
        ({"voice": "xx-not-a-language"}, "unknown eSpeak voice"),
        ({"rate": 10}, "rate"),
        ({"pitch": 101}, "pitch"),
        ({"pitch_range": float("nan")}, "pitch_range"),
        ({"volume": -1}, "volume"),
    ],
)
def test_synthesize_rejects_bad_input(kwargs: dict, message: str) -> None:
    args = {"text": "Hello.", "voice": "en-us", **kwargs}
    with pytest.raises(ValueError, match=message):
        corpus.synthesize(**args)


def test_emotion_prosody_centre_jitter_and_limits() -> None:
    assert corpus.emotion_prosody("sad") == corpus.PROSODY["sad"]
    shifted = corpus.emotion_prosody("neutral", pitch_offset=5, rate_offset=-10)
    assert (shifted.pitch, shifted.rate) == (53.0, 155.0)
    a = corpus.emotion_prosody("happy", np.random.default_rng(0))
    b = corpus.emotion_prosody("happy", np.random.default_rng(0))
    c = corpus.emotion_prosody("happy", np.random.default_rng(1))
    assert a == b and a != c
    extreme = corpus.emotion_prosody("happy", pitch_offset=1000, range_offset=-1000)
    assert (extreme.pitch, extreme.pitch_range) == (100.0, 0.0)
    with pytest.raises(ValueError, match="unknown emotion"):
        corpus.emotion_prosody("bored")


def test_tilt_brightens_or_darkens_and_keeps_low_frequencies() -> None:
    x = np.random.default_rng(0).standard_normal(32000).astype(np.float32)

    def high_share(y: np.ndarray) -> float:
        f, p = signal.welch(y, fs=16000, nperseg=1024)
        return p[f > 4000].sum() / p.sum()

    assert (
        high_share(corpus._apply_tilt(x, 0.4))
        > high_share(x)
        > high_share(corpus._apply_tilt(x, -0.4))
    )
    dc = np.ones(100, np.float32)
    for tilt in (-0.4, 0.0, 0.4):
        assert corpus._apply_tilt(dc, tilt)[-1] == pytest.approx(1.0, abs=1e-6)


# ------------------------------------------------------------------------------------------
# Noise synthesis
# ------------------------------------------------------------------------------------------

SR = 16000


def _noise(kind: str, seconds: float = 4.0, seed: int = 0) -> np.ndarray:
    return corpus.synthesize_noise(kind, int(seconds * SR), SR, np.random.default_rng(seed))


def _psd(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return signal.welch(x, fs=SR, nperseg=4096)


def _slope(x: np.ndarray) -> float:
    """log-log slope of the PSD between 100 Hz and 4 kHz: 0 white, -1 pink, -2 brown."""
    f, p = _psd(x)
    band = (f >= 100) & (f <= 4000)
    return float(np.polyfit(np.log10(f[band]), np.log10(p[band]), 1)[0])


def _share_below(x: np.ndarray, hz: float) -> float:
    f, p = _psd(x)
    return float(p[f < hz].sum() / p.sum())


@pytest.mark.parametrize("kind", corpus.NOISE_TYPES)
def test_noise_is_float32_normalised_and_seeded(kind: str) -> None:
    x = _noise(kind, 1.0)
    assert x.dtype == np.float32 and x.shape == (SR,)
    assert np.all(np.isfinite(x)) and np.max(np.abs(x)) <= corpus.PEAK_LIMIT + 1e-6
    assert abs(float(x.mean())) < 1e-3
    rms = float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))
    if kind == "clicks":
        assert rms < corpus.NOISE_RMS
    else:
        assert rms == pytest.approx(corpus.NOISE_RMS, rel=1e-3)
    np.testing.assert_array_equal(x, _noise(kind, 1.0))
    assert not np.array_equal(x, _noise(kind, 1.0, seed=1))


def test_coloured_noise_slopes() -> None:
    white, pink, brown = (_noise(k) for k in ("white", "pink", "brown"))
    assert _slope(white) == pytest.approx(0.0, abs=0.15)
    assert _slope(pink) == pytest.approx(-1.0, abs=0.15)
    assert _slope(brown) == pytest.approx(-2.0, abs=0.2)
    assert _share_below(pink, 500) > _share_below(white, 500) * 3
    assert _share_below(brown, 500) > _share_below(pink, 500)


def test_hum_peaks_at_50_hz_and_is_harmonic() -> None:
    x = _noise("hum")
    f, p = signal.welch(x, fs=SR, nperseg=SR)  # 1 Hz bins
    assert f[np.argmax(p)] == pytest.approx(50.0, abs=1.0)
    harmonic = np.zeros_like(f, dtype=bool)
    for k in range(1, 9):
        harmonic |= np.abs(f - 50 * k) <= 2
    assert p[harmonic].sum() / p.sum() > 0.95


def test_rumble_is_low_frequency_and_clicks_are_impulsive() -> None:
    assert _share_below(_noise("rumble"), 300) > 0.95

    def kurtosis(y: np.ndarray) -> float:
        y = y.astype(np.float64) - y.mean()
        return float(np.mean(y**4) / np.mean(y**2) ** 2)

    assert kurtosis(_noise("white")) == pytest.approx(3.0, abs=0.2)
    assert kurtosis(_noise("clicks")) > 30


def test_babble_is_speech_like() -> None:
    babble, white = _noise("babble"), _noise("white")
    f, p = _psd(babble)
    speech_band = (f >= 80) & (f <= 4000)
    assert p[speech_band].sum() / p.sum() > 0.8

    def envelope_variation(y: np.ndarray) -> float:
        frames = y[: y.size // 800 * 800].reshape(-1, 800)  # 50 ms
        rms = np.sqrt((frames.astype(np.float64) ** 2).mean(axis=1))
        return float(rms.std() / rms.mean())

    assert envelope_variation(babble) > 3 * envelope_variation(white)


def test_noise_rejects_bad_input() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="unknown noise kind"):
        corpus.synthesize_noise("purple", 100, SR, rng)
    with pytest.raises(ValueError, match="num_samples"):
        corpus.synthesize_noise("white", 0, SR, rng)
    with pytest.raises(ValueError, match="sample_rate"):
        corpus.synthesize_noise("white", 100, 0, rng)
    with pytest.raises(ValueError, match="16000"):
        corpus.synthesize_noise("babble", 100, 8000, rng)


# ------------------------------------------------------------------------------------------
# The corpus's recipe: per-utterance prosody, the ideal listener, the habit sweep
# ------------------------------------------------------------------------------------------


def test_utterance_prosody_is_the_recipe_of_every_file(tiny: Path) -> None:
    params = json.loads((tiny / "corpus.json").read_text())["params"]
    rows = corpus.utterance_prosody(params)
    meta = {r["file_name"]: r for r in _read_csv(tiny / "metadata.csv")}
    assert sorted(r["file_name"] for r in rows) == sorted(meta)
    habits = {h["speaker"]: h for h in corpus.speaker_habits(0, 6)}
    for r in rows:
        m = meta[r["file_name"]]
        assert (r["label"], r["speaker"], r["split"]) == (m["label"], m["speaker"], m["split"])
        assert r["sentence_id"] == int(m["sentence_id"])
        assert r["rate_offset"] == habits[r["speaker"]]["rate_offset"]
    for r in rows[::37]:  # rendering again from the recipe gives the file's samples
        prosody = corpus.Prosody(**{k: r[k] for k in corpus.PROSODY_CUES})
        audio = corpus.render_speech(
            corpus.SENTENCES[r["sentence_id"]], r["voice"], prosody, r["render_seed"]
        )
        stored, sr = sf.read(tiny / r["file_name"], dtype="float32")
        assert sr == corpus.SAMPLE_RATE and len(stored) == len(audio)
        np.testing.assert_allclose(stored, np.clip(audio, -1, 1), atol=1.0 / 32768 + 1e-6)


def test_ideal_listener_likelihoods_are_the_generative_densities() -> None:
    """One cue without habits is a Gaussian; a habit-shifted cue is the Gaussian convolved
    with the uniform habit (numerical integral); a clipped value gets the clipped mass."""
    from scipy import stats

    happy = corpus.PROSODY["happy"]
    row = {"rate": 190.0, "pitch": 60.0, "pitch_range": 75.0, "volume": 120.0, "tilt": 0.1}
    scores = corpus.ideal_listener_scores([row], ("volume",))
    k = corpus.EMOTIONS.index("happy")
    assert scores[0, k] == pytest.approx(stats.norm.logpdf(120.0, happy.volume, 14.0))
    h = np.linspace(-12.0, 12.0, 20001)  # rate habits are uniform on +-12 words per minute
    numeric = np.trapezoid(stats.norm.pdf(190.0 - happy.rate - h, 0, 14.0), h) / 24.0
    rate = corpus.ideal_listener_scores([row], ("rate",))
    assert np.exp(rate[0, k]) == pytest.approx(numeric, rel=1e-6)
    # Additive over cues.
    both = corpus.ideal_listener_scores([row], ("rate", "volume"))
    np.testing.assert_allclose(both, rate + scores)
    # A pitch range clipped to 0 stands for all the mass below it (sad: centre 20, +-8, 12).
    clipped = corpus.ideal_listener_scores([{**row, "pitch_range": 0.0}], ("pitch_range",))
    s = corpus.EMOTIONS.index("sad")
    mass = np.trapezoid(
        stats.norm.cdf(0.0 - 20.0 - np.linspace(-8, 8, 20001), 0, 12.0), dx=16 / 20000
    )
    assert np.exp(clipped[0, s]) == pytest.approx(mass / 16.0, rel=1e-6)
    assert clipped[0].argmax() == s
    with pytest.raises(ValueError, match="non-empty subset"):
        corpus.ideal_listener_scores([row], ("loudness",))


def _drawn_utterances(
    seeds: Sequence[int], rng: np.random.Generator
) -> tuple[list[dict], np.ndarray]:
    """Utterance parameters drawn as the corpus draws them (habits from speaker_habits, jitter
    from emotion_prosody), one per emotion for 20 speakers per seed, and their class ids."""
    rows, labels = [], []
    for seed in seeds:
        for h in corpus.speaker_habits(seed, 20):
            for emotion in corpus.EMOTIONS:
                p = corpus.emotion_prosody(
                    emotion,
                    rng,
                    pitch_offset=h["pitch_offset"],
                    rate_offset=h["rate_offset"],
                    range_offset=h["range_offset"],
                )
                rows.append({**h, **{c: getattr(p, c) for c in corpus.PROSODY_CUES}})
                labels.append(corpus.EMOTIONS.index(emotion))
    return rows, np.array(labels)


def test_ideal_listener_is_near_perfect_and_habits_cost_it_little() -> None:
    """On utterances drawn as the corpus draws them (habits from speaker_habits, jitter from
    emotion_prosody), the Bayes decision beats a nearest-centre rule and knowing the habits
    helps only a little; without loudness and tilt it loses much more."""
    rows, labels = _drawn_utterances(range(10), np.random.default_rng(0))

    def accuracy(scores: np.ndarray) -> float:
        return float((scores.argmax(1) == labels).mean())

    ideal = accuracy(corpus.ideal_listener_scores(rows))
    known = accuracy(corpus.ideal_listener_scores(rows, habits_known=True))
    shifted = accuracy(corpus.ideal_listener_scores(rows, ("rate", "pitch", "pitch_range")))
    x = np.array([[r[c] for c in corpus.PROSODY_CUES] for r in rows])
    centres = np.array(
        [[getattr(corpus.PROSODY[e], c) for c in corpus.PROSODY_CUES] for e in corpus.EMOTIONS]
    )
    scale = np.array([14, 7, 12, 14, 0.12])
    nearest = float(
        (((x[:, None] - centres[None]) / scale) ** 2).sum(-1).argmin(1).__eq__(labels).mean()
    )
    assert 0.93 < ideal < known <= 1.0 and known - ideal < 0.03
    assert nearest < ideal and shifted < ideal - 0.1


def test_voice_blind_listener_convolves_the_voice_spread() -> None:
    """Tilt heard through an unknown voice brightness is the jitter's Gaussian widened by the
    voice spread (exact for Gaussians); a tiny spread gives back the ideal listener's
    decisions; a wide one makes loudness worthless; a quiet voice reads as sad."""
    from scipy import stats

    row = {"rate": 165.0, "pitch": 48.0, "pitch_range": 40.0, "volume": 95.0, "tilt": 0.1}
    offsets = {"voice_level_offset": 0.0, "voice_tilt_offset": 0.2}
    cov = np.array([[4.0, 0.0], [0.0, 0.09]])
    scores = corpus.voice_blind_listener_scores([{**row, **offsets}], cov, ("tilt",))
    for k, emotion in enumerate(corpus.EMOTIONS):
        expected = stats.norm.pdf(0.3, corpus.PROSODY[emotion].tilt, np.sqrt(0.12**2 + 0.09))
        assert np.exp(scores[0, k]) == pytest.approx(expected, rel=1e-3)

    drawn, _ = _drawn_utterances([3], np.random.default_rng(1))
    rows = [{**r, "voice_level_offset": 0.0, "voice_tilt_offset": 0.0} for r in drawn]
    ideal = corpus.ideal_listener_scores(rows).argmax(1)
    tiny = corpus.voice_blind_listener_scores(rows, np.diag([1e-4, 1e-6])).argmax(1)
    assert (tiny == ideal).mean() >= 0.97
    cues = ("rate", "pitch", "pitch_range", "volume")
    deaf = corpus.voice_blind_listener_scores(rows, np.diag([1e4, 1.0]), cues).argmax(1)
    without = corpus.ideal_listener_scores(rows, cues[:3]).argmax(1)
    assert (deaf == without).mean() >= 0.97

    # The neutral centre from a voice 5 dB quieter than the listener expects: "sad".
    quiet = {**row, "tilt": 0.0, "voice_level_offset": -5.0, "voice_tilt_offset": 0.0}
    sure = corpus.voice_blind_listener_scores([quiet], np.diag([0.01, 0.01]), ("volume",))
    assert corpus.EMOTIONS[sure[0].argmax()] == "sad"
    with pytest.raises(ValueError, match="positive definite"):
        corpus.voice_blind_listener_scores([quiet], np.eye(3))
    with pytest.raises(ValueError, match="must include one of"):
        corpus.voice_blind_listener_scores([quiet], np.eye(2), ("rate",))


def test_voice_level_and_brightness_follow_the_rendering() -> None:
    """A brighter tilt raises the measured brightness by its calibrated 6 dB or so per tilt
    unit; a voice known to be quiet (klatt) measures well under another."""
    level, bright = corpus.voice_level_and_brightness("en-us+m1", num_sentences=1)
    _, brighter = corpus.voice_level_and_brightness("en-us+m1", tilt=0.45, num_sentences=1)
    other, _ = corpus.voice_level_and_brightness("en+klatt", num_sentences=1)
    assert 2.0 < brighter - bright < 4.0
    assert other < level - 5.0
    with pytest.raises(ValueError, match="num_sentences"):
        corpus.voice_level_and_brightness("en-us+m1", num_sentences=0)


def test_habit_sweep_moves_the_habits_and_nothing_else(tiny: Path) -> None:
    params = json.loads((tiny / "corpus.json").read_text())["params"]
    natural = [r for r in corpus.utterance_prosody(params) if r["split"] == "validation"]
    sweep = corpus.habit_sweep(params, "validation", with_audio=False, progress=False)
    assert len(sweep) == 8 * len(natural) and {r["setting"] for r in sweep} == set(range(8))
    level = corpus.HABIT_SWEEP_LEVEL
    offsets = {(r["pitch_offset"], r["rate_offset"], r["range_offset"]) for r in sweep}
    assert offsets == {
        (p * level * 10, r * level * 12, g * level * 8)
        for p in (-1, 1)
        for r in (-1, 1)
        for g in (-1, 1)
    }
    by_key = {(r["speaker"], r["sentence_id"], r["label"]): r for r in natural}
    for r in sweep:
        own = by_key[(r["speaker"], r["sentence_id"], r["label"])]
        assert (r["volume"], r["tilt"]) == (own["volume"], own["tilt"])  # same jitter draw
        moved = own["rate"] - own["rate_offset"] + r["rate_offset"]
        assert r["rate"] == pytest.approx(moved)  # rates stay far from their limits
    rendered = corpus.habit_sweep(params, "validation", progress=False)
    for r in rendered[:: len(rendered) // 3]:
        prosody = corpus.Prosody(**{c: r[c] for c in corpus.PROSODY_CUES})
        again = corpus.render_speech(
            corpus.SENTENCES[r["sentence_id"]], r["voice"], prosody, r["render_seed"]
        )
        assert r["audio"].dtype == np.float32
        np.testing.assert_array_equal(r["audio"], again)
        name = f"validation/{r['label']}_{r['speaker']}_s{r['sentence_id']:03d}.wav"
        assert len(r["audio"]) != sf.info(str(tiny / name)).frames  # another rate, another length
    with pytest.raises(ValueError, match="split"):
        corpus.habit_sweep(params, "dev", progress=False)
    with pytest.raises(ValueError, match="level"):
        corpus.habit_sweep(params, level=1.5, progress=False)


def test_validation_voices_are_new_speakers_in_the_corpus_style(tiny: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import outside_corpus

    names = [v.name for v in corpus.VALIDATION_VOICES]
    used = {v.name for v in corpus.CORPUS_VOICES} | set(corpus.BABBLE_VOICES)
    used |= set(outside_corpus.VOICES)
    variants = {name.partition("+")[2] for name in used}
    assert len(set(names)) == 8 and not {n.partition("+")[2] for n in names} & variants
    assert sorted(v.gender for v in corpus.VALIDATION_VOICES) == ["female"] * 4 + ["male"] * 4
    params = json.loads((tiny / "corpus.json").read_text())["params"]
    rows = corpus.validation_voices(params, with_audio=False, progress=False)
    assert len(rows) == 8 * 16  # each says as many sentences as a corpus speaker, x 4 emotions
    for k, name in enumerate(names):
        mine = [r for r in rows if r["voice"] == name]
        assert {r["speaker"] for r in mine} == {f"val{k:02d}"}
        assert sorted({r["label"] for r in mine}) == sorted(corpus.EMOTIONS)
        assert abs(mine[0]["rate_offset"]) <= 12 and abs(mine[0]["pitch_offset"]) <= 10
    assert len({r["rate_offset"] for r in rows}) == 8  # habits of their own
    assert rows == corpus.validation_voices(params, with_audio=False, progress=False)
    rendered = corpus.validation_voices(params, progress=False)
    for r in rendered[::16]:  # every voice speaks, and the row is its own recipe
        assert np.sqrt(np.mean(r["audio"] ** 2)) > 0.005, r["voice"]
        prosody = corpus.Prosody(**{c: r[c] for c in corpus.PROSODY_CUES})
        again = corpus.render_speech(
            corpus.SENTENCES[r["sentence_id"]], r["voice"], prosody, r["render_seed"]
        )
        np.testing.assert_array_equal(r["audio"], again)


def test_extra_train_voices_are_new_to_every_held_out_set() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import outside_corpus

    extra = corpus.EXTRA_TRAIN_VOICES
    names = [v.name for v in extra]
    assert len(set(names)) == len(names) == 40
    # any prefix is gender balanced (interleaved), like the corpus voices
    assert [v.gender for v in extra] == ["male", "female"] * 20
    speakers = corpus._plan_speakers(0, 20)
    held_out = {s.voice.name for s in speakers if s.split != "train"}
    held_out |= {v.name for v in corpus.VALIDATION_VOICES} | set(outside_corpus.VOICES)
    every = held_out | {v.name for v in corpus.CORPUS_VOICES} | set(corpus.BABBLE_VOICES)
    assert not set(names) & every

    def variant(name: str) -> str:
        return name.partition("+")[2]

    # no variant (timbre) of a validation, test, new-validation or outside-corpus voice
    assert not {variant(n) for n in names} & {variant(n) for n in held_out}
    train_variants = {variant(s.voice.name) for s in speakers if s.split == "train"}
    for v in extra:  # the female ones reuse training speakers' variants (eSpeak has no more)
        assert v.gender == "male" or variant(v.name) in train_variants, v.name


def test_extra_train_voices_add_training_speakers_and_change_nothing_else(
    tiny: Path, tmp_path: Path
) -> None:
    more = corpus.build_corpus(tmp_path / "more", seed=0, extra_train_voices=2, **TINY)
    params = json.loads((more / "corpus.json").read_text())["params"]
    assert params["extra_train_voices"] == 2
    assert "extra_train_voices" not in json.loads((tiny / "corpus.json").read_text())["params"]
    base, extended = _hashes(tiny), _hashes(more)
    audio = {k: v for k, v in base.items() if k.endswith(".wav")}
    assert {k: extended[k] for k in audio} == audio  # every earlier file byte-identical
    new = sorted(set(extended) - set(base))
    assert new and all(k.startswith("train/") and "_ext0" in k for k in new)
    assert len(new) == 2 * 16  # as many sentences as a corpus speaker, x 4 emotions
    rows = _read_csv(more / "metadata.csv")
    held_out = [r for r in rows if r["split"] != "train"]
    assert held_out == [r for r in _read_csv(tiny / "metadata.csv") if r["split"] != "train"]
    ext = [r for r in rows if r["speaker"].startswith("ext")]
    assert {r["speaker"] for r in ext} == {"ext00", "ext01"}
    assert all(r["split"] == "train" for r in ext)
    assert sorted({r["label"] for r in ext}) == sorted(corpus.EMOTIONS)
    card = (more / "README.md").read_text()
    assert "--extra-train-voices 2" in card and corpus.EXTRA_TRAIN_VOICES[1].name in card
    info = json.loads((more / "corpus.json").read_text())
    assert (
        info["counts"]["train"]
        == json.loads((tiny / "corpus.json").read_text())["counts"]["train"] + 2 * 16
    )
    # the recipe of every extra file is public like the corpus's own
    recipe = {r["file_name"]: r for r in corpus.utterance_prosody(params)}
    r = recipe[new[0]]
    prosody = corpus.Prosody(**{c: r[c] for c in corpus.PROSODY_CUES})
    again = corpus.render_speech(
        corpus.SENTENCES[r["sentence_id"]], r["voice"], prosody, r["render_seed"]
    )
    written, _ = sf.read(more / new[0], dtype="float32")
    np.testing.assert_allclose(written, np.clip(again, -1, 1), atol=1.0 / 32768 + 1e-6)
    # ensure_corpus keeps such a build apart from the plain one and reuses it
    assert corpus.ensure_corpus(more, seed=0, extra_train_voices=2, **TINY) == more
    assert _hashes(more) == extended
