"""The audio-classification pipeline a saved MERIT model carries and registers.

``pipeline("audio-classification", model=<folder or Hub id>, trust_remote_code=True)`` finds
this class through the config's ``custom_pipelines`` (written by ``MeritModel.save_pretrained``).
It differs from transformers' stock pipeline where that one fails on MERIT models or on common
machines:

- files and bytes are read with ``soundfile`` when it is installed, else with the standard
  library's ``wave`` (PCM WAV), never through an ``ffmpeg`` binary; any rate and channel count
  is resampled and mixed down;
- only the emotion logits leave the model, so ``batch_size > 1`` unbatches cleanly (MERIT's
  output also carries a 0-d ``aux_loss`` and per-task dicts), and padding is masked, so batched
  scores equal one-by-one scores;
- long input is scored in equal overlapping chunks (as ``merit.inference.analyze`` does), so
  memory does not grow quadratically with the length;
- silence and clips under :data:`MIN_SPEECH_SECONDS` get ``[{"label": None, "score": None,
  "reason": ...}]`` instead of a confident emotion;
- an enhancement-only model is refused with a message pointing at what it can do.

Imports torch, transformers, numpy and its sibling files only (``soundfile`` if present).
"""

from __future__ import annotations

import io
import math
import wave
from typing import Any

import numpy as np
import torch
from transformers import AudioClassificationPipeline

from .audio_merit import mix_down, plan_chunks, speech_absence

__all__ = ["PIPELINE_ENTRY", "MeritAudioClassificationPipeline", "read_audio_bytes"]

#: The config's ``custom_pipelines`` value that makes ``pipeline()`` pick this class.
PIPELINE_ENTRY: dict[str, Any] = {
    "audio-classification": {
        "impl": "pipeline_merit.MeritAudioClassificationPipeline",
        "pt": ["AutoModelForAudioClassification"],
        "type": "audio",
    }
}

#: ``speech_absence`` answers as small integers, so they travel through batching as a tensor.
_REASONS = (None, "no speech", "too short")


def read_audio_bytes(data: bytes) -> tuple[np.ndarray, int]:
    """``(samples, channels)`` float32 and the rate of an encoded file, without ffmpeg.

    ``soundfile`` reads WAV, FLAC, OGG and MP3; without it, PCM WAV is read by ``wave``.
    """
    try:
        import soundfile
    except ImportError:
        soundfile = None
    if soundfile is not None:
        try:
            array, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
        except (soundfile.SoundFileError, RuntimeError) as err:
            raise ValueError(f"Cannot read the audio ({err}).") from err
        return array, int(rate)
    try:
        with wave.open(io.BytesIO(data)) as handle:
            width, channels = handle.getsampwidth(), handle.getnchannels()
            rate, raw = handle.getframerate(), handle.readframes(handle.getnframes())
    except (wave.Error, EOFError) as err:
        raise ValueError(
            f"Cannot read the audio ({err}); without the soundfile package only PCM WAV is "
            "read (pip install soundfile for FLAC, OGG and MP3)."
        ) from err
    if width == 3:  # 24-bit: widen to 32-bit little-endian
        raw = b"".join(b"\0" + raw[i : i + 3] for i in range(0, len(raw), 3))
        width = 4
    dtype = {1: np.uint8, 2: np.int16, 4: np.int32}[width]
    samples = np.frombuffer(raw, dtype=dtype).astype(np.float32)
    samples = (samples - 128.0) / 128.0 if width == 1 else samples / float(2 ** (8 * width - 1))
    return samples.reshape(-1, channels), rate


def _mono(array: np.ndarray) -> np.ndarray:
    """Mixed-down, checked float32 audio (as ``merit.audio.prepare_waveform`` mixes down)."""
    array = mix_down(np.asarray(array, dtype=np.float32))
    if array.size == 0:
        raise ValueError("The audio is empty (0 samples).")
    if not np.isfinite(array).all():
        raise ValueError("The audio contains NaN or infinite samples.")
    return np.ascontiguousarray(array)


class MeritAudioClassificationPipeline(AudioClassificationPipeline):
    """Emotion scores for files, bytes or arrays of any length, rate and channel count.

    Extra call arguments: ``chunk_seconds`` (default 10) and ``overlap_seconds`` (default 1)
    set the chunking of long input; the file's scores are the chunks' probabilities weighted
    by the share of the file each chunk speaks for.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        config = self.model.config
        if not getattr(config, "has_emotion_head", True):
            raise ValueError(
                "This MERIT model has no emotion head (enhancement only): audio-classification "
                "has nothing to classify. Call the model directly (its `enhanced_waveform`) or "
                "merit.inference.analyze for enhanced audio."
            )

    def check_model_type(self, supported_models: Any) -> None:
        """MERIT is a remote-code model outside transformers' audio-classification mapping."""

    def _sanitize_parameters(
        self,
        top_k: int | None = None,
        function_to_apply: str | None = None,
        chunk_seconds: float | None = None,
        overlap_seconds: float | None = None,
        **kwargs: Any,
    ) -> tuple[dict, dict, dict]:
        if function_to_apply not in (None, "softmax"):
            raise ValueError(
                "MERIT scores are class probabilities (softmax); function_to_apply="
                f"{function_to_apply!r} is not supported."
            )
        preprocess, _, postprocess = super()._sanitize_parameters(
            top_k=top_k, function_to_apply=function_to_apply, **kwargs
        )
        forward: dict[str, Any] = {}
        if chunk_seconds is not None:
            if not math.isfinite(chunk_seconds) or chunk_seconds <= 0:
                raise ValueError(f"chunk_seconds must be a positive number, got {chunk_seconds}.")
            forward["chunk_seconds"] = float(chunk_seconds)
        if overlap_seconds is not None:
            if not math.isfinite(overlap_seconds) or overlap_seconds < 0:
                raise ValueError(f"overlap_seconds must be >= 0, got {overlap_seconds}.")
            forward["overlap_seconds"] = float(overlap_seconds)
        return preprocess, forward, postprocess

    def preprocess(self, inputs: Any) -> dict[str, torch.Tensor]:
        rate = int(self.feature_extractor.sampling_rate)
        if isinstance(inputs, str):
            if inputs.startswith(("http://", "https://")):
                from huggingface_hub.utils import httpx

                inputs = httpx.get(inputs, follow_redirects=True).content
            else:
                with open(inputs, "rb") as handle:
                    inputs = handle.read()
        if isinstance(inputs, (bytes, bytearray)):
            array, file_rate = read_audio_bytes(bytes(inputs))
            inputs = {"raw": array, "sampling_rate": file_rate}
        if isinstance(inputs, torch.Tensor):
            inputs = inputs.detach().cpu().numpy()
        if isinstance(inputs, dict) and ("raw" in inputs or "array" in inputs):
            raw = inputs.get("raw", inputs.get("array"))
            if isinstance(raw, torch.Tensor):
                raw = raw.detach().cpu().numpy()
            inputs = {"raw": _mono(raw), "sampling_rate": inputs.get("sampling_rate")}
        elif isinstance(inputs, np.ndarray):
            inputs = _mono(inputs)
        processed = super().preprocess(inputs)  # resampling and features, as transformers does
        values = processed["input_values"][0].numpy()
        reason = speech_absence(values, rate)
        processed["speech_absence"] = torch.tensor([_REASONS.index(reason)])
        return processed

    def _forward(
        self,
        model_inputs: dict[str, torch.Tensor],
        chunk_seconds: float = 10.0,
        overlap_seconds: float = 1.0,
    ) -> dict[str, torch.Tensor]:
        """Per row: chunk-weighted class probabilities (as log-probabilities, so the stock
        softmax in ``postprocess`` gives them back), plus the silence code."""
        absence = model_inputs["speech_absence"]
        values = model_inputs["input_values"]
        mask = model_inputs.get("attention_mask")
        lengths = (
            mask.sum(-1).tolist() if mask is not None else [values.shape[-1]] * values.shape[0]
        )
        rate = int(self.feature_extractor.sampling_rate)
        chunk = max(int(round(chunk_seconds * rate)), int(self.model.min_input_samples))
        overlap = min(int(round(overlap_seconds * rate)), chunk - 1)
        probabilities = torch.zeros(values.shape[0], self.model.config.num_labels)
        short = [b for b, n in enumerate(lengths) if n <= chunk and not absence[b]]
        if short:  # one padded forward pass for all rows that fit in a chunk
            batch = {"input_values": values[short]}
            if mask is not None:
                width = max(lengths[b] for b in short)
                batch = {
                    "input_values": values[short, :width],
                    "attention_mask": mask[short, :width],
                }
            probabilities[short] = self._probabilities(**batch)
        for b, n in enumerate(lengths):
            if n > chunk and not absence[b]:
                plan = plan_chunks(n, chunk, overlap)
                pieces = torch.stack([values[b, s : s + plan.length] for s in plan.starts])
                shares = torch.tensor(np.diff(plan.bounds), dtype=torch.float32)
                chunk_probs = torch.cat([self._probabilities(p) for p in pieces.split(4)])
                probabilities[b] = (shares / shares.sum()) @ chunk_probs
        return {"logits": probabilities.clamp_min(1e-12).log(), "speech_absence": absence}

    def _probabilities(
        self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        device = self.model.device
        output = self.model(
            input_values=input_values.to(device),
            attention_mask=None if attention_mask is None else attention_mask.to(device),
        )
        return output.logits.float().softmax(-1).cpu()

    def postprocess(
        self, model_outputs: dict[str, torch.Tensor], top_k: int = 5, function_to_apply: Any = None
    ) -> list[dict[str, Any]]:
        reason = _REASONS[int(model_outputs["speech_absence"][0])]
        if reason is not None:
            return [{"label": None, "score": None, "reason": reason}]
        logits = model_outputs["logits"][0]
        scores, ids = logits.softmax(-1).topk(top_k)
        labels = self.model.config.id2label
        return [
            {"score": float(s), "label": labels[int(i)]}
            for s, i in zip(scores.tolist(), ids.tolist(), strict=True)
        ]
