"""Benchmark trained systems on frozen noisy test sets and write the paper-style tables.

A *system* is anything with the small :class:`System` interface: a trained MERIT model
(:class:`ModelSystem`), the SE-then-SER pre-processing baseline (:class:`CascadeSystem`) or the
unprocessed noisy input (:class:`UnprocessedInput`, the SSNR floor every enhancer must beat).
:func:`evaluate_systems` runs each system over every condition of
:func:`merit.data.build_eval_sets` and returns plain rows (no pandas), so benchmark scripts can
average seeds themselves; :func:`write_report` turns them into ``table.md``, ``table.csv``,
``rows.json``, ``f1_vs_snr.png`` and 0 dB confusion matrices.

Command line (``python evaluate_models.py``)::

    python evaluate_models.py --models outputs/merit-sparse outputs/merit-dense \\
        --cascade outputs/merit-se-only outputs/merit-ser-only --out results/
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from datasets import Dataset
from tqdm.auto import tqdm

from merit.data import (
    check_labels,
    name_list,
    optional_column,
)
from merit.evaluate_metrics import dimension_scores, emotion_scores
from merit.metrics import confusion_matrix_figure, se_metrics
from merit.preparation import build_test_sets

__all__ = [
    "CascadeSystem",
    "EvaluationResult",
    "ModelSystem",
    "Prediction",
    "System",
    "UnprocessedInput",
    "column_title",
    "evaluate_systems",
    "format_markdown",
    "main",
    "parse_condition",
    "plot_f1_vs_snr",
    "table_columns",
    "utterance_se_scores",
    "write_report",
]

#: Metrics in the tables, in this order: key -> (title, scale for display, decimals).
TABLE_METRICS: dict[str, tuple[str, float, int]] = {
    "f1_macro": ("F1-macro (%)", 100.0, 1),
    "ccc": ("CCC (mean over dimensions)", 1.0, 3),
    "ssnr": ("Segmental SNR (dB)", 1.0, 2),
    "pesq": ("PESQ (wide-band)", 1.0, 2),
    "stoi": ("STOI", 1.0, 3),
}
#: Display name of the embedded corpus (dataset name in model cards).
#: Name of the unprocessed-input row (the SSNR of the noisy mixture itself).
UNPROCESSED = "unprocessed"
_CONDITION = re.compile(r"^(seen|unseen)_(-?\d+(?:\.\d+)?)dB$")
# Segmental SNR needs one 30 ms frame plus one hop (480 + 120 samples at 16 kHz).
_MIN_SSNR_SECONDS = 0.0375


# --------------------------------------------------------------------------------------------
# Systems
# --------------------------------------------------------------------------------------------


@dataclass
class Prediction:
    """What a system says about a batch: emotion logits, dimensional values ``(batch,
    len(dimension_names))`` and/or enhanced waveforms.

    ``enhanced`` holds one array per input, trimmed to that input's length.
    """

    logits: np.ndarray | None = None
    enhanced: list[np.ndarray] | None = None
    dimensions: np.ndarray | None = None


@runtime_checkable
class System(Protocol):
    """The interface :func:`evaluate_systems` needs: label names (``None`` without an emotion
    head), whether it enhances, and batched prediction on raw 16 kHz waveforms.

    A system may also have ``dimension_names`` (its dimensional outputs, in order); without
    that attribute it has none."""

    label_names: list[str] | None
    enhances: bool

    def predict(self, waveforms: Sequence[np.ndarray]) -> Prediction: ...


class ModelSystem:
    """A MERIT model (any variant) behind the :class:`System` interface."""

    def __init__(self, model: torch.nn.Module, device: str | torch.device | None = None) -> None:
        from modeling_merit import MeritFeatureExtractor

        config = model.config
        self.model = model.eval()
        self.device = (
            torch.device(device) if device is not None else next(model.parameters()).device
        )
        self.model.to(self.device)
        self.feature_extractor = MeritFeatureExtractor(sampling_rate=config.sampling_rate)
        self.label_names = [str(name) for name in config.label_names] or None
        self.enhances = config.has_enhancement_head
        self.dimension_names = config.predicted_dimensions or None

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | None = None) -> ModelSystem:
        """Load a saved model folder (or Hub id) as written by ``train.py``."""
        from merit.inference import load_model

        model, _ = load_model(str(path), device=device or "cpu")
        return cls(model)

    @torch.no_grad()
    def predict(self, waveforms: Sequence[np.ndarray]) -> Prediction:
        inputs = self.feature_extractor(
            list(waveforms),
            sampling_rate=self.feature_extractor.sampling_rate,
            return_tensors="pt",
        )
        outputs = self.model(
            input_values=inputs["input_values"].to(self.device),
            attention_mask=inputs["attention_mask"].to(self.device),
        )
        logits = None if outputs.logits is None else outputs.logits.float().cpu().numpy()
        enhanced = None
        if self.enhances and outputs.enhanced_waveform is not None:
            full = outputs.enhanced_waveform.float().cpu().numpy()
            enhanced = [full[i, : len(w)] for i, w in enumerate(waveforms)]
        dimensions = None
        if self.dimension_names is not None and outputs.dimensions is not None:
            dimensions = outputs.dimensions.float().cpu().numpy()
        return Prediction(
            logits=logits if self.label_names is not None else None,
            enhanced=enhanced,
            dimensions=dimensions,
        )


class UnprocessedInput:
    """The noisy input passed through unchanged: the SE floor (no emotion head)."""

    label_names = None
    enhances = True

    def predict(self, waveforms: Sequence[np.ndarray]) -> Prediction:
        return Prediction(enhanced=[np.asarray(w, dtype=np.float32) for w in waveforms])


class CascadeSystem:
    """SE pre-processing baseline: ``enhancer``'s output is what ``recognizer`` classifies.

    Its SE metrics are the enhancer's, its SER metrics the recognizer's on enhanced speech.
    """

    def __init__(self, enhancer: System, recognizer: System) -> None:
        if not enhancer.enhances:
            raise ValueError("the cascade's first system must enhance speech (an SE model)")
        if recognizer.label_names is None:
            raise ValueError("the cascade's second system must classify emotions (an SER model)")
        self.enhancer = enhancer
        self.recognizer = recognizer
        self.label_names = recognizer.label_names
        self.dimension_names = getattr(recognizer, "dimension_names", None)
        self.enhances = True

    def predict(self, waveforms: Sequence[np.ndarray]) -> Prediction:
        enhanced = self.enhancer.predict(waveforms).enhanced
        assert enhanced is not None  # guaranteed by the check in __init__
        recognized = self.recognizer.predict(enhanced)
        return Prediction(
            logits=recognized.logits, enhanced=enhanced, dimensions=recognized.dimensions
        )


# --------------------------------------------------------------------------------------------
# Metrics per utterance
# --------------------------------------------------------------------------------------------


def utterance_se_scores(
    clean: np.ndarray,
    enhanced: np.ndarray,
    *,
    sampling_rate: int = 16000,
    with_pesq: bool = False,
    with_stoi: bool = False,
) -> dict[str, float]:
    """SSNR and SI-SDR (plus optional PESQ/STOI) of one utterance; ``nan`` when too short.

    Clips shorter than one SSNR frame cannot be scored but should not abort a benchmark; they
    count as ``nan`` and are left out of the (nan-ignoring) averages.
    """
    keys = ["ssnr", "si_sdr"] + ["pesq"] * with_pesq + ["stoi"] * with_stoi
    if len(clean) < _MIN_SSNR_SECONDS * sampling_rate:
        return dict.fromkeys(keys, math.nan)
    short_for_pesq = len(clean) < 0.25 * sampling_rate
    scores = se_metrics(
        clean,
        enhanced,
        sample_rate=sampling_rate,
        with_pesq=with_pesq and not short_for_pesq,
        with_stoi=with_stoi,
    )
    return {key: float(scores.get(key, math.nan)) for key in keys}


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


def parse_condition(name: str) -> tuple[str, float | None]:
    """``"seen_-5dB"`` -> ``("seen", -5.0)``, ``"clean"`` -> ``("clean", None)``; other names
    (custom conditions) -> ``(name, None)``."""
    match = _CONDITION.match(name)
    if match:
        return match.group(1), float(match.group(2))
    return name, None


@dataclass
class EvaluationResult:
    """Rows (one per system and condition) plus the raw SER decisions behind them.

    ``rows`` are plain dicts: ``system``, ``condition``, ``noise`` (``seen``/``unseen``/
    ``clean``), ``snr`` (``None`` for clean), ``num_utterances`` and the metrics the system
    has (``f1_macro``, ``accuracy``, ``uar`` with an emotion head; ``ccc`` (mean) and
    ``ccc_<name>`` per dimension with a dimensional head and rated data; ``ssnr``, ``si_sdr``
    and optionally ``pesq``/``stoi`` when it enhances). ``decisions[system][condition]`` is
    ``(predicted ids, reference ids)`` and ``label_names[system]`` names the ids.
    ``utterance_scores[system][condition][metric]`` holds the SE score of every utterance in
    the eval set's row order (``nan`` where one cannot be scored), for paired tests.
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    decisions: dict[str, dict[str, tuple[list[int], list[int]]]] = field(default_factory=dict)
    label_names: dict[str, list[str]] = field(default_factory=dict)
    utterance_scores: dict[str, dict[str, dict[str, list[float]]]] = field(default_factory=dict)

    @property
    def systems(self) -> list[str]:
        return list(dict.fromkeys(row["system"] for row in self.rows))

    @property
    def conditions(self) -> list[str]:
        return list(dict.fromkeys(row["condition"] for row in self.rows))

    def get(self, system: str, condition: str) -> dict[str, Any] | None:
        return next(
            (r for r in self.rows if r["system"] == system and r["condition"] == condition), None
        )

    def grouped_f1(self, system: str, condition: str, groups: Sequence[Any]) -> dict[Any, float]:
        """F1-macro of ``system`` on ``condition`` within each group of utterances (``groups``
        names each row's group in the eval set's order: its speaker, its habit corner, ...).
        Pooled F1 hides which speakers a model fails on; this reads them off one pass.
        """
        predicted, reference = self.decisions[system][condition]
        if len(groups) != len(predicted):
            raise ValueError(
                f"{len(groups)} group names for {len(predicted)} decisions of {system!r} on "
                f"{condition!r}"
            )
        rows: dict[Any, list[int]] = {}
        for i, group in enumerate(groups):
            rows.setdefault(group, []).append(i)
        num_labels = len(self.label_names[system])
        return {
            group: emotion_scores(
                [predicted[i] for i in at], [reference[i] for i in at], num_labels
            )["f1_macro"]
            for group, at in sorted(rows.items())
        }


def _reference_ids(labels: Sequence[Any], label_names: list[str]) -> np.ndarray:
    """Label names (or already-encoded ids) -> ids in the system's own label order."""
    if all(isinstance(label, (int, np.integer)) for label in labels):
        return np.asarray(labels, dtype=np.int64)
    label2id = {name: i for i, name in enumerate(label_names)}
    names = [str(label) for label in labels]
    check_labels(names, label2id)
    return np.asarray([label2id[name] for name in names], dtype=np.int64)


def _length_sorted_batches(dataset: Dataset, batch_size: int) -> list[np.ndarray]:
    """Row indices in batches of similar length, so padding wastes little compute."""
    import pyarrow.compute as pc

    column = dataset.with_format("arrow")["input_values"]
    lengths = np.asarray(pc.list_value_length(column).to_numpy(zero_copy_only=False))
    order = np.argsort(lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def evaluate_systems(
    systems: Mapping[str, System],
    eval_sets: Mapping[str, Dataset],
    *,
    batch_size: int = 8,
    with_pesq: bool = False,
    with_stoi: bool = False,
    sampling_rate: int = 16000,
    progress: bool = True,
) -> EvaluationResult:
    """Run every system on every condition; see :class:`EvaluationResult` for the output.

    ``eval_sets`` maps condition names to datasets with ``input_values``, ``clean_values`` and
    ``label`` (names, or ids in the systems' label order), as built by
    :func:`merit.data.build_eval_sets`. Unknown label names raise ``ValueError`` before any
    inference. Utterances are batched by length; results do not depend on the batching.
    Sets with a ``dimensions`` column score the systems that have ``dimension_names`` by CCC;
    the columns must be in the system's dimension order (as ``train.py`` saves them).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if not systems:
        raise ValueError("no systems to evaluate")
    if not eval_sets:
        raise ValueError("no evaluation sets")
    for name, system in systems.items():
        if not isinstance(system, System):
            raise TypeError(f"system {name!r} does not implement predict/label_names/enhances")
    references: dict[tuple[str, str], np.ndarray] = {}
    dimension_refs: dict[tuple[str, str], np.ndarray] = {}
    for condition, dataset in eval_sets.items():
        required = {"input_values", "clean_values"}
        if any(system.label_names is not None for system in systems.values()):
            required.add("label")
        missing = required - set(dataset.column_names)
        if missing:
            raise ValueError(f"eval set {condition!r} lacks column(s) {sorted(missing)}")
        labels = list(dataset["label"]) if "label" in dataset.column_names else []
        rated = None
        if "dimensions" in dataset.column_names:
            rated = np.asarray(list(dataset["dimensions"]), dtype=np.float64)
        for name, system in systems.items():
            if system.label_names is not None:
                references[name, condition] = _reference_ids(labels, system.label_names)
            dimension_names = getattr(system, "dimension_names", None)
            if dimension_names and rated is not None:
                if rated.ndim != 2 or rated.shape[1] != len(dimension_names):
                    raise ValueError(
                        f"eval set {condition!r} has {rated.shape[-1]} dimensional values per "
                        f"utterance; system {name!r} predicts {dimension_names}"
                    )
                dimension_refs[name, condition] = rated

    result = EvaluationResult()
    total = sum(len(d) for d in eval_sets.values())
    for name, system in systems.items():
        if system.label_names is not None:
            result.label_names[name] = list(system.label_names)
            result.decisions[name] = {}
        with tqdm(total=total, desc=f"evaluate {name}", unit="utt", disable=not progress) as bar:
            for condition, dataset in eval_sets.items():
                row, decisions, utterances = _evaluate_condition(
                    system,
                    dataset.with_format("numpy"),
                    references.get((name, condition)),
                    dimension_refs.get((name, condition)),
                    batch_size=batch_size,
                    with_pesq=with_pesq,
                    with_stoi=with_stoi,
                    sampling_rate=sampling_rate,
                    on_batch=bar.update,
                )
                noise, snr = parse_condition(condition)
                result.rows.append(
                    {"system": name, "condition": condition, "noise": noise, "snr": snr, **row}
                )
                if decisions is not None:
                    result.decisions[name][condition] = decisions
                if utterances:
                    result.utterance_scores.setdefault(name, {})[condition] = utterances
    return result


def _evaluate_condition(
    system: System,
    dataset: Dataset,
    refs: np.ndarray | None,
    dimension_refs: np.ndarray | None,
    *,
    batch_size: int,
    with_pesq: bool,
    with_stoi: bool,
    sampling_rate: int,
    on_batch: Callable[[int], Any],
) -> tuple[dict[str, Any], tuple[list[int], list[int]] | None, dict[str, list[float]]]:
    """One system on one condition: its table row, its SER decisions (predicted and reference
    ids) and its per-utterance SE scores (key -> one value per row of ``dataset``)."""
    predictions = np.full(len(dataset), -1, dtype=np.int64)
    dimensions = None if dimension_refs is None else np.zeros_like(dimension_refs)
    scores: dict[str, np.ndarray] = {}
    for indices in _length_sorted_batches(dataset, batch_size):
        batch = dataset[indices]
        noisy = [np.asarray(x, dtype=np.float32) for x in batch["input_values"]]
        out = system.predict(noisy)
        if system.label_names is not None:
            if out.logits is None:
                raise RuntimeError("a system with label_names returned no logits")
            predictions[indices] = out.logits.argmax(-1)
        if dimensions is not None:
            if out.dimensions is None:
                raise RuntimeError("a system with dimension_names returned no dimensions")
            dimensions[indices] = out.dimensions
        if system.enhances:
            if out.enhanced is None:
                raise RuntimeError("a system that enhances returned no enhanced audio")
            for index, clean, enhanced in zip(
                indices, batch["clean_values"], out.enhanced, strict=True
            ):
                utterance = utterance_se_scores(
                    np.asarray(clean, dtype=np.float32),
                    enhanced,
                    sampling_rate=sampling_rate,
                    with_pesq=with_pesq,
                    with_stoi=with_stoi,
                )
                for key, value in utterance.items():
                    scores.setdefault(key, np.full(len(dataset), math.nan))[index] = value
        on_batch(len(indices))
    row: dict[str, Any] = {"num_utterances": len(dataset)}
    decisions = None
    if refs is not None and system.label_names is not None:
        row.update(emotion_scores(predictions, refs, len(system.label_names)))
        decisions = (predictions.tolist(), refs.tolist())
    if dimensions is not None and dimension_refs is not None:
        names = system.dimension_names  # type: ignore[attr-defined]
        row.update(dimension_scores(dimensions, dimension_refs, names))
    for key, values in scores.items():
        row[key] = float(np.nanmean(values)) if np.isfinite(values).any() else math.nan
    return row, decisions, {key: values.tolist() for key, values in scores.items()}


# --------------------------------------------------------------------------------------------
# Tables, plots, report
# --------------------------------------------------------------------------------------------


def table_columns(conditions: Sequence[str]) -> list[str]:
    """Paper order: clean, then seen by rising SNR, then unseen by rising SNR, then others."""

    def key(name: str) -> tuple[int, float, str]:
        noise, snr = parse_condition(name)
        rank = {"clean": 0, "seen": 1, "unseen": 2}.get(noise, 3)
        return rank, snr if snr is not None else 0.0, name

    return sorted(dict.fromkeys(conditions), key=key)


def column_title(condition: str) -> str:
    """Table header of a condition: ``"Seen -5 dB"``, ``"Clean"``, custom names unchanged."""
    noise, snr = parse_condition(condition)
    if snr is None:
        return noise.capitalize() if noise == "clean" else noise
    return f"{noise.capitalize()} {snr:g} dB"


def _metrics_present(result: EvaluationResult) -> list[str]:
    return [m for m in TABLE_METRICS if any(m in row for row in result.rows)]


def format_markdown(result: EvaluationResult, metrics: Sequence[str] | None = None) -> str:
    """One Markdown table per metric: rows = systems, columns = conditions (``-`` = n/a)."""
    columns = table_columns(result.conditions)
    lines: list[str] = []
    for metric in metrics or _metrics_present(result):
        title, scale, decimals = TABLE_METRICS[metric]
        systems = [s for s in result.systems if any(metric in r for r in _rows(result, s))]
        if not systems:
            continue
        lines += [f"### {title}", ""]
        lines.append("| System | " + " | ".join(column_title(c) for c in columns) + " |")
        lines.append("|---|" + "---:|" * len(columns))
        for system in systems:
            cells = []
            for condition in columns:
                value = (result.get(system, condition) or {}).get(metric)
                ok = value is not None and math.isfinite(value)
                cells.append(f"{value * scale:.{decimals}f}" if ok else "-")
            lines.append(f"| {system} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _rows(result: EvaluationResult, system: str) -> list[dict[str, Any]]:
    return [r for r in result.rows if r["system"] == system]


def write_csv(result: EvaluationResult, path: str | Path) -> None:
    """Wide CSV (``metric, system, <condition>...``) with raw values (F1 as a fraction)."""
    columns = table_columns(result.conditions)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["metric", "system", *columns])
        for metric in _metrics_present(result):
            for system in result.systems:
                values = [(result.get(system, c) or {}).get(metric) for c in columns]
                if all(v is None for v in values):
                    continue
                writer.writerow(
                    [metric, system, *("" if v is None else f"{v:.6g}" for v in values)]
                )


def plot_f1_vs_snr(result: EvaluationResult, path: str | Path) -> None:
    """F1-macro against SNR: one colour per system, seen noise solid, unseen dashed; the clean
    score is a marker at the right end."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    snrs = sorted({r["snr"] for r in result.rows if r["snr"] is not None})
    clean_x = (snrs[-1] + 5.0) if snrs else 0.0
    for index, system in enumerate(s for s in result.systems if s in result.label_names):
        color = f"C{index % 10}"
        for noise, style in (("seen", "-"), ("unseen", "--")):
            points = sorted(
                (r["snr"], r["f1_macro"])
                for r in _rows(result, system)
                if r["noise"] == noise and r["snr"] is not None and "f1_macro" in r
            )
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, style, color=color, marker="o", label=f"{system} ({noise})")
        clean = result.get(system, "clean")
        if clean is not None and "f1_macro" in clean:
            ax.plot([clean_x], [clean["f1_macro"]], marker="*", markersize=12, color=color)
    has_clean = "clean" in result.conditions
    ax.set_xticks(
        [*snrs, clean_x] if has_clean else snrs,
        labels=[f"{s:g}" for s in snrs] + (["clean"] if has_clean else []),
    )
    ax.set_xlabel("SNR (dB)")
    ax.set_ylabel("F1-macro")
    ax.set_ylim(0.0, 1.0)
    ax.grid(alpha=0.3)
    ax.set_title("Emotion recognition vs. SNR (solid: seen noise, dashed: unseen)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "system"


def write_report(
    result: EvaluationResult, out_dir: str | Path, *, confusion_snr: float = 0.0
) -> dict[str, Path]:
    """Write ``table.md``, ``table.csv``, ``rows.json``, ``f1_vs_snr.png`` and one confusion
    matrix per SER system and noise kind at ``confusion_snr`` dB; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "table_md": out / "table.md",
        "table_csv": out / "table.csv",
        "rows": out / "rows.json",
    }
    header = (
        "Test speakers; rows are systems, columns the noise condition (seen noise types were "
        "used in training, unseen ones were not). `-`: the system has no such output.\n\n"
    )
    paths["table_md"].write_text(header + format_markdown(result), encoding="utf-8")
    write_csv(result, paths["table_csv"])
    paths["rows"].write_text(json.dumps(result.rows, indent=2, allow_nan=True) + "\n")
    if result.label_names:
        paths["plot"] = out / "f1_vs_snr.png"
        plot_f1_vs_snr(result, paths["plot"])
    for system, by_condition in result.decisions.items():
        for condition, (predicted, reference) in by_condition.items():
            noise, snr = parse_condition(condition)
            if snr is None or not math.isclose(snr, confusion_snr):
                continue
            fig = confusion_matrix_figure(predicted, reference, result.label_names[system])
            fig.axes[0].set_title(f"{system}: {column_title(condition)}")
            path = out / f"confusion_{_safe_name(system)}_{condition}.png"
            fig.savefig(path, dpi=110)
            paths[f"confusion_{system}_{condition}"] = path
    return paths


def _build_systems(args: argparse.Namespace) -> dict[str, System]:
    names = args.names or []
    if names and len(names) != len(args.models or []):
        raise ValueError(f"--names has {len(names)} entries for {len(args.models or [])} models")
    systems: dict[str, System] = {}
    if args.unprocessed:
        systems[UNPROCESSED] = UnprocessedInput()
    loaded: dict[str, ModelSystem] = {}

    def load(path: str) -> ModelSystem:
        if path not in loaded:
            loaded[path] = ModelSystem.from_pretrained(path, device=args.device)
        return loaded[path]

    for index, path in enumerate(args.models or []):
        name = names[index] if names else Path(path).name
        if name in systems:
            raise ValueError(f"two systems are named {name!r}; give distinct --names")
        systems[name] = load(path)
    for pair_index, (se_path, ser_path) in enumerate(args.cascade or []):
        name = "cascade" if pair_index == 0 else f"cascade-{pair_index + 1}"
        systems[name] = CascadeSystem(load(se_path), load(ser_path))
    if len(systems) == int(args.unprocessed):
        raise ValueError("nothing to evaluate: give --models and/or --cascade")
    return systems


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="evaluate_models.py",
        description=(
            "Evaluate trained MERIT models (and the SE->SER cascade baseline) on frozen noisy "
            "test sets; writes table.md, table.csv, rows.json, f1_vs_snr.png and confusion "
            "matrices."
        ),
    )
    parser.add_argument("--models", nargs="+", default=[], metavar="DIR", help="model folders")
    parser.add_argument("--names", nargs="+", help="display names, one per --models entry")
    parser.add_argument(
        "--cascade",
        nargs=2,
        action="append",
        metavar=("SE_MODEL", "SER_MODEL"),
        help="add the SE pre-processing baseline: SE_MODEL's output classified by SER_MODEL",
    )
    parser.add_argument("--dataset", help="dataset (default: the embedded corpus)")
    parser.add_argument("--noise_dir", help="noise folder (default: the corpus' noise bank)")
    parser.add_argument("--split", default="test")
    parser.add_argument(
        "--label_column",
        default="label",
        help="column of the emotion class ('none': the corpus has no categorical labels)",
    )
    parser.add_argument(
        "--dimension_columns",
        help="comma-separated rating columns in the models' dimension order, scored by CCC "
        "(e.g. arousal,valence,dominance)",
    )
    parser.add_argument("--snrs", nargs="+", type=float, default=[-5.0, 0.0, 5.0, 10.0])
    parser.add_argument("--seed", type=int, default=1234, help="seed of the frozen noise")
    parser.add_argument("--no_clean", action="store_true", help="leave out the clean condition")
    parser.add_argument(
        "--no_unprocessed",
        dest="unprocessed",
        action="store_false",
        help="leave out the unprocessed-input row (SSNR of the noisy mixture)",
    )
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--pesq", action="store_true", help="also compute PESQ (slow)")
    parser.add_argument("--stoi", action="store_true", help="also compute STOI (slow)")
    parser.add_argument(
        "--max_utterances", type=int, help="evaluate N evenly spaced utterances (quick runs)"
    )
    parser.add_argument("--cache_dir", help="keep the frozen test sets here for reuse")
    parser.add_argument("--skip_bad_files", action="store_true")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cpu)")
    parser.add_argument("--out", default="results", help="output folder")
    parser.add_argument("--no_progress", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> EvaluationResult:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        systems = _build_systems(args)
        eval_sets, _ = build_test_sets(
            args.dataset,
            args.noise_dir,
            split=args.split,
            snrs=args.snrs,
            seed=args.seed,
            include_clean=not args.no_clean,
            cache_dir=args.cache_dir,
            max_utterances=args.max_utterances,
            skip_bad_files=args.skip_bad_files,
            dimension_columns=name_list(args.dimension_columns, "--dimension_columns"),
            label_column=optional_column(args.label_column),
        )
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    result = evaluate_systems(
        systems,
        eval_sets,
        batch_size=args.batch_size,
        with_pesq=args.pesq,
        with_stoi=args.stoi,
        progress=not args.no_progress,
    )
    paths = write_report(result, args.out)
    print(format_markdown(result))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return result
