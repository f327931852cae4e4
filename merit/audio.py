"""Audio reading and writing: the one place where waveforms enter and leave the package.

Everything that touches audio (datasets, noise banks, inference, the app) goes through these
functions so that mono mix-down, resampling and the checks for broken input behave the same way
everywhere. ``soundfile`` does the I/O because torchaudio 2.9+ has no audio backends and
``datasets`` cannot decode audio without torchcodec/FFmpeg.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

# The silence / too-short gate lives with the model code, so the pipeline a saved model carries
# (``pipeline_merit``) answers such input exactly as the package does.
from modeling_merit.audio_merit import MIN_SPEECH_SECONDS, SILENCE_DBFS, mix_down, speech_absence

__all__ = [
    "AUDIO_EXTENSIONS",
    "MIN_SPEECH_SECONDS",
    "SILENCE_DBFS",
    "AudioError",
    "AudioWarning",
    "audio_info",
    "speech_absence",
    "check_waveform",
    "load_audio",
    "prepare_waveform",
    "write_audio",
]

#: File suffixes treated as audio when scanning folders (all readable by libsndfile >= 1.1).
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")

#: What :func:`load_audio` accepts: a path, raw encoded bytes, or a ``datasets`` audio entry
#: (``{"path", "bytes"}`` undecoded, or ``{"array", "sampling_rate"}`` decoded).
AudioSource = str | os.PathLike | bytes | Mapping[str, Any]


class AudioError(ValueError):
    """Unreadable, corrupt, empty or non-finite audio; the message names the file."""


class AudioWarning(UserWarning):
    """Audio that could be read but not as its file describes it (e.g. a truncated WAV)."""


#: Bytes per sample of the uncompressed subtypes: a file of these cannot hold more samples than
#: its size allows, whatever its header claims.
_SAMPLE_BYTES = {
    "PCM_S8": 1, "PCM_U8": 1, "ULAW": 1, "ALAW": 1, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4,
    "FLOAT": 4, "DOUBLE": 8,
}  # fmt: skip

#: Compressed audio (FLAC, OGG, MP3) of digital silence packs a few hundred samples per byte;
#: a header promising far more than this is lying (a 32 KB file "holding" hours of audio).
_MAX_SAMPLES_PER_BYTE = 2000


def _wav_declared_data_bytes(path: Path) -> tuple[int, int] | None:
    """``(declared, available)`` bytes of a RIFF/WAVE file's ``data`` chunk, else ``None``."""
    with path.open("rb") as handle:
        head = handle.read(1 << 16)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    offset = 12
    while offset + 8 <= len(head):
        chunk, size = (
            head[offset : offset + 4],
            int.from_bytes(head[offset + 4 : offset + 8], "little"),
        )
        if chunk == b"data":
            return size, path.stat().st_size - offset - 8
        offset += 8 + size + (size & 1)
    return None


def _check_declared_length(path: Path, info: Any, name: str) -> None:
    """Refuse a header that promises more audio than the file can hold; warn on truncation."""
    size = max(1, path.stat().st_size)
    samples = int(info.frames) * max(1, int(info.channels))
    uncompressed = info.format in ("WAV", "WAVEX", "W64", "RF64", "AIFF", "AU", "RAW")
    per_sample = _SAMPLE_BYTES.get(info.subtype) if uncompressed else None
    if per_sample is not None:
        plausible = samples * per_sample <= size
    else:
        plausible = samples <= size * _MAX_SAMPLES_PER_BYTE
    if not plausible:
        raise AudioError(
            f"{name}: the header claims {info.frames / max(1, info.samplerate):.1f} s of audio, "
            f"more than a {size}-byte file can hold; the file is corrupt"
        )
    declared = _wav_declared_data_bytes(path) if info.format == "WAV" else None
    if declared is not None and 0 < declared[1] < declared[0] < 0xFFFFFFFF:
        block = (per_sample or 1) * max(1, int(info.channels)) * max(1, int(info.samplerate))
        warnings.warn(
            f"{name}: truncated WAV: its header announces {declared[0] / block:.2f} s, the file "
            f"holds {declared[1] / block:.2f} s; analysing what is there",
            AudioWarning,
            stacklevel=4,
        )


def _describe(source: Any) -> str:
    """Return a human-readable name for an audio source, for error messages."""
    if isinstance(source, Mapping):
        return str(source.get("path") or "<audio bytes>")
    if isinstance(source, (bytes, bytearray)):
        return "<audio bytes>"
    return str(source)


def _open_target(source: AudioSource) -> tuple[Any, str]:
    """Resolve a source to something ``soundfile`` can open, plus its name for messages."""
    name = _describe(source)
    if isinstance(source, Mapping):
        if source.get("bytes"):
            return io.BytesIO(source["bytes"]), name
        if source.get("path"):
            source = source["path"]
        else:
            raise AudioError(f"{name}: audio entry has neither 'bytes' nor 'path'")
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise AudioError(f"{name}: empty byte string")
        return io.BytesIO(source), name
    path = Path(source)
    if not path.is_file():
        raise AudioError(f"{name}: audio file not found")
    return path, name


def audio_info(source: AudioSource) -> tuple[int, int]:
    """Return ``(num_frames, sampling_rate)`` without decoding, so callers can read a segment."""
    target, name = _open_target(source)
    info = _info(target, name)
    return int(info.frames), int(info.samplerate)


def _info(target: Any, name: str) -> Any:
    """``soundfile`` info, with the file's size checked against what its header claims."""
    try:
        info = sf.info(target)
    except (sf.SoundFileError, RuntimeError) as err:
        raise AudioError(f"{name}: cannot read audio ({err})") from err
    if isinstance(target, Path):
        _check_declared_length(target, info, name)
    return info


def load_audio(
    source: AudioSource, target_sr: int = 16000, *, start: int = 0, stop: int | None = None
) -> np.ndarray:
    """Read audio as float32 mono at ``target_sr``.

    ``start``/``stop`` select a segment in the file's own sample frames (before resampling), so
    a long noise recording can be sampled without decoding all of it. A decoded ``datasets``
    entry (``{"array", "sampling_rate"}``) is accepted too (whole, no segment) and goes through
    the same checks. An open-ended read first checks the header against the file's size (a
    lying header would otherwise be decoded in full); a read bounded by ``stop`` cannot run
    away, and its caller has sized it with :func:`audio_info`, which makes that check.
    """
    if isinstance(source, Mapping) and source.get("array") is not None:
        if start or stop is not None:
            raise ValueError("start/stop apply to encoded audio only, not decoded arrays")
        return prepare_waveform(
            source["array"], source["sampling_rate"], target_sr, name=_describe(source)
        )
    target, name = _open_target(source)
    if isinstance(target, Path) and stop is None:
        _info(target, name)
    try:
        data, sr = sf.read(target, start=start, stop=stop, dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError) as err:
        raise AudioError(f"{name}: cannot read audio ({err})") from err
    # soundfile returns (frames, channels); the mean is the usual mono mix-down.
    return _finish(data.mean(axis=1), sr, target_sr, name)


def check_waveform(array: np.ndarray | torch.Tensor, name: str = "waveform") -> np.ndarray:
    """Return ``array`` as float32, rejecting empty and non-finite audio.

    Empty or NaN/inf audio would silently poison losses and metrics downstream, so it stops
    here with the name of the culprit. Integer PCM (e.g. gradio's int16 arrays) is scaled to
    [-1, 1].
    """
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    if np.issubdtype(array.dtype, np.signedinteger):
        array = array / float(2 ** (8 * array.itemsize - 1))
    elif np.issubdtype(array.dtype, np.unsignedinteger):
        half = float(2 ** (8 * array.itemsize - 1))
        array = (array - half) / half
    elif not np.issubdtype(array.dtype, np.floating):
        raise AudioError(f"{name}: unsupported sample type {array.dtype}")
    array = array.astype(np.float32, copy=False)
    if array.size == 0:
        raise AudioError(f"{name}: audio is empty (0 samples)")
    if not np.isfinite(array).all():
        raise AudioError(f"{name}: audio contains NaN or infinite samples")
    return array


def _finish(mono: np.ndarray, sr: int, target_sr: int, name: str) -> np.ndarray:
    """Check a mono signal and resample it; shared by file and in-memory inputs."""
    mono = check_waveform(mono, name)
    if int(sr) <= 0 or int(target_sr) <= 0:
        raise AudioError(f"{name}: invalid sampling rate {sr} -> {target_sr}")
    if int(sr) != int(target_sr):
        mono = AF.resample(torch.from_numpy(np.ascontiguousarray(mono)), int(sr), target_sr).numpy()
    return np.ascontiguousarray(mono, dtype=np.float32)


def prepare_waveform(
    array: np.ndarray | torch.Tensor,
    sampling_rate: int,
    target_sr: int = 16000,
    *,
    name: str = "waveform",
) -> np.ndarray:
    """Turn an in-memory waveform into float32 mono at ``target_sr``.

    2-D input may be channels-first or channels-last (see
    :func:`modeling_merit.audio_merit.mix_down`). Integer PCM is scaled to [-1, 1].
    """
    array = check_waveform(array, name)
    try:
        array = mix_down(array)
    except ValueError as err:
        raise AudioError(f"{name}: {err}") from err
    return _finish(array, sampling_rate, target_sr, name)


def write_audio(path: str | os.PathLike, array: np.ndarray | torch.Tensor, sr: int) -> None:
    """Write 16-bit PCM WAV, clipping to [-1, 1] first.

    libsndfile does not clip by default, so an out-of-range float would wrap around to the
    opposite sign in int16; clipping keeps the damage to a flat top instead.
    """
    name = str(path)
    data = check_waveform(array, name)
    if data.ndim not in (1, 2):
        raise AudioError(f"{name}: expected (samples,) or (samples, channels), got {data.shape}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(data, -1.0, 1.0), int(sr), subtype="PCM_16")
