"""Gradio demo: emotion, enhanced speech, spectrograms and expert routing for one recording.

The page is a thin layer over :func:`run_inference`, which takes a model and an audio input
(file path or ``(rate, array)``) and returns plain Python objects, so the same code path is
tested without a browser. Nothing is loaded at import time: tests import this module, and a
Space imports it before it knows which model to serve.

Inputs longer than :data:`MAX_SECONDS` are refused before decoding (a Space has little memory
and one request must not block the queue for long); shorter long inputs run in
:data:`CHUNK_SECONDS` chunks through :func:`merit.inference.analyze`.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from merit.audio import (
    MIN_SPEECH_SECONDS,
    SILENCE_DBFS,
    AudioError,
    audio_info,
    load_audio,
    prepare_waveform,
    speech_absence,
    write_audio,
)

if TYPE_CHECKING:
    import gradio as gr
    import pandas as pd
    from matplotlib.figure import Figure

    from merit.inference import AnalysisResult

__all__ = [
    "CHUNK_SECONDS",
    "DEFAULT_MODEL",
    "MAX_SECONDS",
    "AppOutputs",
    "DemoModel",
    "Example",
    "InputError",
    "build_demo",
    "default_examples_dir",
    "default_model_source",
    "load_demo_model",
    "main",
    "prepare_examples",
    "read_audio_input",
    "routing_figure",
    "run_inference",
    "spectrogram_figure",
]

logger = logging.getLogger("merit.app")

#: Where ``train.py`` saves its best model by default.
DEFAULT_MODEL = "outputs/merit-sparse"
#: Longest accepted recording (10 minutes), so that one visitor cannot hold a small Space's CPU
#: (and the queue behind it) for long; local use can call ``merit.inference.analyze`` directly.
MAX_SECONDS = 600.0
#: Uploads and results gradio caches: every 5 minutes, files older than 15 minutes are deleted
#: (and all of them when the server restarts), so a public Space's disk use stays bounded by
#: the last quarter hour's traffic instead of growing with every request.
CACHE_CLEANUP = (300, 900)
#: Chunk length and overlap for long recordings (see :func:`merit.inference.analyze`).
CHUNK_SECONDS = 10.0
OVERLAP_SECONDS = 1.0
#: Wider spectrogram / routing images than this are averaged down: a screen shows no more.
MAX_PLOT_COLUMNS = 1500
#: Bump when the example recipe changes so cached examples are rebuilt.
EXAMPLES_VERSION = 1
#: (emotion, noise type, SNR dB) of the one-click examples; seen and unseen noises mixed.
EXAMPLE_PLAN: tuple[tuple[str, str, float], ...] = (
    ("happy", "babble", 10.0),
    ("angry", "pink", 5.0),
    ("sad", "rumble", 5.0),
    ("neutral", "clicks", 0.0),
    ("angry", "white", 0.0),
    ("happy", "brown", 0.0),
)
_EXAMPLE_SENTENCE = "The meeting has been moved to Thursday afternoon."
_REPO_ROOT = Path(__file__).resolve().parents[1]
_MANIFEST = "examples.csv"
_MANIFEST_FIELDS = ("file_name", "emotion", "noise_type", "noise_split", "snr_db", "source")


class InputError(ValueError):
    """Audio the demo cannot analyse; the message is written for the visitor."""


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


def default_model_source() -> str:
    """``$MERIT_MODEL`` (set on the Space by ``merit.hub publish``) or the training output."""
    return os.environ.get("MERIT_MODEL") or DEFAULT_MODEL


def _missing_model_message(source: str) -> str:
    return (
        f"No trained model found at `{source}`. Train one with `make train` (or "
        "`python train.py`), then restart the app, or pass `--model <folder or Hub id>`."
    )


@dataclass
class DemoModel:
    """The model the page serves, or why there is none (shown in the page instead)."""

    source: str
    model: Any = None
    feature_extractor: Any = None
    error: str | None = None

    @property
    def ready(self) -> bool:
        return self.model is not None

    def describe(self) -> str:
        """One Markdown line about the loaded model, for the page header."""
        if not self.ready:
            return f"**Model not loaded.** {self.error}"
        config = self.model.config
        tasks = " + ".join(t.upper() for t in config.tasks)
        routing = (
            f"{config.routing} routing, {config.num_experts} experts"
            if config.routed_tasks
            else "shared layer, no experts"
        )
        backbone = config.backbone_config.model_type
        parts = [f"**Model:** `{self.source}`", tasks, routing, f"{backbone} backbone"]
        if config.label_names:
            parts.append(f"emotions: {', '.join(config.label_names)}")
        return " · ".join(parts)


def load_demo_model(source: str | None = None, device: str = "cpu") -> DemoModel:
    """Load the model for the page; a missing or broken model becomes a message, not a crash.

    The default folder not existing is the common first-run case, so it is recognised before
    ``load_model`` could mistake ``outputs/merit-sparse`` for a Hub id.
    """
    source = source or default_model_source()
    if source == DEFAULT_MODEL and not Path(source).exists():
        return DemoModel(source, error=_missing_model_message(source))
    from merit.inference import load_model

    try:
        model, feature_extractor = load_model(source, device=device)
    except (OSError, ValueError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return DemoModel(source, error=f"{message} {_missing_model_message(source)}")
    return DemoModel(source, model, feature_extractor)


# ---------------------------------------------------------------------------------------------
# Inference
# ---------------------------------------------------------------------------------------------


def _check_duration(num_samples: int, sampling_rate: int, max_seconds: float | None) -> None:
    if max_seconds is not None and sampling_rate > 0 and num_samples / sampling_rate > max_seconds:
        seconds = num_samples / sampling_rate
        raise InputError(
            f"The recording is {seconds / 60:.1f} min ({seconds:.0f} s) long; this demo accepts "
            f"up to {max_seconds / 60:g} min ({max_seconds:g} s). Trim it, or run "
            "`merit.inference.analyze` locally without a limit."
        )


def read_audio_input(
    audio: Any, target_sr: int = 16000, *, max_seconds: float | None = MAX_SECONDS
) -> np.ndarray:
    """Turn what the page sends (a file path, or ``(rate, array)``) into 16 kHz mono float32.

    The length limit is checked from the file header before decoding, so a visitor uploading
    an hour of audio gets the message at once instead of after the server has read it all.
    """
    if audio is None or (isinstance(audio, str) and not audio.strip()):
        raise InputError("No audio was given: upload a file or record with the microphone.")
    if isinstance(audio, tuple) and len(audio) == 2:
        rate, array = audio
        array = np.asarray(array)
        if array.ndim not in (1, 2):
            raise InputError(f"Expected mono or multi-channel audio, got shape {array.shape}.")
        _check_duration(max(array.shape) if array.size else 0, int(rate), max_seconds)
        try:
            waveform = prepare_waveform(array, int(rate), target_sr, name="recording")
        except AudioError as err:
            raise InputError(f"Unusable audio: {err}") from err
    elif isinstance(audio, (str, os.PathLike)):
        path = Path(audio)
        try:
            frames, rate = audio_info(path)
        except AudioError as err:
            raise InputError(
                f"Could not read '{path.name}': it is not a readable audio file "
                "(WAV, FLAC, OGG or MP3 expected)."
            ) from err
        _check_duration(frames, rate, max_seconds)
        try:
            waveform = load_audio(path, target_sr)
        except AudioError as err:
            raise InputError(f"Unusable audio: {str(err).replace(str(path), path.name)}") from err
    else:
        raise InputError(f"Unsupported audio input of type {type(audio).__name__}.")
    reason = speech_absence(waveform, target_sr)
    if reason == "too short":
        raise InputError(
            f"The audio is too short ({waveform.shape[0] / target_sr:.3f} s): at least "
            f"{MIN_SPEECH_SECONDS:g} s are needed to judge emotion."
        )
    if reason == "no speech":
        raise InputError(
            f"No speech: the audio is silent or nearly so (never louder than {SILENCE_DBFS:g} "
            "dBFS over 25 ms), so there is nothing to analyse."
        )
    return waveform


def _reduce_columns(matrix: np.ndarray, max_columns: int) -> np.ndarray:
    """Average groups of rows of a ``(time, features)`` matrix down to ``max_columns`` rows."""
    steps = matrix.shape[0]
    if steps <= max_columns:
        return matrix
    edges = np.linspace(0, steps, max_columns + 1).astype(int)
    return np.add.reduceat(matrix, edges[:-1], axis=0) / np.diff(edges)[:, None]


def _log_spectrogram(waveform: np.ndarray, n_fft: int = 512, hop: int = 128) -> np.ndarray:
    """Power spectrogram ``(time, freq)`` in dB; columns averaged in the power domain."""
    import torch

    wave = torch.from_numpy(np.ascontiguousarray(waveform, dtype=np.float32))
    if wave.numel() < n_fft:
        wave = torch.nn.functional.pad(wave, (0, n_fft - wave.numel()))
    spec = torch.stft(
        wave, n_fft, hop, window=torch.hann_window(n_fft), return_complex=True, center=True
    )
    power = spec.abs().pow(2).T.numpy()
    power = _reduce_columns(power, MAX_PLOT_COLUMNS)
    return 10 * np.log10(power + 1e-10)


def spectrogram_figure(
    noisy: np.ndarray, enhanced: np.ndarray | None, sampling_rate: int
) -> Figure:
    """Noisy input above enhanced output on one colour scale, so the removed noise shows."""
    from matplotlib.figure import Figure

    panels = [("Input (noisy)", noisy)] + ([("Enhanced", enhanced)] if enhanced is not None else [])
    specs = [_log_spectrogram(wave) for _, wave in panels]
    top = max(float(s.max()) for s in specs)
    duration = len(noisy) / sampling_rate
    fig = Figure(figsize=(9, 2.3 * len(panels)), layout="constrained")
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (title, _), spec in zip(axes, panels, specs, strict=True):
        image = ax.imshow(
            spec.T,
            origin="lower",
            aspect="auto",
            cmap="magma",
            vmin=top - 80,
            vmax=top,
            extent=(0, duration, 0, sampling_rate / 2000),
        )
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("kHz")
    axes[-1].set_xlabel("time (s)")
    fig.colorbar(image, ax=list(axes), label="dB", shrink=0.9)
    return fig


def routing_figure(routing: dict[str, np.ndarray], hop_seconds: float) -> Figure | None:
    """Gate weight of every expert over time, one panel per task (``None`` without gates)."""
    if not routing:
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 1.2 + 1.6 * len(routing)), layout="constrained")
    axes = fig.subplots(len(routing), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (task, weights) in zip(axes, routing.items(), strict=True):
        frames, experts = weights.shape
        image = ax.imshow(
            _reduce_columns(weights, MAX_PLOT_COLUMNS).T,
            origin="lower",
            aspect="auto",
            cmap="viridis",
            vmin=0.0,
            vmax=1.0,
            interpolation="nearest",
            extent=(0, frames * hop_seconds, -0.5, experts - 0.5),
        )
        name = {"ser": "emotion (SER)", "se": "enhancement (SE)"}.get(task, task)
        ax.set_title(f"Expert routing: {name} gate", fontsize=10)
        ax.set_ylabel("expert")
        ax.set_yticks(range(experts))
    axes[-1].set_xlabel("time (s)")
    fig.colorbar(image, ax=list(axes), label="gate weight", shrink=0.9)
    return fig


def _timeline_table(result: AnalysisResult) -> pd.DataFrame:
    import pandas as pd

    rows = []
    for seg in result.timeline:
        row: dict[str, Any] = {
            "start (s)": round(seg.start, 2),
            "end (s)": round(seg.end, 2),
            "emotion": seg.label or "",
        }
        row.update({name: round(score, 3) for name, score in seg.scores.items()})
        row.update({name: round(value, 3) for name, value in (seg.dimensions or {}).items()})
        rows.append(row)
    return pd.DataFrame(rows)


def _summary(result: AnalysisResult) -> str:
    chunks = len(result.timeline)
    parts = []
    if result.label is not None and result.probabilities:
        parts.append(f"**Emotion: {result.label}** ({result.probabilities[result.label]:.0%})")
    elif result.probabilities is None and result.dimensions is None:
        parts.append("This model has no emotion head (enhancement only).")
    if result.dimensions:
        dims = ", ".join(f"{name} {value:+.2f}" for name, value in result.dimensions.items())
        parts.append(f"**Dimensions:** {dims}")
    parts.append(f"{result.duration:.1f} s analysed in {chunks} chunk{'s' * (chunks != 1)}")
    if result.enhanced is None:
        parts.append("no enhancement head")
    return " · ".join(parts)


@dataclass
class AppOutputs:
    """Everything the page shows for one recording (plain objects, usable without the UI)."""

    probabilities: dict[str, float] | None
    enhanced: tuple[int, np.ndarray] | None
    spectrogram: Figure
    routing: Figure | None
    timeline: pd.DataFrame
    summary: str
    result: AnalysisResult = field(repr=False)

    def as_gradio(self) -> tuple[Any, ...]:
        """Values in the order of the page's output components."""
        return (
            self.probabilities,
            self.enhanced,
            self.spectrogram,
            self.routing,
            self.timeline,
            self.summary,
        )


def run_inference(
    model: Any,
    feature_extractor: Any,
    audio: Any,
    *,
    max_seconds: float | None = MAX_SECONDS,
    chunk_seconds: float = CHUNK_SECONDS,
    overlap_seconds: float = OVERLAP_SECONDS,
    progress: bool = False,
) -> AppOutputs:
    """Analyse one recording: emotion, enhanced audio (16-bit PCM), figures and timeline.

    Raises :class:`InputError` (a ``ValueError``) with a visitor-readable message for missing,
    unreadable, empty, NaN, silent or over-long audio.
    """
    from merit.inference import analyze

    rate = int(model.config.sampling_rate)
    waveform = read_audio_input(audio, rate, max_seconds=max_seconds)
    try:
        result = analyze(
            model,
            feature_extractor,
            waveform,
            rate,
            chunk_seconds=chunk_seconds,
            overlap_seconds=overlap_seconds,
            max_seconds=max_seconds,
            progress=progress,
        )
    except ValueError as err:
        raise InputError(str(err)) from err
    enhanced = None
    if result.enhanced is not None:
        # 16-bit PCM, clipped: gradio rescales float arrays to their peak, which would hide how
        # loud the enhanced speech really is.
        pcm = np.round(np.clip(result.enhanced, -1.0, 1.0) * 32767).astype(np.int16)
        enhanced = (result.sampling_rate, pcm)
    return AppOutputs(
        probabilities=result.probabilities,
        enhanced=enhanced,
        spectrogram=spectrogram_figure(waveform, result.enhanced, rate),
        routing=routing_figure(result.routing, result.routing_hop),
        timeline=_timeline_table(result),
        summary=_summary(result),
        result=result,
    )


# ---------------------------------------------------------------------------------------------
# Examples
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    """One ready-made noisy recording for the examples table."""

    path: Path
    emotion: str
    noise_type: str
    noise_split: str
    snr_db: float
    source: str

    @property
    def label(self) -> str:
        return f"{self.emotion} · {self.noise_type} ({self.noise_split}) · {self.snr_db:g} dB"


def default_examples_dir() -> Path:
    """``$MERIT_EXAMPLES_DIR``, else ``examples/`` shipped next to ``app.py`` (the Space),
    else a cache folder."""
    env = os.environ.get("MERIT_EXAMPLES_DIR")
    if env:
        return Path(env).expanduser()
    shipped = _REPO_ROOT / "examples"
    if (shipped / _MANIFEST).is_file():
        return shipped
    return Path.home() / ".cache" / "merit" / f"app-examples-v{EXAMPLES_VERSION}"


def _read_manifest(folder: Path) -> list[Example] | None:
    table = folder / _MANIFEST
    if not table.is_file():
        return None
    with table.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    examples = [
        Example(
            folder / row["file_name"],
            row["emotion"],
            row["noise_type"],
            row["noise_split"],
            float(row["snr_db"]),
            row["source"],
        )
        for row in rows
    ]
    if not examples or not all(example.path.is_file() for example in examples):
        return None
    return examples


def _corpus_sources(corpus_dir: Path) -> tuple[dict[str, list[Path]], dict[str, tuple[Path, str]]]:
    """Test-split utterances per emotion and one noise file (with its split) per type."""
    speech: dict[str, list[Path]] = {}
    with (corpus_dir / "metadata.csv").open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row.get("split") == "test":
                speech.setdefault(row["label"], []).append(corpus_dir / row["file_name"])
    noises: dict[str, tuple[Path, str]] = {}
    table = corpus_dir / "noise" / "noise.csv"
    if table.is_file():
        with table.open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                noises.setdefault(
                    row["noise_type"], (corpus_dir / "noise" / row["file_name"], row["split"])
                )
    return {k: sorted(v) for k, v in speech.items()}, noises


def _clean_and_noise(
    emotion: str, noise_type: str, index: int, corpus_dir: Path | None, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, str, str] | None:
    """Clean speech and noise for one example: from the corpus if it has them, else
    synthesised with the corpus's eSpeak recipe (``None`` if neither is possible)."""
    if corpus_dir is not None and (corpus_dir / "metadata.csv").is_file():
        speech, noises = _corpus_sources(corpus_dir)
        if not speech.get(emotion) or noise_type not in noises:
            return None
        files = speech[emotion]
        # Spread the picks over the sorted list so different examples use different speakers.
        clean = load_audio(files[(index * len(files)) // len(EXAMPLE_PLAN)])
        noise_path, split = noises[noise_type]
        return clean, load_audio(noise_path), split, "corpus test split"
    from merit import corpus

    prosody = corpus.emotion_prosody(emotion)
    clean = corpus.synthesize(
        _EXAMPLE_SENTENCE,
        "en-us",
        rate=prosody.rate,
        pitch=prosody.pitch,
        pitch_range=prosody.pitch_range,
        volume=prosody.volume,
        seed=index,
    )
    clean = clean / max(float(np.abs(clean).max()), 1e-6) * 0.5
    noise = corpus.synthesize_noise(noise_type, len(clean), corpus.SAMPLE_RATE, rng)
    split = "seen" if noise_type in corpus.SEEN_NOISES else "unseen"
    return clean.astype(np.float32), noise, split, "synthesised"


def prepare_examples(
    folder: str | os.PathLike | None = None, *, corpus_dir: str | os.PathLike | None = None
) -> list[Example]:
    """Return the one-click examples, writing them to ``folder`` on first use.

    Each is a held-out (test-split) corpus utterance mixed with a seen or an unseen noise type
    at 0-10 dB SNR, so visitors hear conditions like those in the evaluation table. Without a
    corpus (``corpus_dir`` defaults to :func:`merit.corpus.default_corpus_dir`) the speech and
    noise are synthesised directly with the same eSpeak recipe.
    """
    folder = Path(folder) if folder is not None else default_examples_dir()
    cached = _read_manifest(folder)
    if cached is not None:
        return cached
    from merit.data import mix_at_snr

    if corpus_dir is None:
        from merit.corpus import default_corpus_dir

        corpus_dir = default_corpus_dir()
    corpus_dir = Path(corpus_dir)
    rng = np.random.default_rng(1234)
    examples = []
    for index, (emotion, noise_type, snr_db) in enumerate(EXAMPLE_PLAN):
        sources = _clean_and_noise(emotion, noise_type, index, corpus_dir, rng)
        if sources is None:
            logger.info("examples: no %s speech or %s noise in the corpus", emotion, noise_type)
            continue
        clean, noise, split, origin = sources
        noisy, _ = mix_at_snr(clean, noise, snr_db)
        path = folder / f"{index:02d}_{emotion}_{noise_type}_{snr_db:g}dB.wav"
        write_audio(path, noisy, 16000)
        examples.append(Example(path, emotion, noise_type, split, snr_db, origin))
    if not examples:
        raise RuntimeError(f"no example could be built from {corpus_dir}")
    with (folder / _MANIFEST).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(_MANIFEST_FIELDS)
        for ex in examples:
            row = (ex.path.name, ex.emotion, ex.noise_type, ex.noise_split, ex.snr_db, ex.source)
            writer.writerow(row)
    return examples


def _examples_or_none(folder: str | os.PathLike | None) -> list[Example]:
    """Examples for the page; a failure only costs the examples table, never the app."""
    try:
        return prepare_examples(folder)
    except Exception as err:  # noqa: BLE001 - any failure here must not stop the demo
        logger.warning("No examples: %s", err)
        print(f"[merit.app] examples skipped: {err}")
        return []


# ---------------------------------------------------------------------------------------------
# Page
# ---------------------------------------------------------------------------------------------

_INTRO = """# Sparse MERIT: emotion recognition and speech enhancement
Upload or record speech. One model recognises the **emotion**, returns an **enhanced**
(denoised) copy, and shows which of its **experts** each 20 ms frame was routed to.
Recordings up to {max_minutes:g} minutes are analysed in {chunk:g} s chunks, with an emotion
timeline. Emotion recognition reads how something is *said*, not how a person feels; do not use
it to make decisions about people."""


def build_demo(demo_model: DemoModel, examples: list[Example] | None = None) -> gr.Blocks:
    """The Gradio page; its ``predict`` endpoint returns what :meth:`AppOutputs.as_gradio` does."""
    import gradio as gr

    # ``progress`` is unused in the body: declaring it makes gradio show analyze's tqdm bar.
    def predict(audio: str | None, progress: gr.Progress = gr.Progress(track_tqdm=True)):
        if not demo_model.ready:
            raise gr.Error(demo_model.error or "No model loaded.", print_exception=False)
        try:
            outputs = run_inference(
                demo_model.model, demo_model.feature_extractor, audio, progress=True
            )
        except ValueError as err:
            raise gr.Error(str(err), print_exception=False) from err
        except Exception as err:
            logger.exception("inference failed")
            raise gr.Error(
                f"Inference failed ({type(err).__name__}); see the server log.",
                print_exception=False,
            ) from err
        return outputs.as_gradio()

    with gr.Blocks(
        title="Sparse MERIT demo", analytics_enabled=False, delete_cache=CACHE_CLEANUP
    ) as demo:
        gr.Markdown(_INTRO.format(max_minutes=MAX_SECONDS / 60, chunk=CHUNK_SECONDS))
        gr.Markdown(demo_model.describe(), elem_id="model-status")
        with gr.Row():
            with gr.Column(scale=1) as input_column:
                audio_in = gr.Audio(
                    sources=["upload", "microphone"],
                    type="filepath",
                    label="Speech (upload or record)",
                    elem_id="audio-input",
                )
                button = gr.Button("Analyse", variant="primary", elem_id="analyse")
            with gr.Column(scale=1):
                label_out = gr.Label(num_top_classes=4, label="Emotion", elem_id="emotion")
                audio_out = gr.Audio(
                    label="Enhanced speech",
                    type="numpy",
                    interactive=False,
                    buttons=["download"],
                    elem_id="enhanced",
                )
                summary_out = gr.Markdown(elem_id="summary")
        spectrogram_out = gr.Plot(label="Spectrograms", format="png", elem_id="spectrograms")
        routing_out = gr.Plot(label="Expert routing", format="png", elem_id="routing")
        timeline_out = gr.Dataframe(
            label="Emotion timeline (one row per chunk)", interactive=False, elem_id="timeline"
        )
        outputs = [label_out, audio_out, spectrogram_out, routing_out, timeline_out, summary_out]
        button.click(predict, inputs=audio_in, outputs=outputs, api_name="predict")
        if examples:
            with input_column:  # next to the input, so trying one needs no scrolling
                gr.Examples(
                    examples=[[str(ex.path)] for ex in examples],
                    inputs=audio_in,
                    outputs=outputs,
                    fn=predict,
                    run_on_click=True,
                    cache_examples=False,
                    example_labels=[ex.label for ex in examples],
                    label="Examples: held-out speech + noise (seen in training or unseen), SNR",
                )
    return demo


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python app.py", description="Sparse MERIT Gradio demo (emotion + enhancement)."
    )
    parser.add_argument(
        "--model",
        default=None,
        help=f"model folder or Hub id (default: $MERIT_MODEL or {DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--host",
        default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        help="interface to listen on (default 127.0.0.1; a Space sets 0.0.0.0)",
    )
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860"))
    )
    parser.add_argument("--device", default="cpu", help="torch device for the model")
    parser.add_argument("--examples-dir", default=None, help="where example clips are cached")
    parser.add_argument("--no-examples", action="store_true", help="no examples table")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Load the model, build the page and serve it until interrupted."""
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    demo_model = load_demo_model(args.model, device=args.device)
    if demo_model.ready:
        print(f"[merit.app] serving {demo_model.source}")
    else:
        print(f"[merit.app] {demo_model.error}")
    examples = [] if args.no_examples else _examples_or_none(args.examples_dir)
    demo = build_demo(demo_model, examples)
    allowed = sorted({str(ex.path.parent) for ex in examples})
    demo.queue(default_concurrency_limit=1).launch(
        server_name=args.host,
        server_port=args.port,
        allowed_paths=allowed,
        max_file_size="200mb",
        footer_links=["api"],
    )
