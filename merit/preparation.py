"""Data preparation: from command-line data arguments to checked splits, noise and eval sets.

One home for what training (all three ``train.py`` methods), evaluation and the benchmarks
share: :class:`DataArguments`, where data and noise come from (:func:`resolve_data_sources`,
the embedded corpus by default), :func:`prepare_data`, subsetting (:func:`spread_subset`),
failing early on broken files (:func:`drop_unreadable`), the frozen noisy validation set and
the test conditions (:func:`build_validation_set`, :func:`build_test_sets`). The building
blocks they use (loaders, noise mixing, collation) are in :mod:`merit.data`.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from datasets import Dataset, concatenate_datasets

from merit.audio import AudioError, load_audio
from merit.data import (
    NoiseBank,
    NoisyMixer,
    build_eval_sets,
    check_labels,
    load_speech_dataset,
    name_list,
    optional_column,
)

__all__ = [
    "DEFAULT_DATASET_NAME",
    "DEFAULT_EXTRA_TRAIN_VOICES",
    "DataArguments",
    "PreparedData",
    "build_test_sets",
    "build_validation_set",
    "check_integrity",
    "clean_eval_set",
    "drop_unreadable",
    "label_order",
    "parse_split_map",
    "load_noise_banks",
    "prepare_data",
    "frozen_test_sets",
    "habit_sweep_set",
    "mixing_text",
    "training_audio_text",
    "training_mixer",
    "validation_dataset",
    "validation_noise",
    "validation_voices_set",
    "quiet_datasets",
    "resolve_data_sources",
    "spread_subset",
]

logger = logging.getLogger(__name__)

DEFAULT_DATASET_NAME = "merit embedded eSpeak corpus"
#: More eSpeak voices in the embedded corpus's training split when ``--extra_train_voices`` is
#: not given: with its 14 training voices alone the models scored 42-54 % on voices no split
#: uses; 24 extra voices lift that to 62-67 % (three seeds each on validation:
#: ``benchmarks/results/recipe_search_h200.md``). The corpus has 40 extra voices.
DEFAULT_EXTRA_TRAIN_VOICES = 24


def _off_range(help_text: str) -> Any:
    """A ``[low, high]`` augmentation range flag, off (``0 0``) unless given."""
    return field(default_factory=lambda: [0.0, 0.0], metadata={"help": help_text})


@dataclass
class DataArguments:
    """Where the speech and noise come from and how training examples are corrupted."""

    dataset: str | None = field(
        default=None,
        metadata={
            "help": "Hub dataset, audiofolder, save_to_disk folder or CSV/JSONL manifest "
            "(default: the embedded eSpeak corpus, built on first use)"
        },
    )
    noise_dir: str | None = field(
        default=None,
        metadata={
            "help": "noise folder (noise.csv, or split sub-folders: seen/ or train/ for "
            "training, dev/ for validation only, unseen/ or test/ for test only); default: "
            "the dataset's noise/ folder, else the embedded corpus' noise bank"
        },
    )
    label_column: str = field(
        default="label",
        metadata={
            "help": "column of the emotion class; 'none' for a corpus without categorical "
            "labels (then train dimensions with --categorical_head False, or --variant se-only)"
        },
    )
    audio_column: str | None = field(default=None)
    audio_root: str | None = field(
        default=None,
        metadata={
            "help": "folder that the table's relative audio paths start from (default: the "
            "table's folder), e.g. MSP-Podcast's Audios/ beside Labels/labels_consensus.csv"
        },
    )
    split_column: str = field(
        default="split",
        metadata={"help": "column of the split (e.g. MSP-Podcast's Split_Set)"},
    )
    speaker_column: str = field(
        default="speaker",
        metadata={"help": "column of the speaker (e.g. SpkrID); carved splits keep speakers apart"},
    )
    split_map: str | None = field(
        default=None,
        metadata={
            "help": "rename split values, e.g. 'Test2=drop,Test3=drop', or "
            "'Session5=test,*=train' (* = every other value); Train/Development/Test1 "
            "(MSP-Podcast) and train/dev/valid/test are understood without it; any other "
            "split value is an error naming it"
        },
    )
    dimension_columns: str | None = field(
        default=None,
        metadata={
            "help": "comma-separated columns of dimensional ratings to train the dimensional "
            "head on with a CCC loss, e.g. arousal,valence,dominance (the embedded corpus has "
            "these) or EmoAct,EmoVal,EmoDom (MSP-Podcast); the model keeps these names"
        },
    )
    labels: str | None = field(
        default=None,
        metadata={
            "help": "comma-separated label names in id order; rows of other labels are left "
            "out, with counts per dropped class (MSP-Podcast: A,S,H,N); default: the labels of "
            "the train split"
        },
    )
    snr_range: list[float] = field(
        default_factory=lambda: [-5.0, 20.0],
        metadata={"help": "training SNR range in dB (uniform)"},
    )
    clean_prob: float = field(default=0.1, metadata={"help": "share of clean training examples"})
    max_train_seconds: float | None = field(
        default=None,
        metadata={
            "help": "random crop of training utterances (seconds); default: whole utterances "
            "(emotion in rate, pitch range and loudness lives over the whole utterance)"
        },
    )
    speed_range: list[float] | None = field(
        default_factory=lambda: [1.0, 1.0],
        metadata={
            "help": "speed perturbation of training utterances: a factor drawn uniformly from "
            "[low, high] per example, e.g. 0.9 1.1; off by default (1 1), as the validation "
            "habit sweep and new voices chose: benchmarks/results/recipe_search.md"
        },
    )
    gain_range_db: list[float] = _off_range(
        "level augmentation: each training utterance scaled by a gain drawn "
        "uniformly from [low, high] dB (0 0 = off)"
    )
    brightness_range_db: list[float] = _off_range(
        "brightness augmentation: everything above 2 kHz in each training "
        "utterance raised or lowered by a gain drawn uniformly from [low, high] dB "
        "(merit.data.change_brightness; 0 0 = off): the corpus's voices differ in "
        "brightness by 5.6 dB (standard deviation, benchmarks/results/ceiling.md)"
    )
    pitch_shift_semitones: list[float] = _off_range(
        "pitch augmentation: pitch and formants of a training utterance moved by "
        "a shift drawn uniformly from [low, high] semitones at the same rate and level "
        "(merit.data.change_pitch), another voice saying it; 0 0 = off"
    )
    pitch_shift_prob: float = field(
        default=0.5,
        metadata={"help": "share of training utterances --pitch_shift_semitones shifts"},
    )
    extra_train_voices: int | None = field(
        default=None,
        metadata={
            "help": "embedded corpus only: this many more eSpeak voices in its training split "
            "(at most as many as merit.corpus.EXTRA_TRAIN_VOICES lists; default "
            f"{DEFAULT_EXTRA_TRAIN_VOICES}, chosen on validation), validation and test "
            "unchanged; 0 trains on the corpus's "
            "14 training voices alone. Not for --dataset"
        },
    )
    eval_snrs: list[float] = field(
        default_factory=lambda: [-5.0, 0.0, 5.0, 10.0],
        metadata={
            "help": "SNRs of the test noise (dB), and of the validation noise unless "
            "--validation_snrs is given"
        },
    )
    validation_snrs: list[float] | None = field(
        default=None,
        metadata={
            "help": "SNRs of the validation noise (dB), e.g. 5 with --eval_snrs -5 for the "
            "paper's fixed-SNR protocol (train and dev at 5 dB, test at -5 dB); default: "
            "--eval_snrs"
        },
    )
    eval_seed: int = field(default=1234, metadata={"help": "seed of the frozen eval noise"})
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "use this many evenly spaced validation utterances"}
    )
    max_test_samples: int | None = field(
        default=None, metadata={"help": "use this many evenly spaced test utterances"}
    )
    validation_fraction: float = field(
        default=0.1, metadata={"help": "carved from train by speaker if there is no validation"}
    )
    test_fraction: float = field(default=0.1)
    skip_bad_files: bool = field(
        default=False,
        metadata={"help": "leave out unreadable audio files (listed) instead of failing"},
    )


def parse_split_map(text: str | None) -> dict[str, str] | None:
    """``"Test2=drop,fold5=test"`` -> ``{"Test2": "drop", "fold5": "test"}``; ``*`` names
    every other value (IEMOCAP's leave-one-session-out: ``Session5=test,*=train``)."""
    if not text:
        return None
    mapping = {}
    for item in text.split(","):
        name, sep, target = item.partition("=")
        target = target.strip()
        if not sep or not name.strip() or target not in ("train", "validation", "test", "drop"):
            raise ValueError(
                f"--split_map entries are NAME=train|validation|test|drop, got {item!r}"
            )
        mapping[name.strip()] = target
    return mapping


def resolve_data_sources(
    dataset: str | None, noise_dir: str | None, extra_train_voices: int | None = None
) -> tuple[str, Path, str]:
    """Dataset source, noise folder and a display name, defaulting to the embedded corpus
    (with ``extra_train_voices`` more training voices, ``DEFAULT_EXTRA_TRAIN_VOICES`` when
    None: its own cached build). Another dataset takes none: asking for some is an error.

    A dataset folder with a ``noise/`` sub-folder (the embedded corpus layout) provides its own
    noise; any other dataset without ``noise_dir`` borrows the embedded corpus' noise bank.
    """
    from merit.corpus import ensure_corpus

    if dataset is None:
        if extra_train_voices is None:
            extra_train_voices = DEFAULT_EXTRA_TRAIN_VOICES
        corpus = ensure_corpus(extra_train_voices=extra_train_voices)
        display = DEFAULT_DATASET_NAME
        if extra_train_voices:
            display += f" (+{extra_train_voices} training voices)"
        return str(corpus), Path(noise_dir) if noise_dir else corpus / "noise", display
    if extra_train_voices:
        raise ValueError(
            "--extra_train_voices adds voices to the embedded corpus; it does not apply to "
            f"--dataset {dataset!r}"
        )
    if noise_dir is not None:
        return dataset, Path(noise_dir), dataset
    own = Path(dataset).expanduser() / "noise"
    if own.is_dir():
        return dataset, own, dataset
    return dataset, ensure_corpus() / "noise", dataset


def load_noise_banks(noise_dir: str | Path) -> tuple[NoiseBank, NoiseBank | None]:
    """Seen (training) and unseen (test-only) banks; a folder without unseen noise gives
    ``None`` for it, and the unseen columns are then left out."""
    seen = NoiseBank.from_dir(noise_dir, split="seen")
    return seen, NoiseBank.from_dir(noise_dir, split="unseen", required=False)


def training_audio_text(data_args: DataArguments) -> str:
    """How training utterances are cut and perturbed, in words: the one wording the model card
    and the benchmark reports share."""
    crop, speed = data_args.max_train_seconds, data_args.speed_range
    text = "whole utterances" if crop is None else f"random {crop:g} s crops"
    if speed is None or tuple(speed) == (1, 1):  # (1, 1) is off (NoisyMixer)
        text += ", no speed perturbation"
    else:
        text += f", speed perturbation x{speed[0]:g}-{speed[1]:g}"
    gain = tuple(getattr(data_args, "gain_range_db", (0, 0)))
    if gain != (0, 0):
        text += f", gain {gain[0]:+g} to {gain[1]:+g} dB"
    bright = tuple(getattr(data_args, "brightness_range_db", (0, 0)))
    if bright != (0, 0):
        text += f", brightness {bright[0]:+g} to {bright[1]:+g} dB above 2 kHz"
    pitch = tuple(getattr(data_args, "pitch_shift_semitones", (0, 0)))
    if pitch != (0, 0):
        share = 100 * getattr(data_args, "pitch_shift_prob", 0.5)
        text += f", pitch {pitch[0]:+g} to {pitch[1]:+g} semitones on {share:g} %"
    return text


def mixing_text(data_args: DataArguments) -> str:
    """How training examples are corrupted, in words (the noise types are the bank's)."""
    low, high = data_args.snr_range
    return f"SNR uniform in [{low:g}, {high:g}] dB, {100 * data_args.clean_prob:g} % clean examples"


def training_mixer(
    data_args: DataArguments, noise_bank: NoiseBank, label2id: Mapping[str, int] | None
) -> NoisyMixer:
    """The on-the-fly noise (and speed) augmentation the data flags describe, the same for
    every method that trains on noisy copies of the train split."""
    speed = data_args.speed_range
    return NoisyMixer(
        noise_bank,
        label2id,
        snr_range=tuple(data_args.snr_range),
        clean_prob=data_args.clean_prob,
        max_seconds=data_args.max_train_seconds,
        speed_range=None if speed is None else tuple(speed),
        gain_range_db=tuple(data_args.gain_range_db),
        brightness_range_db=tuple(data_args.brightness_range_db),
        pitch_shift_semitones=tuple(data_args.pitch_shift_semitones),
        pitch_shift_prob=data_args.pitch_shift_prob,
    )


def validation_noise(prepared: PreparedData, seen: NoiseBank) -> NoiseBank:
    """The bank validation mixes draw from: the folder's ``dev`` noise when it has some (a
    noise corpus split three ways), else the training noise, as before."""
    return NoiseBank.from_dir(prepared.noise_dir, split="dev", required=False) or seen


def validation_dataset(
    prepared: PreparedData,
    seen: NoiseBank,
    data_args: DataArguments,
    label2id: Mapping[str, int] | None,
    training_args: Any,
) -> Dataset | None:
    """The frozen noisy validation set of a run (dev noise when the noise folder has some, at
    ``--validation_snrs``), or ``None`` when ``training_args`` do not evaluate."""
    if training_args.eval_strategy == "no":
        return None
    if prepared.validation is None:
        raise ValueError(
            f"{prepared.dataset_name} has no validation split to evaluate on: provide one, "
            "or pass --eval_strategy no --load_best_model_at_end False"
        )
    return build_validation_set(
        prepared.validation,
        validation_noise(prepared, seen),
        data_args.validation_snrs or data_args.eval_snrs,
        seed=data_args.eval_seed,
        label2id=label2id,
    )


@contextmanager
def frozen_test_sets(
    prepared: PreparedData,
    seen: NoiseBank,
    unseen: NoiseBank | None,
    data_args: DataArguments,
) -> Iterator[dict[str, Dataset]]:
    """The test conditions of a run (every SNR of ``--eval_snrs`` for seen and unseen noise,
    and clean) in a temporary folder that lives as long as the block."""
    with tempfile.TemporaryDirectory(prefix="merit-test-sets-") as cache, quiet_datasets():
        yield build_eval_sets(
            prepared.test,
            seen,
            unseen,
            snrs=data_args.eval_snrs,
            seed=data_args.eval_seed,
            out_dir=cache,
        )


def spread_subset(dataset: Dataset, limit: int | None) -> Dataset:
    """At most ``limit`` rows, evenly spaced: corpora are often sorted by label or speaker, so
    the first rows would cover one class only."""
    if limit is None or limit >= len(dataset):
        return dataset
    if limit < 1:
        raise ValueError(f"the number of utterances to keep must be positive, got {limit}")
    rows = np.unique(np.linspace(0, len(dataset) - 1, limit).round().astype(int))
    return dataset.select(rows.tolist())


def _audio_key(audio: Any) -> str | None:
    """What identifies a row's recording: its resolved path (``None`` for bytes-only rows)."""
    path = audio.get("path") if isinstance(audio, Mapping) else audio
    return str(Path(path).expanduser().resolve()) if path else None


def _keep_labels(split: Dataset, names: Sequence[str], split_name: str, display: str) -> Dataset:
    """The rows of ``split`` whose label is in ``names``; dropped classes are logged with counts."""
    labels = list(split["label"])
    dropped = Counter(label for label in labels if label not in names)
    if not dropped:
        return split
    logger.warning(
        "%s (%s split): --labels keeps %s; dropped %s",
        display,
        split_name,
        ", ".join(names),
        ", ".join(f"{label!r} ({count})" for label, count in sorted(dropped.items())),
    )
    kept = [i for i, label in enumerate(labels) if label in names]
    if not kept:
        raise ValueError(f"{display} ({split_name} split): no rows of the labels {list(names)}")
    return split.select(kept)


def check_integrity(
    splits: Mapping[str, Dataset],
    display: str,
    *,
    labelled: bool,
    kept_labels: Sequence[str] | None = None,
) -> None:
    """Refuse data that would train the wrong model without an error, warn on the doubtful.

    Errors: label spellings that differ only in case or spacing ("Angry" / "angry" would
    become two classes), a training split with a single class, a recording in two splits (a
    leak that inflates every test figure). Warnings (logged): a recording listed twice in one
    split, and labels so rare in training that they look like typos (among ``kept_labels``
    when ``--labels`` names the classes: the others are dropped and counted anyway).
    """
    if labelled:
        spellings: dict[str, set[str]] = {}
        for split in splits.values():
            for label in set(split["label"]):
                spellings.setdefault(" ".join(str(label).split()).casefold(), set()).add(label)
        clashes = [sorted(group) for group in spellings.values() if len(group) > 1]
        if clashes:
            listed = "; ".join(" / ".join(map(repr, group)) for group in clashes)
            raise ValueError(
                f"{display}: labels that differ only in case or spacing would become separate "
                f"classes: {listed}. Spell each label one way in the metadata."
            )
        counts = Counter(splits["train"]["label"])
        if len(counts) < 2:
            raise ValueError(
                f"{display}: the train split has a single class ({', '.join(map(repr, counts))}); "
                "an emotion classifier needs at least two."
            )
        rare = [
            f"{label!r} ({count})"
            for label, count in counts.items()
            if count < max(2, 0.01 * sum(counts.values()))
            and (kept_labels is None or label in kept_labels)
        ]
        if rare:
            logger.warning(
                "%s: label(s) with very few training examples (a typo?): %s",
                display,
                ", ".join(rare),
            )
    owners: dict[str, list[str]] = {}
    for split_name, split in splits.items():
        keys = [_audio_key(audio) for audio in split.with_format("python")["audio"]]
        counted = Counter(key for key in keys if key is not None)
        repeated = sum(count - 1 for count in counted.values() if count > 1)
        if repeated:
            logger.warning(
                "%s: %d row(s) of the %s split repeat a recording already listed in it",
                display,
                repeated,
                split_name,
            )
        for key in counted:
            owners.setdefault(key, []).append(split_name)
    shared = {key: names for key, names in owners.items() if len(names) > 1}
    if shared:
        examples = ", ".join(
            f"{Path(key).name} ({' and '.join(names)})" for key, names in list(shared.items())[:3]
        )
        raise ValueError(
            f"{display}: {len(shared)} recording(s) appear in more than one split, e.g. "
            f"{examples}; held-out figures would be inflated. Give each file one split."
        )


def drop_unreadable(
    split: Dataset, *, skip: bool, min_samples: int = 400, name: str = "dataset"
) -> tuple[Dataset, list[str]]:
    """Read every file once so that broken audio fails now, naming the files, not mid-run.

    With ``skip`` the unreadable or too-short files are dropped instead and listed in the
    returned messages.
    """
    problems: list[tuple[int, str]] = []
    for index, audio in enumerate(split.with_format("python")["audio"]):
        try:
            samples = len(load_audio(audio))
        except AudioError as err:
            problems.append((index, str(err)))
            continue
        if samples < min_samples:
            where = audio.get("path") if isinstance(audio, Mapping) else audio
            problems.append((index, f"{where}: too short ({samples} samples < {min_samples})"))
    if problems and not skip:
        listed = "; ".join(message for _, message in problems[:5])
        raise ValueError(
            f"{len(problems)} unreadable audio file(s) in the {name} split, e.g. {listed}. "
            "Fix them or pass --skip_bad_files to leave them out."
        )
    if not problems:
        return split, []
    bad = {index for index, _ in problems}
    kept = split.select([i for i in range(len(split)) if i not in bad])
    if len(kept) == 0:
        raise ValueError(f"every file of the {name} split is unreadable")
    return kept, [message for _, message in problems]


@contextmanager
def quiet_datasets() -> Iterator[None]:
    """Hide ``datasets``' per-set map/save progress bars (nine conditions make a wall of
    them); our own bars show the progress that matters."""
    enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if enabled:
            datasets.enable_progress_bars()


def build_test_sets(
    dataset: str | None = None,
    noise_dir: str | None = None,
    *,
    split: str = "test",
    snrs: Sequence[float] = (-5, 0, 5, 10),
    seed: int = 1234,
    include_clean: bool = True,
    cache_dir: str | Path | None = None,
    max_utterances: int | None = None,
    skip_bad_files: bool = False,
    dimension_columns: Sequence[str] | None = None,
    label_column: str | None = "label",
) -> tuple[dict[str, Dataset], str]:
    """The frozen test conditions of a dataset and its display name.

    ``cache_dir`` keeps the sets on disk (memory-mapped, reused by later runs with the same
    data and settings); without it a temporary folder is used, so memory stays small.
    ``dimension_columns`` carries dimensional ratings along, for CCC; ``label_column=None``
    reads a corpus without categorical labels.
    """
    source, noise, display = resolve_data_sources(dataset, noise_dir)
    splits = load_speech_dataset(
        source, label_column=label_column, dimension_columns=dimension_columns
    )
    if split not in splits:
        raise ValueError(f"dataset {display!r} has no {split!r} split (has {list(splits)})")
    test = spread_subset(splits[split], max_utterances)
    test, skipped = drop_unreadable(test, skip=skip_bad_files, name=split)
    for message in skipped:
        print(f"skipped: {message}")
    seen, unseen = load_noise_banks(noise)
    if cache_dir is None:
        cache_dir = tempfile.mkdtemp(prefix="merit-eval-")
    with quiet_datasets():
        sets = build_eval_sets(
            test, seen, unseen, snrs=snrs, seed=seed, include_clean=include_clean, out_dir=cache_dir
        )
    return sets, display


def clean_eval_set(audio: Sequence[np.ndarray], labels: Sequence[str], **columns: Any) -> Dataset:
    """A clean evaluation set for :func:`merit.evaluation.evaluate_systems`: the noisy input
    is the clean signal itself, so F1 is clean F1 and the enhancer's SSNR is what it costs
    clean speech. ``columns`` ride along (speaker, setting, ...)."""
    if len(audio) != len(labels) or any(len(v) != len(audio) for v in columns.values()):
        raise ValueError("audio, labels and every column need one entry per utterance")
    if not len(audio):
        raise ValueError("an evaluation set needs at least one utterance")
    audio = [np.asarray(a, dtype=np.float32) for a in audio]
    return Dataset.from_dict(
        {"input_values": audio, "clean_values": audio, "label": list(labels), **columns}
    )


def _embedded_corpus_params(corpus_dir: str | Path | None, what: str) -> dict:
    root = Path(corpus_dir) if corpus_dir is not None else Path(resolve_data_sources(None, None)[0])
    info = root / "corpus.json"
    if not info.is_file():
        raise FileNotFoundError(
            f"{root} has no corpus.json: {what} re-renders the embedded corpus only"
        )
    return json.loads(info.read_text())["params"]


def _rendered_set(rows: list[dict]) -> Dataset:
    return clean_eval_set(
        [r["audio"] for r in rows],
        [r["label"] for r in rows],
        speaker=[r["speaker"] for r in rows],
        setting=[r["setting"] for r in rows],
        **{key: [r[key] for r in rows] for key in ("pitch_offset", "rate_offset", "range_offset")},
    )


def habit_sweep_set(
    split: str = "validation", corpus_dir: str | Path | None = None, progress: bool = True
) -> Dataset:
    """The embedded corpus's habit sweep of ``split`` (:func:`merit.corpus.habit_sweep`: its
    voices and sentences with every speaker's habits moved to each corner of the habit box),
    clean, as an evaluation set with ``speaker``, ``setting`` and the three offsets as
    columns. It exists for the embedded corpus only: the sweep re-renders the corpus from its
    recipe."""
    from merit.corpus import habit_sweep

    params = _embedded_corpus_params(corpus_dir, "the habit sweep")
    return _rendered_set(habit_sweep(params, split, progress=progress))


def validation_voices_set(corpus_dir: str | Path | None = None, progress: bool = True) -> Dataset:
    """The 8 extra validation voices (:func:`merit.corpus.validation_voices`), clean, as an
    evaluation set with the same columns as :func:`habit_sweep_set`."""
    from merit.corpus import validation_voices

    params = _embedded_corpus_params(corpus_dir, "the validation voices set")
    return _rendered_set(validation_voices(params, progress=progress))


def label_order(data_args: DataArguments, labels: Sequence[str]) -> list[str]:
    """Label order: ``--labels`` if given, the corpus' emotion order when the data uses only
    those names (so ids match the default model), else sorted names."""
    from merit.corpus import EMOTIONS

    names = name_list(data_args.labels, "--labels")
    if names:
        return names
    present = set(labels)
    if present <= set(EMOTIONS):
        return [name for name in EMOTIONS if name in present]
    return sorted(present)


def build_validation_set(
    split: Dataset,
    noise_bank: NoiseBank,
    snrs: Sequence[float],
    *,
    seed: int,
    label2id: Mapping[str, int] | None,
) -> Dataset:
    """One frozen noisy copy of the validation split: utterance ``i`` is mixed with seen
    noise at ``snrs[i % len(snrs)]``, so one pass covers every SNR at the cost of one set."""
    shards = []
    for position, snr in enumerate(snrs):
        rows = list(range(position, len(split), len(snrs)))
        if not rows:
            continue
        with quiet_datasets():
            sets = build_eval_sets(
                split.select(rows),
                noise_bank,
                None,
                snrs=(snr,),
                seed=seed,
                include_clean=False,
                label2id=label2id,
            )
        shards.extend(sets.values())
    return concatenate_datasets(shards).with_format("numpy")


@dataclass
class PreparedData:
    """What :func:`prepare_data` hands to training: splits, label and dimension names, where
    the noise came from and what was skipped."""

    train: Dataset
    validation: Dataset | None
    test: Dataset | None
    label_names: list[str]
    dimension_names: list[str] | None
    noise_dir: Path
    dataset_name: str
    skipped: list[str]


def prepare_data(
    data_args: DataArguments,
) -> tuple[PreparedData, NoiseBank, NoiseBank | None]:
    """From ``DataArguments`` to checked splits and the seen / unseen noise banks.

    The one path from a dataset argument to training data, used alike by ``train.py``'s three
    methods: sources resolved (the embedded corpus by default), splits loaded, labels ordered
    and checked in every split, validation and test subsets spread evenly, unreadable files
    failed on (or skipped and listed) before anything trains.
    """
    source, noise_dir, display = resolve_data_sources(
        data_args.dataset, data_args.noise_dir, data_args.extra_train_voices
    )
    dimension_names = name_list(data_args.dimension_columns, "--dimension_columns")
    label_column = optional_column(data_args.label_column)
    splits = load_speech_dataset(
        source,
        label_column=label_column,
        audio_column=data_args.audio_column,
        dimension_columns=dimension_names,
        validation_fraction=data_args.validation_fraction,
        test_fraction=data_args.test_fraction,
        keep_missing_files=data_args.skip_bad_files,
        split_column=data_args.split_column,
        speaker_column=data_args.speaker_column,
        split_map=parse_split_map(data_args.split_map),
        audio_root=data_args.audio_root,
    )
    if "train" not in splits:
        raise ValueError(f"dataset {display!r} has no train split (has {list(splits)})")
    unknown = {name: len(split) for name, split in splits.items()}
    for known in ("train", "validation", "test"):
        unknown.pop(known, None)
    if unknown:
        listed = ", ".join(f"{name!r} ({count} rows)" for name, count in unknown.items())
        raise ValueError(
            f"{display}: split value(s) {listed} are not train / validation / test and would be "
            "ignored; map them with --split_map, e.g. --split_map 'Test2=drop'"
        )
    check_integrity(
        splits,
        display,
        labelled=label_column is not None,
        kept_labels=name_list(data_args.labels, "--labels"),
    )
    names: list[str] = []
    if label_column is not None:
        names = label_order(data_args, list(splits["train"]["label"]))
        if data_args.labels:  # a class subset: keep the named classes, report what goes
            splits = {
                name: _keep_labels(split, names, name, display) for name, split in splits.items()
            }
        label2id = {name: index for index, name in enumerate(names)}
        for split_name, split in splits.items():
            try:
                check_labels(split["label"], label2id)
            except ValueError as err:
                raise ValueError(f"{display} ({split_name} split): {err}") from err
    limits = {"validation": data_args.max_eval_samples, "test": data_args.max_test_samples}
    kept: dict[str, Dataset] = {}
    skipped: list[str] = []
    for split_name in ("train", "validation", "test"):
        if split_name not in splits:
            continue
        split = spread_subset(splits[split_name], limits.get(split_name))
        split, bad = drop_unreadable(split, skip=data_args.skip_bad_files, name=split_name)
        kept[split_name] = split
        skipped += bad
    seen, unseen = load_noise_banks(noise_dir)
    prepared = PreparedData(
        train=kept["train"],
        validation=kept.get("validation"),
        test=kept.get("test"),
        label_names=names,
        dimension_names=dimension_names,
        noise_dir=noise_dir,
        dataset_name=display,
        skipped=skipped,
    )
    return prepared, seen, unseen
