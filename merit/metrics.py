"""Objective metrics for speech emotion recognition (SER) and speech enhancement (SE).

Every function takes numpy arrays, Python sequences or torch tensors (converted to float64
numpy on the CPU) and returns plain Python floats, so results can go straight into JSON,
`Trainer` logs or model cards.

Policy for inputs:

* Bad input raises ``ValueError`` naming the argument: empty arrays, NaN/inf values,
  multi-channel waveforms (mono 1-D only; a leading/trailing singleton axis such as
  ``(1, T)`` is squeezed), mismatched lengths, invalid sample rates, label ids outside
  ``[0, num_labels)``.
* A metric that is *undefined* for otherwise valid input (PESQ/STOI of a silent reference,
  SI-SDR of a constant reference, CCC of two identical constants) returns ``nan`` and emits
  a ``RuntimeWarning`` instead of crashing, so one silent file does not abort a whole
  evaluation run; aggregate with ``np.nanmean`` and report the count of ``nan``.

Heavy or optional dependencies (``pesq``, ``pystoi``, ``torchaudio``, ``matplotlib``) are
imported inside the functions that need them so ``import merit.metrics`` stays cheap.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "ccc",
    "ccc_metrics",
    "confusion_matrix_figure",
    "pesq_score",
    "se_metrics",
    "segmental_snr",
    "ser_metrics",
    "si_sdr",
    "stoi_score",
]

# PESQ (ITU-T P.862) is only defined at these rates: narrowband at 8 kHz, wideband at 16 kHz.
_PESQ_NATIVE_RATES = {8000: "nb", 16000: "wb"}
# The `pesq` C implementation refuses shorter buffers (BufferTooShortError).
_PESQ_MIN_SECONDS = 0.25


# --------------------------------------------------------------------------- validation


def _to_numpy(x: Any, name: str) -> np.ndarray:
    """Convert tensors/sequences to numpy without importing torch (duck-typed on `.detach`)."""
    if hasattr(x, "detach"):
        tensor = x.detach().cpu()
        # numpy has no bfloat16; widen every float tensor so `.numpy()` always works.
        if tensor.is_floating_point():
            tensor = tensor.double()
        x = tensor.numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name}: cannot convert to a numeric array ({err})") from err


def _check_finite_nonempty(arr: np.ndarray, name: str) -> None:
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"{name} must be real-valued numbers, got dtype {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf values")


def _vector(x: Any, name: str) -> np.ndarray:
    """A finite, non-empty 1-D float64 array (singleton axes squeezed)."""
    arr = _to_numpy(x, name)
    if arr.ndim > 1:
        arr = np.squeeze(arr)
    if arr.ndim != 1:
        raise ValueError(
            f"{name} must be 1-D (mono waveform or one value per item), got shape "
            f"{_to_numpy(x, name).shape}; mix multi-channel audio down to mono first"
        )
    _check_finite_nonempty(arr, name)
    return arr.astype(np.float64)


def _vector_pair(a: Any, b: Any, name_a: str, name_b: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate two 1-D inputs that must be aligned sample-by-sample (no silent trimming)."""
    va, vb = _vector(a, name_a), _vector(b, name_b)
    if va.shape[0] != vb.shape[0]:
        raise ValueError(
            f"length mismatch: {name_a} has {va.shape[0]} samples but {name_b} has "
            f"{vb.shape[0]}; align/trim them before scoring"
        )
    return va, vb


def _check_sample_rate(sample_rate: int) -> None:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)):
        raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive integer, got {sample_rate}")


def _is_silent(x: np.ndarray) -> bool:
    # Only exact digital silence breaks PESQ/STOI; even 1e-12-amplitude noise scores fine.
    return not np.any(x)


def _undefined(metric: str, reason: str) -> float:
    warnings.warn(f"{metric} is undefined ({reason}); returning nan", RuntimeWarning, stacklevel=3)
    return math.nan


def _label_ids(x: Any, name: str, num_labels: int) -> np.ndarray:
    arr = _to_numpy(x, name)
    if arr.ndim != 1:
        raise ValueError(
            f"{name} must be a 1-D sequence of class ids, got shape {arr.shape} "
            "(take argmax over logits first)"
        )
    _check_finite_nonempty(arr, name)
    if not np.all(np.equal(np.mod(arr, 1), 0)):
        raise ValueError(f"{name} must contain integer class ids")
    ids = arr.astype(np.int64)
    bad = ids[(ids < 0) | (ids >= num_labels)]
    if bad.size:
        raise ValueError(
            f"{name} contains class ids outside [0, {num_labels}): {sorted(set(bad.tolist()))}"
        )
    return ids


def _label_pair(
    predictions: Any, references: Any, num_labels: int
) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(num_labels, bool) or not isinstance(num_labels, (int, np.integer)):
        raise ValueError(f"num_labels must be a positive integer, got {num_labels!r}")
    if num_labels < 1:
        raise ValueError(f"num_labels must be a positive integer, got {num_labels}")
    preds = _label_ids(predictions, "predictions", num_labels)
    refs = _label_ids(references, "references", num_labels)
    if preds.shape[0] != refs.shape[0]:
        raise ValueError(
            f"length mismatch: predictions has {preds.shape[0]} items but references has "
            f"{refs.shape[0]}"
        )
    return preds, refs


# ------------------------------------------------------------------ speech enhancement


def segmental_snr(
    clean: Any,
    estimate: Any,
    sample_rate: int = 16000,
    frame_ms: float = 30.0,
    overlap: float = 0.75,
    min_db: float = -10.0,
    max_db: float = 35.0,
    eps: float = 1e-10,
) -> float:
    """Segmental SNR in dB, following Loizou's ``comp_snr.m`` (Speech Enhancement, 2nd ed.).

    Definition (chosen so numbers are comparable with the SE literature that uses that
    reference code, e.g. SEGAN/VoiceBank-DEMAND tables):

    * frame length ``L = round(frame_ms * sample_rate / 1000)`` (half rounds up, as in
      MATLAB), hop ``H = floor(L * (1 - overlap))``; defaults give 480/120 samples at 16 kHz;
    * frame count ``floor((N - L) / H)``: MATLAB's ``1:(N/H - L/H)``. This is one frame
      fewer than would fit, so the last ``H`` samples or so may never be scored; kept on
      purpose to reproduce the reference values;
    * both frames are multiplied by MATLAB's ``hanning(L)``, ``0.5 * (1 - cos(2 pi k / (L+1)))``
      for ``k = 1..L`` (no zero end-points);
    * per frame ``snr = 10 * log10(sum(c^2) / (sum((c - e)^2) + eps) + eps)``, clipped to
      ``[min_db, max_db]``; the result is the plain mean over frames (no VAD).

    Consequences of the reference definition: a perfect estimate scores ``max_db``; a silent
    clean signal scores ``min_db`` whatever the estimate. Inputs must have equal length (no
    silent trimming, which would hide misalignment); ``ValueError`` when shorter than
    ``L + H`` samples (zero frames).
    """
    clean_arr, est_arr = _vector_pair(clean, estimate, "clean", "estimate")
    _check_sample_rate(sample_rate)
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if min_db > max_db:
        raise ValueError(f"min_db ({min_db}) must not exceed max_db ({max_db})")
    frame_len = math.floor(frame_ms * sample_rate / 1000.0 + 0.5)
    # The tiny epsilon keeps e.g. 480 * (1 - 0.7) = 143.99999 from flooring to 143.
    hop = math.floor(frame_len * (1.0 - overlap) + 1e-9)
    if frame_len < 1 or hop < 1:
        raise ValueError(
            f"frame_ms={frame_ms} and overlap={overlap} give frame length {frame_len} and "
            f"hop {hop} samples at {sample_rate} Hz; both must be >= 1"
        )
    num_frames = (clean_arr.shape[0] - frame_len) // hop
    if num_frames < 1:
        raise ValueError(
            f"signals of {clean_arr.shape[0]} samples are too short for segmental SNR: need "
            f"at least {frame_len + hop} samples ({frame_len}-sample frames, hop {hop})"
        )
    window = 0.5 * (1.0 - np.cos(2.0 * np.pi * np.arange(1, frame_len + 1) / (frame_len + 1)))
    windows = np.lib.stride_tricks.sliding_window_view
    clean_frames = windows(clean_arr, frame_len)[::hop][:num_frames] * window
    est_frames = windows(est_arr, frame_len)[::hop][:num_frames] * window
    signal_energy = np.sum(clean_frames**2, axis=1)
    noise_energy = np.sum((clean_frames - est_frames) ** 2, axis=1)
    frame_snr = 10.0 * np.log10(signal_energy / (noise_energy + eps) + eps)
    return float(np.mean(np.clip(frame_snr, min_db, max_db)))


def si_sdr(reference: Any, estimate: Any, eps: float = 1e-8) -> float:
    """Scale-invariant SDR in dB (Le Roux et al., "SDR - half-baked or well done?", 2019).

    Both signals are made zero-mean, the reference is scaled by the optimal
    ``alpha = <estimate, reference> / ||reference||^2`` and
    ``SI-SDR = 10 log10(||alpha * reference||^2 / ||alpha * reference - estimate||^2)``.
    ``eps`` is added to the numerator and denominator of both ratios (as in torchmetrics) so
    a perfect estimate gives a large finite number instead of inf. A constant (e.g. silent)
    reference has no direction to project on: the metric is undefined, so ``nan`` with a
    ``RuntimeWarning``.
    """
    ref, est = _vector_pair(reference, estimate, "reference", "estimate")
    ref = ref - ref.mean()
    est = est - est.mean()
    ref_energy = float(np.dot(ref, ref))
    if ref_energy == 0.0:
        return _undefined("SI-SDR", "reference is constant/silent")
    alpha = (float(np.dot(est, ref)) + eps) / (ref_energy + eps)
    target = alpha * ref
    residual = est - target
    return float(
        10.0 * np.log10((np.dot(target, target) + eps) / (np.dot(residual, residual) + eps))
    )


def _resample(x: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    import torch
    import torchaudio.functional as taf

    return taf.resample(torch.from_numpy(x), orig_rate, new_rate).numpy()


def pesq_score(clean: Any, estimate: Any, sample_rate: int = 16000) -> float:
    """PESQ MOS-LQO (ITU-T P.862.2 wideband at 16 kHz, P.862 narrowband at 8 kHz).

    PESQ only exists at 8 and 16 kHz; any other rate is resampled to 16 kHz (torchaudio's
    band-limited sinc resampler) and scored wideband, so e.g. 48 kHz and 16 kHz versions of
    the same audio give comparable numbers. PESQ's level alignment divides by signal power,
    so if either signal is exact digital silence the score is undefined: ``nan`` with a
    ``RuntimeWarning`` (same when PESQ detects no utterance). Signals shorter than 0.25 s
    raise ``ValueError`` (the ITU implementation refuses them).
    """
    import pesq

    clean_arr, est_arr = _vector_pair(clean, estimate, "clean", "estimate")
    _check_sample_rate(sample_rate)
    if clean_arr.shape[0] < _PESQ_MIN_SECONDS * sample_rate:
        raise ValueError(
            f"PESQ needs at least {_PESQ_MIN_SECONDS} s of audio, got "
            f"{clean_arr.shape[0]} samples at {sample_rate} Hz"
        )
    if _is_silent(clean_arr) or _is_silent(est_arr):
        which = "clean" if _is_silent(clean_arr) else "estimate"
        return _undefined("PESQ", f"{which} signal is silent")
    if sample_rate not in _PESQ_NATIVE_RATES:
        clean_arr = _resample(clean_arr, sample_rate, 16000)
        est_arr = _resample(est_arr, sample_rate, 16000)
        sample_rate = 16000
    try:
        return float(pesq.pesq(sample_rate, clean_arr, est_arr, _PESQ_NATIVE_RATES[sample_rate]))
    except pesq.NoUtterancesError:
        return _undefined("PESQ", "no speech utterance detected in the clean signal")


def stoi_score(
    clean: Any, estimate: Any, sample_rate: int = 16000, extended: bool = False
) -> float:
    """STOI (Taal et al. 2011) or extended STOI (Jensen & Taal 2016) via ``pystoi``.

    ``pystoi`` resamples to 10 kHz internally, so any rate works. Where the score is
    undefined we return ``nan`` with a ``RuntimeWarning`` rather than pystoi's stand-ins
    (``0.0`` for a silent clean signal, ``1e-5`` when fewer than 30 non-silent frames
    (~0.4 s) remain), which would silently drag averages down. A silent *estimate* is a
    genuine worst case and keeps its real (near-zero) score.
    """
    from pystoi import stoi

    clean_arr, est_arr = _vector_pair(clean, estimate, "clean", "estimate")
    _check_sample_rate(sample_rate)
    if _is_silent(clean_arr):
        return _undefined("STOI", "clean signal is silent")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        score = float(stoi(clean_arr, est_arr, sample_rate, extended=extended))
    for warning in caught:
        if "Not enough STFT frames" in str(warning.message):
            return _undefined("STOI", "fewer than 30 non-silent frames (~0.4 s of speech)")
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return score


def se_metrics(
    clean: Any,
    estimate: Any,
    noisy: Any | None = None,
    sample_rate: int = 16000,
    with_pesq: bool = True,
    with_stoi: bool = True,
) -> dict[str, float]:
    """All SE metrics for one utterance, optionally with the unprocessed-input baseline.

    Keys: ``ssnr``, ``si_sdr`` and, when enabled, ``pesq`` and ``stoi`` (disabled metrics
    are left out rather than set to nan, so a missing key never looks like a failure).
    With ``noisy`` the same metrics of the noisy input are added with a ``noisy_`` prefix,
    plus ``ssnr_improvement`` and ``si_sdr_improvement`` (estimate minus noisy, in dB): the
    numbers SE papers report to show the model helps rather than merely scoring a clean-ish
    test set.
    """

    def scores(candidate: Any, name: str) -> dict[str, float]:
        clean_arr, cand = _vector_pair(clean, candidate, "clean", name)
        out = {
            "ssnr": segmental_snr(clean_arr, cand, sample_rate),
            "si_sdr": si_sdr(clean_arr, cand),
        }
        if with_pesq:
            out["pesq"] = pesq_score(clean_arr, cand, sample_rate)
        if with_stoi:
            out["stoi"] = stoi_score(clean_arr, cand, sample_rate)
        return out

    result = scores(estimate, "estimate")
    if noisy is not None:
        baseline = scores(noisy, "noisy")
        result.update({f"noisy_{key}": value for key, value in baseline.items()})
        result["ssnr_improvement"] = result["ssnr"] - baseline["ssnr"]
        result["si_sdr_improvement"] = result["si_sdr"] - baseline["si_sdr"]
    return result


# ------------------------------------------------------------ speech emotion recognition


def ser_metrics(predictions: Any, references: Any, num_labels: int) -> dict[str, float]:
    """Accuracy, macro F1 and UAR (unweighted average recall = macro recall) for SER.

    Macro averages run over *all* ``num_labels`` classes, not only those seen in this batch:
    a class absent from the references (and predictions) contributes 0 to F1 and UAR
    (scikit-learn ``zero_division=0``), so scores from different splits share one
    denominator and a collapsed model cannot look better by never meeting a class.

    Computed with scikit-learn: HF ``evaluate.load("f1")`` fetches its metric script from the
    Hub at run time and fails offline (checked: "Couldn't find a module script ... f1.py"),
    which would break evaluation on air-gapped machines and in CI.
    """
    preds, refs = _label_pair(predictions, references, num_labels)
    labels = list(range(num_labels))
    return {
        "accuracy": float(accuracy_score(refs, preds)),
        "f1_macro": float(f1_score(refs, preds, labels=labels, average="macro", zero_division=0)),
        "uar": float(recall_score(refs, preds, labels=labels, average="macro", zero_division=0)),
    }


def ccc(predictions: Any, references: Any) -> float:
    """Concordance correlation coefficient (Lin 1989) for dimensional emotion (e.g. arousal).

    ``2 cov(x, y) / (var(x) + var(y) + (mean(x) - mean(y))^2)`` with population (1/N)
    moments. Unlike Pearson it penalises bias and scale errors, which is why it is the
    standard for arousal/valence/dominance. Undefined (0/0, returns ``nan`` with a warning)
    only when both inputs are the same constant.
    """
    x, y = _vector_pair(predictions, references, "predictions", "references")
    x_mean, y_mean = x.mean(), y.mean()
    covariance = np.mean((x - x_mean) * (y - y_mean))
    denominator = x.var() + y.var() + (x_mean - y_mean) ** 2
    if denominator == 0.0:
        return _undefined("CCC", "predictions and references are the same constant")
    return float(2.0 * covariance / denominator)


def ccc_metrics(
    predictions: Any,
    references: Any,
    names: Sequence[str],
    score: Callable[[np.ndarray, np.ndarray], float] | None = None,
) -> dict[str, float]:
    """``ccc`` (mean over dimensions) and ``ccc_<name>`` per dimension of ``(N, D)`` arrays,
    the keys training logs and evaluation tables use. ``score`` computes one dimension's CCC
    (default :func:`ccc`; training passes the ``evaluate`` module's, which calls it)."""
    score = score or ccc
    predicted = np.asarray(predictions, dtype=np.float64)
    rated = np.asarray(references, dtype=np.float64)
    if predicted.shape != rated.shape or predicted.ndim != 2 or predicted.shape[1] != len(names):
        raise ValueError(
            f"predictions {predicted.shape} and references {rated.shape} must both be "
            f"(N, {len(names)}) for dimensions {list(names)}"
        )
    per_dimension = {
        f"ccc_{name}": score(predicted[:, i], rated[:, i]) for i, name in enumerate(names)
    }
    return {"ccc": float(np.mean(list(per_dimension.values()))), **per_dimension}


def confusion_matrix_figure(
    predictions: Any, references: Any, label_names: Sequence[str]
) -> Figure:
    """Row-normalised, annotated confusion matrix as a matplotlib ``Figure``.

    Rows are true classes normalised to sum to 1 (the diagonal is per-class recall, the
    numbers behind UAR); each cell shows that fraction and the raw count. Classes with no
    reference items get an all-zero row. The figure is built on an Agg canvas without
    pyplot, so it never touches the global backend or leaks figures in long runs; save it
    with ``fig.savefig(path)``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = [str(name) for name in label_names]
    if not names:
        raise ValueError("label_names is empty")
    if len(set(names)) != len(names):
        raise ValueError(f"label_names contains duplicates: {names}")
    n = len(names)
    preds, refs = _label_pair(predictions, references, n)
    counts = confusion_matrix(refs, preds, labels=list(range(n)))
    row_totals = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(
        counts, row_totals, out=np.zeros(counts.shape, dtype=np.float64), where=row_totals > 0
    )

    size = max(4.0, 0.9 * n + 2.0)
    fig = Figure(figsize=(size + 1.0, size))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n), labels=names, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(n), labels=names)
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    ax.set_title("Confusion matrix (rows normalised)")
    for i in range(n):
        for j in range(n):
            value = normalised[i, j]
            ax.text(
                j,
                i,
                f"{value:.2f}\n({counts[i, j]})",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if value > 0.5 else "black",
            )
    fig.tight_layout()
    return fig
