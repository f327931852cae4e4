"""Data pipeline for noisy SER + SE: loading corpora, noise banks, mixing, eval sets, collation.

Design choices worth knowing:

* Datasets keep audio undecoded (``Audio(decode=False)``: ``{"path", "bytes"}``) and audio is
  read with :func:`merit.audio.load_audio`, because ``datasets`` 5.x needs torchcodec/FFmpeg to
  decode and to run the ``audiofolder`` builder. Folder layouts are therefore listed here.
* Every source is normalised to the columns ``audio``, ``label`` (label *names* as strings) and,
  when known, ``speaker``, with splits ``train``/``validation``/``test``. Missing validation/test
  splits are carved out of ``train`` with a seeded split that is speaker-disjoint whenever a
  speaker column exists, so that evaluation never hears a training speaker.
* Training noise is drawn on the fly (:class:`NoisyMixer`); evaluation noise is frozen per
  utterance and condition (:func:`build_eval_sets`) so that numbers are comparable across runs.
* The SE target is the clean signal *as it appears in the mixture*: if the mixture has to be
  scaled down to avoid clipping, the target is scaled by the same factor.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
import shutil
import warnings
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import datasets
import numpy as np
import torch
import torchaudio.functional as AF
from datasets import Audio, ClassLabel, Dataset, DatasetDict, Features, List, Value

from merit.audio import AUDIO_EXTENSIONS, audio_info, check_waveform, load_audio

if TYPE_CHECKING:  # transformers is heavy to import and only needed for the type
    from transformers import SequenceFeatureExtractor

__all__ = [
    "DataCollatorForMerit",
    "NoiseBank",
    "NoiseFile",
    "NoisyMixer",
    "GAIN_LIMIT_DB",
    "SPEED_LIMITS",
    "build_eval_sets",
    "change_brightness",
    "change_pitch",
    "change_speed",
    "check_labels",
    "load_speech_dataset",
    "mix_at_snr",
    "name_list",
    "optional_column",
]

#: Split names found in the wild, mapped to the three names the package uses.
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
    "development": "validation",
    "test": "test",
    "test1": "test",  # MSP-Podcast's Split_Set: Train / Development / Test1 (/ Test2, Test3)
}
#: Column names tried, in order, for the audio path when ``audio_column`` is not given.
AUDIO_PATH_COLUMNS = ("file_name", "path", "audio", "filepath", "file")
MANIFEST_SUFFIXES = (".csv", ".jsonl")
#: ``noise_type`` of examples left clean by :class:`NoisyMixer` and of the ``"clean"`` eval set.
CLEAN = "clean"
#: Feature of the ``dimensions`` column (ratings in ``dimension_columns`` order).
DIMENSIONS_FEATURE = List(Value("float32"))


# --------------------------------------------------------------------------------------------
# Loading corpora
# --------------------------------------------------------------------------------------------


def load_speech_dataset(
    source: str,
    *,
    label_column: str | None = "label",
    audio_column: str | None = None,
    speaker_column: str = "speaker",
    split_column: str = "split",
    dimension_columns: Sequence[str] | None = None,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    keep_missing_files: bool = False,
    split_map: Mapping[str, str] | None = None,
    audio_root: str | Path | None = None,
) -> DatasetDict:
    """Load a labelled speech corpus from any common layout into one normalised form.

    ``source`` may be a local audiofolder directory (``metadata.csv``/``metadata.jsonl`` with a
    ``file_name`` column, or class sub-folders ``<root>/<label>/*.wav``, optionally under
    ``train/``/``validation/``/``test/``), a ``save_to_disk`` folder, a CSV/JSONL manifest
    (audio paths relative to ``audio_root``, by default the manifest's folder, or absolute:
    MSP-Podcast keeps its labels in ``Labels/`` and its audio in ``Audios/``), any other local
    folder that
    ``datasets.load_dataset`` understands (e.g. a downloaded Hub snapshot of parquet files), or a
    Hub dataset name.

    Splits come from ``split_column``, from top-level split folders, or from the source's own
    splits; whichever of validation/test is missing is carved from ``train`` by speaker (seeded)
    with the given fractions of the train pool. A fraction of 0 leaves that split out.

    ``dimension_columns`` (for example MSP-Podcast's ``["EmoAct", "EmoVal", "EmoDom"]``, or the
    embedded corpus' ``["arousal", "valence", "dominance"]``) become one float ``dimensions``
    column in that order; a missing or non-numeric value is an error naming the row.
    ``label_column=None`` reads a corpus without categorical labels (dimensional ratings only,
    or clean speech for enhancement): the result then has no ``label`` column.

    A table row naming a file that does not exist is an error, unless ``keep_missing_files``:
    then the row stays, for a later readability pass to drop and list (``--skip_bad_files``).
    ``split_map`` renames split values first (``{"Test2": "drop"}`` leaves those rows out);
    common names are understood without it (``Development`` -> validation, ``Test1`` -> test).
    """
    for name, fraction in (("validation", validation_fraction), ("test", test_fraction)):
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"{name}_fraction must be in [0, 1), got {fraction}")
    if validation_fraction + test_fraction >= 1.0:
        raise ValueError("validation_fraction + test_fraction must leave data for training")
    dimensions = tuple(dimension_columns or ())
    if len(set(dimensions)) != len(dimensions):
        raise ValueError(f"dimension_columns must be distinct, got {list(dimensions)}")
    root = None
    if audio_root is not None:
        root = Path(audio_root).expanduser()
        if not root.is_dir():
            raise ValueError(f"audio root folder not found: {root}")
    columns = _Columns(
        label_column,
        audio_column,
        speaker_column,
        split_column,
        dimensions,
        keep_missing_files,
        root,
    )
    splits = _read_source(str(source), columns)
    if split_map:
        splits = _apply_split_map(splits, split_map)
    return _complete_splits(
        splits, {"validation": validation_fraction, "test": test_fraction}, seed
    )


def _apply_split_map(
    splits: Mapping[str, Dataset], split_map: Mapping[str, str]
) -> dict[str, Dataset]:
    """Rename split values (``"drop"``: leave the rows out), merging splits that meet; the
    name ``*`` stands for every value not named (``Session5=test,*=train``)."""
    renamed: dict[str, list[Dataset]] = {}
    for name, dataset in splits.items():
        target = split_map.get(name, split_map.get("*", name))
        if target == "drop":
            continue
        renamed.setdefault(target, []).append(dataset)
    return {
        name: parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
        for name, parts in renamed.items()
    }


@dataclass(frozen=True)
class _Columns:
    """Source column names (and how to treat rows without a file), passed around together."""

    label: str | None
    audio: str | None
    speaker: str
    split: str
    dimensions: tuple[str, ...] = ()
    keep_missing_files: bool = False
    #: Folder that relative table paths start from (``None``: the table's own folder).
    audio_root: Path | None = None


def _read_source(source: str, columns: _Columns) -> dict[str, Dataset]:
    """Dispatch on the kind of source; returns split name -> normalised dataset."""
    path = Path(source).expanduser()
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return _from_hf(datasets.load_from_disk(str(path)), columns)
        for metadata in ("metadata.csv", "metadata.jsonl"):
            if (path / metadata).is_file():
                return _from_table(path / metadata, columns)
        if audio_files(path):
            return _from_class_folders(path, columns)
        return _from_hf(_load_with_datasets(str(path)), columns)
    if path.is_file():
        if path.suffix.lower() not in MANIFEST_SUFFIXES:
            raise ValueError(f"{path}: unsupported manifest type; use one of {MANIFEST_SUFFIXES}")
        return _from_table(path, columns)
    if source.startswith((".", "/", "~")) or path.suffix.lower() in MANIFEST_SUFFIXES:
        raise FileNotFoundError(f"dataset source not found: {source}")
    return _from_hf(_load_with_datasets(source), columns)


def _load_with_datasets(source: str) -> Dataset | DatasetDict:
    """``datasets.load_dataset`` with an error that says what else ``source`` could have been."""
    try:
        return datasets.load_dataset(source)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"cannot load dataset {source!r}: it is not an audio folder, save_to_disk folder or "
            f"CSV/JSONL manifest, and datasets.load_dataset failed: {err}"
        ) from err


def name_list(text: str | None, flag: str) -> list[str] | None:
    """A comma-separated command-line list (``--labels``, ``--dimension_columns``) as distinct,
    stripped names in the given order; ``None`` when the flag was not given."""
    if not text:
        return None
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"{flag} must list distinct names, got {text!r}")
    return names


def optional_column(text: str) -> str | None:
    """A column flag where ``none`` (or nothing) says the corpus has no such column."""
    column = text.strip()
    return None if column.lower() in ("", "none") else column


def read_rows(table: Path) -> list[dict[str, Any]]:
    """Read a CSV (header row) or JSON Lines file into a list of dicts."""
    if table.suffix.lower() == ".csv":
        with table.open(newline="", encoding="utf-8-sig") as handle:
            return [
                {key.strip(): value for key, value in row.items() if key is not None}
                for row in csv.DictReader(handle)
            ]
    rows = []
    with table.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{table}:{line_number}: invalid JSON ({err})") from err
    return rows


def _text(value: Any) -> str:
    """Label/speaker/split values as strings, with missing values as the empty string."""
    return "" if value is None else str(value).strip()


def _from_table(table: Path, columns: _Columns) -> dict[str, Dataset]:
    """Audiofolder ``metadata.csv``/``.jsonl`` or a manifest: one row per utterance."""
    rows = read_rows(table)
    if not rows:
        raise ValueError(f"{table}: no rows")
    available = sorted({key for row in rows for key in row})
    audio_column = _require_columns(
        str(table), available, columns.audio, columns.label, columns.dimensions
    )
    paths, labels, splits = [], [], []
    for line_number, row in enumerate(rows, start=2 if table.suffix.lower() == ".csv" else 1):
        relative = _text(row.get(audio_column))
        label = _text(row.get(columns.label)) if columns.label else "-"
        if not relative or not label:
            raise ValueError(
                f"{table}: row {line_number} has an empty {audio_column!r} or "
                f"{columns.label!r} value"
            )
        path = Path(relative).expanduser()
        paths.append(path if path.is_absolute() else (columns.audio_root or table.parent) / path)
        labels.append(label)
        splits.append(_text(row.get(columns.split)) or _split_from_path(path))
    missing = [str(p) for p in paths if not p.is_file()]
    if missing and not columns.keep_missing_files:
        raise ValueError(f"{table}: {len(missing)} audio file(s) not found, e.g. {missing[:5]}")
    if columns.split not in available and not all(splits):
        splits = ["train"] * len(rows)
    speakers = None
    if columns.speaker in available:
        speakers = [_text(row.get(columns.speaker)) for row in rows]
    dimensions = None
    if columns.dimensions:
        first = 2 if table.suffix.lower() == ".csv" else 1
        dimensions = _dimension_values(
            [[row.get(name) for name in columns.dimensions] for row in rows],
            columns.dimensions,
            f"{table}: row",
            first,
        )
    dataset = _file_dataset(paths, labels if columns.label else None, speakers, dimensions)
    return _group_by_split(dataset, splits, str(table))


def _dimension_values(
    rows: Sequence[Sequence[Any]], names: Sequence[str], where: str, first: int
) -> list[list[float]]:
    """Dimensional ratings as floats; empty, non-numeric or non-finite values are errors."""
    values = []
    for number, row in enumerate(rows, start=first):
        try:
            floats = [float(v) for v in row]
        except (TypeError, ValueError):
            floats = []
        if len(floats) != len(names) or not all(math.isfinite(v) for v in floats):
            shown = ", ".join(f"{n}={v!r}" for n, v in zip(names, row, strict=True))
            raise ValueError(f"{where} {number}: dimensional values must be numbers ({shown})")
        values.append(floats)
    return values


def _require_columns(
    where: str,
    available: Sequence[str],
    audio_column: str | None,
    label_column: str | None,
    dimension_columns: Sequence[str] = (),
) -> str:
    """Check the audio, label (unless ``None``) and dimension columns exist; returns the audio
    column (auto-detected if ``audio_column`` is None)."""
    audio_column = audio_column or next((c for c in AUDIO_PATH_COLUMNS if c in available), None)
    roles = [("audio", audio_column)] + ([("label", label_column)] if label_column else [])
    roles += [("dimension", name) for name in dimension_columns]
    for role, name in roles:
        if name is None or name not in available:
            raise ValueError(
                f"{where}: no {role} column {name or AUDIO_PATH_COLUMNS}; "
                f"columns are {sorted(available)}"
            )
    return audio_column


def _split_from_path(path: Path) -> str:
    """Split implied by a top-level ``train``/``validation``/``test`` folder, else ``""``."""
    parts = path.parts
    return SPLIT_ALIASES.get(parts[0].lower(), "") if len(parts) > 1 else ""


def audio_files(root: Path) -> list[Path]:
    """All audio files under ``root``, sorted so that every listing is reproducible."""
    return sorted(
        p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file()
    )


def _from_class_folders(root: Path, columns: _Columns) -> dict[str, Dataset]:
    """Audiofolder without metadata: the label is each file's parent folder name."""
    if columns.dimensions:
        raise ValueError(
            f"{root}: class folders carry no dimensional ratings; add a metadata.csv with "
            f"file_name,label,{','.join(columns.dimensions)} columns"
        )
    paths, labels, splits = [], [], []
    for path in audio_files(root):
        relative = path.relative_to(root)
        if len(relative.parts) < 2:
            raise ValueError(
                f"{root}: {relative} is not inside a class folder; add a metadata.csv with "
                "file_name,label columns or move files to <root>/<label>/"
            )
        paths.append(path)
        labels.append(relative.parts[-2])
        splits.append(_split_from_path(relative) if len(relative.parts) > 2 else "")
    if not all(splits):
        splits = ["train"] * len(paths)
    return _group_by_split(_file_dataset(paths, labels, None), splits, str(root))


def _file_dataset(
    paths: Sequence[Path],
    labels: Sequence[str] | None,
    speakers: Sequence[str] | None,
    dimensions: Sequence[Sequence[float]] | None = None,
) -> Dataset:
    """Build the normalised dataset from file lists (no torchcodec needed for this route)."""
    data: dict[str, list] = {"audio": [str(p.resolve()) for p in paths]}
    if labels is not None:
        data["label"] = list(labels)
    if speakers is not None:
        data["speaker"] = list(speakers)
    dataset = Dataset.from_dict(data).cast_column("audio", Audio(decode=False))
    if dimensions is not None:
        dataset = dataset.add_column("dimensions", list(dimensions), feature=DIMENSIONS_FEATURE)
    return dataset


def _group_by_split(dataset: Dataset, splits: Sequence[str], where: str) -> dict[str, Dataset]:
    """Partition rows by their split value, keeping the original row order inside a split."""
    if not all(splits):
        raise ValueError(f"{where}: some rows have an empty split value")
    indices: dict[str, list[int]] = {}
    for index, split in enumerate(splits):
        indices.setdefault(split, []).append(index)
    if len(indices) == 1:
        return {splits[0]: dataset}
    return {split: dataset.select(rows) for split, rows in indices.items()}


def _from_hf(loaded: Dataset | DatasetDict, columns: _Columns) -> dict[str, Dataset]:
    """Normalise a ``datasets`` object (from disk or the Hub)."""
    if isinstance(loaded, DatasetDict):
        return {name: _normalize_hf(split, columns) for name, split in loaded.items()}
    if columns.split in loaded.column_names:
        splits = [_text(value) for value in list(loaded[columns.split])]
        return _group_by_split(_normalize_hf(loaded, columns), splits, "dataset")
    return {"train": _normalize_hf(loaded, columns)}


def _normalize_hf(dataset: Dataset, columns: _Columns) -> Dataset:
    """Keep audio (undecoded), label names and speaker; drop everything else.

    Table operations only (no ``map``), so that nothing is written next to a dataset that was
    loaded from disk.
    """
    names = dataset.column_names
    audio_column = columns.audio or next(
        (c for c, f in dataset.features.items() if isinstance(f, Audio)), None
    )
    audio_column = _require_columns(
        "dataset", names, audio_column, columns.label, columns.dimensions
    )
    labels = None
    if columns.label:
        feature = dataset.features[columns.label]
        raw_labels = list(dataset[columns.label])
        if isinstance(feature, ClassLabel):
            raw_labels = feature.int2str(raw_labels)
        labels = [_text(value) for value in raw_labels]
        if not all(labels):
            raise ValueError(f"some rows have an empty {columns.label!r} value")
    speakers = None
    if columns.speaker in names:
        speakers = [_text(value) for value in list(dataset[columns.speaker])]
    out = dataset.select_columns([audio_column])
    if audio_column != "audio":
        out = out.rename_column(audio_column, "audio")
    out = out.cast_column("audio", Audio(decode=False))
    if labels is not None:
        out = out.add_column("label", labels)
    if speakers is not None:
        out = out.add_column("speaker", speakers)
    if columns.dimensions:
        table = dataset.select_columns(list(columns.dimensions)).to_dict()
        values = _dimension_values(
            list(zip(*(table[name] for name in columns.dimensions), strict=True)),
            columns.dimensions,
            "dataset row",
            0,
        )
        out = out.add_column("dimensions", values, feature=DIMENSIONS_FEATURE)
    return out


def _complete_splits(
    splits: Mapping[str, Dataset], fractions: Mapping[str, float], seed: int
) -> DatasetDict:
    """Rename split aliases and carve the missing validation/test splits out of train."""
    named: dict[str, Dataset] = {}
    for name, dataset in splits.items():
        key = SPLIT_ALIASES.get(name.lower(), name)
        if key in named:
            raise ValueError(f"split {name!r} duplicates {key!r}")
        if len(dataset):
            named[key] = dataset
    if not named:
        raise ValueError("the dataset has no examples")
    missing = {name: f for name, f in fractions.items() if name not in named and f > 0}
    if "train" in named and missing:
        named.update(_seeded_split(named["train"], missing, seed))
    order = ["train", "validation", "test"]
    order += sorted(k for k in named if k not in order)
    return DatasetDict({key: named[key] for key in order if key in named})


def _seeded_split(
    dataset: Dataset, fractions: Mapping[str, float], seed: int
) -> dict[str, Dataset]:
    """Split off held-out sets, by speaker when possible, deterministically from ``seed``.

    Whole speakers are assigned (in a seeded random order) until each held-out split reaches
    its share of utterances, so split sizes are approximate. With too few speakers for that,
    it falls back to an utterance-level split and warns, since the result is not
    speaker-disjoint.
    """
    rng = np.random.default_rng(seed)
    size = len(dataset)
    groups: list[list[int]] | None = None
    if "speaker" in dataset.column_names:
        members: dict[str, list[int]] = {}
        for index, speaker in enumerate(list(dataset["speaker"])):
            members.setdefault(speaker, []).append(index)
        if len(members) > len(fractions):
            speakers = sorted(members)
            groups = [members[speakers[i]] for i in rng.permutation(len(speakers))]
        else:
            warnings.warn(
                f"only {len(members)} speaker(s): splitting by utterance, so the "
                f"{'/'.join(fractions)} split(s) share speakers with train",
                stacklevel=3,
            )
    if groups is None:
        groups = [[int(i)] for i in rng.permutation(size)]
    out: dict[str, list[int]] = {}
    position = 0
    for name, fraction in fractions.items():
        target = max(1, round(fraction * size))
        chosen: list[int] = []
        while position < len(groups) and len(chosen) < target:
            chosen += groups[position]
            position += 1
        out[name] = chosen
    train = [i for group in groups[position:] for i in group]
    if not train or not all(out.values()):
        raise ValueError(
            f"cannot carve {'/'.join(fractions)} out of {size} training example(s); "
            "provide the splits or lower the fractions"
        )
    out["train"] = train
    return {name: dataset.select(sorted(rows)) for name, rows in out.items()}


def check_labels(dataset_labels: Iterable[Any], label2id: Mapping[str, int]) -> None:
    """Fail early, naming every label the model does not know, instead of a KeyError mid-run."""
    unknown = sorted(set(dataset_labels) - set(label2id), key=str)
    if unknown:
        known = sorted(label2id, key=lambda name: label2id[name])
        raise ValueError(
            f"unknown label(s) {', '.join(map(repr, unknown))}; the known labels are "
            f"{', '.join(map(repr, known))}"
        )


def _encode_label(label: Any, label2id: Mapping[str, int]) -> int:
    """Label name -> id, with :func:`check_labels`'s message for unknown names."""
    check_labels([label], label2id)
    return int(label2id[label])


# --------------------------------------------------------------------------------------------
# Noise
# --------------------------------------------------------------------------------------------


#: Noise split names found in noise corpora, mapped to the three the package uses: ``seen``
#: (mixed into training), ``dev`` (validation mixes only) and ``unseen`` (test mixes only).
NOISE_SPLIT_ALIASES = {
    "seen": "seen",
    "train": "seen",
    "training": "seen",
    "dev": "dev",
    "development": "dev",
    "validation": "dev",
    "valid": "dev",
    "unseen": "unseen",
    "test": "unseen",
}


def noise_split(name: str, where: str) -> str:
    """A noise split value or folder as ``seen`` / ``dev`` / ``unseen``; anything else is an
    error (a mistyped split would put test noise into training)."""
    split = NOISE_SPLIT_ALIASES.get(name.strip().lower())
    if split is None:
        raise ValueError(
            f"{where}: unknown noise split {name!r}; use one of "
            f"{', '.join(sorted(NOISE_SPLIT_ALIASES))}"
        )
    return split


@dataclass(frozen=True)
class NoiseFile:
    """One noise recording and its metadata (``split``: ``seen``, ``dev`` or ``unseen``)."""

    path: Path
    noise_type: str
    split: str = "seen"


class NoiseBank:
    """A set of noise recordings to draw random segments from.

    Files are read segment by segment (never all at once), so banks as large as MUSAN cost no
    memory. Sampling picks a noise *type* first, then a file, so that types with many files do
    not dominate.
    """

    def __init__(self, files: Iterable[NoiseFile], sampling_rate: int = 16000) -> None:
        self.files = list(files)
        if not self.files:
            raise ValueError("a NoiseBank needs at least one noise file")
        self.sampling_rate = sampling_rate
        self._by_type: dict[str, list[NoiseFile]] = {}
        for noise in sorted(self.files, key=lambda f: (f.noise_type, str(f.path))):
            self._by_type.setdefault(noise.noise_type, []).append(noise)

    @classmethod
    def from_dir(
        cls,
        path: str | Path,
        split: str | None = "seen",
        sampling_rate: int = 16000,
        *,
        required: bool = True,
    ) -> NoiseBank | None:
        """Load a noise folder (searched recursively).

        With ``noise.csv`` (``file_name,noise_type[,split]``) its columns are used. Otherwise
        the noise type is the parent folder name (files in the root: the file-name prefix
        before ``_``, ``-`` or a digit) and every file counts as ``"seen"``, except under a
        top-level split folder: ``seen/`` or ``train/`` (training noise), ``dev/`` or
        ``validation/`` (validation only), ``unseen/`` or ``test/`` (test only), as noise
        corpora split their files (:data:`NOISE_SPLIT_ALIASES`). ``split=None`` keeps every
        file. A folder without files of ``split`` is an error, or ``None`` when not
        ``required`` (an optional split: unseen or dev noise); a broken folder is an error
        either way.
        """
        root = Path(path).expanduser()
        if not root.is_dir():
            raise ValueError(f"noise folder not found: {root}")
        table = root / "noise.csv"
        if table.is_file():
            files = _noise_from_table(table)
        else:
            files = [_noise_from_path(p, p.relative_to(root)) for p in audio_files(root)]
        available = sorted({f.split for f in files})
        if split is not None:
            files = [f for f in files if f.split == split]
        if not files and not required:
            return None
        if not files:
            raise ValueError(
                f"no {split or ''} noise files in {root} (splits found: {available}); "
                "use split=None to take every file"
            )
        return cls(files, sampling_rate)

    @property
    def noise_types(self) -> list[str]:
        return list(self._by_type)

    def __len__(self) -> int:
        return len(self.files)

    def sample(self, num_samples: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
        """Random type, random file, random offset; looped when the file is too short."""
        if num_samples <= 0:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        noise_type = self.noise_types[int(rng.integers(len(self._by_type)))]
        candidates = self._by_type[noise_type]
        noise = candidates[int(rng.integers(len(candidates)))]
        return self._segment(noise.path, num_samples, rng), noise_type

    def _segment(self, path: Path, num_samples: int, rng: np.random.Generator) -> np.ndarray:
        frames, sr = audio_info(path)
        needed = math.ceil(num_samples * sr / self.sampling_rate)
        if frames >= needed:
            start = int(rng.integers(frames - needed + 1))
            segment = load_audio(path, self.sampling_rate, start=start, stop=start + needed)
            return _fit_length(segment, num_samples)
        audio = load_audio(path, self.sampling_rate)
        return _fit_length(audio, num_samples, offset=int(rng.integers(len(audio))))


def _noise_from_table(table: Path) -> list[NoiseFile]:
    rows = read_rows(table)
    files = []
    for line_number, row in enumerate(rows, start=2):
        name, noise_type = _text(row.get("file_name")), _text(row.get("noise_type"))
        if not name or not noise_type:
            raise ValueError(f"{table}: row {line_number} needs file_name and noise_type")
        split = noise_split(_text(row.get("split")) or "seen", f"{table}: row {line_number}")
        files.append(NoiseFile(table.parent / name, noise_type, split))
    missing = [str(f.path) for f in files if not f.path.is_file()]
    if missing:
        raise ValueError(f"{table}: {len(missing)} noise file(s) not found, e.g. {missing[:5]}")
    return files


def _noise_from_path(path: Path, relative: Path) -> NoiseFile:
    parts = relative.parts
    split = "seen"
    if len(parts) > 1 and parts[0].lower() in NOISE_SPLIT_ALIASES:
        split, parts = NOISE_SPLIT_ALIASES[parts[0].lower()], parts[1:]
    if len(parts) > 1:
        noise_type = parts[-2]
    else:
        noise_type = re.split(r"[_\-\s\d]", path.stem)[0] or path.stem
    return NoiseFile(path, noise_type, split)


def _fit_length(signal: np.ndarray, length: int, offset: int = 0) -> np.ndarray:
    """Crop, or loop when too short, to exactly ``length`` samples starting at ``offset``."""
    if offset == 0 and len(signal) >= length:
        return signal[:length]
    return signal[(offset + np.arange(length)) % len(signal)]


#: Speed factors :func:`change_speed` (and so ``NoisyMixer(speed_range=...)``) accepts.
SPEED_LIMITS = (0.5, 2.0)
#: The largest training gain (dB) either way: beyond it a voice turns to noise floor or clips.
GAIN_LIMIT_DB = 30.0


def change_speed(signal: np.ndarray, factor: float, sampling_rate: int = 16000) -> np.ndarray:
    """Play ``signal`` ``factor`` times faster (pitch and formants up by the same factor).

    ``factor`` is rounded to 0.01: ``torchaudio.functional.speed`` resamples by the ratio of
    ``sampling_rate`` to ``sampling_rate * factor``, and an arbitrary factor gives a ratio of
    large coprime integers and a resampling kernel as large. 1.0 returns the input unchanged.
    """
    factor = round(float(factor), 2)
    low, high = SPEED_LIMITS
    if not low <= factor <= high:
        raise ValueError(f"speed factor must be in [{low:g}, {high:g}], got {factor}")
    if factor == 1.0:
        return signal
    fast, _ = AF.speed(torch.from_numpy(np.asarray(signal, np.float32)), sampling_rate, factor)
    return fast.numpy()


#: The largest pitch shift (semitones) :func:`change_pitch` accepts either way.
PITCH_SHIFT_LIMIT = 6.0


def change_pitch(
    signal: np.ndarray, semitones: float, sampling_rate: int = 16000, n_fft: int = 512
) -> np.ndarray:
    """Move pitch and formants by ``semitones`` at the same duration and level: another
    speaker's vocal tract and voice at the same speaking rate and loudness.

    :func:`change_speed` by the factor ``2 ** (semitones / 12)`` (rounded to its 0.01 grid),
    then a phase vocoder (``torchaudio.functional.phase_vocoder``) stretches the result back
    to the input's length. The vocoder smears the phase of broadband speech, which costs
    about 3 dB of level on the corpus's voices; loudness is an emotion cue, so the output is
    scaled back to the input's RMS. A shift that rounds to factor 1 returns the input
    unchanged.
    """
    semitones = float(semitones)
    if not (math.isfinite(semitones) and abs(semitones) <= PITCH_SHIFT_LIMIT):
        raise ValueError(
            f"pitch shift must be within +-{PITCH_SHIFT_LIMIT:g} semitones, got {semitones}"
        )
    factor = round(2.0 ** (semitones / 12.0), 2)
    if factor == 1.0 or len(signal) == 0:
        return signal
    hop = n_fft // 4
    shifted = torch.from_numpy(change_speed(signal, factor, sampling_rate))
    window = torch.hann_window(n_fft)
    spec = torch.stft(shifted, n_fft, hop, window=window, return_complex=True)
    advance = torch.linspace(0.0, math.pi * hop, spec.shape[-2])[:, None]
    stretched = AF.phase_vocoder(spec, 1.0 / factor, advance)
    out = torch.istft(stretched, n_fft, hop, window=window, length=len(signal)).numpy()
    rms_in = float(np.sqrt(np.mean(np.square(signal, dtype=np.float64))))
    rms_out = float(np.sqrt(np.mean(np.square(out, dtype=np.float64))))
    if rms_out > 0:
        out = out * (rms_in / rms_out)
    return out.astype(np.float32)


#: Where :func:`change_brightness`'s shelf turns (Hz): the corpus's voices differ most in
#: energy above 2 kHz against below 1 kHz (``merit.corpus.voice_level_and_brightness``).
BRIGHTNESS_SHELF_HZ = 2000.0
#: The largest brightness change (dB) either way.
BRIGHTNESS_LIMIT_DB = 20.0


def change_brightness(signal: np.ndarray, gain_db: float, sampling_rate: int = 16000) -> np.ndarray:
    """Raise (or lower) everything above :data:`BRIGHTNESS_SHELF_HZ` by ``gain_db``: a brighter
    or darker voice at the same level below the shelf (``torchaudio.functional.treble_biquad``,
    a high shelf). 0 returns the input unchanged.

    The biquad clamps its output to [-1, 1], so it runs on a copy scaled well under full
    scale and the result is scaled back (a linear filter commutes with the scaling); the
    caller keeps the level at or under full scale.
    """
    gain_db = float(gain_db)
    if not (math.isfinite(gain_db) and abs(gain_db) <= BRIGHTNESS_LIMIT_DB):
        raise ValueError(
            f"brightness gain must be within +-{BRIGHTNESS_LIMIT_DB:g} dB, got {gain_db}"
        )
    if gain_db == 0.0:
        return signal
    x = np.asarray(signal, np.float64)
    headroom = 4.0 * 10 ** (max(gain_db, 0.0) / 20) * max(float(np.max(np.abs(x), initial=0)), 1.0)
    shelved = AF.treble_biquad(
        torch.from_numpy(x / headroom), sampling_rate, gain_db, central_freq=BRIGHTNESS_SHELF_HZ
    )
    if float(shelved.abs().max()) >= 1.0:  # clamped: the scaling above did not leave room
        raise RuntimeError("change_brightness: the shelf filter clipped; lower the gain")
    return (shelved.numpy() * headroom).astype(np.float32)


def _db_range(name: str, value: Sequence[float] | None, limit: float) -> tuple[float, float] | None:
    """A (low, high) range (dB, or semitones) for an augmentation, or None when it is off
    ((0, 0))."""
    if value is None:
        return None
    if len(value) != 2:
        raise ValueError(f"{name} must be (low, high), got {value}")
    low, high = float(value[0]), float(value[1])
    if not (math.isfinite(low) and math.isfinite(high) and -limit <= low <= high <= limit):
        raise ValueError(
            f"{name} must be (low, high) with -{limit:g} <= low <= high <= {limit:g}, got {value}"
        )
    return None if (low, high) == (0.0, 0.0) else (low, high)


def _under_full_scale(signal: np.ndarray) -> np.ndarray:
    """float32, scaled down to full scale when louder: an augmented copy, never a clipped one."""
    signal = np.asarray(signal, np.float32)
    peak = float(np.max(np.abs(signal), initial=0.0))
    return signal / peak if peak > 1.0 else signal


def mix_at_snr(
    clean: np.ndarray | torch.Tensor, noise: np.ndarray | torch.Tensor, snr_db: float
) -> tuple[np.ndarray, np.ndarray]:
    """Add ``noise`` to ``clean`` at ``snr_db`` (powers over the whole clip); returns
    ``(noisy, clean_target)`` as float32.

    ``noise`` is cropped or looped to the clean length. If the mixture would exceed [-1, 1],
    both outputs are scaled by the same factor, so the SNR and the SE target stay consistent.
    Silent clean audio (SNR undefined) and silent noise (nothing to add) give back the clean
    signal unchanged as both outputs, with a ``RuntimeWarning``.
    """
    clean = check_waveform(clean, "clean")
    noise = check_waveform(noise, "noise")
    if clean.ndim != 1 or noise.ndim != 1:
        raise ValueError(f"expected 1-D clean and noise, got {clean.shape} and {noise.shape}")
    if not math.isfinite(snr_db):
        raise ValueError(f"snr_db must be finite, got {snr_db}")
    noise = _fit_length(noise, len(clean))
    for name, signal in (("clean signal", clean), ("noise", noise)):
        if not np.any(signal):
            warnings.warn(
                f"{name} is silent: returning the clean signal without noise",
                RuntimeWarning,
                stacklevel=2,
            )
            return clean.copy(), clean.copy()
    target = torch.from_numpy(clean.astype(np.float64))
    noisy = AF.add_noise(
        target[None],
        torch.from_numpy(noise.astype(np.float64))[None],
        torch.tensor([float(snr_db)], dtype=torch.float64),
    )[0]
    peak = float(noisy.abs().max())
    if peak > 1.0:
        noisy, target = noisy / peak, target / peak
    return noisy.numpy().astype(np.float32), target.numpy().astype(np.float32)


def _corrupt(
    clean: np.ndarray, bank: NoiseBank | None, snr_db: float | None, rng: np.random.Generator
) -> dict[str, Any]:
    """One noisy example (or the clean one when ``bank`` is None): the shared output format."""
    if bank is None or snr_db is None:
        noisy, target, noise_type, snr_db = clean, clean, CLEAN, math.inf
    else:
        noise, noise_type = bank.sample(len(clean), rng)
        noisy, target = mix_at_snr(clean, noise, snr_db)
    return {
        "input_values": noisy,
        "clean_values": target,
        "snr": float(snr_db),
        "noise_type": noise_type,
    }


class NoisyMixer:
    """On-the-fly noise augmentation, for ``Dataset.with_transform`` or as a collate step.

    Called with a batch dict (``with_transform``) it returns a batch dict; called with a list of
    examples it returns a list of examples (then pad them with :class:`DataCollatorForMerit`).
    Outputs per example: ``input_values`` (noisy), ``clean_values`` (SE target, same length),
    ``label`` (id, when ``label2id`` is given), ``snr`` (``inf`` for clean examples),
    ``noise_type`` (``"clean"`` for clean examples) and ``dimensions`` when the input has them.

    ``gain_range_db`` scales each utterance by a gain drawn uniformly from the range (dB),
    after the crop and before the noise (so the SNR and the SE target follow it; a gain that
    would clip is lowered to full scale): a voice's own level says nothing about its emotion,
    yet a model that only ever heard 14 voices at their own levels takes quiet for sad.
    ``(0, 0)`` is off and draws nothing.

    ``brightness_range_db`` then raises or lowers everything above 2 kHz by a gain drawn
    uniformly from the range (:func:`change_brightness`): voices differ in brightness too,
    by more than the emotions' spectral tilt does. ``(0, 0)`` is off.

    ``pitch_shift_semitones`` moves pitch and formants of each utterance, with probability
    ``pitch_shift_prob``, by a shift drawn uniformly from the range (:func:`change_pitch`),
    at the same rate and level: eSpeak's voices differ from each other mostly in formants and
    pitch, and pitch level is the emotion cue the corpus's ideal listener can best do
    without. ``(0, 0)`` is off and draws nothing.

    ``speed_range`` turns on speed perturbation (Ko et al., 2015) before cropping and mixing:
    each utterance is resampled by a factor drawn uniformly from the range (on a 0.01 grid, which
    keeps ``torchaudio.functional.speed``'s resampling kernels small), which moves pitch,
    formants and rate together, as a different vocal tract and speaking habit would. Noise is
    not perturbed, and the SE target is the perturbed clean signal. ``(1, 1)`` is the same as
    ``None`` (no perturbation, and the same noise draws).

    Randomness comes from torch's global generator (one draw per call seeds a numpy generator):
    ``transformers.set_seed``/``torch.manual_seed`` make it reproducible, and DataLoader
    workers, which torch seeds differently, do not repeat each other's noise.
    """

    def __init__(
        self,
        noise_bank: NoiseBank,
        label2id: Mapping[str, int] | None = None,
        *,
        snr_range: tuple[float, float] = (-5.0, 20.0),
        clean_prob: float = 0.1,
        max_seconds: float | None = None,
        speed_range: tuple[float, float] | None = None,
        gain_range_db: tuple[float, float] | None = None,
        brightness_range_db: tuple[float, float] | None = None,
        pitch_shift_semitones: tuple[float, float] | None = None,
        pitch_shift_prob: float = 0.5,
        sampling_rate: int = 16000,
    ) -> None:
        low, high = (float(v) for v in snr_range)
        if not (math.isfinite(low) and math.isfinite(high) and low <= high):
            raise ValueError(f"snr_range must be finite (low, high) with low <= high: {snr_range}")
        if not 0.0 <= clean_prob <= 1.0:
            raise ValueError(f"clean_prob must be in [0, 1], got {clean_prob}")
        if max_seconds is not None and max_seconds <= 0:
            raise ValueError(f"max_seconds must be positive, got {max_seconds}")
        if speed_range is not None:
            if len(speed_range) != 2:
                raise ValueError(f"speed_range must be (low, high), got {speed_range}")
            speed_range = (float(speed_range[0]), float(speed_range[1]))
            slowest, fastest = SPEED_LIMITS
            if not (slowest <= speed_range[0] <= speed_range[1] <= fastest):
                raise ValueError(
                    f"speed_range must be (low, high) with {slowest:g} <= low <= high <= "
                    f"{fastest:g}, got {speed_range}"
                )
            if speed_range == (1.0, 1.0):  # off: draws nothing, so the noise stream is as without
                speed_range = None
        # (0, 0) is off and draws nothing, so the noise stream is as without.
        self.gain_range_db = _db_range("gain_range_db", gain_range_db, GAIN_LIMIT_DB)
        self.brightness_range_db = _db_range(
            "brightness_range_db", brightness_range_db, BRIGHTNESS_LIMIT_DB
        )
        self.pitch_shift_semitones = _db_range(
            "pitch_shift_semitones", pitch_shift_semitones, PITCH_SHIFT_LIMIT
        )
        if not 0.0 <= pitch_shift_prob <= 1.0:
            raise ValueError(f"pitch_shift_prob must be in [0, 1], got {pitch_shift_prob}")
        self.pitch_shift_prob = pitch_shift_prob
        self.speed_range = speed_range
        self.noise_bank = noise_bank
        self.label2id = label2id
        self.snr_range = (low, high)
        self.clean_prob = clean_prob
        self.max_samples = None if max_seconds is None else int(max_seconds * sampling_rate)
        self.sampling_rate = sampling_rate

    def __call__(
        self, batch: Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any]]
    ) -> dict[str, list[Any]] | list[dict[str, Any]]:
        rng = np.random.default_rng(int(torch.randint(2**62, (1,)).item()))
        if isinstance(batch, Mapping):
            examples = [
                dict(zip(batch, values, strict=True))
                for values in zip(*batch.values(), strict=True)
            ]
            mixed = [self.mix_example(example, rng) for example in examples]
            return {key: [example[key] for example in mixed] for key in mixed[0]} if mixed else {}
        return [self.mix_example(example, rng) for example in batch]

    def mix_example(self, example: Mapping[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        """Read, crop and corrupt one example with the given generator."""
        clean = load_audio(example["audio"], self.sampling_rate)
        if self.speed_range is not None:
            clean = change_speed(clean, rng.uniform(*self.speed_range), self.sampling_rate)
        if self.pitch_shift_semitones is not None:
            shift = rng.uniform(*self.pitch_shift_semitones)
            if rng.random() < self.pitch_shift_prob:
                clean = _under_full_scale(change_pitch(clean, shift, self.sampling_rate))
        if self.max_samples is not None and len(clean) > self.max_samples:
            start = int(rng.integers(len(clean) - self.max_samples + 1))
            clean = clean[start : start + self.max_samples]
        if self.gain_range_db is not None:
            gain = 10.0 ** (rng.uniform(*self.gain_range_db) / 20.0)
            clean = _under_full_scale(clean * gain)
        if self.brightness_range_db is not None:
            gain_db = rng.uniform(*self.brightness_range_db)
            clean = _under_full_scale(change_brightness(clean, gain_db, self.sampling_rate))
        if rng.random() < self.clean_prob:
            out = _corrupt(clean, None, None, rng)
        else:
            out = _corrupt(clean, self.noise_bank, rng.uniform(*self.snr_range), rng)
        if self.label2id is not None and "label" in example:
            out["label"] = _encode_label(example["label"], self.label2id)
        if "dimensions" in example:
            out["dimensions"] = example["dimensions"]
        return out


# --------------------------------------------------------------------------------------------
# Fixed evaluation sets
# --------------------------------------------------------------------------------------------


def build_eval_sets(
    dataset_split: Dataset,
    noise_bank_seen: NoiseBank | None,
    noise_bank_unseen: NoiseBank | None,
    snrs: Sequence[float] = (-5, 0, 5, 10),
    seed: int = 1234,
    include_clean: bool = True,
    out_dir: str | Path | None = None,
    *,
    label2id: Mapping[str, int] | None = None,
    sampling_rate: int = 16000,
) -> dict[str, Dataset]:
    """Frozen noisy copies of an evaluation split, one dataset per condition.

    Keys are ``"seen_-5dB"``, ``"unseen_0dB"``, ... and ``"clean"``; a ``None`` bank skips its
    conditions. Each utterance's noise (file, offset) is drawn from a generator seeded by
    ``(seed, bank kind, row index)``, so every run, order of evaluation and subset of
    conditions gives the same audio, and the SNR conditions of one bank differ only in the
    noise level (a paired comparison across SNRs). Columns: ``input_values``,
    ``clean_values``, ``label`` (ids if ``label2id`` is given, else names), ``snr`` (``inf``
    for clean), ``noise_type``, ``condition``, and ``dimensions`` when the split has them.

    With ``out_dir`` the sets are written there (``save_to_disk``) and reused by later calls
    with the same data and settings; changed settings rebuild them.
    """
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    required = {"audio"} | ({"label"} if label2id is not None else set())
    missing = required - set(dataset_split.column_names)
    if missing:
        raise ValueError(
            f"dataset_split lacks column(s) {sorted(missing)}; load it with load_speech_dataset"
        )
    conditions = [
        _Condition(f"{kind}_{float(snr):g}dB", kind, bank, float(snr))
        for kind, bank in (("seen", noise_bank_seen), ("unseen", noise_bank_unseen))
        if bank is not None
        for snr in snrs
    ]
    if include_clean:
        conditions.append(_Condition(CLEAN, CLEAN, None, None))
    if not conditions:
        raise ValueError("no evaluation conditions: give a noise bank or include_clean=True")
    if label2id is not None:
        check_labels(dataset_split["label"], label2id)
    settings = _eval_settings(dataset_split, conditions, seed, label2id, sampling_rate)
    if out_dir is not None:
        cached = _load_eval_sets(Path(out_dir), settings)
        if cached is not None:
            return cached

    columns: dict[str, Any] = {
        "input_values": List(Value("float32")),
        "clean_values": List(Value("float32")),
    }
    if "label" in dataset_split.column_names:
        columns["label"] = Value("string") if label2id is None else Value("int64")
    columns |= {"snr": Value("float64"), "noise_type": Value("string")}
    features = Features({**columns, "condition": Value("string")})
    if "dimensions" in dataset_split.column_names:
        features["dimensions"] = DIMENSIONS_FEATURE
    build_dir = None if out_dir is None else Path(out_dir) / ".build"
    if build_dir is not None:
        build_dir.mkdir(parents=True, exist_ok=True)
    sets = {}
    for condition in conditions:
        make = partial(
            _eval_example,
            condition=condition,
            seed=seed,
            label2id=label2id,
            sampling_rate=sampling_rate,
        )
        name = condition.name
        sets[name] = dataset_split.map(
            make,
            with_indices=True,
            remove_columns=dataset_split.column_names,
            features=features,
            new_fingerprint=hashlib.sha256(f"{settings['key']}-{name}".encode()).hexdigest(),
            keep_in_memory=build_dir is None,
            cache_file_name=None if build_dir is None else str(build_dir / f"{name}.arrow"),
            desc=f"eval set {name}",
        )
    if out_dir is not None:
        return _save_eval_sets(Path(out_dir), sets, settings)
    return sets


class _Condition(NamedTuple):
    """One eval condition; ``kind`` ("seen"/"unseen"/"clean") seeds the noise draw."""

    name: str
    kind: str
    bank: NoiseBank | None
    snr_db: float | None


def _eval_example(
    example: Mapping[str, Any],
    index: int,
    *,
    condition: _Condition,
    seed: int,
    label2id: Mapping[str, int] | None,
    sampling_rate: int,
) -> dict[str, Any]:
    """One row of an eval set; its noise depends only on (seed, bank kind, row index)."""
    rng = np.random.default_rng([seed, zlib.crc32(condition.kind.encode()), index])
    clean = load_audio(example["audio"], sampling_rate)
    out = _corrupt(clean, condition.bank, condition.snr_db, rng)
    if "label" in example:
        label = example["label"]
        out["label"] = label if label2id is None else _encode_label(label, label2id)
    out["condition"] = condition.name
    if "dimensions" in example:
        out["dimensions"] = example["dimensions"]
    return out


def _eval_settings(
    dataset: Dataset,
    conditions: Sequence[_Condition],
    seed: int,
    label2id: Mapping[str, int] | None,
    sampling_rate: int,
) -> dict[str, Any]:
    """What the eval sets depend on; the cache is reused only when all of it matches."""
    audio = dataset.with_format("arrow")["audio"].combine_chunks()
    labels = list(dataset["label"]) if "label" in dataset.column_names else None
    content = hashlib.sha256(json.dumps(labels).encode())
    if "dimensions" in dataset.column_names:
        content.update(json.dumps(list(dataset["dimensions"])).encode())
    for path, blob in zip(audio.field("path").to_pylist(), audio.field("bytes"), strict=True):
        content.update(f"\0{path}\0".encode())
        if blob.is_valid:  # save_to_disk embeds bytes and keeps only file names as paths
            content.update(blob.as_buffer())
    noise = {
        c.kind: sorted([str(f.path), f.noise_type] for f in c.bank.files)
        for c in conditions
        if c.bank is not None
    }
    settings = {
        "conditions": [c.name for c in conditions],
        "seed": seed,
        "sampling_rate": sampling_rate,
        "label2id": dict(label2id) if label2id is not None else None,
        "data": content.hexdigest(),
        "noise": hashlib.sha256(json.dumps(noise).encode()).hexdigest(),
    }
    settings["key"] = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    return settings


_EVAL_INDEX = "eval_sets.json"


def _load_eval_sets(out_dir: Path, settings: Mapping[str, Any]) -> dict[str, Dataset] | None:
    index = out_dir / _EVAL_INDEX
    if not index.is_file() or json.loads(index.read_text())["key"] != settings["key"]:
        return None
    if not all((out_dir / name).is_dir() for name in settings["conditions"]):
        return None
    return {name: datasets.load_from_disk(str(out_dir / name)) for name in settings["conditions"]}


def _save_eval_sets(
    out_dir: Path, sets: Mapping[str, Dataset], settings: Mapping[str, Any]
) -> dict[str, Dataset]:
    """Write the sets and their index, replacing an outdated cache; returns the saved copies."""
    index = out_dir / _EVAL_INDEX
    if index.is_file():
        # Delete rather than overwrite: a Dataset loaded from the old cache may still map it.
        for old in json.loads(index.read_text())["conditions"]:
            shutil.rmtree(out_dir / old, ignore_errors=True)
        index.unlink()
    for name, dataset in sets.items():
        dataset.save_to_disk(str(out_dir / name))
    shutil.rmtree(out_dir / ".build", ignore_errors=True)
    index.write_text(json.dumps(settings, indent=2, sort_keys=True))
    return _load_eval_sets(out_dir, settings)


# --------------------------------------------------------------------------------------------
# Collation
# --------------------------------------------------------------------------------------------


@dataclass
class DataCollatorForMerit:
    """Pad noisy inputs and clean targets to the longest example in the batch.

    Returns ``input_values`` and ``clean_values`` [B, T] float32, ``attention_mask`` [B, T]
    long (1 on real samples), ``labels`` [B] long (from ``label`` or ``labels``) and
    ``dimensions`` [B, D] float32 when the examples carry them. Other keys (``snr``,
    ``noise_type``, ...) are dropped because models do not take them. With a
    ``feature_extractor`` its ``pad`` is used for both signals, so its padding side and value
    apply to the target too; ``max_length_seconds`` truncates each example first.
    """

    feature_extractor: SequenceFeatureExtractor | None = None
    max_length_seconds: float | None = None
    sampling_rate: int = 16000

    def __post_init__(self) -> None:
        fe_rate = getattr(self.feature_extractor, "sampling_rate", self.sampling_rate)
        if fe_rate != self.sampling_rate:
            raise ValueError(
                f"feature extractor expects {fe_rate} Hz but the collator is set to "
                f"{self.sampling_rate} Hz"
            )
        if self.max_length_seconds is not None and self.max_length_seconds <= 0:
            raise ValueError(f"max_length_seconds must be positive, got {self.max_length_seconds}")

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("cannot collate an empty batch")
        limit = None
        if self.max_length_seconds is not None:
            limit = int(self.max_length_seconds * self.sampling_rate)
        inputs = [self._signal(f, "input_values", i)[:limit] for i, f in enumerate(features)]
        batch = self._pad(inputs)
        if _present(features, "clean_values"):
            clean = [self._signal(f, "clean_values", i)[:limit] for i, f in enumerate(features)]
            for index, (noisy, target) in enumerate(zip(inputs, clean, strict=True)):
                if len(noisy) != len(target):
                    raise ValueError(
                        f"example {index}: input_values has {len(noisy)} samples but "
                        f"clean_values has {len(target)}"
                    )
            batch["clean_values"] = self._pad(clean)["input_values"]
        label_key = "labels" if any("labels" in f for f in features) else "label"
        if _present(features, label_key):
            labels = [f[label_key] for f in features]
            if not all(isinstance(label, (int, np.integer)) for label in labels):
                raise ValueError(
                    f"labels must be integer ids (map names with label2id), got {labels}"
                )
            batch["labels"] = torch.tensor(labels, dtype=torch.long)
        if _present(features, "dimensions"):
            sizes = {len(np.atleast_1d(f["dimensions"])) for f in features}
            if len(sizes) != 1 or 0 in sizes:
                raise ValueError(
                    f"every example needs the same number of dimensional values, got {sizes}"
                )
            dims = np.array([np.atleast_1d(f["dimensions"]) for f in features], dtype=np.float32)
            batch["dimension_labels"] = torch.from_numpy(dims)
        return batch

    @staticmethod
    def _signal(feature: Mapping[str, Any], key: str, index: int) -> np.ndarray:
        signal = np.asarray(feature[key], dtype=np.float32)
        if signal.ndim != 1 or signal.size == 0:
            raise ValueError(
                f"example {index}: {key} must be a non-empty 1-D signal, got shape {signal.shape}"
            )
        return signal

    def _pad(self, signals: list[np.ndarray]) -> dict[str, torch.Tensor]:
        if self.feature_extractor is not None:
            padded = self.feature_extractor.pad(
                {"input_values": signals},
                padding="longest",
                return_attention_mask=True,
                return_tensors="pt",
            )
            return {
                "input_values": padded["input_values"].float(),
                "attention_mask": padded["attention_mask"].long(),
            }
        length = max(len(s) for s in signals)
        values = torch.zeros(len(signals), length)
        mask = torch.zeros(len(signals), length, dtype=torch.long)
        for row, signal in enumerate(signals):
            values[row, : len(signal)] = torch.tensor(signal, dtype=torch.float32)
            mask[row, : len(signal)] = 1
        return {"input_values": values, "attention_mask": mask}


def _present(features: Sequence[Mapping[str, Any]], key: str) -> bool:
    """Whether the examples carry ``key``; a batch where only some do is an error."""
    count = sum(f.get(key) is not None for f in features)
    if 0 < count < len(features):
        raise ValueError(f"only {count} of {len(features)} examples have {key!r}")
    return count > 0
