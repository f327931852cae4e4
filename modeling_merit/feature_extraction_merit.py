"""Feature extractor of Sparse MERIT models: checks and pads raw mono audio.

Loaded on its own by ``trust_remote_code`` (imports only numpy, which transformers requires,
and transformers).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from transformers import SequenceFeatureExtractor
from transformers.feature_extraction_utils import BatchFeature
from transformers.utils import logging

logger = logging.get_logger(__name__)


class MeritFeatureExtractor(SequenceFeatureExtractor):
    """Turns raw mono waveforms into padded ``input_values`` and an ``attention_mask``.

    It does not normalise: the model normalises internally for its backbone while the
    enhancement head works on the audio as given, so enhanced output keeps the input's level.
    It refuses input that would give a silently wrong answer: another sampling rate,
    multi-channel arrays, empty or non-finite audio. Resampling and down-mixing belong to the
    loading step (``merit.audio.load_audio`` or the pipeline), where the source rate is known.
    """

    model_input_names = ["input_values", "attention_mask"]

    def __init__(
        self,
        feature_size: int = 1,
        sampling_rate: int = 16000,
        padding_value: float = 0.0,
        return_attention_mask: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            feature_size=feature_size,
            sampling_rate=sampling_rate,
            padding_value=padding_value,
            return_attention_mask=return_attention_mask,
            **kwargs,
        )

    def _as_waveforms(self, raw_speech: Any) -> list[np.ndarray]:
        if isinstance(raw_speech, np.ndarray) and raw_speech.ndim == 2:
            items = list(raw_speech)
        elif (
            isinstance(raw_speech, (list, tuple)) and raw_speech and not np.isscalar(raw_speech[0])
        ):
            items = list(raw_speech)
        else:
            items = [raw_speech]
        waveforms = []
        for index, item in enumerate(items):
            if hasattr(item, "detach"):  # torch tensor, without importing torch here
                item = item.detach().cpu().numpy()
            array = np.asarray(item, dtype=np.float32)
            if array.ndim != 1:
                raise ValueError(
                    f"Audio {index} has shape {array.shape}: expected a mono waveform (1-D). "
                    "Mix multi-channel audio down to mono before feature extraction."
                )
            if array.size == 0:
                raise ValueError(f"Audio {index} is empty: no samples.")
            if not np.isfinite(array).all():
                raise ValueError(f"Audio {index} contains NaN or infinite samples.")
            waveforms.append(array)
        if not waveforms:
            raise ValueError("No audio was given.")
        return waveforms

    def __call__(
        self,
        raw_speech: np.ndarray | list[float] | list[np.ndarray],
        sampling_rate: int | None = None,
        padding: bool | str = True,
        max_length: int | None = None,
        truncation: bool = False,
        pad_to_multiple_of: int | None = None,
        return_attention_mask: bool | None = None,
        return_tensors: str | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        """Check and pad one waveform or a batch of waveforms (mono, ``self.sampling_rate``)."""
        if sampling_rate is None:
            logger.warning(
                "Pass `sampling_rate` to MeritFeatureExtractor: audio at another rate would give "
                "silently wrong predictions."
            )
        elif int(sampling_rate) != self.sampling_rate:
            raise ValueError(
                f"Audio sampled at {sampling_rate} Hz, but this model expects "
                f"{self.sampling_rate} Hz: resample first (merit.audio.prepare_waveform or "
                "torchaudio.functional.resample)."
            )
        waveforms = self._as_waveforms(raw_speech)
        encoded = BatchFeature({"input_values": waveforms})
        padded = self.pad(
            encoded,
            padding=padding,
            max_length=max_length,
            truncation=truncation,
            pad_to_multiple_of=pad_to_multiple_of,
            return_attention_mask=(
                self.return_attention_mask
                if return_attention_mask is None
                else return_attention_mask
            ),
            return_tensors=return_tensors,
        )
        return padded


MeritFeatureExtractor.register_for_auto_class("AutoFeatureExtractor")

__all__ = ["MeritFeatureExtractor"]
