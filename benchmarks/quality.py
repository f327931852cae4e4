"""Quality of Sparse MERIT against its baselines, over several training seeds (issue 6).

Systems, all trained by ``merit.training.main`` (what ``python train.py`` runs) on the embedded
eSpeak corpus on the same pretrained encoder (Whisper tiny.en, ``train.py``'s default
backbone) with one budget (steps, batch) and ``train.py``'s default recipe otherwise (two stages,
whole utterances, learning rates, schedule), and the same seeds:

* ``sparse``: Sparse MERIT (top-k routed experts, SER + SE);
* ``dense``: dense MERIT (every expert on every frame);
* ``naive-mtl``: naive multi-task learning (one shared layer for both tasks);
* ``ser-only``: emotion recognition alone, trained on the same noisy speech;
* ``cascade``: SE pre-processing, an SE-only model's output classified by the ``ser-only``
  model (:class:`merit.evaluation.CascadeSystem`); its SSNR is the SE-only model's.

That is ``--suite baselines`` (the default). ``--suite release`` (issue 13) trains instead
Sparse MERIT, the authors' architecture (``train.py --preset release``) and two ablations of it
that change one block each: learned gates (``--router_weighting probability`` with our
auxiliary losses) and our weighted sum of layers (``--integration weighted_sum``); it tests
learned - hard gates, concatenation - weighted sum and ours - the preset, and writes
``quality_release.*``. Its full budget is 60 steps (the BLSTM SE head makes a step about 4x
dearer), about 70 minutes on 2 cores.

Every system is scored by :func:`merit.evaluation.evaluate_systems` on one frozen copy of the
test speakers (:func:`merit.evaluation.build_test_sets`, i.e. :func:`merit.data.build_eval_sets`)
at -5/0/5/10 dB of seen and unseen noise and clean. Models are trained for a fixed number of
steps without validation-based checkpoint selection, so no system gets extra tuning.

Statistics: mean and sample standard deviation over seeds; relative improvement of Sparse
MERIT over the cascade and naive MTL at -5 dB; a paired test per cell between Sparse MERIT and
each baseline. F1-macro: paired bootstrap over test utterances (one resample applied to both
systems and all seeds; the statistic is the seed-averaged F1 difference). SSNR: Wilcoxon
signed-rank test over test utterances on the per-utterance SSNR difference averaged over the
paired seeds. Both measure test-set sampling noise given the trained models; the spread over
training seeds is what the ``±`` columns show (three seeds are too few for a test over seeds).

    python benchmarks/quality.py --quick   # pipeline check: < 10 min on 2 free cores
    python benchmarks/quality.py           # the benchmark: 55 min measured on one core

Budgets (:data:`BUDGETS`): full = 120 steps of batch 16 per system and seed (the first 60 with
the encoder frozen), 160 of the 240 test utterances (evenly spaced: every speaker and emotion)
per condition; quick = 8 steps and 32 utterances, still 3 seeds. Both torch threads by
default (``--threads``). A step with the encoder training costs about 2.3 s on 2 cores, one
with it frozen about 0.9 s, so the full budget is about 3 min per training: 15 trainings and
the evaluation take about an hour.

Writes ``benchmarks/results/quality.md``, ``quality.csv``, ``quality.json`` (per-seed rows,
statistics and the command) and ``quality_f1_vs_snr.png``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from merit.evaluation import (  # noqa: E402
    TABLE_METRICS,
    UNPROCESSED,
    CascadeSystem,
    ModelSystem,
    System,
    UnprocessedInput,
    column_title,
    evaluate_systems,
    parse_condition,
    table_columns,
)
from merit.preparation import build_test_sets  # noqa: E402

#: Trained per seed; the cascade reuses ``se-only`` and ``ser-only``.
TRAINED = ("sparse", "dense", "naive-mtl", "ser-only", "se-only")
#: Evaluated systems, in table order.
SYSTEMS = ("sparse", "dense", "naive-mtl", "ser-only", "cascade")
BASELINES = ("cascade", "naive-mtl", "dense", "ser-only")
#: ``train.py --preset release`` with the auxiliary losses of ours, for the learned gate.
_RELEASE = ("--preset", "release")
_LEARNED_GATE = (
    *("--router_weighting", "probability", "--load_balance_coef", "0.01"),
    *("--router_z_loss_coef", "0.001"),
)
DISPLAY = {
    "sparse": "Sparse MERIT",
    "dense": "Dense MERIT",
    "naive-mtl": "Naive MTL",
    "ser-only": "SER-only (noisy training)",
    "cascade": "SE -> SER cascade",
    "release": "Release preset (hard gates, concat)",
    "release-learned-gate": "Release preset, learned gates",
    "release-weighted-sum": "Release preset, weighted sum",
    UNPROCESSED: "Unprocessed input",
}
METRICS = ("f1_macro", "ssnr")
#: Sparse MERIT's relative improvement at -5 dB reported by the paper (MSP-Podcast, WavLM).
PAPER_IMPROVEMENT = {
    ("cascade", "f1_macro"): 12.0,
    ("naive-mtl", "f1_macro"): 3.4,
    ("cascade", "ssnr"): 28.2,
    ("naive-mtl", "ssnr"): 20.0,
}
ALPHA = 0.05
#: Below this baseline SSNR (in magnitude) a relative SSNR gain is flagged as unstable.
UNSTABLE_SSNR_DB = 1.0
HARDEST_SNR = -5.0


@dataclass(frozen=True)
class Budget:
    """One training budget for every system, plus the size of the evaluation.

    Everything else is ``train.py``'s default recipe (the one chosen on validation for the
    default run), so the systems differ only in what they are. The full budget is what fits
    15 trainings and 3 evaluations in about an hour on 2 cores; it is much shorter than the
    default run's, so absolute figures are below that run's.
    """

    steps: int
    batch_size: int
    backbone_frozen_steps: int
    test_utterances: int | None
    bootstrap_resamples: int


BUDGETS = {
    "full": Budget(
        steps=120,
        batch_size=16,
        backbone_frozen_steps=60,
        test_utterances=160,
        bootstrap_resamples=2000,
    ),
    "quick": Budget(
        steps=8,
        batch_size=16,
        backbone_frozen_steps=4,
        test_utterances=32,
        bootstrap_resamples=1000,
    ),
}


@dataclass(frozen=True)
class Suite:
    """One comparison: what is trained (``train.py`` arguments per system), what is scored,
    which pairs are tested, and where the report goes.

    ``pairs`` are ``(system, reference)``: each test is ``system - reference``; a ``†`` in
    the tables marks the reference of a pair whose system is ``sparse``.
    """

    name: str
    title: str
    trained: Mapping[str, tuple[str, ...]]
    systems: tuple[str, ...]
    pairs: tuple[tuple[str, str], ...]
    budgets: Mapping[str, Budget]
    stem: str
    description: str
    #: The -5 dB relative-improvement table against the cascade and naive MTL.
    improvements: bool = False


SUITES = {
    "baselines": Suite(
        name="baselines",
        title="Sparse MERIT vs baselines",
        trained={variant: ("--variant", variant) for variant in TRAINED},
        systems=SYSTEMS,
        pairs=tuple(("sparse", baseline) for baseline in BASELINES),
        budgets=BUDGETS,
        stem="quality",
        description="The cascade classifies the SE-only model's output with the SER-only "
        "model; its SSNR is the SE-only model's.",
        improvements=True,
    ),
    # Issue 13: the authors' architecture (train.py --preset release) next to ours, and the two
    # questions it raises, each one block changed on the preset. The release's BLSTM SE head
    # makes a step about 4x dearer than ours (5.3 s at batch 16 measured), so the budget is half
    # the baselines' to fit 12 trainings in about an hour.
    "release": Suite(
        name="release",
        title="Sparse MERIT vs the authors' release preset",
        trained={
            "sparse": ("--variant", "sparse"),
            "release": _RELEASE,
            "release-learned-gate": (*_RELEASE, *_LEARNED_GATE),
            "release-weighted-sum": (*_RELEASE, "--integration", "weighted_sum"),
        },
        systems=("sparse", "release", "release-learned-gate", "release-weighted-sum"),
        pairs=(
            ("release-learned-gate", "release"),
            ("release", "release-weighted-sum"),
            ("sparse", "release"),
        ),
        budgets={
            "full": Budget(
                steps=60,
                batch_size=16,
                backbone_frozen_steps=30,
                test_utterances=96,
                bootstrap_resamples=2000,
            ),
            "quick": BUDGETS["quick"],
        },
        stem="quality_release",
        description="Release preset: `train.py --preset release` (a LayerNorm per layer and "
        "all layers concatenated (5 x 384 on tiny.en), 3 plain experts (1,920 -> 1,536 -> 384), "
        "top-1 gates with the release's hard argmax "
        "mask, which gives the gates no gradient, their SER head and BLSTM SE head, no "
        "auxiliary losses). *Learned gates*: the same with each expert's output scaled by its "
        "gate probability and our load-balancing and z-losses (`--router_weighting "
        "probability`), so the gates train. *Weighted sum*: the same as the release preset "
        "with our learned weighted sum of layers instead of the concatenation "
        "(`--integration weighted_sum`). Same recipe for all four (the defaults of "
        "`train.py`); the release's own recipe (5e-5, backbone x0.5, 20 epochs) is "
        "`configs/paper.yaml`.",
    ),
}


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``) of the finite values.

    A seed whose metric is undefined (``nan``) is left out rather than poisoning the mean; the
    deviation of a single value is ``nan`` (undefined), not a misleading 0.
    """
    finite = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if finite.size == 0:
        return math.nan, math.nan
    std = float(finite.std(ddof=1)) if finite.size > 1 else math.nan
    return float(finite.mean()), std


def summarize(
    rows: Sequence[Mapping[str, Any]], metrics: Sequence[str] = METRICS
) -> dict[tuple[str, str], dict[str, dict[str, Any]]]:
    """Per-seed evaluation rows -> ``{(system, condition): {metric: {mean, std, values}}}``.

    ``values`` keeps the per-seed numbers in seed order, so the JSON stays auditable.
    """
    grouped: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for row in rows:
        grouped.setdefault((row["system"], row["condition"]), []).append(row)
    summary: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for key, group in grouped.items():
        group = sorted(group, key=lambda r: r.get("seed", 0))
        cell = {}
        for metric in metrics:
            values = [r[metric] for r in group if metric in r]
            if values:
                mean, std = mean_std(values)
                cell[metric] = {"mean": mean, "std": std, "values": values}
        summary[key] = cell
    return summary


def relative_improvement(new: float, base: float) -> float:
    """``100 * (new - base) / |base|``: percent gain, with the sign of the raw difference.

    ``|base|`` keeps the sign meaningful when the baseline is negative (SSNR at -5 dB often
    is); a zero baseline has no relative scale (``nan``).
    """
    if not (math.isfinite(new) and math.isfinite(base)) or base == 0.0:
        return math.nan
    return 100.0 * (new - base) / abs(base)


def _per_seed(array: Any, name: str) -> np.ndarray:
    """A ``[seeds, utterances]`` view of one system's per-utterance results."""
    out = np.asarray(array)
    if out.ndim == 1:
        out = out[None, :]
    if out.ndim != 2 or out.shape[1] == 0:
        raise ValueError(f"{name} must be [utterances] or [seeds, utterances], got {out.shape}")
    return out


def _macro_f1(weights: np.ndarray, predicted: np.ndarray, refs: np.ndarray, classes: int):
    """Macro F1 under utterance weights ``[resamples, n]`` (bootstrap counts), all classes
    counted (an absent class scores 0, as in :func:`merit.metrics.ser_metrics`)."""
    total = np.zeros(weights.shape[0])
    for label in range(classes):
        hit = weights @ ((predicted == label) & (refs == label)).astype(float)
        support = weights @ (predicted == label).astype(float) + weights @ (refs == label).astype(
            float
        )
        total += np.divide(2.0 * hit, support, out=np.zeros_like(hit), where=support > 0)
    return total / classes


def paired_bootstrap_f1(
    pred_a: Any,
    pred_b: Any,
    refs: Any,
    num_labels: int,
    *,
    num_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """Paired bootstrap test of the F1-macro difference ``a - b`` over test utterances.

    ``pred_a``/``pred_b``: predicted ids, ``[utterances]`` or ``[seeds, utterances]`` with
    seed ``s`` of ``a`` paired with seed ``s`` of ``b``; ``refs``: ``[utterances]``. Each
    resample draws utterances with replacement and applies the same draw to both systems and
    every seed; the statistic is the seed-averaged difference. Two-sided p-value: twice the
    smaller tail beyond 0, with the +1 correction so it is never 0.
    """
    a, b = _per_seed(pred_a, "pred_a"), _per_seed(pred_b, "pred_b")
    refs = np.asarray(refs).reshape(-1)
    if a.shape != b.shape or a.shape[1] != refs.size:
        raise ValueError(
            f"shapes do not pair: pred_a {a.shape}, pred_b {b.shape}, refs {refs.shape}"
        )
    if num_labels < 1 or num_resamples < 1:
        raise ValueError("num_labels and num_resamples must be positive")
    n = refs.size
    ones = np.ones((1, n))
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n, np.full(n, 1.0 / n), size=num_resamples).astype(float)
    observed = np.mean(
        [
            _macro_f1(ones, a[s], refs, num_labels)[0] - _macro_f1(ones, b[s], refs, num_labels)[0]
            for s in range(a.shape[0])
        ]
    )
    deltas = np.mean(
        [
            _macro_f1(draws, a[s], refs, num_labels) - _macro_f1(draws, b[s], refs, num_labels)
            for s in range(a.shape[0])
        ],
        axis=0,
    )
    below = (np.count_nonzero(deltas <= 0) + 1) / (num_resamples + 1)
    above = (np.count_nonzero(deltas >= 0) + 1) / (num_resamples + 1)
    low, high = np.percentile(deltas, [2.5, 97.5])
    return {
        "delta": float(observed),
        "p_value": float(min(1.0, 2.0 * min(below, above))),
        "ci_low": float(low),
        "ci_high": float(high),
        "utterances": int(n),
        "seeds": int(a.shape[0]),
    }


def paired_wilcoxon(values_a: Any, values_b: Any) -> dict[str, float]:
    """Wilcoxon signed-rank test of per-utterance scores ``a`` vs ``b`` (e.g. SSNR).

    Inputs are ``[utterances]`` or ``[seeds, utterances]``; each utterance's difference is
    averaged over the paired seeds first (the seeds of one utterance are not independent
    samples). Utterances without a finite score in every seed are left out; identical systems
    give ``p = 1``.
    """
    from scipy.stats import wilcoxon

    a, b = _per_seed(values_a, "values_a"), _per_seed(values_b, "values_b")
    if a.shape != b.shape:
        raise ValueError(f"shapes do not pair: {a.shape} vs {b.shape}")
    diff = (a.astype(float) - b.astype(float)).mean(axis=0)
    diff = diff[np.isfinite(diff)]
    if diff.size == 0:
        raise ValueError("no utterance has a finite score for both systems")
    if not np.any(diff):
        p_value = 1.0
    else:
        p_value = float(wilcoxon(diff, zero_method="wilcox", alternative="two-sided").pvalue)
    return {
        "delta": float(diff.mean()),
        "median_delta": float(np.median(diff)),
        "p_value": p_value,
        "utterances": int(diff.size),
        "seeds": int(a.shape[0]),
    }


# --------------------------------------------------------------------------------------------
# Training and evaluation
# --------------------------------------------------------------------------------------------


class Stopwatch:
    """Wall and CPU seconds of a block: on a shared machine the CPU time of this process is
    the number that predicts the run time on free cores (one thread: wall = CPU)."""

    def __enter__(self) -> Stopwatch:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = {
            "wall": round(time.perf_counter() - self._wall, 1),
            "cpu": round(time.process_time() - self._cpu, 1),
        }

    def __str__(self) -> str:
        return f"{self.seconds['wall']:.0f} s ({self.seconds['cpu']:.0f} s CPU)"


def train_args(
    system: Sequence[str], seed: int, budget: Budget, out: Path, progress: bool
) -> list[str]:
    """``train.py`` arguments: the system's own, the shared budget, fixed steps, no selection
    on validation."""
    return [
        *system,
        *("--seed", str(seed), "--output_dir", str(out)),
        *("--max_steps", str(budget.steps)),
        *("--per_device_train_batch_size", str(budget.batch_size)),
        *("--backbone_frozen_steps", str(budget.backbone_frozen_steps)),
        *("--eval_strategy", "no", "--load_best_model_at_end", "False"),
        *("--save_strategy", "no", "--do_predict", "False", "--report_to", "none"),
        *("--logging_steps", str(max(1, budget.steps // 5))),
        *("--disable_tqdm", str(not progress)),
    ]


def training_settings(budget: Budget) -> dict[str, Any]:
    """The ``train.py`` settings behind the budget, as its own parser resolves them (its
    defaults included), so the report states what was run."""
    from merit.training import parse_args as parse_train_args
    from merit.training import precision_name
    from modeling_merit import MeritConfig

    model_args, data_args, args = parse_train_args(
        train_args(("--variant", "sparse"), 0, budget, Path("unused"), progress=False)
    )
    defaults = MeritConfig()
    return {
        "backbone": model_args.backbone,
        "hidden_size": model_args.hidden_size or defaults.hidden_size,
        "expert_hidden_size": model_args.expert_hidden_size or defaults.expert_hidden_size,
        "num_experts": model_args.num_experts,
        "router_top_k": model_args.router_top_k,
        "snr_range": list(data_args.snr_range),
        "clean_prob": data_args.clean_prob,
        "max_train_seconds": data_args.max_train_seconds,
        "learning_rate": args.learning_rate,
        "backbone_learning_rate_factor": args.backbone_learning_rate_factor,
        "lr_scheduler_type": str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)),
        "warmup_steps": args.warmup_steps,
        "weight_decay": args.weight_decay,
        "max_grad_norm": args.max_grad_norm,
        "label_smoothing_factor": args.label_smoothing_factor,
        "precision": precision_name(args),
    }


def train_seed(
    seed: int, suite: Suite, budget: Budget, work: Path, progress: bool, log: Callable[..., None]
) -> tuple[dict[str, torch.nn.Module], dict[str, dict[str, float]]]:
    """The suite's models for one seed, and their training wall and CPU seconds."""
    from merit.training import main as train_main
    from modeling_merit import MeritModel

    models, seconds = {}, {}
    for name, system in suite.trained.items():
        out = work / f"{name}-seed{seed}"
        log(f"training {name} (seed {seed}, {budget.steps} steps)", True)
        with Stopwatch() as watch:
            train_main(train_args(system, seed, budget, out, progress))
        seconds[name] = watch.seconds
        models[name] = MeritModel.from_pretrained(out).eval()
        log(f"trained {name} (seed {seed}) in {watch}")
    return models, seconds


def evaluate_seed(
    seed: int,
    models: Mapping[str, torch.nn.Module],
    eval_sets: Mapping[str, Dataset],
    *,
    device: str,
    with_unprocessed: bool,
    progress: bool,
    suite: Suite = SUITES["baselines"],
) -> dict[str, Any]:
    """Rows, SER decisions and per-utterance SSNR of every system for one seed."""
    plain = {name: ModelSystem(model, device=device) for name, model in models.items()}
    systems: dict[str, System] = {name: plain[name] for name in suite.systems if name in plain}
    if "cascade" in suite.systems:
        systems["cascade"] = CascadeSystem(plain["se-only"], plain["ser-only"])
    if with_unprocessed:
        systems[UNPROCESSED] = UnprocessedInput()
    result = evaluate_systems(systems, eval_sets, batch_size=8, progress=progress)
    return {
        "rows": [dict(row, seed=seed) for row in result.rows],
        "decisions": result.decisions,
        "label_names": result.label_names,
        "ssnr": {
            name: {condition: np.asarray(s["ssnr"]) for condition, s in by_condition.items()}
            for name, by_condition in result.utterance_scores.items()
        },
    }


def pair_key(system: str, reference: str) -> str:
    """How a tested pair is named in the report and its JSON (``system - reference``)."""
    return f"{system} - {reference}"


def significance(
    per_seed: Sequence[Mapping[str, Any]],
    conditions: Sequence[str],
    resamples: int,
    pairs: Sequence[tuple[str, str]] = SUITES["baselines"].pairs,
) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """``{metric: {pair_key: {condition: test}}}``, each test of ``system - reference``."""
    tests: dict[str, dict[str, dict[str, dict[str, float]]]] = {m: {} for m in METRICS}
    for system, reference in pairs:
        key = pair_key(system, reference)
        for condition in conditions:
            labels = per_seed[0]["label_names"]
            if labels[system] != labels[reference]:
                raise ValueError(f"{system} and {reference} number the emotions differently")
            refs = per_seed[0]["decisions"][system][condition][1]
            pred = {
                name: [run["decisions"][name][condition][0] for run in per_seed]
                for name in (system, reference)
            }
            tests["f1_macro"].setdefault(key, {})[condition] = paired_bootstrap_f1(
                pred[system],
                pred[reference],
                refs,
                len(labels[system]),
                num_resamples=resamples,
            )
            if all(name in run["ssnr"] for run in per_seed for name in (system, reference)):
                tests["ssnr"].setdefault(key, {})[condition] = paired_wilcoxon(
                    [run["ssnr"][system][condition] for run in per_seed],
                    [run["ssnr"][reference][condition] for run in per_seed],
                )
    return tests


def improvements_at(
    summary: Mapping[tuple[str, str], Mapping[str, Mapping[str, Any]]], snr: float
) -> dict[str, dict[str, dict[str, float]]]:
    """Sparse MERIT's relative gain (%) over the cascade and naive MTL at ``snr`` dB: seen,
    unseen, and their average; with the raw differences and the paper's figure.

    The average is taken over the two relative gains, not computed from averaged scores: at
    -5 dB the seen and unseen SSNRs can have opposite signs, and their mean, near 0 dB, would
    make any difference look like a huge relative change.
    """
    out: dict[str, dict[str, dict[str, float]]] = {}
    names = {noise: f"{noise}_{snr:g}dB" for noise in ("seen", "unseen")}
    for baseline in ("cascade", "naive-mtl"):
        for metric in METRICS:
            means = {
                (system, noise): summary.get((system, condition), {})
                .get(metric, {})
                .get("mean", math.nan)
                for system in ("sparse", baseline)
                for noise, condition in names.items()
            }
            entry: dict[str, float] = {}
            for noise in ("seen", "unseen"):
                new, base = means["sparse", noise], means[baseline, noise]
                entry[f"{noise}_percent"] = relative_improvement(new, base)
                entry[f"{noise}_difference"] = new - base
                entry[f"{noise}_baseline"] = base
            for kind in ("percent", "difference"):
                entry[f"average_{kind}"] = (entry[f"seen_{kind}"] + entry[f"unseen_{kind}"]) / 2
            entry["paper_percent"] = PAPER_IMPROVEMENT[baseline, metric]
            out.setdefault(baseline, {})[metric] = entry
    return out


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _number(value: float, scale: float, decimals: int, sign: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value * scale:{'+' if sign else ''}.{decimals}f}"


def format_mean_std_table(
    summary: Mapping[tuple[str, str], Mapping[str, Mapping[str, Any]]],
    metric: str,
    systems: Sequence[str],
    conditions: Sequence[str],
    *,
    marks: Mapping[tuple[str, str], str] | None = None,
) -> str:
    """Markdown table of ``mean ± std`` (display scale of ``TABLE_METRICS``); systems without
    the metric are left out; ``marks[(system, condition)]`` is appended to a cell."""
    _, scale, decimals = TABLE_METRICS[metric]
    lines = [
        "| System | " + " | ".join(column_title(c) for c in conditions) + " |",
        "|---|" + "---:|" * len(conditions),
    ]
    for system in systems:
        cells = [summary.get((system, c), {}).get(metric) for c in conditions]
        if all(cell is None for cell in cells):
            continue
        texts = []
        for condition, cell in zip(conditions, cells, strict=True):
            if cell is None or not math.isfinite(cell["mean"]):
                texts.append("-")
                continue
            text = _number(cell["mean"], scale, decimals)
            if math.isfinite(cell["std"]):
                text += f" ± {_number(cell['std'], scale, decimals)}"
            texts.append(text + (marks or {}).get((system, condition), ""))
        lines.append(f"| {DISPLAY.get(system, system)} | " + " | ".join(texts) + " |")
    return "\n".join(lines) + "\n"


def format_significance_table(
    tests: Mapping[str, Mapping[str, Mapping[str, float]]], metric: str, conditions: Sequence[str]
) -> str:
    """Rows: tested pairs (:func:`pair_key`); cells: the difference and its p-value, ``*`` if
    < 0.05."""
    _, scale, decimals = TABLE_METRICS[metric]
    lines = [
        "| Pair (first minus second) | " + " | ".join(column_title(c) for c in conditions) + " |",
        "|---|" + "---:|" * len(conditions),
    ]
    for key, by_condition in tests.items():
        cells = []
        for condition in conditions:
            test = by_condition.get(condition)
            if test is None:
                cells.append("-")
                continue
            star = "*" if test["p_value"] < ALPHA else ""
            cells.append(
                f"{_number(test['delta'], scale, decimals, sign=True)} "
                f"(p={test['p_value']:.3g}){star}"
            )
        names = " - ".join(DISPLAY.get(name, name) for name in key.split(" - "))
        lines.append(f"| {names} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def format_improvements(improvements: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    lines = [
        f"| Sparse MERIT over | Metric | Seen {HARDEST_SNR:g} dB | Unseen {HARDEST_SNR:g} dB "
        "| Average | Paper (MSP-Podcast) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    units = {"f1_macro": ("F1-macro", 100.0, "pt"), "ssnr": ("SSNR", 1.0, "dB")}
    for baseline, by_metric in improvements.items():
        for metric, entry in by_metric.items():
            title, scale, unit = units[metric]
            cells = []
            for part in ("seen", "unseen", "average"):
                bases = [
                    entry[f"{n}_baseline"] for n in ("seen", "unseen") if part in (n, "average")
                ]
                near_zero = metric == "ssnr" and min(map(abs, bases)) < UNSTABLE_SSNR_DB
                cells.append(
                    f"{_number(entry[f'{part}_percent'], 1.0, 1, sign=True)} %"
                    + ("‡" if near_zero else "")
                    + f" ({_number(entry[f'{part}_difference'], scale, 2, sign=True)} {unit})"
                )
            lines.append(
                f"| {DISPLAY[baseline]} | {title} | "
                + " | ".join(cells)
                + f" | +{entry['paper_percent']:.1f} % |"
            )
    return "\n".join(lines) + "\n"


def write_summary_csv(
    summary: Mapping[tuple[str, str], Mapping[str, Mapping[str, Any]]],
    path: Path,
    systems: Sequence[str] = SYSTEMS,
) -> None:
    """Long CSV: one line per metric, system and condition, raw units (F1 as a fraction)."""
    order = {name: i for i, name in enumerate((*systems, UNPROCESSED))}
    columns = table_columns({condition for _, condition in summary})
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(
            ["metric", "system", "condition", "noise", "snr_db", "mean", "std", "seeds", "per_seed"]
        )
        for metric in METRICS:
            for system in sorted({s for s, _ in summary}, key=lambda s: order.get(s, 99)):
                for condition in columns:
                    cell = summary.get((system, condition), {}).get(metric)
                    if cell is None:
                        continue
                    noise, snr = parse_condition(condition)
                    writer.writerow(
                        [
                            metric,
                            system,
                            condition,
                            noise,
                            "" if snr is None else f"{snr:g}",
                            f"{cell['mean']:.6g}",
                            f"{cell['std']:.6g}",
                            len(cell["values"]),
                            ";".join(f"{v:.6g}" for v in cell["values"]),
                        ]
                    )


def plot_f1_bands(
    summary: Mapping[tuple[str, str], Mapping[str, Mapping[str, Any]]],
    systems: Sequence[str],
    path: Path,
    title: str,
) -> None:
    """F1-macro vs SNR, mean line and ±std band over seeds; seen solid, unseen dashed; clean
    as a marker with an error bar at the right."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.0, 5.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    snrs = sorted({parse_condition(c)[1] for _, c in summary} - {None})
    clean_x = snrs[-1] + 5.0 if snrs else 0.0
    for number, system in enumerate(systems):
        color = f"C{number % 10}"
        for noise, style in (("seen", "-"), ("unseen", "--")):
            cells = [summary.get((system, f"{noise}_{s:g}dB"), {}).get("f1_macro") for s in snrs]
            points = [(s, c["mean"], c["std"]) for s, c in zip(snrs, cells, strict=True) if c]
            if not points:
                continue
            xs, means, stds = (np.asarray(v, dtype=float) for v in zip(*points, strict=True))
            ax.plot(xs, means, style, color=color, marker="o", label=f"{DISPLAY[system]} ({noise})")
            stds = np.nan_to_num(stds)
            ax.fill_between(xs, means - stds, means + stds, color=color, alpha=0.12, linewidth=0)
        clean = summary.get((system, "clean"), {}).get("f1_macro")
        if clean:
            dodge = 0.4 * (number - (len(systems) - 1) / 2)  # keep the error bars apart
            ax.errorbar(
                [clean_x + dodge],
                [clean["mean"]],
                yerr=[np.nan_to_num(clean["std"])],
                color=color,
                marker="*",
                markersize=11,
                capsize=3,
            )
    ax.set_xticks([*snrs, clean_x], labels=[f"{s:g}" for s in snrs] + ["clean"])
    ax.set_xlabel("SNR (dB)")
    ax.set_ylabel("F1-macro (mean ± std over seeds)")
    ax.set_ylim(0.0, 1.0)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _sparse_marks(tests: Mapping[str, Mapping[str, Mapping[str, float]]]) -> dict:
    """``†`` on the reference of every ``sparse - reference`` pair with p < 0.05."""
    prefix = pair_key("sparse", "")
    return {
        (key.removeprefix(prefix), condition): "†"
        for key, by_condition in tests.items()
        if key.startswith(prefix)
        for condition, test in by_condition.items()
        if test["p_value"] < ALPHA
    }


def write_report(report: dict[str, Any], out: Path) -> dict[str, Path]:
    suite = SUITES[report.get("suite", "baselines")]
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "md": out / f"{suite.stem}.md",
        "csv": out / f"{suite.stem}.csv",
        "json": out / f"{suite.stem}.json",
        "plot": out / f"{suite.stem}_f1_vs_snr.png",
    }
    summary = report["summary"]
    conditions = table_columns({c for _, c in summary})
    tests = report["significance"]
    marks, ssnr_marks = _sparse_marks(tests["f1_macro"]), _sparse_marks(tests["ssnr"])
    budget, settings = report["budget"], report["training_settings"]
    quick = report["mode"] == "quick"
    # Stated since 2026-12-06; the JSON of earlier reports lacks them.
    smoothing = settings.get("label_smoothing_factor")
    recipe_extras = "".join(
        f", {text}"
        for text in (
            None if smoothing is None else f"label smoothing {smoothing:g}",
            settings.get("precision"),
        )
        if text
    )
    md = [
        f"# Quality benchmark: {suite.title}" + (" (--quick run)" if quick else ""),
        "",
        f"Command: `{report['command']}`; {report['elapsed_minutes']:.1f} min "
        f"({report['cpu_minutes']:.1f} min CPU time, the wall time on free cores) on "
        f"{report['device']}; seeds {', '.join(map(str, report['seeds']))}; "
        f"{report['test_utterances']} test utterances per condition.",
        "",
    ]
    if quick:
        md += [
            "> **--quick mode**: a pipeline check with a tiny budget "
            f"({budget['steps']} steps) and a subset of the test set. The numbers are not a "
            f"result; run `python benchmarks/quality.py --suite {suite.name}` for the "
            "benchmark.",
            "",
        ]
    md += [
        "Corpus: the embedded eSpeak NG corpus (synthetic acted emotions, 4 classes; test "
        "speakers never heard in training), seen noises (white, pink, babble, hum) mixed in at "
        "training time, unseen ones (brown, rumble, clicks) only at test time. Every system "
        "starts from the same pretrained encoder, OpenAI's Whisper tiny.en "
        f"(`train.py --backbone {settings['backbone']}`, the packaged offline weights; MERIT "
        f"layers {settings['hidden_size']} / {settings['expert_hidden_size']} wide, "
        f"{settings['num_experts']} experts, top-{settings['router_top_k']} routing for Sparse "
        "MERIT) and is trained by `merit.training.main` with one budget: "
        f"{budget['steps']} steps of batch {budget['batch_size']}, the encoder frozen for the "
        f"first {budget['backbone_frozen_steps']} and then trained at "
        f"{settings['backbone_learning_rate_factor']:g} x the learning rate "
        f"{settings['learning_rate']:g}, "
        + (
            "whole utterances"
            if settings["max_train_seconds"] is None
            else f"{settings['max_train_seconds']:g} s crops"
        )
        + f" ({settings['lr_scheduler_type']}, warm-up {settings['warmup_steps']:g}, weight decay "
        f"{settings['weight_decay']:g}{recipe_extras}), training SNR uniform in "
        f"[{settings['snr_range'][0]:g}, {settings['snr_range'][1]:g}] dB with "
        f"{100 * settings['clean_prob']:g} % clean examples, final weights (no selection on "
        f"validation). {suite.description}",
        "",
        "This is a small-scale, synthetic-speech setting: it is **not** the paper's setup "
        "(WavLM-Large on MSP-Podcast), and its numbers are not comparable with the paper's.",
        "",
        "## F1-macro (%), mean ± std over seeds",
        "",
        format_mean_std_table(summary, "f1_macro", suite.systems, conditions, marks=marks),
        "## Segmental SNR (dB), mean ± std over seeds",
        "",
        format_mean_std_table(
            summary, "ssnr", [*suite.systems, UNPROCESSED], conditions, marks=ssnr_marks
        ),
        "†: Sparse MERIT differs from this system in this cell with p < 0.05 (tests below).",
        "",
    ]
    if suite.improvements:
        md += [
            f"## Relative improvement of Sparse MERIT at {HARDEST_SNR:g} dB",
            "",
            "Percent of the baseline's mean over seeds, `100 (sparse - baseline) / |baseline|`, "
            "with the raw difference in brackets; *Average*: the mean of the seen and unseen "
            "gains. The paper's figures (MSP-Podcast, WavLM backbone, -5 dB) are shown for "
            "reference only: different corpus, model scale and training budget. Relative SSNR "
            "gains are unstable when the baseline's SSNR is near 0 dB (‡: |baseline| < "
            f"{UNSTABLE_SSNR_DB:g} dB); read the dB differences.",
            "",
            format_improvements(report["relative_improvement"]),
        ]
    md += [
        "## Paired significance tests (first system minus second)",
        "",
        "F1-macro (points): paired bootstrap over test utterances "
        f"({budget['bootstrap_resamples']} resamples; the same resample for both systems and "
        "all seeds; statistic = seed-averaged F1 difference; two-sided p). SSNR (dB): "
        "Wilcoxon signed-rank over test utterances of the per-utterance SSNR difference "
        "averaged over the paired seeds (seed s of one system with seed s of the other). "
        "`*`: p < 0.05, uncorrected for the "
        f"{sum(len(c) for t in tests.values() for c in t.values())} tests (about 1 in 20 "
        "is expected by chance when there is no difference). The tests measure test-set "
        "sampling noise for these trained models; training-seed variation is the ± above.",
        "",
        "### F1-macro",
        "",
        format_significance_table(tests["f1_macro"], "f1_macro", conditions),
        "### Segmental SNR",
        "",
        format_significance_table(tests["ssnr"], "ssnr", conditions),
        f"Plot: `{paths['plot'].name}` (mean ± std bands; seen solid, unseen dashed). "
        f"Raw per-seed rows: `{paths['json'].name}`; table as CSV: `{paths['csv'].name}`.",
        "",
    ]
    paths["md"].write_text("\n".join(md), encoding="utf-8")
    write_summary_csv(summary, paths["csv"], suite.systems)
    serializable = dict(
        report,
        summary=[{"system": s, "condition": c, **cell} for (s, c), cell in summary.items()],
    )
    paths["json"].write_text(json.dumps(serializable, indent=2, allow_nan=True) + "\n")
    plot_f1_bands(
        summary,
        suite.systems,
        paths["plot"],
        "F1-macro vs SNR, mean ± std over seeds (solid: seen noise, dashed: unseen)"
        + (" [--quick]" if quick else ""),
    )
    return paths


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    return f"CPU ({platform.machine()}, {torch.get_num_threads()} torch thread(s))"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--suite",
        choices=sorted(SUITES),
        default="baselines",
        help="baselines: Sparse MERIT against dense, naive MTL, SER-only and the cascade "
        "(issue 6); release: against the authors' preset and its two ablations (issue 13)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny budget: a pipeline check")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, help="override the training steps of the mode")
    parser.add_argument(
        "--test_utterances", type=int, help="override the number of test utterances"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--work_dir", type=Path, help="keep the trained models here")
    parser.add_argument(
        "--threads",
        type=int,
        default=2,
        help="torch and BLAS threads (default 2; use 1 when other jobs share the cores: "
        "oversubscribed threads ran training steps 5-20x slower, measured)",
    )
    parser.add_argument("--no_progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if len(args.seeds) < 2 or len(set(args.seeds)) != len(args.seeds):
        parser.error("give at least 2 distinct --seeds (a standard deviation needs two)")
    for name in ("steps", "test_utterances", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be positive, got {value}")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from threadpoolctl import threadpool_limits

    args = parse_args(argv)
    argv_list = list(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    # BLAS too: numpy's dot products in the SE metrics (SI-SDR) ran 45x slower with
    # OpenBLAS' 2 threads than with 1 on the busy 2-core machine (measured).
    with threadpool_limits(limits=args.threads):
        return run(args, argv_list)


def run(args: argparse.Namespace, argv_list: list[str]) -> dict[str, Any]:
    """Train, evaluate, test and write the report (see the module docstring)."""
    suite = SUITES[args.suite]
    budget = suite.budgets["quick" if args.quick else "full"]
    if args.steps is not None:
        budget = replace(budget, steps=args.steps)
    if args.test_utterances is not None:
        budget = replace(budget, test_utterances=args.test_utterances)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    started, started_cpu = time.perf_counter(), time.process_time()
    total = len(args.seeds) * len(suite.trained)
    trainings = iter(range(1, total + 1))

    def log(message: str, new_training: bool = False) -> None:
        minutes = (time.perf_counter() - started) / 60
        if new_training:
            message = f"[{next(trainings)}/{total}] {message}"
        print(f"[quality {minutes:5.1f} min] {message}", flush=True)

    with tempfile.TemporaryDirectory(prefix="merit-quality-") as scratch:
        work = args.work_dir or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        log("building the frozen test sets")
        eval_sets, dataset_name = build_test_sets(
            max_utterances=budget.test_utterances, cache_dir=work / "test-sets"
        )
        per_seed, train_seconds, eval_seconds = [], {}, {}
        for number, seed in enumerate(args.seeds):
            models, seconds = train_seed(seed, suite, budget, work, not args.no_progress, log)
            train_seconds[str(seed)] = seconds
            log(f"evaluating seed {seed}")
            with Stopwatch() as watch:
                per_seed.append(
                    evaluate_seed(
                        seed,
                        models,
                        eval_sets,
                        device=device,
                        with_unprocessed=number == 0,
                        progress=not args.no_progress,
                        suite=suite,
                    )
                )
            eval_seconds[str(seed)] = watch.seconds
            log(f"evaluated seed {seed} in {watch}")
            del models
    rows = [row for run in per_seed for row in run["rows"]]
    summary = summarize(rows)
    conditions = table_columns({c for _, c in summary})
    log("significance tests")
    report = {
        "command": "python benchmarks/quality.py" + "".join(f" {a}" for a in argv_list),
        "suite": suite.name,
        "mode": "quick" if args.quick else "full",
        "budget": asdict(budget),
        "seeds": list(args.seeds),
        "dataset": dataset_name,
        "device": _device_name(device),
        "test_utterances": len(next(iter(eval_sets.values()))),
        "training_settings": training_settings(budget),
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "summary": summary,
        "relative_improvement": improvements_at(summary, HARDEST_SNR) if suite.improvements else {},
        "significance": significance(per_seed, conditions, budget.bootstrap_resamples, suite.pairs),
        "paper_improvement_percent": {f"{b}/{m}": v for (b, m), v in PAPER_IMPROVEMENT.items()},
        "rows": rows,
    }
    report["elapsed_minutes"] = round((time.perf_counter() - started) / 60, 2)
    report["cpu_minutes"] = round((time.process_time() - started_cpu) / 60, 2)
    paths = write_report(report, args.out)
    print(paths["md"].read_text(encoding="utf-8"))
    log("wrote " + ", ".join(str(p) for p in paths.values()))
    return report


if __name__ == "__main__":
    main()
