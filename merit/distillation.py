"""Multi-level knowledge distillation (MLKD) of an SSL backbone for noisy speech.

After "Multi-level knowledge distillation for speech emotion recognition in noisy conditions"
(after DistilHuBERT): a frozen teacher backbone (WavLM / wav2vec 2.0 / HuBERT) hears the *clean*
utterance; a student with fewer transformer layers hears the *noisy* copy of the same utterance
and learns, through one small prediction head per target layer, to reproduce several teacher
layers at once from its single last layer. The student therefore learns to extract clean-speech
features from noisy speech at a fraction of the teacher's cost, and is saved as an ordinary
backbone checkpoint that :meth:`MeritModel.from_backbone` builds SER or MERIT models on.

The loss per target layer is DistilHuBERT's ``L1 - lambda * log sigmoid(cos)`` over valid frames
(padding excluded), summed over layers.

This module also holds the pieces both companion methods share (:mod:`merit.adapter_training`
uses them): running a backbone exactly as :class:`MeritModel` does, noisy training data, and a
``Trainer`` runner with checkpoint/resume.

Command line (wired as ``python train.py --method mlkd``)::

    python -m merit.distillation --output_dir outputs/mlkd --max_steps 2000 \\
        --teacher microsoft/wavlm-base-plus --student_layers 2 --teacher_layers 4,8,12
"""

from __future__ import annotations

import copy
import json
import re
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from datasets import Dataset
from torch import nn
from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoModel,
    HfArgumentParser,
    PreTrainedModel,
    SequenceFeatureExtractor,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    Wav2Vec2FeatureExtractor,
)
from transformers.trainer_utils import get_last_checkpoint

from merit.data import DataCollatorForMerit, NoisyMixer
from modeling_merit import MeritModel, minimal_backbone_config
from modeling_merit.configuration_merit import SUPPORTED_BACKBONES, backbone_frame_geometry
from modeling_merit.modeling_merit import backbone_hidden_states, normalize_waveforms

if TYPE_CHECKING:  # imported where used: merit.training may import this module to dispatch
    from merit.training import DataArguments

__all__ = [
    "TINY_TEACHER",
    "DistillationArguments",
    "MultiLevelDistiller",
    "backbone_hidden_states",
    "default_teacher_layers",
    "distill",
    "load_noisy_training_data",
    "load_backbone",
    "main",
    "make_student",
    "merit_on_backbone",
    "multi_level_loss",
    "normalize_waveforms",
    "parse_arguments",
    "parse_layers",
    "resolve_checkpoint",
    "teacher_feature_extractor",
    "train_module",
]

#: ``--teacher`` value for the small random backbone that tests and offline demos use.
TINY_TEACHER = "tiny"
_LAYER_KEY = re.compile(r"^encoder\.layers\.(\d+)\.")


# --------------------------------------------------------------------------------------------
# Shared: running a backbone the way MeritModel does
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# Teacher and student
# --------------------------------------------------------------------------------------------


def load_backbone(
    name_or_path: str = TINY_TEACHER, *, model_type: str = "wavlm", seed: int = 0
) -> PreTrainedModel:
    """A frozen backbone in eval mode: the MLKD teacher, or the encoder of a MERIT model.

    ``"tiny"``: the 4-layer random backbone of :func:`minimal_backbone_config` (seeded, so the
    same seed gives the same teacher in every run). Otherwise a Hub id or folder holding a
    WavLM / wav2vec 2.0 / HuBERT checkpoint (bare or with a task head), or a saved MERIT model,
    whose (possibly fine-tuned) backbone is taken.
    """
    if name_or_path == TINY_TEACHER:
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


def teacher_feature_extractor(name_or_path: str) -> SequenceFeatureExtractor:
    """The teacher checkpoint's feature extractor (saved next to the student so its folder is
    a complete backbone checkpoint), or the standard 16 kHz normalising one."""
    if name_or_path != TINY_TEACHER:
        try:
            return AutoFeatureExtractor.from_pretrained(name_or_path)
        except (OSError, ValueError):
            pass
    return Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, do_normalize=True, return_attention_mask=True
    )


def make_student(teacher: PreTrainedModel, num_layers: int) -> PreTrainedModel:
    """A shallower copy of ``teacher``: same config with ``num_layers`` transformer layers,
    initialised from the teacher's conv feature encoder, projection, positional convolution
    and first ``num_layers`` layers (DistilHuBERT's initialisation), trainable.

    Layer drop is switched off: dropping one of two layers at random would make the student's
    single output level meaningless.
    """
    total = teacher.config.num_hidden_layers
    if not 1 <= num_layers <= total:
        raise ValueError(f"student num_layers must be in [1, {total}], got {num_layers}.")
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = num_layers
    config.layerdrop = 0.0
    student = type(teacher)(config)
    state = {
        key: value
        for key, value in teacher.state_dict().items()
        if not ((m := _LAYER_KEY.match(key)) and int(m.group(1)) >= num_layers)
    }
    student.load_state_dict(state, strict=True)
    return student.train().requires_grad_(True)


def default_teacher_layers(num_layers: int, count: int = 3) -> list[int]:
    """``count`` evenly spaced teacher layers ending at the last: 4,8,12 for 12 layers
    (DistilHuBERT), 2,3,4 for the tiny 4-layer teacher."""
    step = max(1, num_layers // count)
    return sorted({max(1, num_layers - i * step) for i in range(count)})


def parse_layers(spec: str | Sequence[int] | None, num_layers: int) -> list[int]:
    """``"2,3,4"`` (or a list, or ``None``/``"auto"`` for :func:`default_teacher_layers`) ->
    validated layer numbers; layer ``k`` is the output of transformer layer ``k``."""
    if spec is None or spec == "auto":
        return default_teacher_layers(num_layers)
    if isinstance(spec, str):
        try:
            layers = [int(part) for part in spec.split(",") if part.strip()]
        except ValueError as err:
            raise ValueError(
                f"teacher layers must be comma-separated integers, got {spec!r}."
            ) from err
    else:
        layers = [int(layer) for layer in spec]
    if not layers or len(set(layers)) != len(layers):
        raise ValueError(f"teacher layers must be non-empty and distinct, got {spec!r}.")
    bad = [layer for layer in layers if not 1 <= layer <= num_layers]
    if bad:
        raise ValueError(
            f"teacher layers {bad} out of range: the teacher has layers 1..{num_layers}."
        )
    return layers


# --------------------------------------------------------------------------------------------
# Loss and distiller
# --------------------------------------------------------------------------------------------


def multi_level_loss(
    predictions: Sequence[torch.Tensor],
    targets: Sequence[torch.Tensor],
    frame_mask: torch.Tensor,
    cos_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DistilHuBERT loss summed over target layers, valid frames only.

    Per layer: ``mean |p - t|`` over valid frames and features, plus
    ``cos_weight * mean(-log sigmoid(cos(p, t)))`` over valid frames. Returns the total and the
    per-layer ``l1`` and ``cos`` terms (each ``(layers,)``) for logging.
    """
    if len(predictions) != len(targets) or not predictions:
        raise ValueError(
            f"need as many predictions as targets, got {len(predictions)}/{len(targets)}."
        )
    valid = frame_mask.bool()
    if not valid.any():
        raise ValueError("no valid frames: every frame is padding.")
    l1_terms, cos_terms = [], []
    for prediction, target in zip(predictions, targets, strict=True):
        if prediction.shape != target.shape:
            raise ValueError(
                f"prediction shape {tuple(prediction.shape)} != target {tuple(target.shape)}."
            )
        pred, tgt = prediction[valid].float(), target[valid].float()
        l1_terms.append((pred - tgt).abs().mean())
        cos_terms.append(-F.logsigmoid(F.cosine_similarity(pred, tgt, dim=-1)).mean())
    l1, cos = torch.stack(l1_terms), torch.stack(cos_terms)
    return (l1 + cos_weight * cos).sum(), {"l1": l1, "cos": cos}


def _prediction_head(in_size: int, out_size: int, kind: str) -> nn.Module:
    if kind == "linear":
        return nn.Linear(in_size, out_size)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_size, in_size), nn.GELU(), nn.Linear(in_size, out_size))
    raise ValueError(f"prediction head must be 'linear' or 'mlp', got {kind!r}.")


class MultiLevelDistiller(nn.Module):
    """Teacher on clean audio, student on noisy audio, one prediction head per teacher layer.

    Only the student and the heads train; the teacher stays frozen and in eval mode even when
    the distiller is put in training mode.
    """

    def __init__(
        self,
        teacher: PreTrainedModel,
        student: PreTrainedModel,
        teacher_layers: Sequence[int] | str | None = None,
        *,
        head: str = "linear",
        cos_weight: float = 1.0,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        for name, model in (("teacher", teacher), ("student", student)):
            if model.config.model_type not in SUPPORTED_BACKBONES:
                raise ValueError(f"{name} must be one of {SUPPORTED_BACKBONES} backbones.")
        if backbone_frame_geometry(teacher.config) != backbone_frame_geometry(student.config):
            raise ValueError("teacher and student need the same conv encoder (frame rate).")
        self.teacher = teacher.eval().requires_grad_(False)
        self.student = student
        self.teacher_layers = parse_layers(teacher_layers, teacher.config.num_hidden_layers)
        self.heads = nn.ModuleList(
            _prediction_head(student.config.hidden_size, teacher.config.hidden_size, head)
            for _ in self.teacher_layers
        )
        self.cos_weight = cos_weight
        self.normalize = normalize

    def train(self, mode: bool = True) -> MultiLevelDistiller:
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(
        self,
        input_values: torch.Tensor,
        clean_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """``input_values``: noisy audio (student); ``clean_values``: the clean reference of the
        same utterances (teacher). ``labels`` are accepted and ignored (distillation is
        label-free), so labelled batches can be used as they are."""
        if clean_values.shape != input_values.shape:
            raise ValueError(
                f"clean_values shape {tuple(clean_values.shape)} must equal input_values "
                f"{tuple(input_values.shape)}."
            )
        with torch.no_grad():
            teacher_states, _ = backbone_hidden_states(
                self.teacher, clean_values, attention_mask, normalize=self.normalize
            )
        student_states, frame_mask = backbone_hidden_states(
            self.student, input_values, attention_mask, normalize=self.normalize
        )
        last = student_states[-1]
        predictions = [head(last) for head in self.heads]
        targets = [teacher_states[layer] for layer in self.teacher_layers]
        loss, parts = multi_level_loss(predictions, targets, frame_mask, self.cos_weight)
        return {"loss": loss, "l1": parts["l1"].detach(), "cos": parts["cos"].detach()}


# --------------------------------------------------------------------------------------------
# Shared: noisy training data and the Trainer runner
# --------------------------------------------------------------------------------------------


def load_noisy_training_data(
    data_args: DataArguments, *, labelled: bool
) -> tuple[Dataset, list[str]]:
    """The train split mixed on the fly with seen noise (``with_transform``) and the label
    names, prepared exactly as ``python train.py`` prepares them (same flags, same checks).

    With ``labelled`` the examples carry label ids in the returned order; without, no labels
    (distillation and adapter pre-training are label-free). Pad with ``DataCollatorForMerit``.
    """
    from merit.training import _prepare_data

    prepared, seen, _ = _prepare_data(data_args)
    mixer = NoisyMixer(
        seen,
        {name: i for i, name in enumerate(prepared.label_names)} if labelled else None,
        snr_range=tuple(data_args.snr_range),
        clean_prob=data_args.clean_prob,
        max_seconds=data_args.max_train_seconds,
    )
    return prepared.train.with_transform(mixer), prepared.label_names


def resolve_checkpoint(value: str | None, output_dir: str) -> str | None:
    """``--resume_from_checkpoint``: a path, or ``"auto"``/``"true"`` for the latest
    checkpoint in ``output_dir`` (None when there is none yet: a fresh start)."""
    if value is None or value.lower() in ("", "false", "none"):
        return None
    if value.lower() in ("auto", "true", "last"):
        return get_last_checkpoint(output_dir) if Path(output_dir).is_dir() else None
    if not Path(value).is_dir():
        raise ValueError(f"checkpoint folder not found: {value}")
    return value


def train_module(
    module: nn.Module,
    training_args: TrainingArguments,
    train_dataset: Dataset,
    *,
    callbacks: Sequence[TrainerCallback] = (),
    trainer_class: type[Trainer] = Trainer,
) -> Trainer:
    """Train ``module`` (its ``forward`` returns the loss) with the HF ``Trainer`` on noisy
    examples from :func:`load_noisy_training_data`: tqdm progress, logging, checkpoints in
    ``training_args.output_dir`` and resume from ``training_args.resume_from_checkpoint``
    (see :func:`resolve_checkpoint`). MERIT models need ``trainer_class=MeritTrainer``: their
    ``forward(**kwargs)`` would otherwise be trusted to scale the loss for accumulation."""
    if training_args.remove_unused_columns:
        training_args.remove_unused_columns = False  # the mixer needs the raw audio column
    trainer = trainer_class(
        model=module,
        args=training_args,
        train_dataset=train_dataset,
        data_collator=DataCollatorForMerit(),
        callbacks=list(callbacks),
    )
    resume = resolve_checkpoint(training_args.resume_from_checkpoint, training_args.output_dir)
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


def parse_arguments(
    dataclass_types: Sequence[type], argv: Sequence[str] | None, **defaults: Any
) -> tuple[Any, ...]:
    """Parse ``argv`` into the dataclasses (last: ``TrainingArguments``) with our defaults,
    which suit a CPU run of the tiny model; every one can be overridden on the command line."""
    parser = HfArgumentParser(list(dataclass_types))
    parser.set_defaults(**{**TRAINING_DEFAULTS, **defaults})
    return parser.parse_args_into_dataclasses(args=list(argv) if argv is not None else None)


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


@dataclass
class DistillationArguments:
    """MLKD settings (``python train.py --method mlkd``)."""

    teacher: str = field(
        default=TINY_TEACHER,
        metadata={"help": "Teacher backbone: 'tiny' (random, offline), a Hub id or a folder."},
    )
    teacher_model_type: str = field(
        default="wavlm", metadata={"help": "Backbone type of the tiny teacher."}
    )
    teacher_seed: int = field(default=0, metadata={"help": "Seed of the tiny teacher."})
    student_layers: int = field(default=2, metadata={"help": "Transformer layers of the student."})
    teacher_layers: str = field(
        default="auto",
        metadata={"help": "Target teacher layers, e.g. '2,3,4' or '4,8,12' ('auto': 3 evenly)."},
    )
    head: str = field(default="linear", metadata={"help": "Prediction heads: 'linear' or 'mlp'."})
    cos_weight: float = field(default=1.0, metadata={"help": "Weight of the cosine term."})
    freeze_student_feature_encoder: bool = field(
        default=False, metadata={"help": "Keep the student's conv feature encoder frozen."}
    )


def distill(
    args: DistillationArguments,
    data_args: DataArguments,
    training_args: TrainingArguments,
) -> Path:
    """Distil a student and save it as a backbone checkpoint in ``output_dir/student``."""
    teacher = load_backbone(
        args.teacher, model_type=args.teacher_model_type, seed=args.teacher_seed
    )
    torch.manual_seed(training_args.seed)
    student = make_student(teacher, args.student_layers)
    if args.freeze_student_feature_encoder:
        student.feature_extractor._freeze_parameters()
    distiller = MultiLevelDistiller(
        teacher, student, args.teacher_layers, head=args.head, cos_weight=args.cos_weight
    )
    train, _ = load_noisy_training_data(data_args, labelled=False)
    train_module(distiller, training_args, train)
    out = Path(training_args.output_dir) / "student"
    student.save_pretrained(out)
    teacher_feature_extractor(args.teacher).save_pretrained(out)
    settings = {
        "method": "mlkd",
        **asdict(args),
        **asdict(data_args),
        "teacher_layers": distiller.teacher_layers,
    }
    (out / "distillation.json").write_text(json.dumps(settings, indent=2))
    return out


def main(argv: list[str] | None = None) -> Path:
    """``python train.py --method mlkd [options]``: distil, return the student folder.

    Flags: :class:`DistillationArguments`, the data flags of ``train.py``
    (``merit.training.DataArguments``: ``--dataset``, ``--noise_dir``, ``--snr_range``,
    ``--max_train_seconds``, ...) and ``TrainingArguments``.
    """
    from merit.training import DataArguments

    args, data_args, training_args = parse_arguments(
        (DistillationArguments, DataArguments, TrainingArguments),
        argv,
        output_dir="outputs/mlkd",
    )
    out = distill(args, data_args, training_args)
    print(f"distilled student saved to {out}")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
