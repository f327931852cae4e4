"""Task heads: emotion (pooling + classifier / regressor) and enhancement (spectral mask).

Loaded by ``trust_remote_code``: imports only torch and sibling files.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_merit import MeritConfig

__all__ = [
    "SER_HEADS",
    "SE_HEADS",
    "AttentiveStatisticsPooling",
    "MeritBLSTMSEHead",
    "ReleaseAttentivePooling",
    "ReleaseSERHead",
    "STFTMaskHead",
    "MeritSEHead",
    "MeritSERHead",
    "build_heads",
]


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
        scores = scores.masked_fill(~frame_mask, float("-inf"))
        alpha = scores.softmax(-1).unsqueeze(-1)
        mean = (alpha * hidden).sum(1)
        var = (alpha * hidden.pow(2)).sum(1) - mean.pow(2)
        return torch.cat([mean, var.clamp_min(1e-6).sqrt()], dim=-1)


class ReleaseAttentivePooling(nn.Module):
    """The authors' attentive statistics pooling: scores ``tanh(W x) . a`` with a square ``W``
    and an attention vector ``a``, the standard deviation clamped at 1e-5 inside the root."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.sap_linear = nn.Linear(hidden_size, hidden_size)
        self.attention = nn.Parameter(torch.randn(hidden_size, 1) * hidden_size**-0.5)

    def forward(self, hidden: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        scores = (torch.tanh(self.sap_linear(hidden)) @ self.attention).squeeze(-1)
        alpha = scores.masked_fill(~frame_mask, float("-inf")).softmax(-1).unsqueeze(-1)
        mean = (alpha * hidden).sum(1)
        var = (alpha * hidden.pow(2)).sum(1) - mean.pow(2)
        return torch.cat([mean, var.clamp_min(1e-5).sqrt()], dim=-1)


def _regressor(config: MeritConfig) -> nn.Module | None:
    """The dimensional head on pooled statistics (``None`` without ``dimension_names``)."""
    if not config.has_dimension_head:
        return None
    size = config.hidden_size
    return nn.Sequential(
        nn.Linear(2 * size, size), nn.ReLU(), nn.Linear(size, len(config.dimension_names))
    )


class MeritSERHead(nn.Module):
    """Emotion head: attentive statistics pooling, categorical classifier, optional dimensions.

    ``release=True`` (``ser_head_type="release"``): the authors' pooling and their classifier,
    Dropout 0.5, Linear, LayerNorm, ReLU, Dropout 0.5, Linear.
    """

    def __init__(self, config: MeritConfig, release: bool = False):
        super().__init__()
        size = config.hidden_size
        self.pooling = (
            ReleaseAttentivePooling(size) if release else AttentiveStatisticsPooling(size)
        )
        classifier = None
        if config.has_emotion_head and release:
            classifier = nn.Sequential(
                nn.Dropout(0.5),
                nn.Linear(2 * size, size),
                nn.LayerNorm(size),
                nn.ReLU(),
                nn.Dropout(0.5),
                nn.Linear(size, config.num_labels),
            )
        elif config.has_emotion_head:
            classifier = nn.Sequential(
                nn.Linear(2 * size, size),
                nn.ReLU(),
                nn.Dropout(config.expert_dropout),
                nn.Linear(size, config.num_labels),
            )
        self.classifier = classifier
        self.regressor = _regressor(config)

    def forward(
        self, hidden: torch.Tensor, frame_mask: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Emotion logits and dimensional predictions (``None`` for a head the model lacks)."""
        pooled = self.pooling(hidden, frame_mask)
        logits = self.classifier(pooled) if self.classifier is not None else None
        dims = self.regressor(pooled) if self.regressor is not None else None
        return logits, dims


class STFTMaskHead(nn.Module):
    """What every enhancement head shares: the STFT, the valid frames, the overlap-add.

    Zero-padded centred STFT and an inverse over each utterance's own frames, so a padded batch
    gives the same audio as one-by-one processing.
    """

    def __init__(self, config: MeritConfig, frame_offset: float, frame_hop: int):
        super().__init__()
        self.n_fft = config.n_fft
        self.hop_length = config.hop_length
        self.win_length = config.win_length
        self.window_fn = (
            torch.hamming_window if config.stft_window == "hamming" else torch.hann_window
        )
        self.frame_offset = frame_offset
        self.frame_hop = frame_hop

    def window(self, reference: torch.Tensor) -> torch.Tensor:
        """Window built on demand: a non-persistent buffer would come back uninitialised
        from ``from_pretrained`` (weights are materialised from the checkpoint only)."""
        return self.window_fn(self.win_length, device=reference.device, dtype=reference.dtype)

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

    def valid_stft_frames(self, sample_lengths: torch.Tensor, frames: int) -> torch.Tensor:
        """``(B, T)`` bool: the STFT frames whose centre lies inside each utterance."""
        return (
            torch.arange(frames, device=sample_lengths.device)[None, :]
            <= (sample_lengths // self.hop_length)[:, None]
        )

    def overlap_add(self, chunks: torch.Tensor) -> torch.Tensor:
        """``(B, T, n_fft)`` frames summed at ``hop_length`` strides into ``(B, samples)``.

        Each frame is cut into ``ceil(n_fft / hop)`` hop-long pieces and piece ``k`` of frame
        ``t`` lands on output block ``t + k``: a few shifted additions, several times faster
        on the CPU than ``F.fold`` (col2im), which dominated the enhancement head's time.
        """
        batch, frames, size = chunks.shape
        hop = self.hop_length
        parts = -(-size // hop)
        pieces = F.pad(chunks, (0, parts * hop - size)).reshape(batch, frames, parts, hop)
        blocks = chunks.new_zeros(batch, frames + parts - 1, hop)
        for k in range(parts):
            blocks[:, k : k + frames] += pieces[:, :, k]
        return blocks.reshape(batch, -1)[:, : (frames - 1) * hop + size]

    def istft(self, spec: torch.Tensor, lengths: torch.Tensor, total: int) -> torch.Tensor:
        """Inverse STFT by overlap-add over each utterance's own frames.

        ``torch.istft`` normalises by the window envelope of *all* frames of the padded batch,
        which changes the last samples of shorter utterances; here frames past an utterance's
        end are dropped from both the signal and the envelope.
        """
        frames = spec.shape[-1]
        pad = self.n_fft // 2
        left = (self.n_fft - self.win_length) // 2
        window = F.pad(self.window(spec.real), (left, self.n_fft - self.win_length - left))
        valid = self.valid_stft_frames(lengths, frames).to(window.dtype)  # B, T
        chunks = torch.fft.irfft(spec.transpose(1, 2), n=self.n_fft, dim=-1)  # B, T, n_fft
        chunks = chunks * window * valid[..., None]
        signal = self.overlap_add(chunks)
        # The window envelope of the valid frames is the valid-frame pattern convolved with the
        # squared window at hop strides: one small transposed convolution, not a full
        # (B, T, n_fft) overlap-add.
        norm = F.conv_transpose1d(
            valid[:, None, :], window.pow(2)[None, None, :], stride=self.hop_length
        )[:, 0]
        signal = torch.where(norm > 1e-10, signal / norm.clamp_min(1e-10), torch.zeros_like(signal))
        signal = signal[:, pad : pad + total]
        if signal.shape[1] < total:
            signal = F.pad(signal, (0, total - signal.shape[1]))
        return signal


class MeritSEHead(STFTMaskHead):
    """Enhancement head: a bounded magnitude mask on the noisy STFT, noisy phase kept.

    Backbone frames (20 ms hop) are interpolated onto STFT frames by absolute time, the mask
    network also sees the noisy log-magnitude (fine spectral detail the SSL features smooth
    out), and the waveform comes back by overlap-add with each utterance's own frames only, so a
    padded batch gives the same audio as one-by-one processing.
    """

    def __init__(self, config: MeritConfig, frame_offset: float, frame_hop: int):
        super().__init__(config, frame_offset, frame_hop)
        self.compression = config.mag_compression
        self.ceiling = getattr(config, "mask_ceiling", 1.0)
        bins = config.n_fft // 2 + 1
        self.mask_net = nn.Sequential(
            nn.Linear(config.hidden_size + bins, config.hidden_size),
            nn.GELU(),
            nn.Linear(config.hidden_size, config.hidden_size),
            nn.GELU(),
        )
        self.mask_out = nn.Linear(config.hidden_size, bins)

    def reset_to_pass_through(self) -> None:
        """An untrained model should not mute its input: the mask starts near 1 (sigmoid 3)."""
        nn.init.zeros_(self.mask_out.weight)
        nn.init.constant_(self.mask_out.bias, 3.0)

    def frames_to_stft(
        self, hidden: torch.Tensor, frame_lengths: torch.Tensor, num_stft_frames: int
    ) -> torch.Tensor:
        """Linear interpolation of backbone frames onto STFT frame centres (absolute time)."""
        centres = torch.arange(num_stft_frames, device=hidden.device, dtype=hidden.dtype)
        position = (centres * self.hop_length - self.frame_offset) / self.frame_hop
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

    def predict_mask(
        self, hidden: torch.Tensor, frame_lengths: torch.Tensor, magnitude: torch.Tensor
    ) -> torch.Tensor:
        """The ``(B, F, T)`` mask for a scale-normalised noisy magnitude ``(B, F, T)``; shared
        by this head and transform-swapping exporters (``merit.onnx_export``)."""
        features = torch.log(magnitude + 1e-5).transpose(1, 2)  # B, T, F
        # The first layer sees [context, features]. Its context half is linear, and so is the
        # interpolation onto STFT frames: projecting the backbone frames first, then
        # interpolating, gives the same numbers for half the frames (50 Hz, not 100 Hz).
        first, size = self.mask_net[0], hidden.shape[-1]
        context = self.frames_to_stft(
            F.linear(hidden, first.weight[:, :size]), frame_lengths, magnitude.shape[-1]
        )
        pre = context + F.linear(features, first.weight[:, size:], first.bias)
        mask = torch.sigmoid(self.mask_out(self.mask_net[1:](pre)))
        if self.ceiling != 1.0:  # see MeritConfig.mask_ceiling
            mask = (mask * self.ceiling).clamp_max(1.0)
        return mask.transpose(1, 2)

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
        mask = self.predict_mask(hidden, frame_lengths, magnitude)
        # A real gain on a complex spectrum: scaling the (real, imaginary) pairs is the same
        # product without first promoting the mask to complex (7x faster on the CPU).
        masked = torch.view_as_complex(torch.view_as_real(spec) * mask[..., None])
        enhanced = self.istft(masked, sample_lengths, noisy.shape[-1])
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
        valid = self.valid_stft_frames(sample_lengths, target.shape[-1])
        power = self.compression
        error = (enhanced_magnitude.clamp_min(1e-8) ** power - target.clamp_min(1e-8) ** power) ** 2
        error = error.mean(1)  # over frequency: B, T
        return (error * valid).sum() / valid.sum().clamp_min(1)


class MeritBLSTMSEHead(STFTMaskHead):
    """The authors' enhancement head (from their BSSE-SE work), on log1p magnitudes.

    Noisy log1p magnitudes and the SE feature (each backbone frame repeated onto the STFT
    frames it spans, the last one repeated to the end) go through a Linear, a 2-layer
    bidirectional LSTM whose two directions are summed, and a Linear + sigmoid: a mask on the
    log1p magnitude. The waveform is ``expm1`` of the masked log1p magnitude with the noisy
    phase; the loss is L1 on log1p magnitudes. The LSTM reads packed sequences, so padding
    never reaches an utterance's frames (padded batch = one-by-one).
    """

    eps = 1e-8

    def __init__(self, config: MeritConfig, frame_offset: float, frame_hop: int):
        super().__init__(config, frame_offset, frame_hop)
        bins = config.n_fft // 2 + 1
        size = config.se_lstm_size
        self.encoder_in = nn.Linear(bins + config.hidden_size, size)
        self.blstm = nn.LSTM(size, size, num_layers=2, bidirectional=True, batch_first=True)
        self.mask_out = nn.Linear(size, bins)
        self.repeat = max(1, frame_hop // config.hop_length)

    def log_magnitude(self, spec: torch.Tensor) -> torch.Tensor:
        return torch.log1p(spec.abs() + self.eps)

    def repeat_frames(
        self, hidden: torch.Tensor, frame_lengths: torch.Tensor, num_stft_frames: int
    ) -> torch.Tensor:
        """``(B, frames, H)`` -> ``(B, T, H)``: STFT frame ``t`` takes backbone frame
        ``t // repeat``, capped at each utterance's last valid frame."""
        index = torch.arange(num_stft_frames, device=hidden.device) // self.repeat
        last = (frame_lengths - 1).clamp_min(0)[:, None]
        index = torch.minimum(index[None, :], last)
        return torch.gather(hidden, 1, index[..., None].expand(-1, -1, hidden.shape[-1]))

    def forward(
        self,
        hidden: torch.Tensor,
        frame_lengths: torch.Tensor,
        noisy: torch.Tensor,
        sample_lengths: torch.Tensor,
        scale: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The enhanced waveform and the enhanced log1p magnitude ``(B, F, T)``."""
        spec = self.stft(noisy)
        log_mag = self.log_magnitude(spec)  # B, F, T
        frames = spec.shape[-1]
        context = self.repeat_frames(hidden, frame_lengths, frames)
        features = self.encoder_in(torch.cat([log_mag.transpose(1, 2), context], -1))
        valid = self.valid_stft_frames(sample_lengths, frames).sum(-1).clamp_min(1)
        packed = nn.utils.rnn.pack_padded_sequence(
            features, valid.cpu(), batch_first=True, enforce_sorted=False
        )
        encoded, _ = self.blstm(packed)
        encoded, _ = nn.utils.rnn.pad_packed_sequence(
            encoded, batch_first=True, total_length=frames
        )
        forward_half, backward_half = encoded.chunk(2, dim=-1)
        mask = torch.sigmoid(self.mask_out(forward_half + backward_half)).transpose(1, 2)
        enhanced_log = log_mag * mask
        magnitude = torch.expm1(enhanced_log)
        phase = spec / spec.abs().clamp_min(1e-12)
        waveform = self.istft(magnitude * phase, sample_lengths, noisy.shape[-1])
        return waveform, enhanced_log

    def loss(
        self,
        enhanced_log: torch.Tensor,
        clean: torch.Tensor,
        sample_lengths: torch.Tensor,
        scale: torch.Tensor,
    ) -> torch.Tensor:
        """L1 between enhanced and clean log1p magnitudes over each utterance's valid frames."""
        target = self.log_magnitude(self.stft(clean))
        valid = self.valid_stft_frames(sample_lengths, target.shape[-1])
        error = (enhanced_log - target).abs().mean(1)  # B, T
        return (error * valid).sum() / valid.sum().clamp_min(1)


class ReleaseSERHead(MeritSERHead):
    """``ser_head_type="release"``: :class:`MeritSERHead` with the authors' parametrisation."""

    def __init__(self, config: MeritConfig):
        super().__init__(config, release=True)


SER_HEADS: dict[str, type[nn.Module]] = {
    "attentive_statistics": MeritSERHead,
    "release": ReleaseSERHead,
}
SE_HEADS: dict[str, type[nn.Module]] = {"mask_mlp": MeritSEHead, "blstm": MeritBLSTMSEHead}


def build_heads(
    config: MeritConfig, frame_offset: float, frame_hop: int
) -> tuple[nn.Module | None, nn.Module | None]:
    """The emotion and enhancement heads the config asks for (``None`` for an absent task)."""
    ser = SER_HEADS[config.ser_head_type](config) if "ser" in config.tasks else None
    se = (
        SE_HEADS[config.se_head_type](config, frame_offset, frame_hop)
        if config.has_enhancement_head
        else None
    )
    return ser, se
