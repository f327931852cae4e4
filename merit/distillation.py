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

What both companion methods share (backbone loading, noisy training data, the ``Trainer``
runner with checkpoint/resume, argument parsing) lives in :mod:`merit.runs`.

Command line (wired as ``python train.py --method mlkd``)::

    python -m merit.distillation --output_dir outputs/mlkd --max_steps 2000 \\
        --teacher microsoft/wavlm-base-plus --student_layers 2 --teacher_layers 4,8,12
"""

from __future__ import annotations

import copy
import json
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from datasets import Dataset
from torch import nn
from transformers import (
    AutoFeatureExtractor,
    PreTrainedModel,
    SequenceFeatureExtractor,
    Trainer,
    TrainingArguments,
    Wav2Vec2FeatureExtractor,
)

from merit.data import DataCollatorForMerit
from merit.hub import render_student_card
from merit.runs import (
    EMOTION_RUN_DEFAULTS,
    TINY_BACKBONE,
    RunTrainingArguments,
    load_backbone,
    load_noisy_training_data,
    parse_arguments,
    train_module,
)
from modeling_merit.backbones_merit import backbone_family
from modeling_merit.configuration_merit import SUPPORTED_BACKBONES, backbone_frame_geometry
from modeling_merit.modeling_merit import backbone_hidden_states, normalize_waveforms

if TYPE_CHECKING:  # imported where used: merit.training may import this module to dispatch
    from merit.preparation import DataArguments

__all__ = [
    "DistillationArguments",
    "MultiLevelDistiller",
    "backbone_hidden_states",
    "default_teacher_layers",
    "distill",
    "main",
    "make_student",
    "multi_level_loss",
    "normalize_waveforms",
    "parse_layers",
    "teacher_feature_extractor",
]

#: Transformer layer weights: ``encoder.layers.N.`` (WavLM, wav2vec 2.0, HuBERT) or
#: ``layers.N.`` (a Whisper encoder).
_LAYER_KEY = re.compile(r"^(?:encoder\.)?layers\.(\d+)\.")


# --------------------------------------------------------------------------------------------
# Teacher and student
# --------------------------------------------------------------------------------------------


def teacher_feature_extractor(name_or_path: str) -> SequenceFeatureExtractor:
    """The teacher checkpoint's feature extractor (saved next to the student so its folder is
    a complete backbone checkpoint), or the standard 16 kHz normalising one."""
    if name_or_path != TINY_BACKBONE:
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
    config.num_hidden_layers = num_layers  # Whisper: maps onto encoder_layers
    config.layerdrop = 0.0
    if hasattr(config, "encoder_layerdrop"):
        config.encoder_layerdrop = 0.0
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
    l1_terms, cos_terms, similarities = [], [], []
    for prediction, target in zip(predictions, targets, strict=True):
        if prediction.shape != target.shape:
            raise ValueError(
                f"prediction shape {tuple(prediction.shape)} != target {tuple(target.shape)}."
            )
        pred, tgt = prediction[valid].float(), target[valid].float()
        similarity = F.cosine_similarity(pred, tgt, dim=-1)
        l1_terms.append((pred - tgt).abs().mean())
        cos_terms.append(-F.logsigmoid(similarity).mean())
        similarities.append(similarity.detach().mean())
    l1, cos = torch.stack(l1_terms), torch.stack(cos_terms)
    parts = {"l1": l1, "cos": cos, "similarity": torch.stack(similarities)}
    return (l1 + cos_weight * cos).sum(), parts


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
        normalize: bool | None = None,
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
        # As MeritModel does for the family: z-normalised waveforms for WavLM / wav2vec 2.0 /
        # HuBERT, the natural level for Whisper's log-mel front end.
        self.normalize = teacher.config.model_type != "whisper" if normalize is None else normalize

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
        return {
            "loss": loss,
            "l1": parts["l1"].detach(),
            "cos": parts["cos"].detach(),
            "similarity": parts["similarity"],
        }


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


@dataclass
class DistillationArguments:
    """MLKD settings (``python train.py --method mlkd``)."""

    teacher: str = field(
        default=TINY_BACKBONE,
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


class DistillationTrainer(Trainer):
    """``Trainer`` whose evaluation loss is the distillation loss: the distiller takes no
    labels, so the stock ``prediction_step`` would compute no loss and validation (and the
    best-checkpoint choice) would have nothing to go on."""

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = model(**inputs)["loss"].detach()
        return loss, None, None


@torch.no_grad()
def fidelity_rows(
    distiller: MultiLevelDistiller, eval_sets: Mapping[str, Dataset]
) -> list[dict[str, Any]]:
    """How well the student, hearing each condition's noisy audio, reproduces the teacher's
    target layers on the clean audio: per condition the distillation loss and, per target
    layer, the L1 distance and the mean cosine similarity over valid frames (utterance mean;
    one utterance at a time, since the loss is a mean over the batch's frames)."""
    distiller.eval()
    collate = DataCollatorForMerit()
    rows = []
    for condition, dataset in eval_sets.items():
        sums: dict[str, float] = {}
        count = 0
        for example in dataset.select_columns(["input_values", "clean_values"]).with_format(
            "numpy"
        ):
            out = distiller(**collate([example]))
            values = {"loss": float(out["loss"])}
            for layer, l1, similarity in zip(
                distiller.teacher_layers,
                out["l1"].tolist(),
                out["similarity"].tolist(),
                strict=True,
            ):
                values[f"l1_layer{layer}"] = l1
                values[f"cos_layer{layer}"] = similarity
            for key, value in values.items():
                sums[key] = sums.get(key, 0.0) + value
            count += 1
        rows.append(
            {
                "condition": condition,
                "utterances": count,
                **{key: value / max(count, 1) for key, value in sums.items()},
            }
        )
    return rows


def format_fidelity(rows: Sequence[Mapping[str, Any]], layers: Sequence[int]) -> str:
    """Markdown: one row per condition, the loss and each target layer's cosine and L1."""
    head = ["Condition", "Loss"] + [f"cos L{n}" for n in layers] + [f"L1 L{n}" for n in layers]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for row in rows:
        cells = [row["condition"], f"{row['loss']:.3f}"]
        cells += [f"{row[f'cos_layer{n}']:.3f}" for n in layers]
        cells += [f"{row[f'l1_layer{n}']:.3f}" for n in layers]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def distill(
    args: DistillationArguments,
    data_args: DataArguments,
    training_args: TrainingArguments,
) -> Path:
    """Distil a student and save it as a backbone checkpoint in ``output_dir/student``.

    Ends as ``train.py`` does: validated on the frozen noisy validation set (distillation
    loss; with ``load_best_model_at_end`` the best checkpoint is the student saved), a test
    table of how faithfully the student reproduces the clean teacher under every noise
    condition, ``results.json`` and a model card (``student/README.md``).
    """
    from merit.preparation import frozen_test_sets, validation_dataset
    from merit.training import training_details

    started = time.perf_counter()
    teacher = load_backbone(
        args.teacher, model_type=args.teacher_model_type, seed=args.teacher_seed
    )
    torch.manual_seed(training_args.seed)
    student = make_student(teacher, args.student_layers)
    if args.freeze_student_feature_encoder:
        backbone_family(student.config).freeze_feature_encoder(student)
    distiller = MultiLevelDistiller(
        teacher, student, args.teacher_layers, head=args.head, cos_weight=args.cos_weight
    )
    data = load_noisy_training_data(data_args, labelled=False)
    label2id = {name: i for i, name in enumerate(data.label_names)} or None
    eval_dataset = validation_dataset(data.prepared, data.seen, data_args, label2id, training_args)
    trainer = train_module(
        distiller,
        training_args,
        data.train,
        trainer_class=DistillationTrainer,
        eval_dataset=eval_dataset,
    )
    output_dir = Path(training_args.output_dir)
    out = output_dir / "student"
    student.save_pretrained(out)
    teacher_feature_extractor(args.teacher).save_pretrained(out)
    settings = {
        "method": "mlkd",
        **asdict(args),
        **asdict(data_args),
        "teacher_layers": distiller.teacher_layers,
    }
    (out / "distillation.json").write_text(json.dumps(settings, indent=2))
    results: dict[str, Any] = {
        "method": "mlkd",
        "teacher": args.teacher,
        "student_layers": args.student_layers,
        "teacher_layers": distiller.teacher_layers,
        "dataset": data.prepared.dataset_name,
        "global_step": trainer.state.global_step,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "best_validation_metric": trainer.state.best_metric,
        "metric_for_best_model": training_args.metric_for_best_model,
    }
    table = None
    if training_args.do_predict and data.prepared.test is not None:
        with frozen_test_sets(data.prepared, data.seen, data.unseen, data_args) as sets:
            rows = fidelity_rows(distiller, sets)
        results["test_rows"] = rows
        table = format_fidelity(rows, distiller.teacher_layers)
        (output_dir / "evaluation").mkdir(parents=True, exist_ok=True)
        (output_dir / "evaluation" / "table.md").write_text(table)
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    if trainer.is_world_process_zero():
        (output_dir / "results.json").write_text(
            json.dumps(results, indent=2, allow_nan=True) + "\n"
        )
        details = training_details(trainer, results, data_args, data.seen, data.unseen)
        render_student_card(out, results, details, table)
    return out


def main(argv: list[str] | None = None) -> Path:
    """``python train.py --method mlkd [options]``: distil, return the student folder.

    Flags: :class:`DistillationArguments`, the data flags of ``train.py``
    (``merit.preparation.DataArguments``: ``--dataset``, ``--noise_dir``, ``--snr_range``,
    ``--max_train_seconds``, ...) and ``TrainingArguments``.
    """
    from merit.preparation import DataArguments

    args, data_args, training_args = parse_arguments(
        (DistillationArguments, DataArguments, RunTrainingArguments),
        argv,
        output_dir="outputs/mlkd",
        **{**EMOTION_RUN_DEFAULTS, "metric_for_best_model": "loss", "greater_is_better": False},
    )
    out = distill(args, data_args, training_args)
    print(f"distilled student saved to {out}")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
