"""Adapter with local attributes: self-supervised pre-training of the WAP-Transformer adapter.

After "An Efficient Transfer Learning Method Based on Adapter with Local Attributes for SER":
the SSL encoder stays frozen and shared; a light WAP-Transformer (weighted-average pooling of the
encoder's layers, ``model.integration``, then a small transformer, ``model.adapter``) is
pre-trained task-agnostically on unlabeled speech, then fine-tuned for SER with statistical
attentive pooling (the MERIT SER head). Pre-training has two branches:

* **student**: the model's own integration + adapter, with spans of frames replaced by the
  adapter's mask embedding;
* **teacher**: an exponential moving average (EMA) of the student's integration + adapter
  (``ema = decay * ema + (1 - decay) * student`` after each optimizer step), on unmasked input.

and three losses on the teacher's (layer-normalised) frame features:

1. *mask prediction*: a regression head predicts them at masked frames;
2. *self-distillation*: a predictor head matches them at the visible frames (or, with
   ``distill_level="utterance"``, their utterance mean, by cosine distance);
3. *local attributes*: k-means clusters of them, refreshed every ``refresh_every`` optimizer
   steps (warm-started, so cluster ids keep their meaning), are extra classification targets
   for masked frames through a cluster head.

The heads, the EMA teacher and the centroids live in :class:`AdapterPretrainer` only: they are in
the pre-training checkpoints (resume) but not in the final :class:`MeritModel`, which is an
ordinary MERIT model (``tasks=["ser"]`` for the adapter method alone, ``["ser", "se"]`` with
sparse routing for the MERIT option) saved and loaded with ``trust_remote_code``.

Command line (wired as ``python train.py --method adapter``)::

    python -m merit.adapter_training --output_dir outputs/adapter \\
        --pretrain_steps 1000 --max_steps 1000 --tasks ser
"""

from __future__ import annotations

import copy
import json
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from datasets import Dataset
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments

from merit.runs import (
    EMOTION_RUN_DEFAULTS,
    TINY_BACKBONE,
    RunTrainingArguments,
    load_backbone,
    load_noisy_training_data,
    merit_on_backbone,
    parse_arguments,
    train_module,
)
from modeling_merit import MeritFeatureExtractor, MeritModel

if TYPE_CHECKING:  # imported where used: merit.training may import this module to dispatch
    from merit.preparation import DataArguments

__all__ = [
    "AdapterArguments",
    "AdapterPretrainer",
    "EMATeacherCallback",
    "assign_clusters",
    "build_adapter_model",
    "ema_update",
    "finetune",
    "kmeans",
    "main",
    "prepare_for_finetuning",
    "pretrain_adapter",
    "regression_loss",
    "span_mask",
    "train_adapter",
]

REGRESSION_LOSSES = ("l1", "mse", "cosine")
DISTILL_LEVELS = ("frame", "utterance")


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def ema_update(ema: nn.Module, online: nn.Module, decay: float) -> None:
    """``ema = decay * ema + (1 - decay) * online`` for every parameter; buffers are copied.

    Both modules must have the same structure (the EMA is a deep copy of the online one).
    """
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"EMA decay must be in [0, 1], got {decay}.")
    ema_params, online_params = dict(ema.named_parameters()), dict(online.named_parameters())
    if ema_params.keys() != online_params.keys():
        raise ValueError("EMA and online modules have different parameters.")
    for name, param in ema_params.items():
        param.lerp_(online_params[name].detach().to(param.dtype), 1.0 - decay)
    online_buffers = dict(online.named_buffers())
    for name, buffer in ema.named_buffers():
        buffer.copy_(online_buffers[name])


def span_mask(
    frame_mask: torch.Tensor,
    rate: float,
    span: int = 5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Bool ``(batch, frames)``: spans of ``span`` frames covering ``round(rate * n)`` (at
    least 1) of each utterance's ``n`` valid frames; padded frames are never masked.

    Spans are drawn at random starts until the count is reached, and the last span is cut so
    the count is exact: the masking rate does not drift with overlaps or utterance length.
    """
    if not 0.0 < rate < 1.0:
        raise ValueError(f"mask rate must be in (0, 1), got {rate}.")
    if span < 1:
        raise ValueError(f"mask span must be at least 1 frame, got {span}.")
    valid = frame_mask.bool()
    masked = torch.zeros_like(valid)
    for row in range(valid.shape[0]):
        positions = valid[row].nonzero().squeeze(-1)
        n = positions.numel()
        if n == 0:
            continue
        target = min(n, max(1, round(rate * n)))
        chosen = torch.zeros(n, dtype=torch.bool)
        count = 0
        while count < target:
            start = int(torch.randint(max(1, n - span + 1), (1,), generator=generator))
            fresh = (~chosen[start : start + span]).nonzero().squeeze(-1)[: target - count]
            chosen[start + fresh] = True
            count += fresh.numel()
        masked[row, positions[chosen.to(positions.device)]] = True
    return masked


def assign_clusters(features: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Nearest centroid (Euclidean) of each ``(N, D)`` feature row -> ``(N,)`` cluster ids."""
    return torch.cdist(features.float(), centroids.float()).argmin(-1)


@torch.no_grad()
def kmeans(
    features: torch.Tensor,
    num_clusters: int,
    iterations: int = 10,
    init: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Lloyd's k-means on ``(N, D)`` features -> ``(num_clusters, D)`` centroids.

    ``init`` warm-starts from earlier centroids (so cluster ``i`` stays cluster ``i`` across
    refreshes); otherwise k-means++ seeding starts it. An empty cluster keeps
    its previous centroid rather than being re-seeded, for the same reason.
    """
    features = features.float()
    count = features.shape[0]
    if num_clusters < 1:
        raise ValueError(f"num_clusters must be positive, got {num_clusters}.")
    if count < num_clusters:
        raise ValueError(
            f"k-means needs at least num_clusters={num_clusters} frames, got {count}: lower "
            "num_clusters or use larger batches."
        )
    if init is None:
        centroids = _kmeans_plus_plus(features, num_clusters, generator)
    else:
        if init.shape != (num_clusters, features.shape[1]):
            raise ValueError(f"init centroids have shape {tuple(init.shape)}.")
        centroids = init.float().clone()
    for _ in range(iterations):
        ids = assign_clusters(features, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, ids, features)
        sizes = torch.bincount(ids, minlength=num_clusters)
        updated = sums / sizes.clamp_min(1)[:, None].to(sums.dtype)
        centroids = torch.where((sizes > 0)[:, None], updated, centroids)
    return centroids


def _kmeans_plus_plus(
    features: torch.Tensor, num_clusters: int, generator: torch.Generator | None
) -> torch.Tensor:
    """k-means++ seeding: each new centre drawn with probability proportional to the squared
    distance to the nearest centre so far, so well-separated groups each get one."""
    count = features.shape[0]
    first = int(torch.randint(count, (1,), generator=generator))
    centroids = [features[first]]
    nearest = (features - features[first]).pow(2).sum(-1)
    for _ in range(1, num_clusters):
        weights = nearest.cpu().double()
        if weights.sum() <= 0:  # every row already a centre (duplicates): any row will do
            weights = torch.ones_like(weights)
        pick = int(torch.multinomial(weights, 1, generator=generator))
        centroids.append(features[pick])
        nearest = torch.minimum(nearest, (features - features[pick]).pow(2).sum(-1))
    return torch.stack(centroids).clone()


def regression_loss(prediction: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """``l1``/``mse``: mean over rows and features; ``cosine``: mean ``1 - cos`` over rows.
    No rows (nothing masked or visible) gives a zero that still has a gradient path."""
    if kind not in REGRESSION_LOSSES:
        raise ValueError(f"regression loss must be one of {REGRESSION_LOSSES}, got {kind!r}.")
    if prediction.numel() == 0:
        return prediction.sum() * 0.0
    prediction, target = prediction.float(), target.float()
    if kind == "l1":
        return F.l1_loss(prediction, target)
    if kind == "mse":
        return F.mse_loss(prediction, target)
    return (1 - F.cosine_similarity(prediction, target, dim=-1)).mean()


# --------------------------------------------------------------------------------------------
# Pre-training module
# --------------------------------------------------------------------------------------------


class AdapterPretrainer(nn.Module):
    """Teacher-student pre-training of a MERIT model's integration + adapter.

    Only ``model.integration``, ``model.adapter`` and the three heads train; the backbone is
    frozen and in eval mode, the EMA teacher is updated by :meth:`update_teacher` (call it
    after each optimizer step; :class:`EMATeacherCallback` does so under the ``Trainer``).
    Every layer-integration group of the model (one per task with expert routing) is
    pre-trained; their losses are averaged and they share the heads and the centroids.
    """

    def __init__(
        self,
        model: MeritModel,
        *,
        mask_rate: float = 0.4,
        mask_span: int = 5,
        num_clusters: int = 32,
        kmeans_iterations: int = 10,
        refresh_every: int = 100,
        ema_decay: float = 0.999,
        mask_loss: str = "l1",
        distill_level: str = "frame",
        mask_weight: float = 1.0,
        distill_weight: float = 1.0,
        cluster_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if model.adapter is None:
            raise ValueError(
                "adapter pre-training needs a model with MeritConfig(adapter_layers>0)."
            )
        if not model.config.freeze_backbone:
            raise ValueError(
                "adapter pre-training needs a frozen encoder: MeritConfig(freeze_backbone=True)."
            )
        if mask_loss not in REGRESSION_LOSSES:
            raise ValueError(f"mask_loss must be one of {REGRESSION_LOSSES}, got {mask_loss!r}.")
        if distill_level not in DISTILL_LEVELS:
            raise ValueError(
                f"distill_level must be one of {DISTILL_LEVELS}, got {distill_level!r}."
            )
        if refresh_every < 1:
            raise ValueError(f"refresh_every must be at least 1 step, got {refresh_every}.")
        if not 0.0 <= ema_decay <= 1.0:
            raise ValueError(f"ema_decay must be in [0, 1], got {ema_decay}.")
        span_mask(torch.ones(1, 10, dtype=torch.bool), mask_rate, mask_span)  # validates both
        self.model = model
        model.requires_grad_(False)
        student = self._student().requires_grad_(True)
        self.teacher = copy.deepcopy(student).requires_grad_(False)
        hidden = model.config.hidden_size
        self.mask_head = nn.Linear(hidden, hidden)
        self.distill_head = nn.Sequential(
            nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, hidden)
        )
        self.cluster_head = nn.Linear(hidden, num_clusters)
        self.register_buffer("centroids", torch.zeros(num_clusters, hidden))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        self.register_buffer("refreshed_at", torch.full((), -1, dtype=torch.long))
        self.mask_rate, self.mask_span = mask_rate, mask_span
        self.num_clusters, self.kmeans_iterations = num_clusters, kmeans_iterations
        self.refresh_every, self.ema_decay = refresh_every, ema_decay
        self.mask_loss, self.distill_level = mask_loss, distill_level
        self.weights = {"mask": mask_weight, "distill": distill_weight, "cluster": cluster_weight}
        self.train()

    def train(self, mode: bool = True) -> AdapterPretrainer:
        super().train(mode)
        self.teacher.eval()
        self.model.backbone.eval()  # frozen: no dropout or SpecAugment on the features
        return self

    @property
    def groups(self) -> list[str]:
        """The layer integrations pre-training trains: one per routed task, or the shared one."""
        return list(self.model.config.integration_groups)

    def _student(self) -> nn.ModuleDict:
        """The online branch, built on the fly: registering it as a submodule would store
        ``model.integration``/``model.adapter`` twice in checkpoints (safetensors refuses)."""
        return nn.ModuleDict({"integration": self.model.integration, "adapter": self.model.adapter})

    @torch.no_grad()
    def update_teacher(self) -> None:
        """One EMA step of the teacher towards the student; counts optimizer steps."""
        ema_update(self.teacher, self._student(), self.ema_decay)
        self.num_updates += 1

    @torch.no_grad()
    def refresh_clusters(self, features: torch.Tensor) -> None:
        """Re-run k-means on teacher frame features ``(N, hidden)``, warm-started from the
        current centroids after the first time."""
        init = self.centroids if int(self.refreshed_at) >= 0 else None
        self.centroids.copy_(kmeans(features, self.num_clusters, self.kmeans_iterations, init))
        self.refreshed_at.fill_(int(self.num_updates))

    def _refresh_due(self) -> bool:
        last = int(self.refreshed_at)
        return last < 0 or int(self.num_updates) - last >= self.refresh_every

    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        clean_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        masked_frames: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Pre-training losses on a batch of (noisy) audio; ``clean_values`` and ``labels`` are
        accepted and ignored (pre-training is task-agnostic). ``masked_frames`` overrides the
        random span mask (tests, analysis)."""
        model = self.model
        with torch.no_grad():
            hidden_states, frame_mask = model.backbone_features(input_values, attention_mask)
        if masked_frames is None:
            masked_frames = span_mask(frame_mask, self.mask_rate, self.mask_span)
        elif masked_frames.shape != frame_mask.shape:
            raise ValueError(
                f"masked_frames must have shape {tuple(frame_mask.shape)}, "
                f"got {tuple(masked_frames.shape)}."
            )
        masked = masked_frames.bool() & frame_mask
        visible = frame_mask & ~masked
        with torch.no_grad():
            targets = [
                F.layer_norm(
                    MeritModel.integrate(self.teacher, hidden_states, group, frame_mask),
                    (model.config.hidden_size,),
                )
                for group in self.groups
            ]
            if self.training and self._refresh_due():
                self.refresh_clusters(torch.cat([t[frame_mask] for t in targets]))
        totals = {"mask": 0.0, "distill": 0.0, "cluster": 0.0}
        for group, target in zip(self.groups, targets, strict=True):
            student = model.integrate(hidden_states, group, frame_mask, masked)
            totals["mask"] = totals["mask"] + regression_loss(
                self.mask_head(student[masked]), target[masked], self.mask_loss
            )
            predicted = self.distill_head(student)
            if self.distill_level == "frame":
                distill = regression_loss(predicted[visible], target[visible], self.mask_loss)
            else:
                weights = frame_mask[..., None].to(predicted.dtype)
                count = weights.sum(1).clamp_min(1)
                distill = regression_loss(
                    (predicted * weights).sum(1) / count,
                    (target * weights).sum(1) / count,
                    "cosine",
                )
            totals["distill"] = totals["distill"] + distill
            cluster_logits = self.cluster_head(student[masked]).float()
            cluster = (
                F.cross_entropy(cluster_logits, assign_clusters(target[masked], self.centroids))
                if cluster_logits.numel()
                else cluster_logits.sum() * 0.0  # nothing masked: cross-entropy would be NaN
            )
            totals["cluster"] = totals["cluster"] + cluster
        parts = {name: value / len(self.groups) for name, value in totals.items()}
        loss = sum(self.weights[name] * value for name, value in parts.items())
        return {"loss": loss, **{f"{name}_loss": value.detach() for name, value in parts.items()}}


class EMATeacherCallback(TrainerCallback):
    """Moves the EMA teacher after every optimizer step of the ``Trainer``."""

    def __init__(self, pretrainer: AdapterPretrainer) -> None:
        self.pretrainer = pretrainer

    def on_step_end(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        self.pretrainer.update_teacher()


# --------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------


@dataclass
class AdapterArguments:
    """Adapter-with-local-attributes settings (``python train.py --method adapter``)."""

    backbone: str = field(
        default=TINY_BACKBONE,
        metadata={"help": "Frozen encoder: 'tiny' (random, offline), a Hub id or a folder."},
    )
    backbone_model_type: str = field(default="wavlm", metadata={"help": "Type of 'tiny'."})
    backbone_seed: int = field(default=0, metadata={"help": "Seed of the 'tiny' backbone."})
    tasks: str = field(
        default="ser",
        metadata={"help": "'ser' (adapter method) or 'ser,se' (MERIT option, with routing)."},
    )
    routing: str = field(default="sparse", metadata={"help": "sparse, dense or shared."})
    hidden_size: int = field(default=256, metadata={"help": "Width of the adapter/experts."})
    num_experts: int = field(default=8)
    router_top_k: int = field(default=2)
    expert_hidden_size: int = field(default=512)
    se_passthrough_weight: float = field(
        default=0.01,
        metadata={
            "help": "MERIT option: loss on clean examples, x the dB of segmental SNR the "
            "enhancer takes from them (as train.py's default; 0 turns it off)"
        },
    )
    adapter_layers: int = field(default=2, metadata={"help": "Transformer layers of the adapter."})
    adapter_heads: int = field(default=4)
    adapter_ffn_size: int = field(default=512)
    pretrain_steps: int = field(
        default=500, metadata={"help": "Pre-training steps (0 skips pre-training)."}
    )
    pretrain_learning_rate: float = field(default=5e-4)
    mask_rate: float = field(default=0.4, metadata={"help": "Share of valid frames masked."})
    mask_span: int = field(default=5, metadata={"help": "Frames per masked span."})
    num_clusters: int = field(default=32, metadata={"help": "k of the k-means local attributes."})
    kmeans_iterations: int = field(default=10)
    cluster_refresh_steps: int = field(
        default=100, metadata={"help": "Re-cluster the teacher features every N steps."}
    )
    ema_decay: float = field(default=0.999, metadata={"help": "Decay of the EMA teacher."})
    mask_loss: str = field(default="l1", metadata={"help": "l1, mse or cosine."})
    distill_level: str = field(default="frame", metadata={"help": "frame or utterance."})
    mask_weight: float = field(default=1.0)
    distill_weight: float = field(default=1.0)
    cluster_weight: float = field(default=1.0)

    def task_list(self) -> list[str]:
        return [task.strip() for task in self.tasks.split(",") if task.strip()]


def build_adapter_model(args: AdapterArguments, label_names: list[str]) -> MeritModel:
    """A MERIT model with the WAP-Transformer adapter on a frozen encoder."""
    backbone = load_backbone(
        args.backbone, model_type=args.backbone_model_type, seed=args.backbone_seed
    )
    return merit_on_backbone(
        backbone,
        args.backbone,
        tasks=args.task_list(),
        routing=args.routing,
        hidden_size=args.hidden_size,
        num_experts=args.num_experts,
        router_top_k=args.router_top_k,
        expert_hidden_size=args.expert_hidden_size,
        se_passthrough_weight=args.se_passthrough_weight if "se" in args.task_list() else 0.0,
        adapter_layers=args.adapter_layers,
        adapter_heads=args.adapter_heads,
        adapter_ffn_size=args.adapter_ffn_size,
        freeze_backbone=True,
        id2label=dict(enumerate(label_names)),
    )


def pretrain_adapter(
    model: MeritModel,
    args: AdapterArguments,
    training_args: TrainingArguments,
    train_dataset: Dataset,
) -> AdapterPretrainer:
    """Stage 1: ``args.pretrain_steps`` steps of teacher-student pre-training, checkpoints in
    ``training_args.output_dir`` (the pre-training state, EMA teacher and centroids included)."""
    pretrainer = AdapterPretrainer(
        model,
        mask_rate=args.mask_rate,
        mask_span=args.mask_span,
        num_clusters=args.num_clusters,
        kmeans_iterations=args.kmeans_iterations,
        refresh_every=args.cluster_refresh_steps,
        ema_decay=args.ema_decay,
        mask_loss=args.mask_loss,
        distill_level=args.distill_level,
        mask_weight=args.mask_weight,
        distill_weight=args.distill_weight,
        cluster_weight=args.cluster_weight,
    )
    train_module(
        pretrainer, training_args, train_dataset, callbacks=[EMATeacherCallback(pretrainer)]
    )
    return pretrainer


def prepare_for_finetuning(model: MeritModel) -> MeritModel:
    """Make every MERIT module trainable again after pre-training, the encoder still frozen
    (as the model's config says)."""
    model.requires_grad_(True)
    model.apply_freezing()
    return model.train()


def finetune(
    model: MeritModel,
    training_args: TrainingArguments,
    train_dataset: Dataset,
    eval_dataset: Dataset | None = None,
) -> Trainer:
    """Stage 2: the model's own SER (+ SE) losses on noisy labelled examples (from
    ``load_noisy_training_data(..., labelled=True)``), with ``train.py``'s ``MeritTrainer``
    (which logs the task losses) and, given ``eval_dataset``, its validation metrics, so
    ``load_best_model_at_end`` keeps the best checkpoint as ``train.py`` does."""
    from merit.training import MeritTrainer, make_compute_metrics

    prepare_for_finetuning(model)
    config = model.config
    compute_metrics = make_compute_metrics(
        config.label_names or None,
        config.has_enhancement_head,
        config.predicted_dimensions or None,
    )
    return train_module(
        model,
        training_args,
        train_dataset,
        trainer_class=MeritTrainer,
        eval_dataset=eval_dataset,
        compute_metrics=compute_metrics if eval_dataset is not None else None,
    )


def save_model(model: MeritModel, out: Path, settings: dict[str, Any] | None = None) -> Path:
    """The final model folder: weights, config, code and feature extractor (+ settings)."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    MeritFeatureExtractor(sampling_rate=model.config.sampling_rate).save_pretrained(out)
    if settings is not None:
        (out / "training_settings.json").write_text(json.dumps(settings, indent=2, default=str))
    return out


def train_adapter(
    args: AdapterArguments,
    data_args: DataArguments,
    training_args: TrainingArguments,
) -> Path:
    """Both stages; the final model goes to ``output_dir``. Stage 1 checkpoints in
    ``output_dir/pretrain`` and its result in ``output_dir/pretrained``; stage 2 checkpoints in
    ``output_dir/finetune``, validated as ``train.py`` validates (the best checkpoint is the
    one kept). The run ends like ``train.py``'s: the test table under every noise condition,
    ``results.json``, ``evaluation/`` and a model card in ``output_dir``. With
    ``--resume_from_checkpoint`` (any value but ``false``) a finished stage 1 is reused and
    each stage resumes from its latest checkpoint."""
    from merit.preparation import validation_dataset
    from merit.training import RunIdentity, finish_run

    started = time.perf_counter()
    out = Path(training_args.output_dir)
    resume = training_args.resume_from_checkpoint not in (None, "", "false", "False")
    stage_resume = "auto" if resume else None
    data = load_noisy_training_data(data_args, labelled=True)
    train_dataset, names = data.train, data.label_names
    training_started = time.perf_counter()  # both stages, as train.py times its training
    pretrained_dir = out / "pretrained"
    if resume and (pretrained_dir / "config.json").is_file():
        model = MeritModel.from_pretrained(pretrained_dir)
        if model.config.id2label != dict(enumerate(names)):
            raise ValueError(f"{pretrained_dir} was trained for other labels than {names}.")
    else:
        torch.manual_seed(training_args.seed)
        model = build_adapter_model(args, names)
        if args.pretrain_steps > 0:
            stage = replace(
                training_args,
                output_dir=str(out / "pretrain"),
                max_steps=args.pretrain_steps,
                learning_rate=args.pretrain_learning_rate,
                resume_from_checkpoint=stage_resume,
                eval_strategy="no",  # label-free stage: nothing to validate on
                load_best_model_at_end=False,
            )
            pretrain_adapter(model, args, stage, train_dataset)
        save_model(model, pretrained_dir)
    stage = replace(
        training_args, output_dir=str(out / "finetune"), resume_from_checkpoint=stage_resume
    )
    label2id = {name: i for i, name in enumerate(names)}
    eval_dataset = validation_dataset(data.prepared, data.seen, data_args, label2id, stage)
    trainer = finetune(model, stage, train_dataset, eval_dataset)
    finish_run(
        trainer,
        trainer.model,
        RunIdentity(
            "adapter",
            "adapter" if args.task_list() == ["ser"] else "adapter-merit",
            args.backbone,
        ),
        data.prepared,
        data.seen,
        data.unseen,
        data_args,
        train_loss=trainer.state.log_history[-1].get("train_loss", float("nan"))
        if trainer.state.log_history
        else float("nan"),
        train_seconds=time.perf_counter() - training_started,
        started=started,
        feature_extractor=MeritFeatureExtractor(sampling_rate=model.config.sampling_rate),
        output_dir=out,
    )
    settings = {"method": "adapter", **asdict(args), **asdict(data_args)}
    (out / "training_settings.json").write_text(json.dumps(settings, indent=2, default=str))
    return out


def main(argv: list[str] | None = None) -> Path:
    """``python train.py --method adapter [options]``: pre-train, fine-tune, return the model
    folder (loadable with ``AutoModel.from_pretrained(folder, trust_remote_code=True)``).

    Flags: :class:`AdapterArguments`, the data flags of ``train.py``
    (``merit.preparation.DataArguments``) and ``TrainingArguments`` (``--max_steps`` and
    ``--learning_rate`` are the fine-tuning stage's).
    """
    from merit.preparation import DataArguments

    args, data_args, training_args = parse_arguments(
        (AdapterArguments, DataArguments, RunTrainingArguments),
        argv,
        output_dir="outputs/adapter",
        learning_rate=1e-3,
        **EMOTION_RUN_DEFAULTS,
    )
    out = train_adapter(args, data_args, training_args)
    print(f"adapter model saved to {out}")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
