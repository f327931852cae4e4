"""What ``train.py``'s three methods share: backbones, noisy data, the Trainer runner, arguments.

Sparse MERIT (:mod:`merit.training`), MLKD (:mod:`merit.distillation`) and the adapter with
local attributes (:mod:`merit.adapter_training`) load backbones the same way, train on the same
noisy data, resume the same way (``--resume_from_checkpoint`` takes a folder, or ``auto`` /
``true`` for the latest checkpoint in the output folder) and read ``--config FILE`` the same way
(a YAML/JSON mapping of flag names to values; flags on the command line win).
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml
from datasets import Dataset
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    HfArgumentParser,
    PreTrainedModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.trainer_utils import get_last_checkpoint

from merit.data import DataCollatorForMerit, NoiseBank
from modeling_merit import MeritModel, minimal_backbone_config
from modeling_merit.backbones_merit import backbone_family
from modeling_merit.configuration_merit import SUPPORTED_BACKBONES

if TYPE_CHECKING:
    from merit.preparation import DataArguments, PreparedData

__all__ = [
    "TINY_BACKBONE",
    "TRAINING_DEFAULTS",
    "load_backbone",
    "EMOTION_RUN_DEFAULTS",
    "NoisyTrainingData",
    "load_noisy_training_data",
    "merit_on_backbone",
    "parse_arguments",
    "parse_with_config",
    "RunTrainingArguments",
    "resolve_checkpoint",
    "split_config_flag",
    "train_module",
]

#: ``--backbone`` / ``--teacher`` value of the small random WavLM-style backbone.
TINY_BACKBONE = "tiny"


def load_backbone(
    name_or_path: str = TINY_BACKBONE, *, model_type: str = "wavlm", seed: int = 0
) -> PreTrainedModel:
    """A frozen backbone in eval mode: the MLKD teacher, or the encoder of a MERIT model.

    ``"tiny"``: the 4-layer random backbone of :func:`minimal_backbone_config` (seeded, so the
    same seed gives the same teacher in every run). Otherwise a Hub id or folder holding a
    WavLM / wav2vec 2.0 / HuBERT checkpoint (bare or with a task head), or a saved MERIT model,
    whose (possibly fine-tuned) backbone is taken.
    """
    if name_or_path == TINY_BACKBONE:
        if model_type not in SUPPORTED_BACKBONES:
            raise ValueError(
                f"Unsupported backbone type '{model_type}'; supported: {SUPPORTED_BACKBONES}."
            )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            teacher = AutoModel.from_config(minimal_backbone_config(model_type))
    else:
        config = AutoConfig.from_pretrained(name_or_path)
        if config.model_type == "merit":
            teacher = MeritModel.from_pretrained(name_or_path).backbone
        elif config.model_type == "whisper":
            family = backbone_family(config)
            teacher = family.build()
            teacher.load_state_dict(family.load_pretrained(name_or_path)[1])
        elif config.model_type in SUPPORTED_BACKBONES:
            teacher = AutoModel.from_pretrained(name_or_path)
        else:
            raise ValueError(
                f"{name_or_path} is a '{config.model_type}' checkpoint; the teacher must be a "
                f"{', '.join(SUPPORTED_BACKBONES)} backbone or a MERIT model."
            )
    return teacher.eval().requires_grad_(False)


def merit_on_backbone(
    backbone: PreTrainedModel, name: str | None = None, **config_kwargs: Any
) -> MeritModel:
    """A MERIT model (``config_kwargs`` go to :class:`MeritConfig`) on an in-memory backbone's
    weights, through :meth:`MeritModel.from_backbone` so the weights are checked the same way;
    ``name`` is recorded as the backbone's origin."""
    with tempfile.TemporaryDirectory(prefix="merit-backbone-") as folder:
        backbone.save_pretrained(folder)
        model = MeritModel.from_backbone(folder, **config_kwargs)
    model.config.backbone_config._name_or_path = name or backbone.config._name_or_path
    return model


@dataclass
class NoisyTrainingData:
    """What :func:`load_noisy_training_data` prepares: the mixed train split, its label names,
    and the prepared splits and noise banks that validation and the test table need."""

    train: Dataset
    label_names: list[str]
    prepared: PreparedData
    seen: NoiseBank
    unseen: NoiseBank | None


def load_noisy_training_data(data_args: DataArguments, *, labelled: bool) -> NoisyTrainingData:
    """The train split mixed on the fly with seen noise (``with_transform``), prepared exactly
    as ``python train.py`` prepares it (same flags, same checks).

    With ``labelled`` the examples carry label ids in label-name order; without, no labels
    (distillation and adapter pre-training are label-free). Pad with ``DataCollatorForMerit``.
    """
    from merit.preparation import prepare_data, training_mixer

    prepared, seen, unseen = prepare_data(data_args)
    label2id = {name: i for i, name in enumerate(prepared.label_names)} if labelled else None
    mixer = training_mixer(data_args, seen, label2id)
    return NoisyTrainingData(
        prepared.train.with_transform(mixer), prepared.label_names, prepared, seen, unseen
    )


@dataclass
class RunTrainingArguments(TrainingArguments):
    """``TrainingArguments`` plus what transformers 5 dropped and a re-run needs."""

    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "start from step 0 in an output_dir that already holds checkpoints (they "
            "are replaced as new ones are saved); without it such a run is refused"
        },
    )


def resolve_checkpoint(
    value: str | None, output_dir: str, *, overwrite_output_dir: bool = False
) -> str | None:
    """``--resume_from_checkpoint``: a path, or ``"auto"``/``"true"`` for the latest
    checkpoint in ``output_dir`` (None when there is none yet: a fresh start).

    Without it, an ``output_dir`` that holds checkpoints is refused unless
    ``overwrite_output_dir``: a fresh run would silently write over them. A checkpoint without
    its optimizer state is refused too: resuming it would quietly start a new optimizer (the
    losses then differ from the uninterrupted run).
    """
    last = get_last_checkpoint(output_dir) if Path(output_dir).is_dir() else None
    if value is None or value.lower() in ("", "false", "none"):
        if last is not None and not overwrite_output_dir:
            raise ValueError(
                f"{output_dir} already holds checkpoints ({Path(last).name}); pass "
                "--resume_from_checkpoint auto to continue from there, --overwrite_output_dir "
                "True to start again over them, or another --output_dir."
            )
        return None
    if value.lower() in ("auto", "true", "last"):
        checkpoint = last
    elif not Path(value).is_dir():
        raise ValueError(f"checkpoint folder not found: {value}")
    else:
        checkpoint = value
    if checkpoint is not None and not (Path(checkpoint) / "optimizer.pt").is_file():
        raise ValueError(
            f"{checkpoint} has no optimizer.pt: resuming would restart the optimizer and not "
            "continue the run. Restore the file, or start a new run from its weights."
        )
    return checkpoint


def train_module(
    module: nn.Module,
    training_args: TrainingArguments,
    train_dataset: Dataset,
    *,
    callbacks: Sequence[TrainerCallback] = (),
    trainer_class: type[Trainer] = Trainer,
    eval_dataset: Dataset | None = None,
    compute_metrics: Any = None,
) -> Trainer:
    """Train ``module`` (its ``forward`` returns the loss) with the HF ``Trainer`` on noisy
    examples from :func:`load_noisy_training_data`: tqdm progress, logging, checkpoints in
    ``training_args.output_dir`` and resume from ``training_args.resume_from_checkpoint``
    (see :func:`resolve_checkpoint`). MERIT models need ``trainer_class=MeritTrainer``: their
    ``forward(**kwargs)`` would otherwise be trusted to scale the loss for accumulation.
    ``eval_dataset`` and ``compute_metrics`` validate (and, with ``load_best_model_at_end``,
    select the checkpoint) as ``train.py`` does."""
    if training_args.remove_unused_columns:
        training_args.remove_unused_columns = False  # the mixer needs the raw audio column
    if training_args.device.type == "cpu":
        training_args.dataloader_pin_memory = False  # pinning needs an accelerator
    trainer = trainer_class(
        model=module,
        args=training_args,
        train_dataset=train_dataset,
        data_collator=DataCollatorForMerit(),
        callbacks=list(callbacks),
        eval_dataset=eval_dataset,
        compute_metrics=compute_metrics,
    )
    resume = resolve_checkpoint(
        training_args.resume_from_checkpoint,
        training_args.output_dir,
        overwrite_output_dir=getattr(training_args, "overwrite_output_dir", False),
    )
    trainer.train(resume_from_checkpoint=resume)
    return trainer


TRAINING_DEFAULTS: dict[str, Any] = dict(
    max_steps=1000,
    per_device_train_batch_size=8,
    learning_rate=2e-4,
    warmup_steps=0.05,
    logging_steps=10,
    save_steps=250,
    save_total_limit=2,
    report_to="none",
    remove_unused_columns=False,
    dataloader_num_workers=0,
)


#: For the methods that end in an emotion model (``--method adapter``), as ``train.py``:
#: validate every ``eval_steps`` (keep it a divisor of ``save_steps``), keep the best
#: checkpoint by validation F1-macro, and write the test table.
EMOTION_RUN_DEFAULTS: dict[str, Any] = dict(
    eval_strategy="steps",
    eval_steps=250,
    load_best_model_at_end=True,
    metric_for_best_model="f1_macro",
    greater_is_better=True,
    do_predict=True,
)


def parse_arguments(
    dataclass_types: Sequence[type], argv: Sequence[str] | None, **defaults: Any
) -> tuple[Any, ...]:
    """Parse ``argv`` into the dataclasses (last: ``TrainingArguments``) with our defaults,
    which suit a CPU run of the tiny model; every one can be overridden on the command line or
    in a ``--config`` file."""
    parser = HfArgumentParser(list(dataclass_types))
    parser.set_defaults(**{**TRAINING_DEFAULTS, **defaults})
    return parse_with_config(parser, argv)


def split_config_flag(argv: list[str]) -> tuple[str | None, list[str]]:
    """Split off ``--config FILE`` (or a leading ``FILE.json``/``.yaml``) from the CLI."""
    for index, arg in enumerate(argv):
        if arg == "--config":
            if index + 1 >= len(argv):
                raise ValueError("--config needs a file name")
            return argv[index + 1], argv[:index] + argv[index + 2 :]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1], argv[:index] + argv[index + 1 :]
    if argv and argv[0].lower().endswith((".json", ".yaml", ".yml")):
        return argv[0], argv[1:]
    return None, argv


def parse_with_config(parser: HfArgumentParser, argv: Sequence[str] | None) -> tuple[Any, ...]:
    """Parse into the parser's dataclasses; a JSON/YAML config (``--config FILE`` or a leading
    ``FILE.yaml``) provides defaults that command-line flags override. Unknown keys in the file
    and bad values are parser errors (exit 2 with the message), not tracebacks."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        config_path, argv = split_config_flag(argv)
    except ValueError as err:
        parser.error(str(err))
    if config_path is not None:
        path = Path(config_path)
        if not path.is_file():
            parser.error(f"config file not found: {path}")
        values = yaml.safe_load(path.read_text(encoding="utf-8"))  # JSON is valid YAML
        if not isinstance(values, dict):
            parser.error(f"{path}: expected a mapping of argument names to values")
        known = {action.dest for action in parser._actions}
        unknown = sorted(set(values) - known)
        if unknown:
            parser.error(f"{path}: unknown argument(s) {', '.join(unknown)}")
        parser.set_defaults(**values)
    try:
        return parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)
    except ValueError as err:  # unknown flags and invalid TrainingArguments combinations
        parser.error(str(err))
