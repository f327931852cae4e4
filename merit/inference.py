"""Inference on audio of any length, rate and channel count: emotion, dimensions, enhancement.

Long recordings are cut into equal-length overlapping chunks that run through the model a few
at a time. Only what the result needs survives a batch: per-chunk scores (a few floats), the
gate weights (one small row per 20 ms frame) and the enhanced audio, which is written straight
into one preallocated output array by overlap-add with a raised-cosine cross-fade. What the
analysis holds therefore stays flat in the recording length apart from the input and output
waveforms themselves; ``benchmarks/long_audio.py`` measures that, and how much the C allocator
adds on top.
"""

from __future__ import annotations

import bisect
import ctypes
import functools
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from merit.audio import MIN_SPEECH_SECONDS, SILENCE_DBFS, prepare_waveform, speech_absence
from modeling_merit import MeritFeatureExtractor, MeritModel, MeritOutput
from modeling_merit.audio_merit import (
    ChunkPlan,
    absence_reason,
    frame_length,
    loudest_frame_rms,
    plan_chunks,
)

__all__ = [
    "AnalysisResult",
    "ChunkPlan",
    "Segment",
    "analyze",
    "analyze_file",
    "cross_fade_weights",
    "load_model",
    "plan_chunks",
]


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def _read_config_json(text: str, path: Path) -> dict:
    """The folder's or Hub repo's ``config.json`` as plain JSON: nothing of the folder runs."""
    import json

    if path.exists():
        config_file = path / "config.json"
    else:
        from huggingface_hub import hf_hub_download

        try:
            config_file = Path(hf_hub_download(text, "config.json"))
        except Exception as err:  # noqa: BLE001 - offline, no such repo, no access: one message
            raise FileNotFoundError(
                f"Model '{text}' is neither a local folder nor a Hub model that can be "
                "downloaded. Train and save one with `python train.py`, then pass its output "
                "folder."
            ) from err
    try:
        return json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"'{text}': config.json is not readable JSON ({err})") from err


def load_model(
    model_id_or_path: str, device: str | torch.device = "cpu", *, trust_remote_code: bool = False
) -> tuple[MeritModel, MeritFeatureExtractor]:
    """Load a saved MERIT model and its feature extractor, ready for inference (eval mode).

    The config is read as JSON first and anything that is not a MERIT model is refused before
    a line of its code could run. A MERIT model is then built with this package's own model
    code, not the code files the folder or Hub repo carries; ``trust_remote_code=True`` runs
    those instead (only for a source you trust).

    Raises:
        FileNotFoundError: no such folder, and not a Hub model that can be fetched (the message
            says how to create one).
        ValueError: the folder is not a saved MERIT model, or its weights do not fit its
            config (a hand-edited label list, say).
    """
    from transformers import AutoFeatureExtractor, AutoModel

    text = str(model_id_or_path)
    path = Path(text).expanduser()
    if path.exists():
        if not (path.is_dir() and (path / "config.json").is_file()):
            raise ValueError(
                f"'{text}' is not a saved model folder (no config.json); `python train.py` "
                "writes one."
            )
        text = str(path)
    model_type = _read_config_json(text, path).get("model_type")
    if model_type != "merit":
        raise ValueError(
            f"'{text}' holds a '{model_type}' model, not a MERIT model; nothing of it was run."
        )
    try:
        model = AutoModel.from_pretrained(text, trust_remote_code=trust_remote_code)
        feature_extractor = AutoFeatureExtractor.from_pretrained(
            text, trust_remote_code=trust_remote_code
        )
    except OSError as err:
        if path.exists():
            raise
        raise FileNotFoundError(f"Model '{text}' could not be downloaded: {err}") from err
    except RuntimeError as err:  # transformers' size-mismatch report
        if "mismatch" not in str(err):
            raise
        raise ValueError(
            f"'{text}': the weights do not fit its config.json (e.g. id2label lists "
            "more or fewer labels than the classifier has); restore the config the model was "
            "saved with."
        ) from err
    return model.to(device).eval(), feature_extractor


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


@dataclass
class Segment:
    """One chunk's prediction over its share of the file (seconds; shares do not overlap)."""

    start: float
    end: float
    label: str | None
    scores: dict[str, float]
    dimensions: dict[str, float] | None = None


@dataclass
class AnalysisResult:
    """Everything :func:`analyze` found in one recording.

    ``routing`` maps each routed task to a dense ``(frames, num_experts)`` matrix of gate
    weights (zero for experts a frame did not use), one row per backbone frame of the whole
    file (``routing_hop`` seconds apart, 20 ms for WavLM-style encoders). It is empty for the
    ``"shared"`` (ungated) variant. ``enhanced`` is at ``sampling_rate`` (the model's rate),
    exactly as long as the resampled input.

    ``reason`` is ``"no speech"`` or ``"too short"`` when the model was not asked at all (see
    :func:`merit.audio.speech_absence`): then ``label``, ``probabilities`` and ``dimensions``
    are ``None``, the timeline and routing are empty, and ``enhanced`` is the input unchanged.
    """

    probabilities: dict[str, float] | None
    label: str | None
    dimensions: dict[str, float] | None
    timeline: list[Segment]
    enhanced: np.ndarray | None
    sampling_rate: int
    routing: dict[str, np.ndarray]
    duration: float
    routing_hop: float = 0.02
    reason: str | None = None


# ---------------------------------------------------------------------------------------------
# Chunking and cross-fade
# ---------------------------------------------------------------------------------------------


def _ramp(n: int) -> np.ndarray:
    """Raised-cosine fade-in of ``n`` samples, sampled at half-sample offsets.

    ``ramp + ramp[::-1] == 1`` exactly (sin^2 + cos^2), and no sample is exactly 0, so the
    normalisation in :func:`cross_fade_weights` never divides by zero.
    """
    return np.sin(0.5 * np.pi * (np.arange(n) + 0.5) / n) ** 2


def cross_fade_weights(plan: ChunkPlan, index: int) -> np.ndarray:
    """Overlap-add weights of chunk ``index``: tapered over each overlap, summing to 1 per sample.

    Each chunk fades in over its overlap with the previous chunk and out over its overlap with
    the next one; dividing by the sum of the tapers of every chunk covering a sample makes the
    weights add up to exactly 1 even when rounding or a large overlap lets more than two chunks
    meet, so a constant signal passes through the seams unchanged. Only neighbours that touch
    this chunk are evaluated, so this costs O(chunk) memory whatever the file length.
    """
    length = plan.length

    def taper(j: int, lo: int, hi: int) -> np.ndarray:
        """Taper of chunk ``j`` on absolute samples ``lo:hi`` (inside chunk ``j``)."""
        start = plan.starts[j]
        values = np.ones(length, dtype=np.float64)
        if j > 0:
            fade = plan.starts[j - 1] + length - start
            if fade > 0:
                values[:fade] = _ramp(fade)
        if j + 1 < len(plan.starts):
            fade = start + length - plan.starts[j + 1]
            if fade > 0:
                values[length - fade :] *= _ramp(fade)[::-1]
        return values[lo - start : hi - start]

    start = plan.starts[index]
    own = taper(index, start, start + length)
    total = own.copy()
    first = bisect.bisect_right(plan.starts, start - length)
    last = bisect.bisect_left(plan.starts, start + length)
    for j in range(first, last):
        if j != index:
            other = plan.starts[j]
            lo, hi = max(start, other), min(start + length, other + length)
            total[lo - start : hi - start] += taper(j, lo, hi)
    return (own / total).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Analysis
# ---------------------------------------------------------------------------------------------


def _check_settings(
    chunk_seconds: float, overlap_seconds: float, batch_size: int, min_samples: int, rate: int
) -> tuple[int, int]:
    chunk = int(round(chunk_seconds * rate))
    overlap = int(round(overlap_seconds * rate))
    if chunk < min_samples:
        raise ValueError(
            f"chunk_seconds={chunk_seconds} is shorter than the model's minimum input "
            f"({min_samples} samples = {min_samples / rate:.3f} s)."
        )
    if not 0 <= overlap < chunk:
        raise ValueError(
            f"overlap_seconds must be >= 0 and smaller than chunk_seconds, got "
            f"{overlap_seconds} with chunk_seconds={chunk_seconds}."
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    return chunk, overlap


def _raw_duration(waveform: np.ndarray | torch.Tensor, sampling_rate: int) -> float:
    """Duration before any conversion, so an over-long file is refused before resampling it."""
    shape = tuple(waveform.shape)
    samples = max(shape) if len(shape) == 2 else (shape[0] if shape else 0)
    return samples / sampling_rate


def _batches(plan: ChunkPlan, batch_size: int) -> Iterator[list[int]]:
    indices = list(range(len(plan.starts)))
    for first in range(0, len(indices), batch_size):
        yield indices[first : first + batch_size]


def analyze(
    model: MeritModel,
    feature_extractor: MeritFeatureExtractor | None,
    waveform: np.ndarray | torch.Tensor,
    sampling_rate: int,
    *,
    chunk_seconds: float = 10.0,
    overlap_seconds: float = 1.0,
    max_seconds: float | None = None,
    batch_size: int = 4,
    progress: bool = False,
    min_speech_seconds: float = MIN_SPEECH_SECONDS,
    silence_dbfs: float = SILENCE_DBFS,
) -> AnalysisResult:
    """Recognise emotion (and dimensions), enhance the audio and record the routing.

    ``waveform`` may have any rate and channel count (1-D, channels-first or channels-last);
    it is mixed down and resampled to the model's rate. Audio longer than ``chunk_seconds`` is
    processed as overlapping chunks, ``batch_size`` at a time; the utterance-level scores are
    the duration-weighted mean of the chunks' scores, each chunk weighted by its timeline
    share. Audio shorter than the model's minimum input is zero-padded for the model and the
    enhanced output cropped back.

    Silence (loudest 25 ms under ``silence_dbfs``) and clips under ``min_speech_seconds`` are
    not given to the model: the result carries ``reason`` and no label (a classifier would
    name an emotion for anything, digital silence included).

    Raises:
        ValueError: empty or non-finite audio, audio longer than ``max_seconds``, or chunk
            settings the model cannot run.
    """
    rate = int(model.config.sampling_rate)
    if feature_extractor is None:
        feature_extractor = MeritFeatureExtractor(sampling_rate=rate)
    min_samples = int(model.min_input_samples)
    chunk, overlap = _check_settings(chunk_seconds, overlap_seconds, batch_size, min_samples, rate)
    if max_seconds is not None and sampling_rate > 0:
        seconds = _raw_duration(waveform, sampling_rate)
        if seconds > max_seconds:
            raise ValueError(
                f"Audio is {seconds:.1f} s long; the limit is {max_seconds:g} s (max_seconds)."
            )
    audio = prepare_waveform(waveform, sampling_rate, rate)
    reason = speech_absence(audio, rate, min_seconds=min_speech_seconds, silence_dbfs=silence_dbfs)
    enhances = model.config.has_enhancement_head
    if reason is not None:
        return _absent(model, reason, audio.shape[0], audio if enhances else None)
    sink = _ArraySink(audio.shape[0]) if enhances else None
    return _run_chunks(
        model, feature_extractor, _ArraySource(audio), chunk, overlap, batch_size, sink, progress
    )


def analyze_file(
    model: MeritModel,
    feature_extractor: MeritFeatureExtractor | None,
    path: str | Path,
    *,
    enhanced_path: str | Path | None = None,
    chunk_seconds: float = 10.0,
    overlap_seconds: float = 1.0,
    max_seconds: float | None = None,
    batch_size: int = 4,
    progress: bool = False,
    min_speech_seconds: float = MIN_SPEECH_SECONDS,
    silence_dbfs: float = SILENCE_DBFS,
) -> AnalysisResult:
    """:func:`analyze` for an audio file of any length, read and written in chunks.

    Memory does not grow with the recording: each chunk is read from the file (mixed down and
    resampled with a margin, so it matches resampling the whole file), and the enhanced audio,
    when ``enhanced_path`` is given, is cross-faded and written as 16-bit PCM WAV block by
    block (to a temporary name, renamed when complete, so a failure leaves no half file; an
    existing file is replaced). ``result.enhanced`` is ``None``: the audio is in the file.
    The length limit ``max_seconds`` is checked from the header, before anything is decoded.
    """
    rate = int(model.config.sampling_rate)
    if feature_extractor is None:
        feature_extractor = MeritFeatureExtractor(sampling_rate=rate)
    min_samples = int(model.min_input_samples)
    chunk, overlap = _check_settings(chunk_seconds, overlap_seconds, batch_size, min_samples, rate)
    source = _FileSource(Path(path), rate)
    if max_seconds is not None and source.seconds > max_seconds:
        raise ValueError(
            f"Audio is {source.seconds:.1f} s long; the limit is {max_seconds:g} s (max_seconds)."
        )
    reason = absence_reason(
        source.total,
        rate,
        source.loudest_frame_rms,
        min_seconds=min_speech_seconds,
        silence_dbfs=silence_dbfs,
    )
    sink = None
    if enhanced_path is not None and model.config.has_enhancement_head:
        sink = _WavSink(Path(enhanced_path), source.total, rate)
    try:
        if reason is not None:
            if sink is not None:  # the input passes through, as analyze() returns it
                for start in range(0, source.total, _BLOCK_SECONDS * rate):
                    stop = min(source.total, start + _BLOCK_SECONDS * rate)
                    sink.add(start, source.read(start, stop))
                    sink.flush(stop)
            result = _absent(model, reason, source.total, None)
        else:
            result = _run_chunks(
                model, feature_extractor, source, chunk, overlap, batch_size, sink, progress
            )
    except BaseException:
        if sink is not None:
            sink.abort()
        raise
    if sink is not None:
        sink.close()
    return result


#: Block length for whole-file passes (level check, pass-through copies), in seconds.
_BLOCK_SECONDS = 60


def _absent(
    model: MeritModel, reason: str, total: int, enhanced: np.ndarray | None
) -> AnalysisResult:
    """The result for audio the model is not asked about (see :func:`speech_absence`)."""
    rate = int(model.config.sampling_rate)
    return AnalysisResult(
        probabilities=None,
        label=None,
        dimensions=None,
        timeline=[],
        enhanced=enhanced,
        sampling_rate=rate,
        routing={},
        duration=total / rate,
        routing_hop=model.frame_hop / rate,
        reason=reason,
    )


def _run_chunks(
    model: MeritModel,
    feature_extractor: MeritFeatureExtractor,
    source: _ArraySource | _FileSource,
    chunk: int,
    overlap: int,
    batch_size: int,
    sink: _ArraySink | _WavSink | None,
    progress: bool,
) -> AnalysisResult:
    """The chunked analysis shared by arrays and files: the plan, batches, the collector."""
    rate = int(model.config.sampling_rate)
    total = source.total
    min_samples = int(model.min_input_samples)
    plan = plan_chunks(max(total, min_samples), chunk, overlap)
    collector = _Collector(model, plan, sink)
    device = next(model.parameters()).device

    batches = _batches(plan, batch_size)
    if progress:
        from tqdm.auto import tqdm

        count = math.ceil(len(plan.starts) / batch_size)
        batches = tqdm(batches, total=count, desc="chunks", unit="batch")
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for indices in batches:
                pieces = [
                    _padded(source.read(plan.starts[i], plan.starts[i] + plan.length), plan.length)
                    for i in indices
                ]
                inputs = feature_extractor(pieces, sampling_rate=rate, return_tensors="pt")
                collector.add(indices, model(input_values=inputs["input_values"].to(device)))
                del inputs, pieces
                if len(plan.starts) > batch_size:
                    _return_freed_memory()
    finally:
        model.train(was_training)
    return collector.result(total)


def _padded(piece: np.ndarray, length: int) -> np.ndarray:
    """Zero-pad audio shorter than the model's minimum input (the output is cropped back)."""
    return piece if piece.shape[0] >= length else np.pad(piece, (0, length - piece.shape[0]))


class _ArraySource:
    """Chunks of an in-memory waveform at the model's rate."""

    def __init__(self, audio: np.ndarray):
        self.audio, self.total = audio, int(audio.shape[0])

    def read(self, start: int, stop: int) -> np.ndarray:
        return self.audio[start:stop]


class _FileSource:
    """Chunks of an audio file at the model's rate, decoded on demand.

    A chunk is read with a margin around it, starting on a sample where the file's and the
    model's sampling grids meet, so resampling the piece gives the whole-file resampling's
    samples (the resampler's kernel spans a few source samples; the margin is 50 ms).
    """

    def __init__(self, path: Path, rate: int):
        from merit.audio import audio_info

        self.path, self.rate = path, rate
        self.frames, self.file_rate = audio_info(path)
        if self.frames == 0:
            raise ValueError(f"{path}: audio is empty (0 samples)")
        self.total = math.ceil(self.frames * rate / self.file_rate)
        common = math.gcd(rate, self.file_rate)
        self.step, self.file_step = rate // common, self.file_rate // common
        self.margin = math.ceil(0.05 * rate / self.step) * self.step
        self.seconds = self.frames / self.file_rate

    def read(self, start: int, stop: int) -> np.ndarray:
        from merit.audio import load_audio

        stop = min(stop, self.total)
        if self.file_rate == self.rate:
            return load_audio(self.path, self.rate, start=start, stop=stop)
        low = max(0, start - self.margin) // self.step * self.step
        high = -(-min(self.total, stop + self.margin) // self.step) * self.step
        file_stop = min(self.frames, high // self.step * self.file_step)
        piece = load_audio(
            self.path, self.rate, start=low // self.step * self.file_step, stop=file_stop
        )
        return piece[start - low : stop - low]

    def loudest_frame_rms(self) -> float:
        """:func:`loudest_frame_rms` of the whole resampled recording, block by block."""
        block = _BLOCK_SECONDS * self.rate // frame_length(self.rate) * frame_length(self.rate)
        return max(
            loudest_frame_rms(self.read(start, min(self.total, start + block)), self.rate)
            for start in range(0, self.total, block)
        )


class _ArraySink:
    """The enhanced waveform, cross-faded into one preallocated array of exactly ``total``
    samples (what the padded end of a short input adds is cut off as it arrives)."""

    def __init__(self, total: int):
        self.audio = np.zeros(total, dtype=np.float32)

    def add(self, start: int, samples: np.ndarray) -> None:
        stop = min(start + samples.shape[0], self.audio.shape[0])
        self.audio[start:stop] += samples[: stop - start]

    def flush(self, upto: int) -> None:
        """Samples before ``upto`` are complete (nothing to do in memory)."""

    def result(self) -> np.ndarray:
        return self.audio


class _WavSink:
    """The enhanced waveform written to a WAV file as it completes: only the samples still
    open to later chunks' cross-fades are held."""

    def __init__(self, path: Path, total: int, rate: int):
        import soundfile as sf

        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.total = path, total
        self.partial = path.with_name(path.name + ".partial")
        self.file = sf.SoundFile(
            str(self.partial), "w", samplerate=rate, channels=1, subtype="PCM_16", format="WAV"
        )
        self.written = 0
        self.pending = np.zeros(0, dtype=np.float32)

    def add(self, start: int, samples: np.ndarray) -> None:
        stop = min(start + samples.shape[0], self.total)
        needed = stop - self.written
        if needed > self.pending.shape[0]:
            self.pending = np.concatenate(
                [self.pending, np.zeros(needed - self.pending.shape[0], np.float32)]
            )
        self.pending[start - self.written : stop - self.written] += samples[: stop - start]

    def flush(self, upto: int) -> None:
        """Write out the samples before ``upto``: no later chunk reaches them."""
        count = min(upto, self.total) - self.written
        if count > 0:
            self.file.write(np.clip(self.pending[:count], -1.0, 1.0))
            self.pending = self.pending[count:].copy()
            self.written += count

    def result(self) -> None:
        return None

    def close(self) -> None:
        self.flush(self.total)
        self.file.close()
        os.replace(self.partial, self.path)

    def abort(self) -> None:
        self.file.close()
        self.partial.unlink(missing_ok=True)


def _return_freed_memory() -> None:
    """Hand the memory freed by the last batch back to the operating system (glibc only).

    glibc keeps the freed per-batch temporaries in its heaps, so after a long file the process
    would stay tens of MiB larger than it needs (3 min of audio, tiny model: +71 to +94 MiB
    left resident without this, +4 to +15 MiB with it, the 10 MiB result included), which adds
    up in a long-running app. ``malloc_trim`` releases them for well under a millisecond per
    batch. It does not lower the peak within a batch. A no-op where there is no glibc.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError, TypeError):  # not glibc (macOS, musl, Windows)
        return None


class _Collector:
    """Keeps from each batch of chunk outputs only what the result needs.

    Per chunk: its class probabilities and dimensions (a few floats). For the file: the
    enhanced waveform, cross-faded into one preallocated array as chunks arrive, and the
    file-level routing matrices. Model outputs are dropped as soon as they are folded in.
    """

    def __init__(
        self, model: MeritModel, plan: ChunkPlan, sink: _ArraySink | _WavSink | None = None
    ):
        config = model.config
        self.plan = plan
        self.rate = int(config.sampling_rate)
        self.hop = int(model.frame_hop)
        self.labels, self.dim_names = config.label_names, config.predicted_dimensions
        self.sink = sink
        frames = int(model.frame_lengths(torch.tensor(plan.total)))
        self.routing = {
            t: np.zeros((frames, config.num_experts), np.float32) for t in config.routed_tasks
        }
        # Preallocated rather than appended per batch: small long-lived arrays scattered between
        # the large per-batch temporaries keep the allocator from reusing that space.
        chunks = len(plan.starts)
        self.probs = np.zeros((chunks, len(self.labels)), np.float64)
        self.dims = np.zeros((chunks, len(self.dim_names)), np.float64)

    def add(self, indices: list[int], output: MeritOutput) -> None:
        plan, bounds = self.plan, self.plan.bounds
        if self.labels:
            self.probs[indices] = output.logits.float().softmax(-1).cpu().numpy()
        if self.dim_names:
            self.dims[indices] = output.dimensions.float().cpu().numpy()
        if self.sink is not None:
            waves = output.enhanced_waveform.float().cpu().numpy()
            for row, i in enumerate(indices):
                self.sink.add(plan.starts[i], waves[row] * cross_fade_weights(plan, i))
            following = indices[-1] + 1
            self.sink.flush(plan.starts[following] if following < len(plan.starts) else plan.total)
        for task, matrix in self.routing.items():
            _write_routing(
                matrix,
                output.routing_indices[task].cpu().numpy(),
                output.routing_weights[task].float().cpu().numpy(),
                [(plan.starts[i], bounds[i], bounds[i + 1]) for i in indices],
                self.hop,
            )

    def result(self, total: int) -> AnalysisResult:
        """The analysis of the first ``total`` samples (the rest is padding for short input)."""
        bounds, rate = self.plan.bounds, self.rate
        timeline = []
        for i in range(len(self.plan.starts)):
            scores = _named(self.labels, self.probs[i]) if self.labels else {}
            timeline.append(
                Segment(
                    start=min(bounds[i], total) / rate,
                    end=min(bounds[i + 1], total) / rate,
                    label=max(scores, key=scores.get) if scores else None,
                    scores=scores,
                    dimensions=_named(self.dim_names, self.dims[i]) if self.dim_names else None,
                )
            )
        shares = np.diff(np.asarray(bounds, dtype=np.float64))
        shares /= shares.sum()
        probabilities = label = dimensions = None
        if self.labels:
            mean = shares @ self.probs
            probabilities = _named(self.labels, mean / mean.sum())
            label = max(probabilities, key=probabilities.get)
        if self.dim_names:
            dimensions = _named(self.dim_names, shares @ self.dims)
        enhanced = self.sink.result() if self.sink is not None else None
        return AnalysisResult(
            probabilities=probabilities,
            label=label,
            dimensions=dimensions,
            timeline=timeline,
            enhanced=enhanced,
            sampling_rate=rate,
            routing=self.routing,
            duration=total / rate,
            routing_hop=self.hop / rate,
        )


def _named(names: list[str], values: np.ndarray) -> dict[str, float]:
    return dict(zip(names, map(float, values), strict=True))


def _write_routing(
    matrix: np.ndarray,
    indices: np.ndarray,
    weights: np.ndarray,
    chunks: list[tuple[int, int, int]],
    hop: int,
) -> None:
    """Scatter each chunk's top-k gate weights into the file-level ``(frames, experts)`` matrix.

    Chunk ``(start, lo, hi)`` fills the file frames whose start lies in its timeline share
    ``[lo, hi)``, taking its own frame nearest in time, so overlapping chunks never write the
    same row twice and every row is written once.
    """
    total_frames = matrix.shape[0]
    for row, (start, lo, hi) in enumerate(chunks):
        frames = np.arange(math.ceil(lo / hop), min(math.ceil(hi / hop), total_frames))
        if frames.size == 0:
            continue
        valid = int((indices[row, :, 0] >= 0).sum())
        local = np.clip(np.rint(frames - start / hop).astype(np.int64), 0, valid - 1)
        chosen = indices[row, local]  # frames, k
        matrix[frames[:, None], chosen] = weights[row, local]
