"""Audio-level decisions shared by the package and the pipeline a saved model carries.

How channels are mixed down, how a long recording is cut into chunks and when audio is too
quiet or too short for an emotion estimate must be the same whether a user calls
``merit.inference.analyze``, the CLI, the demo or ``pipeline("audio-classification",
trust_remote_code=True)`` on a Hub copy, so they live here, beside the model code (numpy
only, no package imports).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = [
    "MIN_SPEECH_SECONDS",
    "SILENCE_DBFS",
    "ChunkPlan",
    "absence_reason",
    "frame_length",
    "loudest_frame_rms",
    "mix_down",
    "plan_chunks",
    "speech_absence",
]

#: Shorter than this, a clip holds at most a syllable: no emotion estimate is given for it.
MIN_SPEECH_SECONDS = 0.25

#: Audio whose loudest 25 ms stays below this level (dB re full scale) counts as silence. A
#: level gate, not a voice-activity detector: loud noise without speech still gets a label.
SILENCE_DBFS = -60.0


def mix_down(array: np.ndarray) -> np.ndarray:
    """1-D audio from 1-D, channels-first or channels-last input.

    The smaller dimension of 2-D input is the channel axis (audio has far more samples than
    channels; a square array counts as channels-first); channels are averaged.
    """
    if array.ndim == 2:
        return array.mean(axis=0 if array.shape[0] <= array.shape[1] else 1)
    if array.ndim != 1:
        raise ValueError(f"expected a 1-D or 2-D waveform, got shape {array.shape}")
    return array


def frame_length(sampling_rate: int) -> int:
    """Samples in one 25 ms level frame (frames start at sample 0 of the recording)."""
    return max(1, int(0.025 * sampling_rate))


def loudest_frame_rms(mono: np.ndarray, sampling_rate: int) -> float:
    """RMS of the loudest whole 25 ms frame (of all samples when shorter than one frame).

    Frames are aligned to the start, so a recording read in blocks whose lengths are
    multiples of :func:`frame_length` gives the same maximum block by block.
    """
    mono = np.asarray(mono, dtype=np.float32)
    if mono.size == 0:
        return 0.0
    frame = frame_length(sampling_rate)
    usable = mono.shape[0] // frame * frame
    frames = mono[:usable].reshape(-1, frame) if usable else mono[None, :]
    return float(np.sqrt(np.max(np.mean(np.square(frames, dtype=np.float64), axis=1))))


def absence_reason(
    num_samples: int,
    sampling_rate: int,
    loudest_rms: Callable[[], float],
    *,
    min_seconds: float = MIN_SPEECH_SECONDS,
    silence_dbfs: float = SILENCE_DBFS,
) -> str | None:
    """``"too short"``, ``"no speech"`` or ``None`` from a length and a loudest-frame level.

    ``loudest_rms`` is called only for audio long enough to judge: for a file it is a pass
    over the whole recording.
    """
    if num_samples < min_seconds * sampling_rate:
        return "too short"
    if loudest_rms() <= 10 ** (silence_dbfs / 20):
        return "no speech"
    return None


def speech_absence(
    mono: np.ndarray,
    sampling_rate: int,
    *,
    min_seconds: float = MIN_SPEECH_SECONDS,
    silence_dbfs: float = SILENCE_DBFS,
) -> str | None:
    """``"too short"``, ``"no speech"`` or ``None`` (go ahead) for a mono waveform.

    A classifier gives every input some confident-looking label, digital silence and a 5 ms
    click included; those answers are wrong, so the entry points answer these two cases
    explicitly instead of asking the model. Silence is judged on the mix-down, so anti-phase
    stereo (which cancels to zero) counts as silence too.
    """
    mono = np.asarray(mono, dtype=np.float32)
    return absence_reason(
        mono.shape[0],
        sampling_rate,
        lambda: loudest_frame_rms(mono, sampling_rate),
        min_seconds=min_seconds,
        silence_dbfs=silence_dbfs,
    )


@dataclass(frozen=True)
class ChunkPlan:
    """Equal-length chunks covering ``total`` samples.

    ``starts[i]`` is where chunk ``i`` begins; every chunk is ``length`` samples long, so a batch
    of chunks needs no padding. ``bounds[i]:bounds[i+1]`` is the part of the file chunk ``i``
    speaks for in the timeline (the middle of each overlap), so those parts tile the file.
    """

    total: int
    length: int
    starts: tuple[int, ...]

    @property
    def bounds(self) -> tuple[int, ...]:
        inner = [
            (nxt + start + self.length) // 2
            for start, nxt in zip(self.starts[:-1], self.starts[1:], strict=True)
        ]
        return (0, *inner, self.total)


def plan_chunks(total: int, chunk: int, overlap: int) -> ChunkPlan:
    """Spread the fewest chunks of at most ``chunk`` samples evenly over ``total`` samples.

    Equal lengths (rather than full chunks plus a short remainder) keep every chunk long enough
    for a reliable emotion estimate and let batches run without padding; neighbours overlap by
    ``overlap`` samples, give or take one from rounding.
    """
    if total <= chunk:
        return ChunkPlan(total, total, (0,))
    count = math.ceil((total - overlap) / (chunk - overlap))
    length = min(chunk, math.ceil((total + (count - 1) * overlap) / count))
    step = (total - length) / (count - 1)
    starts = tuple(round(i * step) for i in range(count))
    return ChunkPlan(total, length, starts)
