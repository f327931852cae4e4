"""Sparse MERIT: a mixture of experts over SSL speech representations for joint SER and SE.

Tzeng, Busso & Lee, "Joint Learning using Mixture-of-Expert-Based Representation for Enhanced
Speech Generation and Robust Emotion Recognition" (2025). One SSL backbone; its layers are
integrated per task; a shared pool of experts; each task has its own gate that sends every frame
to its top-k experts. Emotion logits come from attentive statistics pooling; the enhanced
waveform from a magnitude mask on the noisy STFT.

This file is loaded on its own by ``trust_remote_code``: it imports only torch, transformers and
its sibling files (relative imports).
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_merit import MeritConfig

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
        dimensions: dimensional predictions ``(batch, len(dimension_names))``.
        enhanced_waveform: enhanced audio ``(batch, samples)``, exactly the input's length, zero
            beyond each utterance's valid samples.
        routing_indices: per task, the experts chosen for each frame ``(batch, frames, k)``
            (``-1`` on padded frames). Dense routing lists all experts.
        routing_weights: per task, the gate weights of those experts (``0`` on padded frames).
        frame_mask: ``(batch, frames)``, 1 on the backbone frames that hold real audio.
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
# Losses that tests check against their formulas
# ---------------------------------------------------------------------------------------------


def load_balancing_loss(
    router_probs: torch.Tensor, expert_indices: torch.Tensor, num_experts: int
) -> torch.Tensor:
    """Switch-Transformer load-balancing loss ``E * sum_e f_e * P_e``.

    ``f_e`` is the fraction of (frame, slot) assignments that went to expert ``e`` and ``P_e`` the
    mean gate probability of ``e``; it is 1 for a perfectly uniform router and grows when a few
    experts take most frames, which is what starves the rest of gradient.

    Args:
        router_probs: ``(frames, num_experts)`` softmax over all experts, valid frames only.
        expert_indices: ``(frames, k)`` experts chosen per frame.
    """
    if router_probs.numel() == 0:
        return router_probs.sum() * 0.0
    counts = F.one_hot(expert_indices.reshape(-1), num_experts).to(router_probs.dtype).mean(0)
    return num_experts * torch.sum(counts * router_probs.mean(0))


def router_z_loss(router_logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE router z-loss: mean squared log-partition of the gate logits (keeps them small)."""
    if router_logits.numel() == 0:
        return router_logits.sum() * 0.0
    return torch.logsumexp(router_logits, dim=-1).pow(2).mean()


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


# ---------------------------------------------------------------------------------------------
# Backbone helpers
# ---------------------------------------------------------------------------------------------


def _wavlm_attention_with_projection_modules(
    self: nn.Module,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None,
    gated_position_bias: torch.Tensor,
) -> tuple[torch.Tensor, None]:
    """WavLM self-attention that calls ``q_proj``/``k_proj``/``v_proj``/``out_proj`` as modules.

    Stock ``WavLMAttention`` passes the projection *weights* to
    ``F.multi_head_attention_forward``, so PEFT adapters wrapped around those modules are never
    called: LoRA silently trains nothing. This computes the same attention (scaled queries,
    gated relative-position bias, key padding mask) through the modules themselves.
    """
    bsz, tgt_len, _ = hidden_states.shape
    heads, head_dim = self.num_heads, self.head_dim

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.view(bsz, tgt_len, heads, head_dim).transpose(1, 2)

    query = split(self.q_proj(hidden_states))
    key = split(self.k_proj(hidden_states))
    value = split(self.v_proj(hidden_states))
    bias = gated_position_bias.view(bsz, heads, tgt_len, tgt_len)
    if attention_mask is not None:
        key_padding = attention_mask.ne(1)[:, None, None, :]
        bias = bias.masked_fill(key_padding, float("-inf"))
    attn = F.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=bias.to(query.dtype),
        dropout_p=self.dropout if self.training else 0.0,
        scale=self.scaling,
    )
    attn = attn.transpose(1, 2).reshape(bsz, tgt_len, heads * head_dim)
    return self.out_proj(attn), None


def _receptive_field(backbone_config: Any) -> tuple[int, int]:
    """Receptive field and hop (samples) of the convolutional feature encoder."""
    field, stride = 1, 1
    for kernel, step in zip(backbone_config.conv_kernel, backbone_config.conv_stride, strict=True):
        field += (kernel - 1) * stride
        stride *= step
    return field, stride


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


def sample_mask_for(lengths: torch.Tensor, total: int, dtype: torch.dtype) -> torch.Tensor:
    return (torch.arange(total, device=lengths.device)[None, :] < lengths[:, None]).to(dtype)


def normalize_waveforms(
    values: torch.Tensor, sample_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Zero-mean, unit-variance per utterance over its valid samples, zero on padding.

    Returns the normalised audio, the masked raw audio and each utterance's scale (std), which
    the enhancement head uses to work scale-free on the raw signal.
    """
    values = values * sample_mask
    count = sample_mask.sum(-1).clamp_min(1)
    mean = values.sum(-1) / count
    var = ((values - mean[:, None]) * sample_mask).pow(2).sum(-1) / count
    scale = (var + 1e-7).sqrt()
    return (values - mean[:, None]) / scale[:, None] * sample_mask, values, scale


def run_backbone(
    backbone: PreTrainedModel,
    normalized: torch.Tensor,
    lengths: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """All hidden states ``(layers, batch, frames, size)`` and the frame lengths.

    Backbones with group-normalised conv encoders (wav2vec2-base, WavLM-base) normalise over
    the padded time axis, so a padded batch would change every frame; those run one utterance
    at a time on their valid samples (the transformer itself handles padding).
    """
    frame_lengths = backbone._get_feat_extract_output_lengths(lengths).long()
    padded = bool((lengths < normalized.shape[-1]).any())
    group_norm = getattr(backbone.config, "feat_extract_norm", "layer") == "group"
    if padded and group_norm:
        per_utterance = []
        for row, length in zip(normalized, lengths.tolist(), strict=True):
            states = backbone(row[None, :length], output_hidden_states=True).hidden_states
            per_utterance.append(torch.stack(states, 0)[:, 0])
        frames = max(s.shape[1] for s in per_utterance)
        stacked = torch.stack([F.pad(s, (0, 0, 0, frames - s.shape[1])) for s in per_utterance])
        return stacked.transpose(0, 1), frame_lengths
    sample_mask = sample_mask_for(lengths, normalized.shape[-1], torch.long)
    outputs = backbone(
        normalized, attention_mask=sample_mask if padded else None, output_hidden_states=True
    )
    return torch.stack(outputs.hidden_states, 0), frame_lengths


def backbone_hidden_states(
    backbone: PreTrainedModel,
    input_values: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    normalize: bool = True,
    sampling_rate: int = 16000,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Checks, normalisation and backbone pass of :class:`MeritModel` on any bare backbone.

    Distillation teachers and students and adapter pre-training use it, so the features they
    learn from are the ones a MERIT model built on that backbone computes. Returns
    ``(layers, batch, frames, size)`` and the boolean frame mask ``(batch, frames)``.
    """
    field, _ = _receptive_field(backbone.config)
    lengths = check_waveforms(input_values, attention_mask, field, sampling_rate)
    mask = sample_mask_for(lengths, input_values.shape[-1], input_values.dtype)
    normalized, raw, _ = normalize_waveforms(input_values, mask)
    states, frame_lengths = run_backbone(backbone, normalized if normalize else raw, lengths)
    frame_mask = sample_mask_for(frame_lengths, states.shape[2], torch.bool)
    return states, frame_mask


# ---------------------------------------------------------------------------------------------
# MERIT building blocks
# ---------------------------------------------------------------------------------------------


class MeritLayerIntegration(nn.Module):
    """Representation integration: a learnable softmax weighting of all backbone layers per task.

    Different layers carry different information (paralinguistic cues sit in middle layers,
    acoustic detail for enhancement in lower ones), so each task learns its own mix before a
    shared projection to the experts' width.
    """

    def __init__(self, num_layers: int, input_size: int, hidden_size: int, num_groups: int):
        super().__init__()
        self.layer_logits = nn.Parameter(torch.zeros(num_groups, num_layers))
        self.layer_norm = nn.LayerNorm(input_size)
        self.projection = nn.Linear(input_size, hidden_size)

    def layer_weights(self) -> torch.Tensor:
        return self.layer_logits.softmax(-1)

    def forward(self, hidden_states: torch.Tensor, group: int) -> torch.Tensor:
        """``hidden_states``: ``(layers, batch, frames, size)`` -> ``(batch, frames, hidden)``."""
        weights = self.layer_weights()[group]
        mixed = torch.einsum("l,lbtd->btd", weights, hidden_states)
        return self.projection(self.layer_norm(mixed))


class WAPTransformerAdapter(nn.Module):
    """Light transformer on the weighted-average-pooled (WAP) backbone layers.

    From "An Efficient Transfer Learning Method Based on Adapter with Local Attributes for
    SER": a frozen encoder stays shared, and this small transformer enriches the frame-level
    representation for the downstream task at a fraction of the cost of fine-tuning the
    encoder. Padded frames are excluded from attention.
    """

    def __init__(self, config: MeritConfig):
        super().__init__()
        layer = nn.TransformerEncoderLayer(
            d_model=config.hidden_size,
            nhead=config.adapter_heads,
            dim_feedforward=config.adapter_ffn_size,
            dropout=config.expert_dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.layers = nn.TransformerEncoder(
            layer, num_layers=config.adapter_layers, enable_nested_tensor=False
        )
        self.mask_embedding = nn.Parameter(torch.zeros(config.hidden_size))

    def forward(
        self,
        hidden: torch.Tensor,
        frame_mask: torch.Tensor,
        masked_frames: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``masked_frames`` (bool, B x T) are replaced by the learned mask embedding: the
        student branch of the adapter's mask-prediction pre-training."""
        if masked_frames is not None:
            hidden = torch.where(
                masked_frames[..., None], self.mask_embedding.to(hidden.dtype), hidden
            )
        output = self.layers(hidden, src_key_padding_mask=~frame_mask.bool())
        return output * frame_mask[..., None].to(output.dtype)


class MeritExpert(nn.Module):
    """One feed-forward expert of the shared pool."""

    def __init__(self, hidden_size: int, inner_size: int, dropout: float):
        super().__init__()
        self.fc_in = nn.Linear(hidden_size, inner_size)
        self.fc_out = nn.Linear(inner_size, hidden_size)
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.fc_out(self.dropout(F.gelu(self.fc_in(hidden))))


class MeritGate(nn.Module):
    """Task-specific gating network with noisy top-k gating (Shazeer et al., 2017).

    The learned, input-dependent noise in training lets frames explore other experts, which
    together with the load-balancing loss keeps the pool from collapsing onto a few experts.
    """

    def __init__(self, hidden_size: int, num_experts: int, noise_std: float):
        super().__init__()
        self.router = nn.Linear(hidden_size, num_experts, bias=False)
        self.noise = nn.Linear(hidden_size, num_experts, bias=False) if noise_std > 0 else None
        self.noise_std = noise_std

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.router(hidden)
        if self.training and self.noise is not None:
            noise_scale = F.softplus(self.noise(hidden)) * self.noise_std
            logits = logits + torch.randn_like(logits) * noise_scale
        return logits


class MeritExpertPool(nn.Module):
    """The shared pool of experts with token dispatch.

    In sparse routing each frame is computed only by the experts chosen for it (frames are
    grouped per expert, computed, and scattered back weighted), so cost grows with ``k``, not
    with the pool size, and unchosen experts get no gradient from that frame.
    ``dispatch=False`` computes every expert on every frame and gathers the chosen ones: the
    same numbers with static shapes, which graph exporters (ONNX) need.
    """

    def __init__(self, config: MeritConfig):
        super().__init__()
        self.experts = nn.ModuleList(
            MeritExpert(config.hidden_size, config.expert_hidden_size, config.expert_dropout)
            for _ in range(config.num_experts)
        )
        self.dispatch = True

    def forward(
        self, hidden: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        """``hidden (N, d)``, ``indices``/``weights`` ``(N, k)`` -> mixed output ``(N, d)``."""
        if not self.dispatch:
            every = torch.stack([expert(hidden) for expert in self.experts], dim=1)  # N, E, d
            chosen = torch.gather(
                every, 1, indices[..., None].expand(-1, -1, hidden.shape[-1])
            )  # N, k, d
            return (chosen * weights[..., None]).sum(1)
        output = torch.zeros_like(hidden)
        num_slots = indices.shape[1]
        flat_experts = indices.reshape(-1)
        flat_weights = weights.reshape(-1)
        flat_frames = torch.arange(hidden.shape[0], device=hidden.device).repeat_interleave(
            num_slots
        )
        order = torch.argsort(flat_experts, stable=True)
        counts = torch.bincount(flat_experts, minlength=len(self.experts)).tolist()
        start = 0
        for expert, count in zip(self.experts, counts, strict=True):
            if count:
                slots = order[start : start + count]
                frames = flat_frames[slots]
                update = expert(hidden[frames]) * flat_weights[slots, None]
                output = output.index_add(0, frames, update.to(output.dtype))
            start += count
        return output


class AttentiveStatisticsPooling(nn.Module):
    """Attentive statistics pooling (Okabe et al., 2018) over valid frames only.

    Emotion is carried unevenly in time; attention weights pick the frames that matter, and the
    weighted standard deviation keeps how much the representation varies, a cue for arousal.
    """

    def __init__(self, hidden_size: int, attention_size: int = 128):
        super().__init__()
        self.attention = nn.Sequential(
            nn.Linear(hidden_size, attention_size), nn.Tanh(), nn.Linear(attention_size, 1)
        )

    def forward(self, hidden: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        scores = self.attention(hidden).squeeze(-1)
        scores = scores.masked_fill(~frame_mask.bool(), float("-inf"))
        alpha = scores.softmax(-1).unsqueeze(-1)
        mean = (alpha * hidden).sum(1)
        var = (alpha * hidden.pow(2)).sum(1) - mean.pow(2)
        return torch.cat([mean, var.clamp_min(1e-6).sqrt()], dim=-1)


class MeritSERHead(nn.Module):
    """Emotion head: attentive statistics pooling, categorical classifier, optional dimensions."""

    def __init__(self, config: MeritConfig):
        super().__init__()
        size = config.hidden_size
        self.pooling = AttentiveStatisticsPooling(size)
        self.classifier = (
            nn.Sequential(
                nn.Linear(2 * size, size),
                nn.ReLU(),
                nn.Dropout(config.expert_dropout),
                nn.Linear(size, config.num_labels),
            )
            if config.categorical_head
            else None
        )
        self.regressor = (
            nn.Sequential(
                nn.Linear(2 * size, size),
                nn.ReLU(),
                nn.Linear(size, len(config.dimension_names)),
            )
            if config.dimension_names
            else None
        )

    def forward(
        self, hidden: torch.Tensor, frame_mask: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        pooled = self.pooling(hidden, frame_mask)
        logits = self.classifier(pooled) if self.classifier is not None else None
        dims = self.regressor(pooled) if self.regressor is not None else None
        return logits, dims


class MeritSEHead(nn.Module):
    """Enhancement head: a bounded magnitude mask on the noisy STFT, noisy phase kept.

    Backbone frames (20 ms hop) are interpolated onto STFT frames by absolute time, the mask
    network also sees the noisy log-magnitude (fine spectral detail the SSL features smooth
    out), and the waveform comes back by overlap-add with each utterance's own frames only, so a
    padded batch gives the same audio as one-by-one processing.
    """

    def __init__(self, config: MeritConfig):
        super().__init__()
        self.n_fft = config.n_fft
        self.hop_length = config.hop_length
        self.win_length = config.win_length
        self.compression = config.mag_compression
        bins = config.n_fft // 2 + 1
        self.mask_net = nn.Sequential(
            nn.Linear(config.hidden_size + bins, config.hidden_size),
            nn.GELU(),
            nn.Linear(config.hidden_size, config.hidden_size),
            nn.GELU(),
        )
        self.mask_out = nn.Linear(config.hidden_size, bins)
        self.frame_field, self.frame_hop = _receptive_field(config.backbone_config)

    def window(self, reference: torch.Tensor) -> torch.Tensor:
        """Hann window built on demand: a non-persistent buffer would come back uninitialised
        from ``from_pretrained`` (weights are materialised from the checkpoint only)."""
        return torch.hann_window(self.win_length, device=reference.device, dtype=reference.dtype)

    def stft(self, waveform: torch.Tensor) -> torch.Tensor:
        """Zero-padded (not reflected) centred STFT, so padding a batch changes no valid frame."""
        return torch.stft(
            waveform,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.win_length,
            window=self.window(waveform),
            center=True,
            pad_mode="constant",
            return_complex=True,
        )  # B, F, T

    def istft(self, spec: torch.Tensor, lengths: torch.Tensor, total: int) -> torch.Tensor:
        """Inverse STFT by overlap-add over each utterance's own frames.

        ``torch.istft`` normalises by the window envelope of *all* frames of the padded batch,
        which changes the last samples of shorter utterances; here frames past an utterance's
        end are dropped from both the signal and the envelope.
        """
        batch, _, frames = spec.shape
        pad = self.n_fft // 2
        left = (self.n_fft - self.win_length) // 2
        window = F.pad(self.window(spec.real), (left, self.n_fft - self.win_length - left))
        valid = (
            torch.arange(frames, device=spec.device)[None, :]
            <= (lengths // self.hop_length)[:, None]
        ).to(window.dtype)  # B, T
        chunks = torch.fft.irfft(spec.transpose(1, 2), n=self.n_fft, dim=-1)  # B, T, n_fft
        chunks = chunks * window * valid[..., None]
        envelope = (window.pow(2)[None, None, :] * valid[..., None]).expand_as(chunks)
        out_len = (frames - 1) * self.hop_length + self.n_fft

        def overlap_add(x: torch.Tensor) -> torch.Tensor:
            return F.fold(
                x.transpose(1, 2),
                output_size=(1, out_len),
                kernel_size=(1, self.n_fft),
                stride=(1, self.hop_length),
            ).reshape(batch, out_len)

        signal = overlap_add(chunks)
        norm = overlap_add(envelope)
        signal = torch.where(norm > 1e-10, signal / norm.clamp_min(1e-10), torch.zeros_like(signal))
        signal = signal[:, pad : pad + total]
        if signal.shape[1] < total:
            signal = F.pad(signal, (0, total - signal.shape[1]))
        return signal

    def frames_to_stft(
        self, hidden: torch.Tensor, frame_lengths: torch.Tensor, num_stft_frames: int
    ) -> torch.Tensor:
        """Linear interpolation of backbone frames onto STFT frame centres (absolute time)."""
        centres = torch.arange(num_stft_frames, device=hidden.device, dtype=hidden.dtype)
        position = (centres * self.hop_length - (self.frame_field - 1) / 2) / self.frame_hop
        position = position.clamp_min(0)[None, :].expand(hidden.shape[0], -1)
        last = (frame_lengths - 1).clamp_min(0).to(hidden.dtype)[:, None]
        position = torch.minimum(position, last)
        lower = position.floor().long()
        upper = torch.minimum(lower + 1, last.long())
        frac = (position - lower.to(hidden.dtype))[..., None]
        size = hidden.shape[-1]
        take_lower = torch.gather(hidden, 1, lower[..., None].expand(-1, -1, size))
        take_upper = torch.gather(hidden, 1, upper[..., None].expand(-1, -1, size))
        return take_lower * (1 - frac) + take_upper * frac

    def forward(
        self,
        hidden: torch.Tensor,
        frame_lengths: torch.Tensor,
        noisy: torch.Tensor,
        sample_lengths: torch.Tensor,
        scale: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the enhanced waveform and the enhanced magnitude (scaled by ``1/scale``)."""
        spec = self.stft(noisy)
        magnitude = spec.abs() / scale[:, None, None]
        features = torch.log(magnitude + 1e-5).transpose(1, 2)  # B, T, F
        context = self.frames_to_stft(hidden, frame_lengths, spec.shape[-1])
        mask = torch.sigmoid(self.mask_out(self.mask_net(torch.cat([context, features], -1))))
        mask = mask.transpose(1, 2)  # B, F, T
        enhanced = self.istft(spec * mask, sample_lengths, noisy.shape[-1])
        return enhanced, magnitude * mask

    def loss(
        self,
        enhanced_magnitude: torch.Tensor,
        clean: torch.Tensor,
        sample_lengths: torch.Tensor,
        scale: torch.Tensor,
    ) -> torch.Tensor:
        """Compressed-magnitude MSE over each utterance's valid STFT frames."""
        target = self.stft(clean).abs() / scale[:, None, None]
        frames = target.shape[-1]
        valid = (
            torch.arange(frames, device=clean.device)[None, :]
            <= (sample_lengths // self.hop_length)[:, None]
        )
        power = self.compression
        error = (enhanced_magnitude.clamp_min(1e-8) ** power - target.clamp_min(1e-8) ** power) ** 2
        error = error.mean(1)  # over frequency: B, T
        return (error * valid).sum() / valid.sum().clamp_min(1)


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


class MeritPreTrainedModel(PreTrainedModel):
    config_class = MeritConfig
    base_model_prefix = "merit"
    main_input_name = "input_values"
    input_modalities = "audio"
    supports_gradient_checkpointing = True

    def save_pretrained(self, save_directory: str, *args: Any, **kwargs: Any) -> Any:
        """Save weights, config and code; the config maps every Auto class that loads it.

        ``register_for_auto_class`` keeps one Auto class per model class, so the
        audio-classification entry is added to ``auto_map`` here (saving merges into it).
        """
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
        elif isinstance(module, MeritLayerIntegration):
            nn.init.zeros_(module.layer_logits)
        if isinstance(module, MeritSEHead):
            # Start close to pass-through: an untrained model should not mute the input.
            nn.init.zeros_(module.mask_out.weight)
            nn.init.constant_(module.mask_out.bias, 3.0)


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
        self.backbone = AutoModel.from_config(config.backbone_config)
        if config.backbone_config.model_type == "wavlm":
            for layer in self.backbone.encoder.layers:
                layer.attention.torch_multi_head_self_attention = types.MethodType(
                    _wavlm_attention_with_projection_modules, layer.attention
                )
        self.frame_field, self.frame_hop = _receptive_field(config.backbone_config)
        shared = config.routing == "shared"
        self.integration = MeritLayerIntegration(
            config.num_backbone_layers,
            config.backbone_config.hidden_size,
            config.hidden_size,
            1 if shared else len(config.tasks),
        )
        if shared:
            self.shared_projection = MeritExpert(
                config.hidden_size,
                config.expert_hidden_size * config.router_top_k,
                config.expert_dropout,
            )
        else:
            self.expert_pool = MeritExpertPool(config)
            self.gates = nn.ModuleDict(
                {
                    task: MeritGate(config.hidden_size, config.num_experts, config.router_noise_std)
                    for task in config.tasks
                }
            )
        self.adapter = WAPTransformerAdapter(config) if config.adapter_layers else None
        self.task_norm = nn.LayerNorm(config.hidden_size)
        self.ser_head = MeritSERHead(config) if "ser" in config.tasks else None
        self.se_head = MeritSEHead(config) if "se" in config.tasks else None
        if config.class_weights is not None:
            self.register_buffer(
                "class_weights", torch.tensor(config.class_weights, dtype=torch.float32)
            )
        else:
            self.class_weights = None
        self.post_init()
        self._apply_freezing()

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_backbone(
        cls, backbone_name_or_path: str, *, backbone_kwargs: dict | None = None, **config_kwargs
    ) -> MeritModel:
        """Build a MERIT model on a pretrained SSL backbone and load the backbone's weights.

        ``backbone_name_or_path`` is a Hub id (``"microsoft/wavlm-base-plus"``) or a local folder
        holding a WavLM / wav2vec 2.0 / HuBERT checkpoint (bare or with a task head).
        ``config_kwargs`` go to :class:`MeritConfig` (``id2label``, ``routing``, ...).
        """
        backbone_kwargs = backbone_kwargs or {}
        backbone_config = AutoConfig.from_pretrained(backbone_name_or_path, **backbone_kwargs)
        model = cls(MeritConfig(backbone_config=backbone_config, **config_kwargs))
        pretrained = AutoModel.from_pretrained(backbone_name_or_path, **backbone_kwargs)
        missing, unexpected = model.backbone.load_state_dict(pretrained.state_dict(), strict=False)
        missing = [k for k in missing if "masked_spec_embed" not in k]
        if missing:
            raise ValueError(f"Backbone checkpoint lacks weights: {missing[:5]} ...")
        model.config.backbone_config._name_or_path = str(backbone_name_or_path)
        return model

    def _apply_freezing(self) -> None:
        if self.config.freeze_backbone:
            self.backbone.requires_grad_(False)
        elif self.config.freeze_feature_encoder:
            self.freeze_feature_encoder()

    def freeze_feature_encoder(self) -> None:
        """Freeze the convolutional feature encoder: it rarely benefits from fine-tuning."""
        self.backbone.feature_extractor._freeze_parameters()

    def set_expert_dispatch(self, enabled: bool) -> None:
        """Switch between token dispatch (fast, default) and static all-expert compute (export)."""
        if hasattr(self, "expert_pool"):
            self.expert_pool.dispatch = enabled

    # -- input handling -----------------------------------------------------------------------

    def _check_inputs(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None,
        labels: torch.Tensor | None,
        clean_values: torch.Tensor | None,
    ) -> torch.Tensor:
        lengths = check_waveforms(
            input_values, attention_mask, self.frame_field, self.config.sampling_rate
        )
        batch = input_values.shape[0]
        if labels is not None and self.ser_head is not None and self.config.categorical_head:
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
        return lengths

    def backbone_features(
        self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The backbone layers exactly as MERIT sees them: ``(layers, B, T, H)`` and frame mask."""
        return backbone_hidden_states(
            self.backbone,
            input_values,
            attention_mask,
            normalize=self.config.normalize_input,
            sampling_rate=self.config.sampling_rate,
        )

    def train(self, mode: bool = True) -> MeritModel:
        """A frozen backbone stays in eval mode: no dropout or SpecAugment on features that
        cannot adapt to them."""
        super().train(mode)
        if mode and self.config.freeze_backbone:
            self.backbone.eval()
        return self

    def _integrate(
        self,
        hidden_states: torch.Tensor,
        group: int,
        frame_mask: torch.Tensor,
        masked_frames: torch.Tensor | None,
    ) -> torch.Tensor:
        """Weighted-average pooling of the backbone layers, then the optional adapter."""
        integrated = self.integration(hidden_states, group)
        if self.adapter is not None:
            integrated = self.adapter(integrated, frame_mask, masked_frames)
        return integrated

    # -- routing ------------------------------------------------------------------------------

    def _route(
        self, task: str, hidden: torch.Tensor, frame_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Route valid frames of one task through the expert pool.

        Returns the task representation ``(B, T, d)``, the routing indices and weights
        ``(B, T, k)`` and the task's weighted auxiliary loss. Padded frames are never routed, so
        they cannot skew the load-balancing statistics.
        """
        config = self.config
        valid = frame_mask.bool()
        tokens = hidden[valid]  # N, d
        logits = self.gates[task](tokens)
        probs = logits.float().softmax(-1)
        if config.routing == "sparse":
            top_logits, indices = logits.topk(config.router_top_k, dim=-1)
            weights = top_logits.float().softmax(-1).to(tokens.dtype)
            aux = config.load_balance_coef * load_balancing_loss(probs, indices, config.num_experts)
        else:  # dense
            indices = torch.arange(config.num_experts, device=tokens.device).expand(
                tokens.shape[0], -1
            )
            weights = probs.to(tokens.dtype)
            aux = probs.sum() * 0.0
        aux = aux + config.router_z_loss_coef * router_z_loss(logits.float())
        mixed = self.expert_pool(tokens, indices, weights)
        output = torch.zeros_like(hidden)
        output[valid] = self.task_norm(tokens + mixed)
        batch, frames = frame_mask.shape
        slots = indices.shape[-1]
        full_indices = torch.full(
            (batch, frames, slots), -1, dtype=torch.long, device=hidden.device
        )
        full_weights = torch.zeros(batch, frames, slots, dtype=weights.dtype, device=hidden.device)
        full_indices[valid] = indices
        full_weights[valid] = weights
        return output, full_indices, full_weights, aux

    # -- forward ------------------------------------------------------------------------------

    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        clean_values: torch.Tensor | None = None,
        dimensions: torch.Tensor | None = None,
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
            dimensions: dimensional targets ``(batch, len(config.dimension_names))``.
            masked_frames: bool ``(batch, frames)``: frames the adapter replaces by its mask
                embedding (adapter pre-training only).
            output_task_representations: also return each task's frame representation (before
                the experts' heads), for distillation and analysis.
        """
        config = self.config
        lengths = self._check_inputs(input_values, attention_mask, labels, clean_values)
        sample_mask = sample_mask_for(lengths, input_values.shape[-1], input_values.dtype)
        normalized, noisy, scale = normalize_waveforms(input_values, sample_mask)
        hidden_states, frame_lengths = run_backbone(
            self.backbone, normalized if config.normalize_input else noisy, lengths
        )
        frame_mask = sample_mask_for(frame_lengths, hidden_states.shape[2], torch.long)

        representations: dict[str, torch.Tensor] = {}
        routing_indices: dict[str, torch.Tensor] = {}
        routing_weights: dict[str, torch.Tensor] = {}
        aux_loss = None
        layer_weights = self.integration.layer_weights()
        if config.routing == "shared":
            integrated = self._integrate(hidden_states, 0, frame_mask, masked_frames)
            shared = self.task_norm(integrated + self.shared_projection(integrated))
            shared = shared * frame_mask[..., None].to(shared.dtype)
            representations = {task: shared for task in config.tasks}
            weights_per_task = {task: layer_weights[0] for task in config.tasks}
        else:
            weights_per_task = {}
            for group, task in enumerate(config.tasks):
                integrated = self._integrate(hidden_states, group, frame_mask, masked_frames)
                rep, idx, wts, aux = self._route(task, integrated, frame_mask)
                representations[task] = rep
                routing_indices[task] = idx
                routing_weights[task] = wts
                weights_per_task[task] = layer_weights[group]
                aux_loss = aux if aux_loss is None else aux_loss + aux

        logits = dims = enhanced = None
        ser_loss = se_loss = dim_loss = None
        if self.ser_head is not None:
            logits, dims = self.ser_head(representations["ser"], frame_mask)
            if labels is not None and logits is not None:
                weight = self.class_weights
                ser_loss = F.cross_entropy(
                    logits.float(), labels.long(), weight=None if weight is None else weight
                )
            if dimensions is not None and dims is not None:
                dim_loss = concordance_correlation_loss(dims.float(), dimensions.float())
        if self.se_head is not None:
            enhanced, enhanced_mag = self.se_head(
                representations["se"], frame_lengths, noisy, lengths, scale
            )
            enhanced = enhanced * sample_mask
            if clean_values is not None:
                clean = clean_values * sample_mask
                se_loss = self.se_head.loss(enhanced_mag, clean, lengths, scale)
                if config.se_sisdr_weight > 0:
                    se_loss = se_loss + config.se_sisdr_weight * negative_si_sdr(
                        enhanced, clean, sample_mask
                    )

        loss = None
        for part, weight in (
            (ser_loss, config.ser_loss_weight),
            (se_loss, config.se_loss_weight),
            (dim_loss, config.dimension_loss_weight),
        ):
            if part is not None:
                loss = weight * part if loss is None else loss + weight * part
        if loss is not None and aux_loss is not None:
            loss = loss + aux_loss

        return MeritOutput(
            loss=loss,
            ser_loss=ser_loss,
            se_loss=se_loss,
            dimension_loss=dim_loss,
            aux_loss=aux_loss,
            logits=logits,
            dimensions=dims,
            enhanced_waveform=enhanced,
            routing_indices=routing_indices or None,
            routing_weights=routing_weights or None,
            frame_mask=frame_mask,
            layer_weights=weights_per_task,
            task_representations=representations if output_task_representations else None,
        )


MeritConfig.register_for_auto_class()
MeritModel.register_for_auto_class("AutoModel")

__all__ = [
    "MeritModel",
    "MeritOutput",
    "MeritPreTrainedModel",
    "load_balancing_loss",
    "router_z_loss",
    "concordance_correlation_loss",
]
