"""Metric tests against hand-computed values, plus error handling for bad input."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from merit.metrics import (
    ccc,
    ccc_metrics,
    confusion_matrix_figure,
    pesq_score,
    se_metrics,
    segmental_snr,
    ser_metrics,
    si_sdr,
    stoi_score,
)

SR = 16000


def speech_like(sample_rate: int = SR, seconds: float = 3.0) -> np.ndarray:
    """Voiced-speech stand-in: gliding 120 Hz harmonic tone with 4 Hz syllable envelope."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    f0 = 120.0 + 10.0 * np.sin(2 * np.pi * 0.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    harmonics = sum(np.sin(k * phase) / k for k in range(1, 30))
    envelope = np.clip(np.sin(2 * np.pi * 4.0 * t), 0.0, None) ** 2
    x = harmonics * envelope
    return 0.3 * x / np.abs(x).max()


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return speech_like()


@pytest.fixture(scope="module")
def noisy(speech: np.ndarray) -> np.ndarray:
    return speech + 0.05 * np.random.default_rng(0).standard_normal(speech.shape[0])


# ------------------------------------------------------------------ segmental SNR


def test_ssnr_constant_error_fraction_gives_20_db_everywhere() -> None:
    clean = np.random.default_rng(1).standard_normal(SR)
    # error = 0.1 * clean in every frame -> 10*log10(1 / 0.01) = 20 dB per frame.
    assert segmental_snr(clean, 0.9 * clean) == pytest.approx(20.0, abs=1e-6)
    # error = 0.5 * clean -> 10*log10(4) = 6.0206 dB.
    assert segmental_snr(clean, 1.5 * clean) == pytest.approx(10 * math.log10(4), abs=1e-6)


def test_ssnr_clips_to_bounds() -> None:
    clean = np.random.default_rng(2).standard_normal(SR)
    assert segmental_snr(clean, clean) == 35.0
    # error = 100 * clean -> -40 dB per frame, clipped to -10.
    assert segmental_snr(clean, -99.0 * clean) == -10.0
    assert segmental_snr(clean, clean, max_db=30.0) == 30.0
    assert segmental_snr(clean, -99.0 * clean, min_db=-20.0) == -20.0


def test_ssnr_two_frames_by_hand() -> None:
    # 1 kHz, 4 ms frames, no overlap: L = H = 4; 12 samples -> (12 - 4) // 4 = 2 frames
    # (Loizou's count), so samples 8..11 are never scored.
    clean = np.array([1, 1, 1, 1, 1, 2, 3, 4, 5, 5, 5, 5], dtype=float)
    estimate = np.array([0, 1, 1, 1, 0.5, 1, 1.5, 2, 1e3, 1e3, 1e3, 1e3])
    # MATLAB hanning(4) = 0.5 * (1 - cos(2 pi k / 5)), k = 1..4 -> [w1, w2, w2, w1].
    w1 = 0.5 * (1 - math.cos(2 * math.pi / 5))  # 0.3454915
    w2 = 0.5 * (1 - math.cos(4 * math.pi / 5))  # 0.9045085
    # Frame 1: error [1, 0, 0, 0] on an all-ones frame: the window makes it 11.96 dB, not
    # the 6.02 dB an unwindowed frame would give.
    frame1 = 10 * math.log10((2 * w1**2 + 2 * w2**2) / w1**2)
    # Frame 2: estimate = clean / 2 -> error = clean / 2 -> 10 * log10(4).
    frame2 = 10 * math.log10(4)
    assert frame1 == pytest.approx(11.9612, abs=1e-4)
    expected = (frame1 + frame2) / 2  # 8.9909 dB
    assert expected == pytest.approx(8.9909, abs=1e-4)
    got = segmental_snr(clean, estimate, sample_rate=1000, frame_ms=4.0, overlap=0.0)
    assert got == pytest.approx(expected, abs=1e-6)


def test_ssnr_frame_count_matches_reference() -> None:
    # 1200 samples at 16 kHz: L=480, H=120, (1200-480)//120 = 6 frames covering [0, 1080).
    clean = np.random.default_rng(3).standard_normal(1200)
    estimate = clean.copy()
    estimate[1080:] = 0.0
    assert segmental_snr(clean, estimate) == 35.0
    # Samples just before 1080 are inside the last frame and do count.
    estimate[1000:1080] = 0.0
    assert segmental_snr(clean, estimate) < 35.0


def test_ssnr_silent_clean_scores_floor_and_torch_matches_numpy() -> None:
    assert segmental_snr(np.zeros(SR), np.zeros(SR)) == -10.0
    clean = np.random.default_rng(4).standard_normal(SR)
    estimate = clean + 0.3 * np.random.default_rng(5).standard_normal(SR)
    ref = segmental_snr(clean, estimate)
    assert segmental_snr(torch.tensor(clean), torch.tensor(estimate)) == pytest.approx(ref)
    assert segmental_snr(clean[None, :], estimate) == pytest.approx(ref)  # (1, T) squeezed


@pytest.mark.parametrize(
    ("clean", "estimate", "kwargs", "match"),
    [
        (np.ones(1000), np.ones(999), {}, "length mismatch"),
        (np.ones(500), np.ones(500), {}, "too short"),
        (np.array([]), np.array([]), {}, "empty"),
        (np.r_[np.ones(999), np.nan], np.ones(1000), {}, "NaN"),
        (np.ones(1000), np.r_[np.ones(999), np.inf], {}, "NaN or inf"),
        (np.ones((2, 1000)), np.ones((2, 1000)), {}, "1-D"),
        (np.ones(1000), np.ones(1000), {"overlap": 1.0}, "overlap"),
        (np.ones(1000), np.ones(1000), {"sample_rate": 0}, "sample_rate"),
        (np.ones(1000), np.ones(1000), {"min_db": 40.0}, "min_db"),
    ],
)
def test_ssnr_bad_input(clean, estimate, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        segmental_snr(clean, estimate, **kwargs)


# ------------------------------------------------------------------------- SI-SDR


def orthogonal_noise(ref: np.ndarray, snr_db: float, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal(ref.shape[0])
    noise -= noise.mean()
    noise -= np.dot(noise, ref) / np.dot(ref, ref) * ref
    target_energy = np.dot(ref, ref) / 10 ** (snr_db / 10)
    return noise * math.sqrt(target_energy / np.dot(noise, noise))


def test_si_sdr_exact_values_with_orthogonal_noise() -> None:
    ref = np.random.default_rng(6).standard_normal(SR)
    ref -= ref.mean()
    for snr_db in (10.0, 7.3, -3.0):
        estimate = ref + orthogonal_noise(ref, snr_db, seed=7)
        assert si_sdr(ref, estimate) == pytest.approx(snr_db, abs=1e-6)


def test_si_sdr_scale_and_offset_invariance() -> None:
    ref = np.random.default_rng(8).standard_normal(SR)
    estimate = ref + orthogonal_noise(ref - ref.mean(), 5.0, seed=9)
    base = si_sdr(ref, estimate)
    assert si_sdr(ref, 0.01 * estimate) == pytest.approx(base, abs=1e-6)
    assert si_sdr(ref, 37.0 * estimate + 2.5) == pytest.approx(base, abs=1e-6)
    assert si_sdr(3.0 * ref - 1.0, estimate) == pytest.approx(base, abs=1e-6)
    assert si_sdr(ref, 2.0 * ref) > 100.0  # rescaled perfect estimate: effectively +inf


def test_si_sdr_undefined_and_bad_input() -> None:
    with pytest.warns(RuntimeWarning, match="SI-SDR is undefined"):
        assert math.isnan(si_sdr(np.full(100, 0.5), np.ones(100)))
    with pytest.raises(ValueError, match="length mismatch"):
        si_sdr(np.ones(10), np.ones(11))
    with pytest.raises(ValueError, match="NaN"):
        si_sdr(np.array([1.0, np.nan]), np.ones(2))


# ------------------------------------------------------------------------ PESQ/STOI


def test_pesq_identical_high_noisy_lower(speech: np.ndarray, noisy: np.ndarray) -> None:
    clean_score = pesq_score(speech, speech)
    noisy_score = pesq_score(speech, noisy)
    assert clean_score > 4.0
    assert noisy_score < 3.0
    # 8 kHz uses narrowband P.862; other rates are resampled to 16 kHz wideband.
    speech_8k = speech_like(8000)
    assert pesq_score(speech_8k, speech_8k, sample_rate=8000) > 4.0
    speech_24k = speech_like(24000)
    assert pesq_score(speech_24k, speech_24k, sample_rate=24000) > 4.0


def test_pesq_silent_is_nan_and_short_raises(speech: np.ndarray) -> None:
    with pytest.warns(RuntimeWarning, match="clean signal is silent"):
        assert math.isnan(pesq_score(np.zeros_like(speech), speech))
    with pytest.warns(RuntimeWarning, match="estimate signal is silent"):
        assert math.isnan(pesq_score(speech, np.zeros_like(speech)))
    with pytest.raises(ValueError, match="at least 0.25 s"):
        pesq_score(speech[:3000], speech[:3000])


def test_stoi_identical_one_noisy_lower(speech: np.ndarray, noisy: np.ndarray) -> None:
    assert stoi_score(speech, speech) == pytest.approx(1.0, abs=1e-6)
    noisy_score = stoi_score(speech, noisy)
    assert 0.3 < noisy_score < 0.95
    extended = stoi_score(speech, noisy, extended=True)
    assert extended < noisy_score  # ESTOI is stricter than STOI on stationary noise
    assert stoi_score(torch.tensor(speech), torch.tensor(noisy)) == pytest.approx(noisy_score)


def test_stoi_undefined_cases_are_nan(speech: np.ndarray) -> None:
    with pytest.warns(RuntimeWarning, match="clean signal is silent"):
        assert math.isnan(stoi_score(np.zeros_like(speech), speech))
    short = speech[: int(0.2 * SR)]
    with pytest.warns(RuntimeWarning, match="fewer than 30"):
        assert math.isnan(stoi_score(short, short))
    # A silent estimate is a real (worst-case) result, not an undefined one.
    assert stoi_score(speech, np.zeros_like(speech)) == pytest.approx(0.0, abs=1e-6)


def test_se_metrics_combines_and_reports_improvement(speech: np.ndarray, noisy: np.ndarray) -> None:
    estimate = speech + 0.5 * (noisy - speech)  # halves the noise: +6.02 dB SI-SDR
    result = se_metrics(speech, estimate, noisy=noisy)
    assert set(result) == {
        "ssnr", "si_sdr", "pesq", "stoi",
        "noisy_ssnr", "noisy_si_sdr", "noisy_pesq", "noisy_stoi",
        "ssnr_improvement", "si_sdr_improvement",
    }  # fmt: skip
    assert result["ssnr"] == segmental_snr(speech, estimate)
    assert result["noisy_si_sdr"] == si_sdr(speech, noisy)
    assert result["ssnr_improvement"] == pytest.approx(result["ssnr"] - result["noisy_ssnr"])
    assert result["si_sdr_improvement"] == pytest.approx(20 * math.log10(2), abs=0.05)
    assert result["pesq"] > result["noisy_pesq"]
    assert result["stoi"] > result["noisy_stoi"]

    light = se_metrics(speech, estimate, with_pesq=False, with_stoi=False)
    assert set(light) == {"ssnr", "si_sdr"}
    with pytest.raises(ValueError, match="but noisy has 100"):
        se_metrics(speech, estimate, noisy=noisy[:100], with_pesq=False, with_stoi=False)


# ------------------------------------------------------------------------------ SER


def test_ser_metrics_by_hand() -> None:
    references = [0, 0, 1, 1, 2, 3]
    predictions = [0, 1, 1, 1, 2, 0]  # class 3 is never predicted
    # class 0: TP1 FP1 FN1 -> P=R=F1=0.5 | class 1: TP2 FP1 FN0 -> P=2/3 R=1 F1=0.8
    # class 2: TP1 FP0 FN0 -> F1=1      | class 3: TP0 FN1        -> R=0 F1=0
    result = ser_metrics(predictions, references, num_labels=4)
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert result["f1_macro"] == pytest.approx((0.5 + 0.8 + 1.0 + 0.0) / 4)
    assert result["uar"] == pytest.approx((0.5 + 1.0 + 1.0 + 0.0) / 4)
    # A fifth class absent from both still counts (as 0) in the macro averages.
    result5 = ser_metrics(torch.tensor(predictions), np.array(references), num_labels=5)
    assert result5["f1_macro"] == pytest.approx(2.3 / 5)
    assert result5["uar"] == pytest.approx(2.5 / 5)
    assert result5["accuracy"] == pytest.approx(4 / 6)


@pytest.mark.parametrize(
    ("predictions", "references", "match"),
    [
        ([0, 1, 4], [0, 1, 2], r"predictions contains class ids outside \[0, 3\): \[4\]"),
        ([0, 1], [0, 1, 2], "length mismatch"),
        ([0.5, 1, 2], [0, 1, 2], "integer class ids"),
        ([[0.1, 0.9, 0.0]], [1], "1-D"),
        ([], [], "empty"),
        ([0, float("nan"), 1], [0, 1, 2], "NaN"),
        ([0, 1, 2], [0, -1, 2], "references contains class ids outside"),
    ],
)
def test_ser_metrics_bad_input(predictions, references, match) -> None:
    with pytest.raises(ValueError, match=match):
        ser_metrics(predictions, references, num_labels=3)


def test_ccc_by_hand() -> None:
    references = [1.0, 2.0, 3.0, 4.0]
    assert ccc(references, references) == pytest.approx(1.0)
    # x=[2,2,4,5], y=[1,2,3,4]: means 3.25/2.5, var 1.6875/1.25, cov 1.375
    # -> 2*1.375 / (1.6875 + 1.25 + 0.75**2) = 2.75 / 3.5 = 11/14.
    assert ccc([2.0, 2.0, 4.0, 5.0], references) == pytest.approx(11 / 14)
    assert ccc(references, [2.0, 2.0, 4.0, 5.0]) == pytest.approx(11 / 14)
    # Constant shift by 1: Pearson stays 1, CCC = 2*1.25 / (2*1.25 + 1) = 5/7.
    assert ccc(np.array(references) + 1.0, references) == pytest.approx(5 / 7)
    # Mirrored about the shared mean 2.5: perfect disagreement.
    assert ccc(5.0 - np.array(references), references) == pytest.approx(-1.0)


def test_ccc_metrics_per_dimension_and_mean() -> None:
    rated = np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [4.0, 4.0]])
    # Arousal predicted as in the hand example (11/14), valence shifted by 1 (5/7).
    predicted = np.array([[2.0, 2.0], [2.0, 3.0], [4.0, 4.0], [5.0, 5.0]])
    out = ccc_metrics(predicted, rated, ["arousal", "valence"])
    assert out == pytest.approx(
        {"ccc": (11 / 14 + 5 / 7) / 2, "ccc_arousal": 11 / 14, "ccc_valence": 5 / 7}
    )
    with pytest.raises(ValueError, match=r"must both be \(N, 3\)"):
        ccc_metrics(predicted, rated, ["arousal", "valence", "dominance"])


def test_ccc_undefined_and_bad_input() -> None:
    with pytest.warns(RuntimeWarning, match="CCC is undefined"):
        assert math.isnan(ccc([2.0, 2.0], [2.0, 2.0]))
    with pytest.raises(ValueError, match="length mismatch"):
        ccc([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="inf"):
        ccc([1.0, np.inf], [1.0, 2.0])


def test_confusion_matrix_figure() -> None:
    names = ["angry", "happy", "neutral", "sad"]
    references = [0, 0, 0, 1, 1, 2]
    predictions = [0, 0, 1, 1, 2, 2]  # "sad" never occurs -> all-zero row
    fig = confusion_matrix_figure(predictions, references, names)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    expected = np.array([[2 / 3, 1 / 3, 0, 0], [0, 0.5, 0.5, 0], [0, 0, 1.0, 0], [0, 0, 0, 0]])
    np.testing.assert_allclose(ax.images[0].get_array(), expected)
    texts = [t.get_text() for t in ax.texts]
    assert len(texts) == 16
    assert texts[0] == "0.67\n(2)" and texts[10] == "1.00\n(1)"
    assert [t.get_text() for t in ax.get_xticklabels()] == names
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    assert buffer.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"

    with pytest.raises(ValueError, match="outside"):
        confusion_matrix_figure([0, 4], [0, 1], names)
    with pytest.raises(ValueError, match="duplicates"):
        confusion_matrix_figure([0], [0], ["a", "a"])
