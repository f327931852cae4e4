"""Sparse MERIT: a mixture of experts over SSL speech representations for joint SER and SE.

Tzeng, Busso & Lee, "Joint Learning using Mixture-of-Expert-Based Representation for Enhanced
Speech Generation and Robust Emotion Recognition" (IEEE/ACM TASLP 2026, arXiv 2509.08470). One
pretrained speech backbone; each task integrates its layers with its own weights; a shared pool
of experts, with a gate per task that sends every frame to its top-k experts; emotion logits
from attentive statistics pooling, the enhanced waveform from a magnitude mask on the noisy
STFT. The parts are small modules in the sibling files, each chosen once from the config:

- ``backbones_merit``: the backbone families (WavLM / wav2vec 2.0 / HuBERT, Whisper encoders),
- ``integration_merit``: layer integration and the optional WAP adapter,
- ``mixture_merit``: experts, gates, routing and their auxiliary losses (or the ungated
  naive multi-task baseline),
- ``heads_merit``: the emotion and enhancement heads.

This file is loaded by ``trust_remote_code``: it imports only torch, transformers and its
sibling files (relative imports).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .backbones_merit import SpeechBackbone, backbone_family
from .configuration_merit import MeritConfig
from .heads_merit import MeritSEHead, build_heads
from .integration_merit import MeritWeightedLayerSum, WAPTransformerAdapter, build_integration
from .mixture_merit import MixtureOutput, build_mixture, load_balancing_loss, router_z_loss

__all__ = [
    "LEGACY_KEY_MAPPING",
    "MeritModel",
    "MeritOutput",
    "MeritPreTrainedModel",
    "backbone_hidden_states",
    "check_waveforms",
    "concordance_correlation_loss",
    "load_balancing_loss",
    "negative_si_sdr",
    "segmental_snr",
    "SSNR_CAP_DB",
    "normalize_waveforms",
    "router_z_loss",
]

# ---------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------


@dataclass
class MeritOutput(ModelOutput):
    """Outputs of :class:`MeritModel`.

    Args:
        loss: weighted sum of the task losses and the auxiliary routing losses.
        ser_loss / se_loss / dimension_loss: the individual task losses (when targets are given).
        aux_loss: load-balancing plus router z-loss, already weighted by their coefficients.
        logits: emotion logits ``(batch, num_labels)``.
        dimensions: dimensional *predictions* ``(batch, len(dimension_names))`` (the targets
            go in as ``dimension_labels``).
        enhanced_waveform: enhanced audio ``(batch, samples)``, exactly the input's length, zero
            beyond each utterance's valid samples.
        routing_indices: per routed task, the experts chosen for each frame ``(batch, frames,
            k)`` (``-1`` on padded frames). Dense routing lists all experts.
        routing_weights: per routed task, the gate weights of those experts (``0`` on padding).
        frame_mask: bool ``(batch, frames)``, true on the backbone frames that hold real audio.
        layer_weights: per task, the softmax weights given to each backbone layer.
        task_representations: per task, the ``(batch, frames, hidden)`` representation fed to the
            task head (only with ``output_task_representations=True``).
    """

    loss: torch.Tensor | None = None
    ser_loss: torch.Tensor | None = None
    se_loss: torch.Tensor | None = None
    dimension_loss: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    dimensions: torch.Tensor | None = None
    enhanced_waveform: torch.Tensor | None = None
    routing_indices: dict[str, torch.Tensor] | None = None
    routing_weights: dict[str, torch.Tensor] | None = None
    frame_mask: torch.Tensor | None = None
    layer_weights: dict[str, torch.Tensor] | None = None
    task_representations: dict[str, torch.Tensor] | None = None


# ---------------------------------------------------------------------------------------------
# Task losses
# ---------------------------------------------------------------------------------------------


def concordance_correlation_loss(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``1 - CCC`` averaged over dimensions; CCC rewards both correlation and matching scale."""
    pred_mean, target_mean = predictions.mean(0), targets.mean(0)
    pred_var = predictions.var(0, unbiased=False)
    target_var = targets.var(0, unbiased=False)
    covariance = ((predictions - pred_mean) * (targets - target_mean)).mean(0)
    ccc = 2 * covariance / (pred_var + target_var + (pred_mean - target_mean) ** 2 + 1e-8)
    return (1 - ccc).mean()


def negative_si_sdr(
    estimate: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Mean negative SI-SDR (dB) over utterances, valid samples only."""
    estimate = estimate * mask
    reference = reference * mask
    lengths = mask.sum(-1).clamp_min(1)
    estimate = (estimate - estimate.sum(-1, keepdim=True) / lengths[:, None]) * mask
    reference = (reference - reference.sum(-1, keepdim=True) / lengths[:, None]) * mask
    scale = (estimate * reference).sum(-1, keepdim=True) / (
        reference.pow(2).sum(-1, keepdim=True) + 1e-8
    )
    target = scale * reference
    noise = estimate - target
    ratio = target.pow(2).sum(-1) / (noise.pow(2).sum(-1) + 1e-8)
    return -(10 * torch.log10(ratio + 1e-8)).mean()


#: The segmental SNR a frame can score at most (the evaluation's cap): a perfect estimate.
SSNR_CAP_DB = 35.0


def segmental_snr(
    estimate: torch.Tensor,
    reference: torch.Tensor,
    lengths: torch.Tensor,
    frame: int = 480,
    hop: int = 120,
    min_db: float = -10.0,
    max_db: float = SSNR_CAP_DB,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Segmental SNR (dB) per utterance, differentiable, with the evaluation's definition
    (Loizou: 30 ms frames at 75 % overlap, MATLAB's ``hanning`` window, each frame's SNR
    clipped to ``[min_db, max_db]``, the plain mean over ``floor((N - L) / H)`` frames).

    Returns the values ``(B,)`` and which utterances have at least one frame. The clipping
    makes it a hinge: a frame that already scores ``max_db`` gives no gradient.
    """
    if estimate.shape[-1] < frame:
        zeros = estimate.new_zeros(estimate.shape[0])
        return zeros, zeros.bool()
    k = torch.arange(1, frame + 1, device=estimate.device, dtype=estimate.dtype)
    window = 0.5 * (1 - torch.cos(2 * math.pi * k / (frame + 1)))
    clean = reference.unfold(-1, frame, hop) * window  # B, frames, L
    error = (reference - estimate).unfold(-1, frame, hop) * window
    ratio = clean.pow(2).sum(-1) / (error.pow(2).sum(-1) + 1e-10) + 1e-10
    snr = (10 * torch.log10(ratio)).clamp(min_db, max_db)
    counts = torch.div(lengths - frame, hop, rounding_mode="floor").clamp_min(0)
    valid = torch.arange(snr.shape[-1], device=snr.device)[None, :] < counts[:, None]
    values = (snr * valid).sum(-1) / counts.clamp_min(1).to(snr.dtype)
    return values, counts > 0


# ---------------------------------------------------------------------------------------------
# Input handling
# ---------------------------------------------------------------------------------------------


def check_waveforms(
    input_values: torch.Tensor,
    attention_mask: torch.Tensor | None,
    min_samples: int,
    sampling_rate: int = 16000,
) -> torch.Tensor:
    """Refuse input that would give a silently wrong answer; return valid lengths ``(B,)``."""
    if not torch.is_tensor(input_values) or not input_values.is_floating_point():
        raise ValueError("input_values must be a floating-point tensor of raw audio samples.")
    if input_values.ndim != 2:
        raise ValueError(
            f"input_values must have shape (batch, samples), got {tuple(input_values.shape)}; "
            "use waveform[None] for one utterance and mix stereo down to mono first."
        )
    batch, total = input_values.shape
    if batch == 0 or total == 0:
        raise ValueError("input_values is empty: no audio samples were given.")
    if not torch.isfinite(input_values).all():
        raise ValueError("input_values contains NaN or infinite samples.")
    if attention_mask is None:
        lengths = torch.full((batch,), total, device=input_values.device, dtype=torch.long)
    else:
        if attention_mask.shape != input_values.shape:
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} does not match "
                f"input_values {tuple(input_values.shape)}."
            )
        lengths = attention_mask.long().sum(-1)
    if int(lengths.min()) < min_samples:
        raise ValueError(
            f"Audio too short: need at least {min_samples} samples "
            f"({1000 * min_samples / sampling_rate:.0f} ms at {sampling_rate} Hz), "
            f"got {int(lengths.min())}."
        )
    return lengths


def length_mask(lengths: torch.Tensor, total: int) -> torch.Tensor:
    """``(batch, total)`` bool, true on each row's first ``lengths[row]`` positions: the one
    mask convention for samples and frames."""
    return torch.arange(total, device=lengths.device)[None, :] < lengths[:, None]


class PerUtteranceNormalization:
    """Each utterance zero-mean, unit-variance over its valid samples (ours; WavLM-style)."""

    def __call__(
        self, normalized: torch.Tensor, raw: torch.Tensor, sample_mask: torch.Tensor
    ) -> torch.Tensor:
        return normalized


class RawInput:
    """The audio at its natural level (Whisper's log-mel expects it)."""

    def __call__(
        self, normalized: torch.Tensor, raw: torch.Tensor, sample_mask: torch.Tensor
    ) -> torch.Tensor:
        return raw


class GlobalNormalization:
    """A stored mean and standard deviation for every utterance (the authors' release keeps
    its training set's); padding stays zero."""

    def __init__(self, mean: float, std: float):
        self.mean, self.std = float(mean), float(std)

    def __call__(
        self, normalized: torch.Tensor, raw: torch.Tensor, sample_mask: torch.Tensor
    ) -> torch.Tensor:
        return (raw - self.mean) / self.std * sample_mask.to(raw.dtype)


def build_input_normalization(
    config: MeritConfig,
) -> PerUtteranceNormalization | RawInput | GlobalNormalization:
    """How the backbone's input is normalised, fixed at construction from the config."""
    if config.input_mean is not None:
        return GlobalNormalization(config.input_mean, config.input_std)
    return PerUtteranceNormalization() if config.normalize_input else RawInput()


def normalize_waveforms(
    values: torch.Tensor, sample_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Zero-mean, unit-variance per utterance over its valid samples, zero on padding.

    Returns the normalised audio, the masked raw audio and each utterance's scale (std), which
    the enhancement head uses to work scale-free on the raw signal.
    """
    sample_mask = sample_mask.to(values.dtype)
    values = values * sample_mask
    count = sample_mask.sum(-1).clamp_min(1)
    mean = values.sum(-1) / count
    var = ((values - mean[:, None]) * sample_mask).pow(2).sum(-1) / count
    scale = (var + 1e-7).sqrt()
    return (values - mean[:, None]) / scale[:, None] * sample_mask, values, scale


def backbone_hidden_states(
    backbone: nn.Module,
    input_values: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    normalize: bool = True,
    sampling_rate: int = 16000,
    family: SpeechBackbone | None = None,
    normalization: PerUtteranceNormalization | RawInput | GlobalNormalization | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Checks, normalisation and backbone pass of :class:`MeritModel` on any bare backbone.

    Distillation teachers and students and adapter pre-training use it, so the features they
    learn from are the ones a MERIT model built on that backbone computes. Returns
    ``(layers, batch, frames, size)`` and the bool frame mask ``(batch, frames)``.
    """
    family = family or backbone_family(backbone.config)
    lengths = check_waveforms(input_values, attention_mask, family.min_samples, sampling_rate)
    sample_mask = length_mask(lengths, input_values.shape[-1])
    normalized, raw, _ = normalize_waveforms(input_values, sample_mask)
    if normalization is None:
        normalization = PerUtteranceNormalization() if normalize else RawInput()
    states = family.hidden_states(backbone, normalization(normalized, raw, sample_mask), lengths)
    return states, length_mask(family.frame_lengths(lengths), states.shape[2])


#: State-dict names of checkpoints saved before the mixture became one module (2026-11).
LEGACY_KEY_MAPPING = {
    r"^expert_pool\.experts\.": "mixture.experts.",
    r"^gates\.": "mixture.gates.",
    r"^task_norm\.": "mixture.norm.",
    r"^shared_projection\.": "mixture.feed_forward.",
}


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


class MeritPreTrainedModel(PreTrainedModel):
    config_class = MeritConfig
    base_model_prefix = "merit"
    main_input_name = "input_values"
    input_modalities = "audio"
    supports_gradient_checkpointing = True
    # forward returns per-batch mean losses; it does not take ``num_items_in_batch``.
    accepts_loss_kwargs = False

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> MeritPreTrainedModel:
        """``PreTrainedModel.from_pretrained`` that also reads the pre-2026-12 weight names
        (:data:`LEGACY_KEY_MAPPING`), so older checkpoints load unchanged."""
        kwargs.setdefault("key_mapping", LEGACY_KEY_MAPPING)
        return super().from_pretrained(*args, **kwargs)

    def save_pretrained(self, save_directory: str, *args: Any, **kwargs: Any) -> Any:
        """Save weights, config and code; the config maps every Auto class that loads it and
        names the pipeline the folder carries (``pipeline_merit``, see there why).

        ``register_for_auto_class`` keeps one Auto class per model class, so the
        audio-classification entry is added to ``auto_map`` here (saving merges into it).
        A model loaded from an old-layout checkpoint is saved in today's layout
        (``save_original_format=False``: transformers would otherwise undo the renaming).
        """
        # Imported here, not at the top: loading a model need not import transformers'
        # pipelines, but a saved folder (and a remote-code copy re-saved) must carry the file.
        from .pipeline_merit import PIPELINE_ENTRY

        kwargs.setdefault("save_original_format", False)
        self.config.custom_pipelines = PIPELINE_ENTRY
        auto_map = dict(getattr(self.config, "auto_map", None) or {})
        module = type(self).__module__.split(".")[-1]
        auto_map.setdefault("AutoModelForAudioClassification", f"{module}.{type(self).__name__}")
        self.config.auto_map = auto_map
        return super().save_pretrained(save_directory, *args, **kwargs)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            # LeCun-normal: variance-preserving at any width. The 0.02 of BERT-style models is
            # tuned for 768-wide layers; in the narrow MERIT layers it shrinks the signal
            # through every stacked projection and stalls learning from a random backbone.
            nn.init.normal_(module.weight, mean=0.0, std=module.in_features**-0.5)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, MeritWeightedLayerSum):
            nn.init.zeros_(module.layer_logits)
        if isinstance(module, MeritSEHead):
            module.reset_to_pass_through()


class MeritModel(MeritPreTrainedModel):
    """Sparse MERIT for joint speech emotion recognition and speech enhancement.

    Example::

        >>> from transformers import AutoModel, AutoFeatureExtractor
        >>> model = AutoModel.from_pretrained("path/or/hub-id", trust_remote_code=True)
        >>> fe = AutoFeatureExtractor.from_pretrained("path/or/hub-id", trust_remote_code=True)
        >>> inputs = fe(waveform, sampling_rate=16000, return_tensors="pt")
        >>> out = model(**inputs)
        >>> out.logits.softmax(-1), out.enhanced_waveform
    """

    def __init__(self, config: MeritConfig):
        super().__init__(config)
        if getattr(config.backbone_config, "layerdrop", 0.0):
            # LayerDrop skips whole layers in training, and a skipped layer returns no hidden
            # state: the per-task weighting over all layers needs every one of them.
            config.backbone_config.layerdrop = 0.0
        self.input_normalization = build_input_normalization(config)
        self.backbone_family = backbone_family(config.backbone_config)
        self.backbone = self.backbone_family.build()
        self.integration = build_integration(config)
        self.adapter = WAPTransformerAdapter(config) if config.adapter_layers else None
        self.mixture = build_mixture(config)
        self.ser_head, self.se_head = build_heads(
            config, self.backbone_family.frame_offset, self.backbone_family.frame_hop
        )
        if config.class_weights is not None:
            self.register_buffer(
                "class_weights", torch.tensor(config.class_weights, dtype=torch.float32)
            )
        else:
            self.class_weights = None
        self.post_init()
        self.apply_freezing()

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_backbone(
        cls, backbone_name_or_path: str, *, backbone_kwargs: dict | None = None, **config_kwargs
    ) -> MeritModel:
        """Build a MERIT model on a pretrained speech backbone and load the backbone's weights.

        ``backbone_name_or_path`` is a Hub id (``"microsoft/wavlm-base-plus"``,
        ``"openai/whisper-base"``) or a local folder holding a WavLM / wav2vec 2.0 / HuBERT
        checkpoint (bare or with a task head) or a Whisper checkpoint (``WhisperModel``,
        ``WhisperForConditionalGeneration`` or ``WhisperForAudioClassification``: the encoder
        is kept). ``config_kwargs`` go to :class:`MeritConfig` (``id2label``, ``routing``, ...).
        """
        from transformers import AutoConfig

        backbone_kwargs = backbone_kwargs or {}
        probe = AutoConfig.from_pretrained(backbone_name_or_path, **backbone_kwargs)
        backbone_config, state = backbone_family(probe).load_pretrained(
            backbone_name_or_path, **backbone_kwargs
        )
        model = cls(MeritConfig(backbone_config=backbone_config, **config_kwargs))
        missing, _ = model.backbone.load_state_dict(state, strict=False)
        missing = [k for k in missing if "masked_spec_embed" not in k]
        if missing:
            raise ValueError(f"Backbone checkpoint lacks weights: {missing[:5]} ...")
        model.config.backbone_config._name_or_path = str(backbone_name_or_path)
        return model

    def apply_freezing(self) -> None:
        """Apply the config's ``freeze_backbone`` / ``freeze_feature_encoder``."""
        if self.config.freeze_backbone:
            self.backbone.requires_grad_(False)
        elif self.config.freeze_feature_encoder:
            self.freeze_feature_encoder()

    def freeze_feature_encoder(self) -> None:
        """Freeze the convolutional feature encoder: it rarely benefits from fine-tuning."""
        self.backbone_family.freeze_feature_encoder(self.backbone)

    def merit_module_names(self) -> list[str]:
        """Names of the top-level modules MERIT adds on top of the backbone (new weights,
        trained in full and saved beside a LoRA adapter as PEFT's ``modules_to_save``)."""
        return [name for name, _ in self.named_children() if name != "backbone"]

    def set_expert_dispatch(self, enabled: bool) -> None:
        """Token dispatch (fast, default) or static all-expert compute (graph export)."""
        self.mixture.dispatch = enabled

    def train(self, mode: bool = True) -> MeritModel:
        """A frozen backbone stays in eval mode: no dropout or SpecAugment on features that
        cannot adapt to them."""
        super().train(mode)
        if mode and self.config.freeze_backbone:
            self.backbone.eval()
        return self

    # -- the vocabulary other code uses -------------------------------------------------------

    @property
    def frame_field(self) -> int:
        """Samples one backbone frame sees."""
        return self.backbone_family.receptive_field

    @property
    def frame_hop(self) -> int:
        """Samples between backbone frames (20 ms at 16 kHz)."""
        return self.backbone_family.frame_hop

    @property
    def min_input_samples(self) -> int:
        return self.backbone_family.min_samples

    def frame_lengths(self, sample_lengths: torch.Tensor) -> torch.Tensor:
        """Backbone frames that ``sample_lengths`` samples give."""
        return self.backbone_family.frame_lengths(torch.as_tensor(sample_lengths))

    def backbone_features(
        self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The backbone layers exactly as MERIT sees them: ``(layers, B, T, H)`` and frame mask."""
        return backbone_hidden_states(
            self.backbone,
            input_values,
            attention_mask,
            sampling_rate=self.config.sampling_rate,
            family=self.backbone_family,
            normalization=self.input_normalization,
        )

    def integrate(
        self,
        hidden_states: torch.Tensor,
        task: str,
        frame_mask: torch.Tensor,
        masked_frames: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One task's (or the shared) integration of the backbone layers, then the adapter."""
        integrated = self.integration(hidden_states, task)
        if self.adapter is not None:
            integrated = self.adapter(integrated, frame_mask, masked_frames)
        return integrated

    # -- forward ------------------------------------------------------------------------------

    def _check_targets(
        self,
        input_values: torch.Tensor,
        labels: torch.Tensor | None,
        clean_values: torch.Tensor | None,
    ) -> None:
        batch = input_values.shape[0]
        if labels is not None and self.config.has_emotion_head:
            if labels.ndim != 1 or labels.shape[0] != batch:
                raise ValueError(f"labels must have shape ({batch},), got {tuple(labels.shape)}.")
            if labels.min() < 0 or labels.max() >= self.config.num_labels:
                raise ValueError(
                    f"labels must be class ids in [0, {self.config.num_labels}), "
                    f"got {labels.tolist()}."
                )
        if clean_values is not None and clean_values.shape != input_values.shape:
            raise ValueError(
                f"clean_values shape {tuple(clean_values.shape)} must equal input_values "
                f"{tuple(input_values.shape)}."
            )

    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        clean_values: torch.Tensor | None = None,
        dimension_labels: torch.Tensor | None = None,
        masked_frames: torch.Tensor | None = None,
        output_task_representations: bool = False,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> MeritOutput:
        """Run the model.

        Args:
            input_values: raw (noisy) audio ``(batch, samples)`` at ``config.sampling_rate``.
            attention_mask: 1 on real samples, 0 on padding.
            labels: emotion class ids ``(batch,)`` for the SER loss.
            clean_values: clean reference audio, same shape, for the SE loss.
            dimension_labels: dimensional targets ``(batch, len(config.dimension_names))``.
            masked_frames: bool ``(batch, frames)``: frames the adapter replaces by its mask
                embedding (adapter pre-training only).
            output_task_representations: also return each task's frame representation (before
                the experts' heads), for distillation and analysis.
        """
        config = self.config
        lengths = check_waveforms(
            input_values, attention_mask, self.min_input_samples, config.sampling_rate
        )
        self._check_targets(input_values, labels, clean_values)
        sample_mask = length_mask(lengths, input_values.shape[-1])
        normalized, noisy, scale = normalize_waveforms(input_values, sample_mask)
        # 1. All hidden states of the backbone.
        backbone_input = self.input_normalization(normalized, noisy, sample_mask)
        hidden_states = self.backbone_family.hidden_states(self.backbone, backbone_input, lengths)
        frame_lengths = self.frame_lengths(lengths)
        frame_mask = length_mask(frame_lengths, hidden_states.shape[2])
        # 2. Per task: integrate the layers, then route every frame through the expert pool.
        integrated = {
            group: self.integrate(hidden_states, group, frame_mask, masked_frames)
            for group in config.integration_groups
        }
        mixtures: dict[str, MixtureOutput] = self.mixture(integrated, frame_mask)
        task_output = {t: mixtures[t if t in mixtures else "shared"] for t in config.tasks}
        # 3. Heads and their losses.
        logits = dims = enhanced = ser_loss = se_loss = dim_loss = None
        if self.ser_head is not None:
            logits, dims = self.ser_head(task_output["ser"].hidden, frame_mask)
            if labels is not None and logits is not None:
                ser_loss = F.cross_entropy(
                    logits.float(),
                    labels.long(),
                    weight=self.class_weights,
                    label_smoothing=config.label_smoothing,
                )
            if dimension_labels is not None and dims is not None:
                dim_loss = concordance_correlation_loss(dims.float(), dimension_labels.float())
        if self.se_head is not None:
            enhanced, enhanced_mag = self.se_head(
                task_output["se"].hidden, frame_lengths, noisy, lengths, scale
            )
            enhanced = enhanced * sample_mask
            if clean_values is not None:
                se_loss = self.enhancement_loss(
                    enhanced, enhanced_mag, clean_values, lengths, scale, input_values
                )
        # 4. Total loss: weighted task losses plus the routers' auxiliary losses.
        aux_losses = [m.aux_loss for m in mixtures.values() if m.aux_loss is not None]
        aux_loss = torch.stack(aux_losses).sum() if aux_losses else None
        weighted = [
            weight * part
            for part, weight in (
                (ser_loss, config.ser_loss_weight),
                (se_loss, config.se_loss_weight),
                (dim_loss, config.dimension_loss_weight),
            )
            if part is not None
        ]
        loss = None
        if weighted:
            loss = torch.stack(weighted).sum() + (aux_loss if aux_loss is not None else 0.0)

        routed = {t: mixtures[t] for t in config.routed_tasks}
        return MeritOutput(
            loss=loss,
            ser_loss=ser_loss,
            se_loss=se_loss,
            dimension_loss=dim_loss,
            aux_loss=aux_loss,
            logits=logits,
            dimensions=dims,
            enhanced_waveform=enhanced,
            routing_indices={t: m.expert_indices for t, m in routed.items()} or None,
            routing_weights={t: m.expert_weights for t, m in routed.items()} or None,
            frame_mask=frame_mask,
            layer_weights={
                t: w for t in config.tasks if (w := self.integration.layer_weights(t)) is not None
            }
            or None,
            task_representations=(
                {t: m.hidden for t, m in task_output.items()}
                if output_task_representations
                else None
            ),
        )

    def enhancement_loss(
        self,
        enhanced: torch.Tensor,
        enhanced_magnitude: torch.Tensor,
        clean_values: torch.Tensor,
        lengths: torch.Tensor,
        scale: torch.Tensor,
        input_values: torch.Tensor,
    ) -> torch.Tensor:
        """The SE head's spectral loss, plus ``se_sisdr_weight`` x negative SI-SDR, plus
        ``se_passthrough_weight`` x the dB of segmental SNR the enhancer takes from examples
        that are already clean (the input is its own clean reference)."""
        sample_mask = length_mask(lengths, clean_values.shape[-1]).to(clean_values.dtype)
        clean = clean_values * sample_mask
        loss = self.se_head.loss(enhanced_magnitude, clean, lengths, scale)
        if self.config.se_sisdr_weight > 0:
            loss = loss + self.config.se_sisdr_weight * negative_si_sdr(
                enhanced, clean, sample_mask
            )
        if self.config.se_passthrough_weight > 0:
            already_clean = ((input_values - clean_values) * sample_mask).abs().amax(-1) == 0
            if already_clean.any():
                ssnr, scored = segmental_snr(
                    enhanced[already_clean].float(),
                    clean[already_clean].float(),
                    lengths[already_clean],
                )
                if scored.any():
                    cost = (SSNR_CAP_DB - ssnr[scored]).mean()
                    loss = loss + self.config.se_passthrough_weight * cost
        return loss


MeritConfig.register_for_auto_class()
MeritModel.register_for_auto_class("AutoModel")
