"""The project's metrics as ``evaluate`` modules, loadable offline from the package.

``evaluate.load("f1")`` fetches its script from the Hub at run time; ``evaluate.load(PATH)``
loads a local module folder without any network. Each metric here is one ``evaluate.Metric``
class that calls the one implementation in :mod:`merit.metrics` (so the module, training and
the evaluation tables can never disagree), shipped as a module folder
``merit/metric_modules/<name>/<name>.py`` with its card (``README.md``)::

    import evaluate
    from merit.evaluate_metrics import module_path

    ssnr = evaluate.load(module_path("segmental_snr"))
    ssnr.compute(predictions=[enhanced], references=[clean], sample_rate=16000)

or :func:`load` (the same, cached). Training's validation metrics and the evaluation tables'
emotion and CCC figures go through these modules; the per-utterance enhancement scores of the
tables (needed for the paired tests) call :mod:`merit.metrics` directly, i.e. the same code.
``python -m merit.hub publish-metric NAME --repo-id USER/NAME`` uploads a module as a Hub
metric Space (it needs the ``merit`` package where it runs).

Enhancement modules take one signal per example (``predictions``: the estimate, ``references``:
the clean speech) and return the mean over examples (``nan`` examples left out, as the tables
do) with the count; the emotion module takes label ids and ``num_labels``; ``ccc`` takes one
number per example (one dimension at a time).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import datasets
import evaluate
import numpy as np

from merit import metrics

__all__ = [
    "CCC",
    "METRIC_MODULES",
    "PESQ",
    "STOI",
    "EmotionRecognition",
    "SISDR",
    "SegmentalSNR",
    "compute",
    "dimension_scores",
    "emotion_scores",
    "load",
    "module_path",
]

_ROOT = Path(__file__).resolve().parent / "metric_modules"
_CITATION_LOIZOU = (
    "@book{loizou2013speech, title={Speech Enhancement: Theory and Practice}, "
    "author={Loizou, Philipos C.}, edition={2}, publisher={CRC Press}, year={2013}}"
)
_SIGNALS = datasets.Features(
    {
        "predictions": datasets.Sequence(datasets.Value("float32")),
        "references": datasets.Sequence(datasets.Value("float32")),
    }
)


def _metric_info(
    description: str, citation: str, inputs: str, features: datasets.Features
) -> evaluate.MetricInfo:
    return evaluate.MetricInfo(
        description=description,
        citation=citation,
        inputs_description=inputs,
        features=features,
    )


def _pairs_of(value_type: str) -> datasets.Features:
    """One prediction and one reference of ``value_type`` per example."""
    return datasets.Features(
        {"predictions": datasets.Value(value_type), "references": datasets.Value(value_type)}
    )


def _mean_of(scores: list[float]) -> dict[str, float]:
    finite = [s for s in scores if math.isfinite(s)]
    return {"mean": float(np.mean(finite)) if finite else math.nan, "count": len(finite)}


class _SignalMetric(evaluate.Metric):
    """One enhancement score per (estimate, clean) pair, averaged."""

    description = ""
    citation = ""

    def _info(self) -> evaluate.MetricInfo:
        return _metric_info(
            self.description,
            self.citation,
            "predictions: enhanced signals; references: clean signals (same length each); "
            "sample_rate: Hz (default 16000)",
            _SIGNALS,
        )

    def _score(self, clean: np.ndarray, estimate: np.ndarray, sample_rate: int) -> float:
        raise NotImplementedError

    def _compute(self, predictions, references, sample_rate: int = 16000) -> dict[str, float]:
        return _mean_of(
            [
                self._score(np.asarray(ref), np.asarray(pred), sample_rate)
                for pred, ref in zip(predictions, references, strict=True)
            ]
        )


class SegmentalSNR(_SignalMetric):
    description = (
        "Segmental SNR (dB) as Loizou's comp_snr.m: 30 ms Hann frames, 75 % overlap, per-frame "
        "SNR clipped to [-10, 35] dB, plain mean (merit.metrics.segmental_snr)."
    )
    citation = _CITATION_LOIZOU

    def _score(self, clean, estimate, sample_rate):
        return metrics.segmental_snr(clean, estimate, sample_rate)


class SISDR(_SignalMetric):
    description = "Scale-invariant SDR (dB), Le Roux et al. 2019 (merit.metrics.si_sdr)."
    citation = "Le Roux, Wisdom, Erdogan, Hershey: SDR - half-baked or well done? ICASSP 2019."

    def _score(self, clean, estimate, sample_rate):
        return metrics.si_sdr(clean, estimate)


class PESQ(_SignalMetric):
    description = (
        "PESQ MOS-LQO: wide-band P.862.2 at 16 kHz, narrow-band at 8 kHz, other rates "
        "resampled to 16 kHz; silent signals are undefined (merit.metrics.pesq_score)."
    )
    citation = "ITU-T Recommendation P.862.2 (2007)."

    def _score(self, clean, estimate, sample_rate):
        return metrics.pesq_score(clean, estimate, sample_rate)


class STOI(_SignalMetric):
    description = (
        "Short-time objective intelligibility (Taal et al. 2011) via pystoi; undefined where "
        "pystoi would return a stand-in value (merit.metrics.stoi_score)."
    )
    citation = "Taal, Hendriks, Heusdens, Jensen: An algorithm for intelligibility ... 2011."

    def _score(self, clean, estimate, sample_rate):
        return metrics.stoi_score(clean, estimate, sample_rate)


class EmotionRecognition(evaluate.Metric):
    """Accuracy, macro F1 and UAR over all ``num_labels`` classes (an absent class counts 0)."""

    def _info(self) -> evaluate.MetricInfo:
        return _metric_info(
            "Accuracy, F1-macro and UAR (macro recall) of emotion classes, macro averages "
            "over all num_labels classes (merit.metrics.ser_metrics).",
            "",
            "predictions, references: label ids; num_labels: classes",
            _pairs_of("int64"),
        )

    def _compute(self, predictions, references, num_labels: int | None = None):
        if num_labels is None:
            raise ValueError("give num_labels: macro averages run over every class")
        return metrics.ser_metrics(predictions, references, num_labels)


class CCC(evaluate.Metric):
    """Lin's concordance correlation coefficient of one rated dimension."""

    def _info(self) -> evaluate.MetricInfo:
        return _metric_info(
            "Concordance correlation coefficient (Lin 1989), population moments "
            "(merit.metrics.ccc).",
            "Lin: A concordance correlation coefficient to evaluate reproducibility. "
            "Biometrics 1989.",
            "predictions, references: one number per example",
            _pairs_of("float64"),
        )

    def _compute(self, predictions, references) -> dict[str, float]:
        return {"ccc": metrics.ccc(predictions, references)}


#: Module folder name -> class (the module file imports the class, nothing else).
METRIC_MODULES: dict[str, type[evaluate.Metric]] = {
    "segmental_snr": SegmentalSNR,
    "si_sdr": SISDR,
    "pesq": PESQ,
    "stoi": STOI,
    "emotion_recognition": EmotionRecognition,
    "ccc": CCC,
}


def module_path(name: str) -> str:
    """The folder ``evaluate.load`` takes for metric ``name`` (one of :data:`METRIC_MODULES`)."""
    if name not in METRIC_MODULES:
        raise ValueError(f"unknown metric module {name!r}; one of {sorted(METRIC_MODULES)}")
    return str(_ROOT / name)


@functools.cache
def load(name: str) -> evaluate.EvaluationModule:
    """``evaluate.load(module_path(name))``, once per process (offline, no Hub access; kept in
    memory, so several processes never share a cache file)."""
    return evaluate.load(module_path(name), keep_in_memory=True)


def compute(name: str, **kwargs: Any) -> dict[str, float]:
    """``load(name).compute(**kwargs)``: how training and evaluation call the modules."""
    return load(name).compute(**kwargs)


def emotion_scores(predictions: Any, references: Any, num_labels: int) -> dict[str, float]:
    """Accuracy, F1-macro and UAR through the ``emotion_recognition`` module."""
    return compute(
        "emotion_recognition",
        predictions=np.asarray(predictions).reshape(-1).tolist(),
        references=np.asarray(references).reshape(-1).tolist(),
        num_labels=num_labels,
    )


def dimension_scores(predictions: Any, references: Any, names: Any) -> dict[str, float]:
    """``ccc`` (mean) and ``ccc_<name>`` of ``(N, D)`` ratings through the ``ccc`` module."""

    def one(predicted: np.ndarray, rated: np.ndarray) -> float:
        return compute("ccc", predictions=predicted.tolist(), references=rated.tolist())["ccc"]

    return metrics.ccc_metrics(predictions, references, names, score=one)
