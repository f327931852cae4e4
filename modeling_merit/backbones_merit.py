"""Speech backbones MERIT builds on, one small class per family.

A family knows what the rest of the model must not guess: how to build the encoder, how to run
it on a padded batch so that every utterance gets the same hidden states as on its own, how
many frames a number of samples gives, its receptive field and hop, which modules LoRA targets
and how pretrained weights load. :func:`backbone_family` picks the class once, at construction.

Loaded by ``trust_remote_code``: imports only torch, transformers and sibling files.
"""

from __future__ import annotations

import inspect
import math
import types
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig

from .configuration_merit import backbone_frame_geometry

__all__ = [
    "BACKBONE_FAMILIES",
    "ConvSpeechBackbone",
    "SpeechBackbone",
    "WhisperEncoderBackbone",
    "WhisperLogMel",
    "backbone_family",
]


class SpeechBackbone:
    """Interface of a backbone family (a strategy object, not a module: it holds no weights).

    Attributes:
        receptive_field: samples one output frame sees.
        frame_hop: samples between output frames.
        frame_offset: sample position of the first frame's centre (frames map onto time as
            ``offset + index * hop``; the enhancement head interpolates with it).
        min_samples: the shortest input the encoder accepts.
        max_samples: the longest input (``None``: no limit).
    """

    model_types: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: PretrainedConfig):
        self.config = config
        self.receptive_field, self.frame_hop = backbone_frame_geometry(config)
        self.frame_offset = (self.receptive_field - 1) / 2
        self.min_samples = self.receptive_field
        self.max_samples: int | None = None

    def build(self) -> nn.Module:
        raise NotImplementedError

    def frame_lengths(self, sample_lengths: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def hidden_states(
        self, module: nn.Module, waveforms: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        """All hidden states ``(layers, batch, frames, size)``; padded frames hold anything."""
        raise NotImplementedError

    def freeze_feature_encoder(self, module: nn.Module) -> None:
        raise NotImplementedError

    def lora_target_regex(self, projections: tuple[str, ...]) -> str:
        """Regex over ``MeritModel`` module names matching the attention projections."""
        raise NotImplementedError

    def load_pretrained(self, name_or_path: str, **kwargs: Any) -> tuple[PretrainedConfig, dict]:
        """Config and encoder state dict of a pretrained checkpoint (Hub id or folder)."""
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------
# WavLM, wav2vec 2.0, HuBERT: convolutional waveform encoder + transformer
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


#: What the WavLM swap replaces; checked so that a transformers rename fails loudly.
_WAVLM_REPLACED = ("torch_multi_head_self_attention", ["hidden_states", "attention_mask"])


class ConvSpeechBackbone(SpeechBackbone):
    """WavLM / wav2vec 2.0 / HuBERT from ``transformers``, run on raw 16 kHz waveforms.

    Padding policy: encoders with a group-normalised conv stack (wav2vec2-base, WavLM-base)
    normalise over the padded time axis, so a padded batch would change every frame; those run
    one utterance at a time on its valid samples. Layer-normalised ones take the attention mask.
    """

    model_types = ("wavlm", "wav2vec2", "hubert")

    def build(self) -> nn.Module:
        # WavLMModel reads ``mask_feature_min_masks`` once ``mask_feature_prob > 0``, but
        # WavLMConfig does not define it (wav2vec 2.0's config does, with 0): give it that.
        if not hasattr(self.config, "mask_feature_min_masks"):
            self.config.mask_feature_min_masks = 0
        module = AutoModel.from_config(self.config)
        if self.config.model_type == "wavlm":
            self._enable_lora_on_wavlm(module)
        return module

    @staticmethod
    def _enable_lora_on_wavlm(module: nn.Module) -> None:
        name, leading = _WAVLM_REPLACED
        for layer in module.encoder.layers:
            original = getattr(layer.attention, name, None)
            params = list(inspect.signature(original).parameters) if callable(original) else []
            if params[: len(leading)] != leading or not hasattr(layer.attention, "q_proj"):
                raise RuntimeError(
                    f"transformers' WavLMAttention no longer has {name}(hidden_states, "
                    "attention_mask, ...) with q_proj/k_proj/v_proj modules; MERIT's "
                    "LoRA-capable WavLM attention must be updated for this transformers version."
                )
            setattr(
                layer.attention,
                name,
                types.MethodType(_wavlm_attention_with_projection_modules, layer.attention),
            )

    def frame_lengths(self, sample_lengths: torch.Tensor) -> torch.Tensor:
        lengths = sample_lengths.long()
        for kernel, stride in zip(self.config.conv_kernel, self.config.conv_stride, strict=True):
            lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
        return lengths

    def hidden_states(
        self, module: nn.Module, waveforms: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        padded = bool((lengths < waveforms.shape[-1]).any())
        if padded and getattr(self.config, "feat_extract_norm", "layer") == "group":
            per_utterance = []
            for row, length in zip(waveforms, lengths.tolist(), strict=True):
                states = module(row[None, :length], output_hidden_states=True).hidden_states
                per_utterance.append(torch.stack(states, 0)[:, 0])
            frames = max(s.shape[1] for s in per_utterance)
            stacked = torch.stack([F.pad(s, (0, 0, 0, frames - s.shape[1])) for s in per_utterance])
            return stacked.transpose(0, 1)
        mask = None
        if padded:
            mask = (
                torch.arange(waveforms.shape[-1], device=lengths.device) < lengths[:, None]
            ).long()
        outputs = module(waveforms, attention_mask=mask, output_hidden_states=True)
        return torch.stack(outputs.hidden_states, 0)

    def freeze_feature_encoder(self, module: nn.Module) -> None:
        module.feature_extractor._freeze_parameters()

    def lora_target_regex(self, projections: tuple[str, ...]) -> str:
        return rf".*backbone\.encoder\.layers\.\d+\.attention\.({'|'.join(projections)})"

    def load_pretrained(self, name_or_path: str, **kwargs: Any) -> tuple[PretrainedConfig, dict]:
        config = AutoConfig.from_pretrained(name_or_path, **kwargs)
        # AutoModel resolves task-head checkpoints (WavLMForXxx, keys ``wavlm.*``) to the bare
        # encoder through the base-model prefix.
        pretrained = AutoModel.from_pretrained(name_or_path, **kwargs)
        return config, pretrained.state_dict()


# ---------------------------------------------------------------------------------------------
# Whisper encoders
# ---------------------------------------------------------------------------------------------


def _hz_to_mel_slaney(freq: torch.Tensor) -> torch.Tensor:
    min_log_hz, min_log_mel, logstep = 1000.0, 15.0, 27.0 / math.log(6.4)
    mels = 3.0 * freq / 200.0
    return torch.where(
        freq >= min_log_hz,
        min_log_mel + torch.log(freq.clamp_min(1e-10) / min_log_hz) * logstep,
        mels,
    )


def _mel_to_hz_slaney(mels: torch.Tensor) -> torch.Tensor:
    min_log_hz, min_log_mel, logstep = 1000.0, 15.0, math.log(6.4) / 27.0
    freq = 200.0 * mels / 3.0
    return torch.where(
        mels >= min_log_mel, min_log_hz * torch.exp(logstep * (mels - min_log_mel)), freq
    )


def slaney_mel_filters(num_bins: int, n_fft: int, sampling_rate: int) -> torch.Tensor:
    """Triangular Slaney-normalised mel filters ``(n_fft // 2 + 1, num_bins)``, as Whisper's
    (librosa's ``mel(norm="slaney", htk=False)``), computed in float64."""
    fft_freqs = torch.linspace(0, sampling_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    mel_min = _hz_to_mel_slaney(torch.tensor(0.0, dtype=torch.float64))
    mel_max = _hz_to_mel_slaney(torch.tensor(sampling_rate / 2, dtype=torch.float64))
    mel_freqs = _mel_to_hz_slaney(
        torch.linspace(float(mel_min), float(mel_max), num_bins + 2, dtype=torch.float64)
    )
    diffs = mel_freqs[1:] - mel_freqs[:-1]
    slopes = mel_freqs[None, :] - fft_freqs[:, None]  # F, M+2
    down = -slopes[:, :-2] / diffs[:-1]
    up = slopes[:, 2:] / diffs[1:]
    filters = torch.clamp(torch.minimum(down, up), min=0.0)
    enorm = 2.0 / (mel_freqs[2 : num_bins + 2] - mel_freqs[:num_bins])
    return filters * enorm[None, :]


class WhisperLogMel(nn.Module):
    """Whisper's log-mel front end in torch, so a MERIT model on Whisper takes raw waveforms.

    Same steps as ``WhisperFeatureExtractor``: 25 ms Hann STFT every 10 ms (reflect-padded,
    last frame dropped), power, Slaney mel, ``log10``, floor at the utterance maximum minus 8,
    then ``(x + 4) / 4``. Two differences by design: the maximum is taken over each
    utterance's own frames (the extractor takes it over the 30 s padded array, which for a
    padded batch would depend on the other utterances), and each utterance is transformed on
    its own samples, so a padded batch equals one-by-one. Frames past an utterance are zero.
    """

    n_fft = 400
    hop_length = 160

    def __init__(self, num_mel_bins: int, sampling_rate: int = 16000):
        super().__init__()
        self.num_mel_bins = num_mel_bins
        self.sampling_rate = sampling_rate
        self._filters: dict[tuple, torch.Tensor] = {}

    def filters(self, reference: torch.Tensor) -> torch.Tensor:
        """Built on demand (a non-persistent buffer would come back empty from
        ``from_pretrained``, and a persistent one would make the weights depend on it)."""
        key = (reference.device, reference.dtype)
        if key not in self._filters:
            mel = slaney_mel_filters(self.num_mel_bins, self.n_fft, self.sampling_rate)
            self._filters[key] = mel.to(device=reference.device, dtype=reference.dtype)
        return self._filters[key]

    def num_frames(self, sample_lengths: torch.Tensor) -> torch.Tensor:
        return torch.div(sample_lengths.long(), self.hop_length, rounding_mode="floor")

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``(batch, samples)`` -> ``(batch, mel bins, frames)``, zero past each utterance."""
        frames = self.num_frames(lengths)
        total = max(int(frames.max()), 1)
        compute = waveforms.float()
        window = torch.hann_window(self.n_fft, device=waveforms.device, dtype=compute.dtype)
        out = compute.new_zeros(waveforms.shape[0], self.num_mel_bins, total)
        for row, (length, count) in enumerate(zip(lengths.tolist(), frames.tolist(), strict=True)):
            if count == 0:
                continue
            spec = torch.stft(
                compute[row, :length],
                self.n_fft,
                self.hop_length,
                window=window,
                center=True,
                pad_mode="reflect",
                return_complex=True,
            )[:, :-1]
            power = spec.abs().pow(2)
            mel = self.filters(power).T @ power
            log_mel = mel.clamp_min(1e-10).log10()
            log_mel = torch.maximum(log_mel, log_mel.max() - 8.0)
            out[row, :, :count] = (log_mel[:, :count] + 4.0) / 4.0
        return out.to(waveforms.dtype)


class WhisperEncoderBackbone(SpeechBackbone):
    """The encoder of a Whisper model, on the actual length instead of 30 s of padding.

    transformers' ``WhisperEncoder.forward`` insists on exactly 3000 mel frames; for a 3 s
    utterance that is 10x the compute. This runs the same modules (convolutions, sinusoidal
    positions of the first ``frames`` positions, layers, final norm) with a key-padding mask,
    which is what the encoder computes on the valid frames when it is fed that length.
    Hidden states: the embeddings and every layer's output, the last after the final norm
    (``encoder_layers + 1``, as ``output_hidden_states`` used to return them).
    """

    model_types = ("whisper",)

    def __init__(self, config: PretrainedConfig):
        super().__init__(config)
        self.front_end = WhisperLogMel(config.num_mel_bins)
        self.frame_offset = 0.0  # encoder frame t is centred on mel frame 2t, at sample 320t
        self.min_samples = WhisperLogMel.n_fft
        self.max_samples = config.max_source_positions * self.frame_hop

    def build(self) -> nn.Module:
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        config = self.config
        if getattr(config, "encoder_layerdrop", 0.0):
            config.encoder_layerdrop = 0.0
        return WhisperEncoder(config)

    def frame_lengths(self, sample_lengths: torch.Tensor) -> torch.Tensor:
        mel = self.front_end.num_frames(sample_lengths)
        return torch.div(mel + 1, 2, rounding_mode="floor")

    def hidden_states(
        self, module: nn.Module, waveforms: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        if int(lengths.max()) > self.max_samples:
            raise ValueError(
                f"Whisper encoders take at most {self.max_samples / 16000:.0f} s of audio "
                f"({self.max_samples} samples), got {int(lengths.max())}; cut long recordings "
                "into chunks (merit.inference.analyze does)."
            )
        mel = self.front_end(waveforms, lengths)
        mel_frames = self.front_end.num_frames(lengths)
        mel_valid = torch.arange(mel.shape[-1], device=mel.device)[None, :] < mel_frames[:, None]
        if module.training:
            mel = self.spec_augment(mel, mel_valid)
        weight_dtype = module.conv1.weight.dtype
        hidden = F.gelu(module.conv1(mel.to(weight_dtype)))
        # One-by-one, conv2 sees zero padding past the end: make the padded batch see the same.
        hidden = hidden * mel_valid[:, None, :].to(hidden.dtype)
        hidden = F.gelu(module.conv2(hidden)).transpose(1, 2)  # B, T, D
        frames = hidden.shape[1]
        hidden = hidden + module.embed_positions.weight[:frames].to(hidden.dtype)
        hidden = F.dropout(hidden, p=module.dropout, training=module.training)
        valid = (
            torch.arange(frames, device=hidden.device)[None, :]
            < self.frame_lengths(lengths)[:, None]
        )
        mask = None
        if not bool(valid.all()):
            blocked = torch.zeros(valid.shape, dtype=hidden.dtype, device=hidden.device)
            blocked = blocked.masked_fill(~valid, torch.finfo(hidden.dtype).min)
            mask = blocked[:, None, None, :].expand(-1, 1, frames, -1)
        states = [hidden]
        for layer in module.layers:
            hidden = layer(hidden, mask)
            if isinstance(hidden, tuple):  # older transformers return (hidden, attentions)
                hidden = hidden[0]
            states.append(hidden)
        states[-1] = module.layer_norm(hidden)
        return torch.stack(states, 0)

    def spec_augment(self, mel: torch.Tensor, mel_valid: torch.Tensor) -> torch.Tensor:
        """SpecAugment on the ``(B, mels, T)`` log-mel, as ``WhisperModel`` applies it in
        training: the Whisper config's ``apply_spec_augment``, ``mask_time_*`` and
        ``mask_feature_*`` fields, and transformers' own span sampler. Time spans fall inside
        each utterance's valid frames; masked values become 0, as in ``WhisperModel``.

        ``WhisperEncoder`` alone (what this family runs) ignores those fields, so without this
        a Whisper config asking for SpecAugment would silently train without it.
        """
        config = self.config
        if not getattr(config, "apply_spec_augment", False):
            return mel
        from transformers.models.whisper.modeling_whisper import _compute_mask_indices

        batch, bins, frames = mel.shape
        keep = torch.ones_like(mel, dtype=torch.bool)
        if config.mask_time_prob > 0 and frames > config.mask_time_length:
            spans = _compute_mask_indices(
                (batch, frames),
                mask_prob=config.mask_time_prob,
                mask_length=config.mask_time_length,
                attention_mask=mel_valid.long(),
                min_masks=config.mask_time_min_masks,
            )
            keep &= ~torch.as_tensor(spans, device=mel.device)[:, None, :]
        if config.mask_feature_prob > 0 and bins > config.mask_feature_length:
            spans = _compute_mask_indices(
                (batch, bins),
                mask_prob=config.mask_feature_prob,
                mask_length=config.mask_feature_length,
                min_masks=config.mask_feature_min_masks,
            )
            keep &= ~torch.as_tensor(spans, device=mel.device)[:, :, None]
        return mel * keep.to(mel.dtype)

    def freeze_feature_encoder(self, module: nn.Module) -> None:
        """The convolutional stem (conv1, conv2); positions are fixed sinusoids already."""
        for part in (module.conv1, module.conv2):
            part.requires_grad_(False)

    def lora_target_regex(self, projections: tuple[str, ...]) -> str:
        return rf".*backbone\.layers\.\d+\.self_attn\.({'|'.join(projections)})"

    def load_pretrained(self, name_or_path: str, **kwargs: Any) -> tuple[PretrainedConfig, dict]:
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        config = AutoConfig.from_pretrained(name_or_path, **kwargs)
        if "WhisperEncoder" in (getattr(config, "architectures", None) or []):
            # A bare encoder (an MLKD student, or the backbone of a saved MERIT model).
            return config, WhisperEncoder.from_pretrained(name_or_path, **kwargs).state_dict()
        # AutoModel gives a WhisperModel for WhisperModel, WhisperForConditionalGeneration and
        # WhisperForAudioClassification checkpoints alike; only its encoder is kept.
        pretrained = AutoModel.from_pretrained(name_or_path, **kwargs)
        return config, pretrained.encoder.state_dict()


BACKBONE_FAMILIES: dict[str, type[SpeechBackbone]] = {
    model_type: family
    for family in (ConvSpeechBackbone, WhisperEncoderBackbone)
    for model_type in family.model_types
}


def backbone_family(config: PretrainedConfig) -> SpeechBackbone:
    """The family object of a backbone config (chosen once, when a model is built)."""
    try:
        return BACKBONE_FAMILIES[config.model_type](config)
    except KeyError:
        supported = ", ".join(BACKBONE_FAMILIES)
        raise ValueError(
            f"Unsupported backbone '{config.model_type}'; supported: {supported}."
        ) from None
