"""Export a MERIT model to ONNX for runtimes without PyTorch.

The graph takes ``input_values`` ``(batch, samples)`` only, with dynamic batch and length axes,
and no ``attention_mask``: every row must be real audio of the same length (at least the model's
minimum input, 400 samples for WavLM-style encoders). That is deliberate: a padded batch takes a
per-utterance Python loop for group-normalised backbones (WavLM-base) and for Whisper's log-mel
(normalised by each utterance's own maximum), which a traced graph cannot hold. :class:`OnnxMerit`
runs an exported graph with the checks the graph cannot make (non-finite samples, rows under
the minimum length, a malformed mask) and takes padded batches with an ``attention_mask``,
running each group of equal valid length as one batch, so its outputs equal the PyTorch model's
on the same padded batch. Outputs, in this order and only when the model has them: ``logits``
``(batch, num_labels)``, ``dimensions`` ``(batch, len(dimension_names))`` and
``enhanced_waveform`` ``(batch, samples)``. The file's metadata records the sampling rate, the
minimum input and the label names.

Two things in the PyTorch model do not trace: sparse expert dispatch (data-dependent Python
loop; switched off with :meth:`MeritModel.set_expert_dispatch`, same numbers) and the complex
STFT/inverse FFT of the enhancement head (ONNX has no complex tensors). For the export the head
is swapped for :class:`DFTEnhancementHead`, which computes the same transform with real
convolutions against DFT bases; the model is restored afterwards.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from modeling_merit import MeritModel
from modeling_merit.heads_merit import MeritSEHead

__all__ = ["DFTEnhancementHead", "OnnxMerit", "export_onnx", "exportable", "onnx_output_names"]


class DFTEnhancementHead(nn.Module):
    """The enhancement head of a MERIT model with STFT and inverse STFT as real convolutions.

    It reuses the wrapped head's mask network, interpolation and settings, so only the
    transforms differ: a centred, zero-padded STFT is ``conv1d`` with windowed cosine and sine
    kernels, and ``irfft`` + windowed overlap-add is one ``conv_transpose1d``. Both are exact
    re-expressions (float rounding aside) of what :class:`MeritSEHead` does.
    """

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head
        n_fft, win = head.n_fft, head.win_length
        left = (n_fft - win) // 2
        window = F.pad(head.window(torch.empty(0)), (left, n_fft - win - left))
        bins = n_fft // 2 + 1
        angle = (
            2 * math.pi * torch.arange(bins, dtype=torch.float64)[:, None] * torch.arange(n_fft)
        ) / n_fft
        cos, sin = torch.cos(angle), torch.sin(angle)
        window64 = window.double()
        # Analysis: X[k, t] = sum_n w[n] x[t*hop + n] exp(-2j*pi*k*n/N).
        analysis = torch.cat([cos * window64, -sin * window64])[:, None, :]
        # Synthesis: irfft counts every bin but DC and Nyquist twice; the imaginary parts of
        # those two bins are ignored, which their sine rows (all zeros) already do.
        weight = torch.full((bins, 1), 2.0, dtype=torch.float64)
        weight[0] = 1.0
        if n_fft % 2 == 0:
            weight[-1] = 1.0
        synthesis = torch.cat([weight * cos, -weight * sin]) * window64 / n_fft
        self.register_buffer("analysis", analysis.float(), persistent=False)
        self.register_buffer("synthesis", synthesis[:, None, :].float(), persistent=False)
        self.register_buffer("envelope", window.pow(2)[None, None, :], persistent=False)

    def stft(self, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Real and imaginary parts ``(batch, bins, frames)`` of ``MeritSEHead.stft``."""
        pad = self.head.n_fft // 2
        padded = F.pad(waveform[:, None, :], (pad, pad))
        spec = F.conv1d(padded, self.analysis, stride=self.head.hop_length)
        bins = self.head.n_fft // 2 + 1
        return spec[:, :bins], spec[:, bins:]

    def istft(
        self, real: torch.Tensor, imag: torch.Tensor, lengths: torch.Tensor, total: torch.Tensor
    ) -> torch.Tensor:
        """``MeritSEHead.istft``: overlap-add of each utterance's own frames, window-normalised."""
        hop = self.head.hop_length
        frames = real.shape[-1]
        valid = self.head.valid_stft_frames(lengths, frames).to(real.dtype)[:, None, :]
        spec = torch.cat([real, imag], 1) * valid
        signal = F.conv_transpose1d(spec, self.synthesis, stride=hop)[:, 0]
        norm = F.conv_transpose1d(valid, self.envelope, stride=hop)[:, 0]
        signal = torch.where(norm > 1e-10, signal / norm.clamp_min(1e-10), torch.zeros_like(signal))
        pad = self.head.n_fft // 2
        return signal[:, pad : pad + total]

    def forward(
        self,
        hidden: torch.Tensor,
        frame_lengths: torch.Tensor,
        noisy: torch.Tensor,
        sample_lengths: torch.Tensor,
        scale: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        real, imag = self.stft(noisy)
        magnitude = torch.sqrt(real.pow(2) + imag.pow(2)) / scale[:, None, None]
        mask = self.head.predict_mask(hidden, frame_lengths, magnitude)
        enhanced = self.istft(real * mask, imag * mask, sample_lengths, noisy.shape[-1])
        return enhanced, magnitude * mask


def onnx_output_names(model: MeritModel) -> list[str]:
    """Names of the graph outputs for this model, in order (see the module docstring)."""
    return list(model.config.heads)


class _OnnxGraph(nn.Module):
    """Tuple-returning view of the model: exporters need plain tensors, not a ModelOutput."""

    def __init__(self, model: MeritModel):
        super().__init__()
        self.model = model
        self.names = onnx_output_names(model)

    def forward(self, input_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        output = self.model(input_values=input_values)
        return tuple(getattr(output, name) for name in self.names)


@contextlib.contextmanager
def exportable(model: MeritModel) -> Iterator[MeritModel]:
    """Temporarily make ``model`` traceable: static expert compute, DFT enhancement head, eval.

    Everything is restored on exit, also after an error, so a model can be exported in the
    middle of a session and used on as before.
    """
    dispatch = model.mixture.dispatch
    head, training = model.se_head, model.training
    if head is not None and not isinstance(head, MeritSEHead):
        raise ValueError(
            f"ONNX export supports the 'mask_mlp' enhancement head, not {type(head).__name__} "
            f"(se_head_type={model.config.se_head_type!r}): its transforms are not re-expressed."
        )
    try:
        model.set_expert_dispatch(False)
        if head is not None:
            device = next(head.parameters()).device
            model.se_head = DFTEnhancementHead(head).to(device)
        model.eval()
        yield model
    finally:
        model.se_head = head
        model.set_expert_dispatch(dispatch)
        model.train(training)


def export_onnx(
    model: MeritModel, path: str | Path, opset: int = 17, *, example_seconds: float = 1.0
) -> Path:
    """Write ``model`` as an ONNX graph with dynamic batch and length axes; returns the path.

    Uses the TorchScript-based exporter (``dynamo=False``), which needs no ``onnxscript``.
    ``example_seconds`` sets the length of the trace input; the graph works for other lengths.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = onnx_output_names(model)
    device = next(model.parameters()).device
    samples = max(int(example_seconds * model.config.sampling_rate), int(model.min_input_samples))
    example = torch.randn(2, samples, device=device) * 0.1
    dynamic_axes = {"input_values": {0: "batch", 1: "samples"}}
    for name in names:
        dynamic_axes[name] = (
            {0: "batch", 1: "samples"} if name == "enhanced_waveform" else {0: "batch"}
        )
    with exportable(model), warnings.catch_warnings():
        # Expected: the model's input checks are constant-folded by the tracer, and the
        # TorchScript exporter is deprecated in favour of the dynamo one (needs onnxscript).
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        torch.onnx.export(
            _OnnxGraph(model),
            (example,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=["input_values"],
            output_names=names,
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )
    _write_metadata(path, model)
    return path


def _write_metadata(path: Path, model: MeritModel) -> None:
    """What a runtime needs to feed the graph correctly, stored in the ONNX file itself."""
    import onnx

    graph = onnx.load(str(path))
    config = model.config
    values = {
        "merit.sampling_rate": str(config.sampling_rate),
        "merit.min_input_samples": str(int(model.min_input_samples)),
        "merit.label_names": ",".join(config.label_names),
        "merit.dimension_names": ",".join(config.predicted_dimensions),
    }
    for key, value in values.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(graph, str(path))


class OnnxMerit:
    """An exported MERIT graph under onnxruntime, with the input checks the graph cannot make.

    ``__call__`` takes ``(batch, samples)`` float audio (or one 1-D utterance) and optionally
    an ``attention_mask`` (1 on real samples, right padding) and returns the named outputs.
    Refused with a ``ValueError``: NaN or infinite samples (the graph would return NaN
    silently), rows shorter than the model's minimum input (a cryptic Conv error otherwise)
    and masks that are not 0/1 right-padding of the input's shape.
    """

    def __init__(self, path: str | Path, providers: tuple[str, ...] = ("CPUExecutionProvider",)):
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(path), providers=list(providers))
        meta = self.session.get_modelmeta().custom_metadata_map
        self.sampling_rate = int(meta.get("merit.sampling_rate", 16000))
        self.min_input_samples = int(meta.get("merit.min_input_samples", 1))
        self.label_names = [n for n in meta.get("merit.label_names", "").split(",") if n]
        self.output_names = [output.name for output in self.session.get_outputs()]

    def _lengths(self, values: np.ndarray, attention_mask: np.ndarray | None) -> np.ndarray:
        if attention_mask is None:
            return np.full(values.shape[0], values.shape[1], dtype=np.int64)
        mask = np.asarray(attention_mask)
        if mask.shape != values.shape:
            raise ValueError(
                f"attention_mask shape {mask.shape} must equal input_values {values.shape}."
            )
        if not np.isin(mask, (0, 1)).all():
            raise ValueError("attention_mask must hold only 0 and 1.")
        lengths = mask.sum(axis=1).astype(np.int64)
        prefix = np.arange(values.shape[1])[None, :] < lengths[:, None]
        if not np.array_equal(prefix, mask.astype(bool)):
            raise ValueError("attention_mask must be 1s then 0s per row (right padding).")
        return lengths

    def __call__(
        self, input_values: np.ndarray, attention_mask: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        values = np.asarray(input_values, dtype=np.float32)
        if values.ndim == 1:
            values = values[None]
            attention_mask = None if attention_mask is None else np.asarray(attention_mask)[None]
        if values.ndim != 2 or values.shape[0] == 0:
            raise ValueError(f"input_values must be (batch, samples), got shape {values.shape}.")
        lengths = self._lengths(values, attention_mask)
        for row, length in enumerate(lengths.tolist()):
            if length < self.min_input_samples:
                raise ValueError(
                    f"row {row} has {length} samples; the model needs at least "
                    f"{self.min_input_samples} ({self.min_input_samples / self.sampling_rate:.3f}"
                    " s)."
                )
            if not np.isfinite(values[row, :length]).all():
                raise ValueError(f"row {row} contains NaN or infinite samples.")
        outputs: dict[str, np.ndarray] = {}
        for length in sorted(set(lengths.tolist())):
            rows = np.flatnonzero(lengths == length)
            results = self.session.run(None, {"input_values": values[rows, :length]})
            for name, result in zip(self.output_names, results, strict=True):
                if name not in outputs:  # padding stays zero, as the PyTorch model gives it
                    per_row = values.shape[1:] if name == "enhanced_waveform" else result.shape[1:]
                    outputs[name] = np.zeros((len(values), *per_row), dtype=result.dtype)
                if name == "enhanced_waveform":
                    outputs[name][rows, :length] = result
                else:
                    outputs[name][rows] = result
        return outputs
