"""Command line: ``merit <subcommand>`` (or ``python -m merit.cli <subcommand>``).

Subcommands live in one registry: call :func:`add_subcommand` with a name, a help line, a
function that adds its arguments to an ``argparse`` parser and a function that runs it and
returns the exit code. ``predict`` and ``export-onnx`` are registered at the bottom of this
file; other modules (corpus building, evaluation, publishing) can register theirs the same way
before :func:`main` runs.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, TextIO

__all__ = [
    "add_subcommand",
    "build_parser",
    "check_outputs",
    "check_predict_options",
    "find_inputs",
    "linked_folders",
    "main",
]

ConfigureFn = Callable[[argparse.ArgumentParser], None]
RunFn = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class _Subcommand:
    help: str
    configure: ConfigureFn
    run: RunFn


_SUBCOMMANDS: dict[str, _Subcommand] = {}


def add_subcommand(name: str, help: str, configure: ConfigureFn, run: RunFn) -> None:
    """Register ``merit NAME``; ``run(args)`` returns the process exit code."""
    if name in _SUBCOMMANDS:
        raise ValueError(f"Subcommand '{name}' is already registered.")
    _SUBCOMMANDS[name] = _Subcommand(help, configure, run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="merit",
        description="Sparse MERIT: noise-robust speech emotion recognition and enhancement.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in _SUBCOMMANDS.items():
        sub = subparsers.add_parser(name, help=command.help, description=command.help)
        command.configure(sub)
        sub.set_defaults(_run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run a subcommand; setup errors (missing model or input) print one line and return 2."""
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args))
    except (FileNotFoundError, ValueError) as err:
        print(f"merit {args.command}: error: {err}", file=sys.stderr)
        return 2


# ---------------------------------------------------------------------------------------------
# predict
# ---------------------------------------------------------------------------------------------

MANIFEST_SUFFIXES = (".csv", ".jsonl")

#: The fields of one result, in order (JSONL keys; CSV flattens scores and dimensions).
RECORD_FIELDS = ("file", "duration", "label", "reason", "scores", "dimensions", "enhanced", "error")


@dataclass(frozen=True)
class _Input:
    """An audio file to analyse and the name it goes by in the results (relative, stable)."""

    path: Path
    name: str


def find_inputs(source: str | Path) -> list[_Input]:
    """One audio file, the audio files of a folder (recursive, sorted, linked folders not
    followed: see :func:`linked_folders`) or the ``path`` column of a CSV/JSONL manifest.

    Manifest paths may be relative to the manifest's folder. Missing files are kept: they are
    reported as errors with the others instead of stopping the run.
    """
    from merit.audio import AUDIO_EXTENSIONS
    from merit.data import audio_files, read_rows

    source = Path(source)
    if source.is_dir():
        return [_Input(p, p.relative_to(source).as_posix()) for p in audio_files(source)]
    if source.is_file() and source.suffix.lower() in AUDIO_EXTENSIONS:
        return [_Input(source, source.name)]
    if not source.is_file():
        raise FileNotFoundError(f"Input '{source}' is neither a folder nor a manifest file.")
    if source.suffix.lower() not in MANIFEST_SUFFIXES:
        raise ValueError(
            f"Input '{source}': expected an audio file, a folder of audio files or a manifest "
            f"({', '.join(MANIFEST_SUFFIXES)}) with a 'path' column."
        )
    inputs = []
    rows = read_rows(source)
    if rows and "path" not in rows[0]:
        raise ValueError(f"{source}: no 'path' column (columns: {list(rows[0])}).")
    for number, row in enumerate(rows, start=1):
        value = str(row.get("path") or "").strip()
        if not value:
            raise ValueError(f"{source}: row {number} has no 'path' value.")
        path = Path(value).expanduser()
        inputs.append(_Input(path if path.is_absolute() else source.parent / path, value))
    return inputs


def linked_folders(source: Path) -> int:
    """How many symlinked folders a folder scan skips: following them could loop forever or
    leave the tree, so they are counted and reported rather than silently dropped."""
    if not source.is_dir():
        return 0
    return sum(
        1
        for top, dirs, _ in os.walk(source, followlinks=False)
        for name in dirs
        if os.path.islink(os.path.join(top, name))
    )


def check_predict_options(args: argparse.Namespace) -> None:
    """Refuse option values that would fail once per file (or hang) before any work starts."""
    import torch

    for option in ("chunk_seconds", "overlap_seconds", "max_seconds"):
        value = getattr(args, option)
        if value is not None and not math.isfinite(value):
            raise ValueError(f"--{option.replace('_', '-')} must be a finite number, got {value}.")
    if args.chunk_seconds <= 0:
        raise ValueError(f"--chunk-seconds must be > 0, got {args.chunk_seconds}.")
    if not 0 <= args.overlap_seconds < args.chunk_seconds:
        raise ValueError(
            f"--overlap-seconds must be >= 0 and below --chunk-seconds ({args.chunk_seconds}), "
            f"got {args.overlap_seconds}."
        )
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}.")
    if args.max_seconds is not None and args.max_seconds <= 0:
        raise ValueError(f"--max-seconds must be > 0, got {args.max_seconds}.")
    try:
        device = torch.device(args.device)
    except RuntimeError as err:
        raise ValueError(f"--device {args.device!r} is not a device name ({err}).") from err
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
    }
    if not available.get(device.type, True):
        raise ValueError(f"--device {args.device}: no {device.type} device on this machine.")
    if device.type == "cuda" and device.index is not None:
        if device.index >= torch.cuda.device_count():
            raise ValueError(
                f"--device {args.device}: only {torch.cuda.device_count()} CUDA device(s)."
            )


class _ResultWriter:
    """Streams one result per line, so a long run keeps what it has done if it is stopped.

    CSV gets flat ``score_<label>``/``dim_<name>`` columns; JSONL nested ``scores`` and
    ``dimensions`` objects. Both have an ``error`` field, empty on success, and a ``reason``
    field (``no speech`` / ``too short``) for audio that got no label on purpose.
    """

    def __init__(self, handle: TextIO, fmt: str, labels: list[str], dims: list[str]):
        self.handle, self.fmt, self.labels, self.dims = handle, fmt, labels, dims
        if fmt == "csv":
            columns = ["file", "duration", "label", "reason"]
            columns += [f"score_{label}" for label in labels]
            columns += [f"dim_{name}" for name in dims]
            columns += ["enhanced", "error"]
            self.csv = csv.DictWriter(handle, fieldnames=columns)
            self.csv.writeheader()

    def write(self, record: dict[str, Any]) -> None:
        if self.fmt == "jsonl":
            self.handle.write(json.dumps(record) + "\n")
        else:
            keys = ("file", "duration", "label", "reason", "enhanced")
            row = {key: record.get(key) for key in keys}
            for label in self.labels:
                row[f"score_{label}"] = (record.get("scores") or {}).get(label)
            for name in self.dims:
                row[f"dim_{name}"] = (record.get("dimensions") or {}).get(name)
            row["error"] = record.get("error") or ""
            self.csv.writerow({k: "" if v is None else v for k, v in row.items()})
        self.handle.flush()


def _mirror(root: Path, name: str, taken: set[Path]) -> Path:
    """Where the enhanced copy of ``name`` goes: same relative path under ``root``, as WAV.

    Absolute and ``..`` parts are dropped so nothing is written outside ``root``; when two
    inputs differ only by extension (``a.wav``, ``a.flac``) the second keeps its extension
    (``a.flac.wav``) instead of overwriting the first.
    """
    parts = [p for p in PurePath(name).parts if p not in ("..", ".") and p != PurePath(name).anchor]
    relative = Path(*parts) if parts else Path("audio")
    target = root / relative.with_suffix(".wav")
    if target in taken:
        target = root / relative.parent / (relative.name + ".wav")
    taken.add(target)
    return target


def _configure_predict(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="saved model folder or Hub id")
    parser.add_argument(
        "--input", required=True, help="folder (searched recursively) or CSV/JSONL manifest"
    )
    parser.add_argument("--output", required=True, help="results file: .csv or .jsonl")
    parser.add_argument(
        "--enhanced-dir", help="also write enhanced audio here (WAV, same relative names)"
    )
    parser.add_argument("--chunk-seconds", type=float, default=10.0)
    parser.add_argument("--overlap-seconds", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=4, help="chunks per forward pass")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="refuse files longer than this (checked from the header, before decoding)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --output file and existing enhanced files (never an input)",
    )


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def check_outputs(
    inputs: list[_Input], source: Path, output: Path, enhanced_dir: Path | None, overwrite: bool
) -> None:
    """Refuse, before any work, outputs that would destroy an input or an existing file.

    Inputs are never overwritten, ``--overwrite`` or not: the results file may not be the
    manifest or an input recording, and enhanced audio may not go into the input folder (it
    would replace the recordings by their 16 kHz enhanced copies) or hold an input.
    """
    protected = {item.path.resolve() for item in inputs} | {source.resolve()}
    if output.resolve() in protected:
        raise ValueError(f"--output {output} is an input; choose another file.")
    if output.exists() and not overwrite:
        raise ValueError(f"--output {output} exists; pass --overwrite to replace it.")
    if enhanced_dir is not None:
        if source.is_dir() and (_inside(enhanced_dir, source) or _inside(source, enhanced_dir)):
            raise ValueError(
                f"--enhanced-dir {enhanced_dir} overlaps the input folder {source}: enhanced "
                "copies would replace or mix with the recordings; choose a separate folder."
            )
        inside = [item.name for item in inputs if _inside(item.path, enhanced_dir)]
        if inside:
            raise ValueError(
                f"--enhanced-dir {enhanced_dir} holds input files ({', '.join(inside[:3])}); "
                "choose a separate folder."
            )
        if _inside(output, enhanced_dir) and output.suffix.lower() == ".wav":
            raise ValueError("--output may not be a WAV file inside --enhanced-dir.")


def _run_predict(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from merit.audio import AudioWarning
    from merit.inference import analyze_file, load_model

    output = Path(args.output)
    fmt = output.suffix.lower().lstrip(".")
    if fmt not in ("csv", "jsonl"):
        raise ValueError(f"--output must end in .csv or .jsonl, got '{output}'.")
    check_predict_options(args)
    inputs = find_inputs(args.input)
    links = linked_folders(Path(args.input))
    if links:
        print(
            f"Skipped {links} linked folder(s) in '{args.input}' (not followed).", file=sys.stderr
        )
    if not inputs:
        print(f"No audio files found in '{args.input}'.", file=sys.stderr)
        return 2
    enhanced_dir = Path(args.enhanced_dir) if args.enhanced_dir else None
    check_outputs(inputs, Path(args.input), output, enhanced_dir, args.overwrite)
    model, feature_extractor = load_model(args.model, device=args.device)
    labels, dims = model.config.label_names, model.config.predicted_dimensions
    written: set[Path] = set()

    failures: list[tuple[str, str]] = []
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("w", newline="", encoding="utf-8") as handle:
        writer = _ResultWriter(handle, fmt, labels, dims)
        for item in tqdm(inputs, desc="files", unit="file", disable=args.no_progress):
            # Every record has every field (``None`` when not known), failed or not.
            record: dict[str, Any] = dict.fromkeys(RECORD_FIELDS)
            record["file"] = item.name
            try:
                target = None
                if enhanced_dir is not None and model.config.has_enhancement_head:
                    target = _mirror(enhanced_dir, item.name, written)
                    if target.exists() and not args.overwrite:
                        raise FileExistsError(
                            f"{target} exists (not overwritten; --overwrite replaces it)"
                        )
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", AudioWarning)
                    result = analyze_file(
                        model,
                        feature_extractor,
                        item.path,
                        enhanced_path=target,
                        chunk_seconds=args.chunk_seconds,
                        overlap_seconds=args.overlap_seconds,
                        max_seconds=args.max_seconds,
                        batch_size=args.batch_size,
                    )
                for message in dict.fromkeys(str(w.message) for w in caught):
                    print(f"warning: {message}", file=sys.stderr)
                record.update(
                    duration=round(result.duration, 3),
                    label=result.label,
                    reason=result.reason,
                    scores=result.probabilities,
                    dimensions=result.dimensions,
                    enhanced=None if target is None else str(target),
                )
                record["error"] = None
            except Exception as err:  # noqa: BLE001 - one bad file must not stop the batch
                message = f"{type(err).__name__}: {err}"
                record["error"] = message
                failures.append((item.name, message))
            writer.write(record)

    succeeded = len(inputs) - len(failures)
    print(f"{succeeded} of {len(inputs)} files analysed; results in {output}", file=sys.stderr)
    if failures:
        print(f"{len(failures)} file(s) failed:", file=sys.stderr)
        for name, message in failures:
            print(f"  {name}: {message}", file=sys.stderr)
    # Non-zero when anything failed, so scripts notice: 1 if some files failed, 1 also when
    # all did (the failures are listed above either way).
    return 0 if not failures else 1


# ---------------------------------------------------------------------------------------------
# export-onnx
# ---------------------------------------------------------------------------------------------


def _configure_export(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="saved model folder or Hub id")
    parser.add_argument("--out", required=True, help="ONNX file to write")
    parser.add_argument("--opset", type=int, default=17)


def _run_export(args: argparse.Namespace) -> int:
    from merit.inference import load_model
    from merit.onnx_export import export_onnx, onnx_output_names

    model, _ = load_model(args.model)
    path = export_onnx(model, args.out, opset=args.opset)
    outputs = ", ".join(onnx_output_names(model))
    print(f"Wrote {path} (input: input_values [batch, samples]; outputs: {outputs})")
    return 0


add_subcommand(
    "predict",
    "Analyse audio files: emotion, dimensions, enhanced audio.",
    _configure_predict,
    _run_predict,
)
add_subcommand("export-onnx", "Export a saved model to ONNX.", _configure_export, _run_export)


if __name__ == "__main__":
    sys.exit(main())
