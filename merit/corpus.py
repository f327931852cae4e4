"""Embedded default corpus: acted-emotion speech synthesised offline with eSpeak NG, plus noise.

Why this exists: merit must train, test and demo without any download (no Hub, no internet),
so the default corpus is generated locally and deterministically.  Emotions are "acted" by
prosody (speaking rate, pitch level, pitch range, loudness) plus a cheap spectral tilt, with
per-speaker and per-utterance random variation so that classes overlap and the task is
learnable but not trivial.  Speakers are eSpeak voice/variant combinations, split
speaker-independently into train / validation / test. Each utterance also carries
arousal / valence / dominance ratings (1-7, as MSP-Podcast annotates) derived from the prosody
it was rendered with, for the dimensional head.

eSpeak NG is driven through ``ctypes`` using the shared library and data shipped by the
``espeakng_loader`` wheel.  eSpeak keeps hidden static state between utterances (the pitch
flutter phase, the automatic gain control, libc ``rand()`` for breathy voices), so the same call
gives slightly different samples depending on what was synthesised before.  To make every
utterance byte-reproducible regardless of order, worker or process, :class:`EspeakEngine`
loads a private copy of the library afresh for each utterance (about 5 ms) and seeds both
random generators.
"""

from __future__ import annotations

import argparse
import atexit
import csv
import ctypes
import ctypes.util
import json
import os
import shutil
import tempfile
import threading
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torchaudio.functional as AF
from scipy import signal, special
from tqdm.auto import tqdm

from .audio import write_audio

__all__ = [
    "BABBLE_VOICES",
    "CORPUS_VERSION",
    "CORPUS_VOICES",
    "DIMENSIONS",
    "DIMENSION_CENTRES",
    "EMOTIONS",
    "HABIT_SWEEP_LEVEL",
    "NOISE_FILES_PER_TYPE",
    "NOISE_RMS",
    "NOISE_TYPES",
    "PROSODY",
    "PROSODY_CUES",
    "SAMPLE_RATE",
    "SEEN_NOISES",
    "SENTENCES",
    "render_speech",
    "speaker_habits",
    "SPLITS",
    "utterance_prosody",
    "UNSEEN_NOISES",
    "VALIDATION_VOICES",
    "EXTRA_TRAIN_VOICES",
    "EspeakEngine",
    "Prosody",
    "VoiceSpec",
    "build_corpus",
    "default_corpus_dir",
    "dimensional_ratings",
    "emotion_prosody",
    "habit_sweep",
    "ideal_listener_scores",
    "voice_blind_listener_scores",
    "voice_level_and_brightness",
    "VOICE_SHIFTED_CUES",
    "VOICE_OFFSET_KEYS",
    "ensure_corpus",
    "synthesize",
    "synthesize_noise",
    "validation_voices",
]

# Bump when the generation recipe changes: cached corpora with another version are rebuilt.
CORPUS_VERSION = 2
SAMPLE_RATE = 16_000
SPLITS = ("train", "validation", "test")
EMOTIONS: tuple[str, ...] = ("neutral", "happy", "sad", "angry")

# Seen noises may be used for training; unseen ones are held out to measure generalisation to
# noise types the model never heard (low-frequency rumble/brown and impulsive clicks are
# spectrally and temporally unlike everything in the seen set).
SEEN_NOISES: tuple[str, ...] = ("white", "pink", "babble", "hum")
UNSEEN_NOISES: tuple[str, ...] = ("brown", "rumble", "clicks")
NOISE_TYPES: tuple[str, ...] = SEEN_NOISES + UNSEEN_NOISES
NOISE_FILES_PER_TYPE = 2
# Noise is RMS-normalised to this level (about -26 dBFS) so that mixing at a target SNR only
# rescales it; an impulsive noise whose peaks would then exceed PEAK_LIMIT is scaled down to
# PEAK_LIMIT instead (its RMS ends up lower than NOISE_RMS).
NOISE_RMS = 0.05
PEAK_LIMIT = 0.99
BABBLE_TALKERS = 6

_DEFAULT_SENTENCES_PER_SPEAKER = 20
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_ESPEAK_CHARS_UTF8 = 1
_ESPEAK_ENDPAUSE = 0x1000
_ESPEAK_RATE, _ESPEAK_VOLUME, _ESPEAK_PITCH, _ESPEAK_RANGE = 1, 2, 3, 4
_EE_OK = 0


# --------------------------------------------------------------------------------------------
# Content: sentences, voices, prosody profiles
# --------------------------------------------------------------------------------------------

# Emotionally neutral content, so that emotion is carried by the voice only.
SENTENCES: tuple[str, ...] = (
    "The train leaves from the north platform at seven.",
    "Please put the blue folder on the second shelf.",
    "The meeting has been moved to Thursday afternoon.",
    "There are twelve chairs in the small conference room.",
    "The library opens at nine and closes at six.",
    "He parked the car next to the old bakery.",
    "The report is printed on both sides of the paper.",
    "She walked to the station along the river path.",
    "The window in the kitchen faces the garden.",
    "We usually buy bread and milk on Saturday.",
    "The package will arrive sometime next week.",
    "The museum is on the corner of the main square.",
    "They painted the fence a light shade of grey.",
    "The bus stops in front of the post office.",
    "My brother lives in a flat on the third floor.",
    "The lamp on the desk needs a new bulb.",
    "There is a map of the city on the wall.",
    "The coffee machine is next to the printer.",
    "The keys are in the drawer by the door.",
    "The forecast says it will be cloudy tomorrow.",
    "The children walk to school every morning.",
    "Turn left at the traffic lights and go straight on.",
    "The shop sells paper, pens and envelopes.",
    "The flight lands at half past four.",
    "A glass of water is on the table.",
    "The documents are stored in the grey cabinet.",
    "The bridge was built over forty years ago.",
    "Our neighbours have a garden with three apple trees.",
    "The new timetable starts at the beginning of May.",
    "The cat is sleeping on the chair by the window.",
    "We need two more boxes for the books.",
    "The road to the village goes through a forest.",
    "The computer restarts after the update is installed.",
    "The lecture covers the history of the harbour.",
    "There is a pharmacy across the street from the bank.",
    "The letter was sent on Monday morning.",
    "The stairs lead down to the basement.",
    "The recipe needs flour, sugar and two eggs.",
    "The office is closed on public holidays.",
    "The car is parked behind the building.",
    "He wrote the numbers on a piece of paper.",
    "The phone is charging on the kitchen counter.",
    "The garden gate is painted dark green.",
    "The train to the airport runs every twenty minutes.",
    "She keeps her notes in a brown notebook.",
    "The radio is playing in the other room.",
    "The hotel is a short walk from the beach.",
    "The invoice lists the date and the total amount.",
    "The clock in the hall is five minutes fast.",
    "The plates are in the cupboard above the sink.",
    "The tickets can be collected at the front desk.",
    "The river flows slowly past the old mill.",
    "The doctor's office is on the ground floor.",
    "He reads the newspaper on the way to work.",
    "The market is open every Tuesday and Friday.",
    "The blue bicycle belongs to my cousin.",
    "The printer on the second floor is out of paper.",
    "Dinner is usually served at eight o'clock.",
    "The path continues along the edge of the field.",
    "The form must be signed and returned by Friday.",
)


@dataclass(frozen=True)
class VoiceSpec:
    """An eSpeak voice (language/accent + optional variant) that plays one corpus speaker."""

    name: str  # e.g. "en-us+m3": passed to espeak_SetVoiceByName
    gender: str  # "male" | "female": used to gender-balance the speaker splits


def _male(name: str) -> VoiceSpec:
    return VoiceSpec(name, "male")


def _female(name: str) -> VoiceSpec:
    return VoiceSpec(name, "female")


# Interleaved male/female so that any prefix (num_speakers) is gender balanced.  Accents and
# variants are mixed so that speakers differ in timbre, pitch and pronunciation.
CORPUS_VOICES: tuple[VoiceSpec, ...] = (
    _male("en-us+m1"),
    _female("en-us+f1"),
    _male("en+m2"),
    _female("en+f2"),
    _male("en-GB-scotland+m3"),
    _female("en-GB-scotland+f3"),
    _male("en-029+m4"),
    _female("en-us+f4"),
    _male("en-GB-x-rp+m5"),
    _female("en-GB-x-rp+f5"),
    _male("en-US-nyc+m6"),
    _female("en-029+Annie"),
    _male("en-us+m7"),
    _female("en-us+steph"),
    _male("en+croak"),
    _female("en+linda"),
    _male("en-GB-x-gbclan+Andy"),
    _female("en-US-nyc+grandma"),
    _male("en-us+Michael"),
    _female("en-GB-x-gbclan+aunty"),
    _male("en+klatt"),
    _female("en-GB-x-gbcwmd+f3"),
    _male("en-GB-x-gbcwmd+travis"),
    _female("en-us+f2"),
)

# Talkers for the babble noise: none of them is a corpus speaker, so babble never contains the
# target speaker's voice.
BABBLE_VOICES: tuple[str, ...] = (
    "en+m8",
    "en-us+Gene",
    "en+john",
    "en-us+paul",
    "en+belinda",
    "en-us+anika",
    "en+Mike",
    "en-us+Alex",
    "en+max",
    "en-us+shelby",
    "en+ian",
    "en-GB-x-rp+grandpa",
)

# More validation voices (:func:`validation_voices`): eSpeak variants that no corpus speaker,
# babble talker or benchmarks/outside_corpus.py voice uses, 4 male and 4 female, over the
# corpus's accents.
VALIDATION_VOICES: tuple[VoiceSpec, ...] = (
    _male("en-GB-scotland+Denis"),
    _female("en+Alicia"),
    _male("en-029+Hugo"),
    _female("en-us+Andrea"),
    _male("en-US-nyc+Marco"),
    _female("en-GB-x-rp+steph2"),
    _male("en-us+david"),
    _female("en-GB-x-gbclan+steph3"),
)
# Their speaker indices (for the seeds of their habits and utterances) start here, past any
# corpus speaker's.
_VALIDATION_VOICE_INDEX = 100

# More *training* voices (``extra_train_voices``): 14 training voices are what the default
# model generalises from, and new voices are where it fails. Male ones are eSpeak variants no
# split, babble talker, validation voice or benchmarks/outside_corpus.py voice uses (variants
# whose pitch and formants copy a held-out one, such as Diogo/Hugo or Mario/Michael, left
# out). eSpeak has no unused female variant that is not a near copy of a held-out one, so the
# female ones are training speakers' variants that no held-out voice uses (f1, Annie, aunty,
# grandma) with other accents. Interleaved male/female, so any prefix is gender balanced.
EXTRA_TRAIN_VOICES: tuple[VoiceSpec, ...] = (
    _male("en+Jacky"),
    _female("en+f1"),
    _male("en-us+Lee"),
    _female("en-us+Annie"),
    _male("en-GB-scotland+Reed"),
    _female("en+aunty"),
    _male("en-029+antonio"),
    _female("en-GB-scotland+grandma"),
    _male("en-GB-x-rp+gustave"),
    _female("en-GB-x-gbcwmd+f1"),
    _male("en-US-nyc+iven"),
    _female("en-GB-x-rp+Annie"),
    _male("en-GB-x-gbclan+marcelo"),
    _female("en-US-nyc+aunty"),
    _male("en-GB-x-gbcwmd+michel"),
    _female("en-029+grandma"),
    _male("en-us+norbert"),
    _female("en-GB-x-rp+f1"),
    _male("en+sandro"),
    _female("en+Annie"),
    _male("en-029+victor"),
    _female("en-us+aunty"),
    _male("en-GB-scotland+pablo"),
    _female("en+grandma"),
    # 16 more (2026-12-06): 12 to 24 voices lifted new-voice F1 from 0.558 to 0.626 on
    # validation. Male variants with their own formant settings (not the Hugo/Diogo/Henrique/
    # miguel or Michael/Mario/robert/quincy/rob templates of held-out voices, no babble
    # talker's, no whisper or robot voice); female ones the four reused variants on the
    # accents they have not had.
    _male("en-us+benjamin"),
    _female("en-GB-scotland+f1"),
    _male("en+boris"),
    _female("en-GB-scotland+Annie"),
    _male("en-GB-x-rp+edward"),
    _female("en-GB-scotland+aunty"),
    _male("en-029+adam"),
    _female("en-us+grandma"),
    _male("en-US-nyc+pedro"),
    _female("en-029+f1"),
    _male("en-GB-x-gbclan+Nguyen"),
    _female("en-GB-x-gbclan+Annie"),
    _male("en-GB-x-gbcwmd+ed"),
    _female("en-GB-x-rp+aunty"),
    _male("en+announcer"),
    _female("en-GB-x-rp+grandma"),
)
_EXTRA_VOICE_INDEX = 200


@dataclass(frozen=True)
class Prosody:
    """eSpeak prosody settings (rate in words/min, pitch/range 0-100, volume 0-200) + tilt.

    ``tilt`` is a post-processing spectral tilt: positive brightens (tense, high vocal effort),
    negative darkens (lax, low effort).  eSpeak has no voice-quality control, so this is the
    cheapest way to give the classes a timbre cue besides prosody.
    """

    rate: float
    pitch: float
    pitch_range: float
    volume: float
    tilt: float = 0.0


# Class centres.  Happy and angry share a fast rate and raised pitch (they differ mainly in
# pitch range, loudness and tilt); neutral and sad share a low range (they differ in rate,
# pitch and loudness).  Together with the jitter below the classes overlap.
PROSODY: dict[str, Prosody] = {
    "neutral": Prosody(rate=165, pitch=48, pitch_range=40, volume=95, tilt=0.0),
    "happy": Prosody(rate=185, pitch=64, pitch_range=80, volume=110, tilt=0.15),
    "sad": Prosody(rate=135, pitch=38, pitch_range=20, volume=75, tilt=-0.4),
    "angry": Prosody(rate=195, pitch=56, pitch_range=60, volume=140, tilt=0.45),
}
# Standard deviations of the per-utterance variation around the class centre.
_UTTERANCE_JITTER = Prosody(rate=14, pitch=7, pitch_range=12, volume=14, tilt=0.12)
# Per-speaker habits (uniform half-widths): a speaker's base pitch and speaking-rate offsets.
_SPEAKER_PITCH_OFFSET = 10.0
_SPEAKER_RATE_OFFSET = 12.0
_SPEAKER_RANGE_OFFSET = 8.0
# Headroom for corpus files: eSpeak output at high volume plus a bright tilt reaches full scale,
# and clipped "angry" files would give away their class by distortion alone.
_CORPUS_GAIN = 0.5
_LIMITS = {"rate": (80, 450), "pitch": (0, 100), "pitch_range": (0, 100), "volume": (0, 200)}
_TILT_LIMIT = 0.8


def emotion_prosody(
    emotion: str,
    rng: np.random.Generator | None = None,
    *,
    pitch_offset: float = 0.0,
    rate_offset: float = 0.0,
    range_offset: float = 0.0,
) -> Prosody:
    """Prosody for one utterance: the class centre, shifted by the speaker's habits, plus
    random per-utterance variation when ``rng`` is given (``rng=None`` gives the exact centre,
    which tests and demos use to compare emotions on equal footing)."""
    if emotion not in PROSODY:
        raise ValueError(f"unknown emotion {emotion!r}; known: {sorted(PROSODY)}")
    p = PROSODY[emotion]
    p = replace(
        p,
        rate=p.rate + rate_offset,
        pitch=p.pitch + pitch_offset,
        pitch_range=p.pitch_range + range_offset,
    )
    if rng is not None:
        j = _UTTERANCE_JITTER
        p = Prosody(
            rate=p.rate + rng.normal(0, j.rate),
            pitch=p.pitch + rng.normal(0, j.pitch),
            pitch_range=p.pitch_range + rng.normal(0, j.pitch_range),
            volume=p.volume + rng.normal(0, j.volume),
            tilt=p.tilt + rng.normal(0, j.tilt),
        )
    clipped = {k: float(np.clip(getattr(p, k), *_LIMITS[k])) for k in _LIMITS}
    return Prosody(**clipped, tilt=float(np.clip(p.tilt, -_TILT_LIMIT, _TILT_LIMIT)))


#: The prosodic cues an utterance carries, in :class:`Prosody`'s order.
PROSODY_CUES: tuple[str, ...] = ("rate", "pitch", "pitch_range", "volume", "tilt")


def _habit_half_widths() -> dict[str, float]:
    return {
        "rate": _SPEAKER_RATE_OFFSET,
        "pitch": _SPEAKER_PITCH_OFFSET,
        "pitch_range": _SPEAKER_RANGE_OFFSET,
        "volume": 0.0,
        "tilt": 0.0,
    }


def _cue_log_likelihood(
    x: np.ndarray, centre: float, sigma: float, half: float, low: float, high: float
) -> np.ndarray:
    """log p(x) of one cue: a Gaussian jitter around ``centre`` convolved with a uniform
    speaker habit of half-width ``half``; at a clipping limit, the log of the mass clipped
    onto it (the corpus clips, so a value at a limit stands for everything beyond it)."""

    def below(v: float) -> float:  # P(cue <= v)
        if half == 0:
            return float(special.ndtr((v - centre) / sigma))

        def g(z: float) -> float:  # an antiderivative of the normal CDF
            return z * special.ndtr(z) + np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi)

        lo, hi = (v - centre - half) / sigma, (v - centre + half) / sigma
        return float(sigma / (2 * half) * (g(hi) - g(lo)))

    if half == 0:
        density = np.exp(-0.5 * ((x - centre) / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi))
    else:
        density = (
            special.ndtr((x - centre + half) / sigma) - special.ndtr((x - centre - half) / sigma)
        ) / (2 * half)
    value = np.where(x <= low, below(low), np.where(x >= high, 1.0 - below(high), density))
    return np.log(np.maximum(value, 1e-300))


def ideal_listener_scores(
    rows: Sequence[Mapping[str, float]],
    cues: Sequence[str] = PROSODY_CUES,
    *,
    emotions: Sequence[str] = EMOTIONS,
    habits_known: bool = False,
) -> np.ndarray:
    """Log-likelihood of each emotion for each utterance's prosody under the corpus's own
    generative model: the Bayes-optimal decision (argmax, classes equally likely) of a listener
    who hears the exact rendering parameters in ``cues`` but not who is speaking.

    No model that sees one utterance of an unseen speaker can do better on average: the audio
    is made from these parameters, the voice and the sentence, and the last two say nothing
    about the emotion (a speaker's habits are drawn apart from its voice). With
    ``habits_known`` the listener also knows each row's speaker offsets (``pitch_offset``,
    ``rate_offset``, ``range_offset``, as :func:`utterance_prosody` and :func:`habit_sweep`
    rows carry them), as a speaker-normalised system would. Returns ``(N, len(emotions))``.
    """
    unknown = set(cues) - set(PROSODY_CUES)
    if unknown or not cues:
        raise ValueError(f"cues must be a non-empty subset of {PROSODY_CUES}, got {list(cues)}")
    half = _habit_half_widths()
    offset_key = {"rate": "rate_offset", "pitch": "pitch_offset", "pitch_range": "range_offset"}
    limits = {**_LIMITS, "tilt": (-_TILT_LIMIT, _TILT_LIMIT)}
    scores = np.zeros((len(rows), len(emotions)))
    for cue in cues:
        x = np.array([float(r[cue]) for r in rows])
        if habits_known and cue in offset_key:
            shift = np.array([float(r[offset_key[cue]]) for r in rows])
            width = 0.0
        else:
            shift, width = np.zeros(len(rows)), half[cue]
        sigma = getattr(_UTTERANCE_JITTER, cue)
        low, high = limits[cue]
        for k, emotion in enumerate(emotions):
            centre = getattr(PROSODY[emotion], cue)
            # A known offset moves the centre row by row: score each row with its own centre.
            for c in np.unique(centre + shift):
                at = centre + shift == c
                scores[at, k] += _cue_log_likelihood(x[at], c, sigma, width, low, high)
    return scores


#: The cues a voice colours: eSpeak's voices differ in their own level and spectral balance,
#: so the loudness and tilt an utterance is rendered with are heard on top of its voice's.
VOICE_SHIFTED_CUES: tuple[str, ...] = ("volume", "tilt")
#: Row keys of a voice's own offsets: level in dB, brightness in tilt units.
VOICE_OFFSET_KEYS = {"volume": "voice_level_offset", "tilt": "voice_tilt_offset"}
# Brightness = band energy where the tilt acts over where it barely does (Hz).
_BRIGHTNESS_BANDS = ((100.0, 1000.0), (2000.0, 6000.0))


def voice_level_and_brightness(
    voice: str, tilt: float = 0.0, num_sentences: int = 4
) -> tuple[float, float]:
    """A voice's own level (dB over its active 20 ms frames) and brightness (dB, 2-6 kHz
    over 0.1-1 kHz) on the first ``num_sentences`` sentences rendered at the neutral class
    centre with ``tilt``: the corpus's rendering, so the voices compare on equal prosody.

    What the ideal listener of :func:`ideal_listener_scores` is not told: that a quiet or dark
    voice sounds quiet or dark in every emotion (``benchmarks/ceiling.py`` measures how much).
    """
    if not 1 <= num_sentences <= len(SENTENCES):
        raise ValueError(f"num_sentences must be in [1, {len(SENTENCES)}], got {num_sentences}")
    prosody = replace(emotion_prosody("neutral"), tilt=float(tilt))
    levels, brightness = [], []
    for text in SENTENCES[:num_sentences]:
        x = render_speech(text, voice, prosody).astype(np.float64)
        frames = x[: len(x) // 320 * 320].reshape(-1, 320)
        power = (frames**2).mean(axis=1)
        levels.append(10 * np.log10(power[power > power.max() * 1e-3].mean()))
        freqs, psd = signal.welch(x, SAMPLE_RATE, nperseg=512)
        (lo_a, lo_b), (hi_a, hi_b) = _BRIGHTNESS_BANDS
        high = psd[(freqs >= hi_a) & (freqs < hi_b)].sum()
        low = psd[(freqs >= lo_a) & (freqs < lo_b)].sum()
        brightness.append(10 * np.log10(high / low))
    return float(np.mean(levels)), float(np.mean(brightness))


def voice_blind_listener_scores(
    rows: Sequence[Mapping[str, float]],
    voice_cov: np.ndarray,
    cues: Sequence[str] = PROSODY_CUES,
    *,
    emotions: Sequence[str] = EMOTIONS,
    grid_size: int = 201,
) -> np.ndarray:
    """:func:`ideal_listener_scores` for a listener who has never heard the voice: loudness is
    heard as the volume's level plus the voice's own (``voice_level_offset``, dB) and tilt as
    the rendered tilt plus the voice's own brightness (``voice_tilt_offset``, tilt units), the
    two offsets unknown to the listener but for their spread over voices, a Gaussian with
    covariance ``voice_cov`` (2 x 2, level first). The other cues are heard exactly.

    Habit-free loudness and tilt give the corpus's ideal listener most of its lead, yet
    eSpeak's voices differ in level and brightness by more than the emotions do: this is
    what one utterance of a new voice allows when nothing else about the audio tells its
    voice's level. The listener ignores the part of the level the tilt adds (under 1.5 dB)
    and the clipping of volume and tilt (beyond 4 standard deviations of the jitter).
    """
    cues = tuple(cues)
    exact = tuple(c for c in cues if c not in VOICE_SHIFTED_CUES)
    shifted = [c for c in VOICE_SHIFTED_CUES if c in cues]
    if not shifted:
        raise ValueError(f"cues must include one of {VOICE_SHIFTED_CUES}, got {list(cues)}")
    cov = np.asarray(voice_cov, dtype=np.float64)
    if cov.shape != (2, 2) or not np.allclose(cov, cov.T) or np.linalg.eigvalsh(cov).min() <= 0:
        raise ValueError(f"voice_cov must be a 2 x 2 positive definite matrix, got {cov!r}")
    scores = (
        ideal_listener_scores(rows, exact, emotions=emotions)
        if exact
        else np.zeros((len(rows), len(emotions)))
    )
    index = [VOICE_SHIFTED_CUES.index(c) for c in shifted]
    cov = cov[np.ix_(index, index)]
    precision = np.linalg.inv(cov)
    norm = 1.0 / np.sqrt((2 * np.pi) ** len(index) * np.linalg.det(cov))
    # The grids: volume on a dB axis (the level a listener hears), tilt on its own.
    volume_db = np.linspace(20 * np.log10(20.0), 20 * np.log10(_LIMITS["volume"][1]), grid_size)
    tilt = np.linspace(-_TILT_LIMIT, _TILT_LIMIT, grid_size)
    axes = {"volume": volume_db, "tilt": tilt}
    j = _UTTERANCE_JITTER
    weights = []  # per emotion, per cue: the prior mass of each grid point
    for emotion in emotions:
        centre = PROSODY[emotion]
        per_cue = []
        for cue in shifted:
            if cue == "volume":
                v = 10 ** (volume_db / 20)
                density = (
                    np.exp(-0.5 * ((v - centre.volume) / j.volume) ** 2)
                    / (j.volume * np.sqrt(2 * np.pi))
                    * v
                    * np.log(10)
                    / 20
                )
            else:
                density = np.exp(-0.5 * ((tilt - centre.tilt) / j.tilt) ** 2) / (
                    j.tilt * np.sqrt(2 * np.pi)
                )
            per_cue.append(density * (axes[cue][1] - axes[cue][0]))
        weights.append(per_cue)

    def heard(cue: str, row: Mapping[str, float]) -> float:
        value = float(row[cue])
        if cue == "volume":
            value = 20 * np.log10(max(value, 1e-3))
        return value + float(row[VOICE_OFFSET_KEYS[cue]])

    observed = {c: np.array([heard(c, r) for r in rows]) for c in shifted}
    for i in range(len(rows)):
        d = [observed[c][i] - axes[c] for c in shifted]
        if len(d) == 1:
            kernel = norm * np.exp(-0.5 * precision[0, 0] * d[0] ** 2)
            likelihood = [w[0] @ kernel for w in weights]
        else:
            q = (
                precision[0, 0] * d[0][:, None] ** 2
                + 2 * precision[0, 1] * d[0][:, None] * d[1][None, :]
                + precision[1, 1] * d[1][None, :] ** 2
            )
            kernel = norm * np.exp(-0.5 * q)
            likelihood = [w[0] @ kernel @ w[1] for w in weights]
        scores[i] += np.log(np.maximum(likelihood, 1e-300))
    return scores


# --------------------------------------------------------------------------------------------
# eSpeak NG engine (ctypes)
# --------------------------------------------------------------------------------------------

_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class EspeakEngine:
    """Thin ctypes wrapper around libespeak-ng in synchronous mode.

    One instance per process (see :func:`_engine`); it is created lazily on first use so that
    importing this module costs nothing.  Each :meth:`synthesize` call dlopens a private copy of
    the library, initialises it, synthesises and dlcloses it again, which resets eSpeak's
    hidden static state: output then depends only on the arguments (see the module docstring).
    """

    def __init__(self) -> None:
        import espeakng_loader

        self.data_path = Path(espeakng_loader.get_data_path())
        self._variants = {p.name for p in (self.data_path / "voices" / "!v").iterdir()}
        # A private file name guarantees that nobody else in the process holds a handle on
        # "our" library, so dlclose really unloads it and the next dlopen starts fresh.
        self._tmpdir = tempfile.mkdtemp(prefix="merit-espeak-")
        atexit.register(shutil.rmtree, self._tmpdir, True)
        self._lib_path = os.path.join(self._tmpdir, "libespeak-ng-merit.so")
        shutil.copyfile(espeakng_loader.get_library_path(), self._lib_path)
        try:
            _dlclose(ctypes.CDLL(self._lib_path))
        except OSError:
            # e.g. a noexec temp dir: fall back to the wheel's file, which is just as
            # reproducible unless another module in this process keeps it loaded.
            self._lib_path = espeakng_loader.get_library_path()
        libc_name = ctypes.util.find_library("c")
        self._libc = ctypes.CDLL(libc_name) if libc_name else None
        self._chunks: list[np.ndarray] = []
        self._callback = _SYNTH_CALLBACK(self._collect)  # must outlive every synthesis
        self._lock = threading.Lock()
        self.native_rate = 0

    def _collect(self, wav, num_samples: int, _events) -> int:
        if num_samples > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        return 0  # 0 = continue synthesis

    def _load(self) -> ctypes.CDLL:
        lib = ctypes.CDLL(self._lib_path)
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.POINTER(ctypes.c_uint),
            ctypes.c_void_p,
        ]
        rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 500, str(self.data_path).encode(), 0
        )
        if rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed (data path {self.data_path})")
        self.native_rate = rate
        lib.espeak_SetSynthCallback(self._callback)
        return lib

    def check_voice(self, voice: str) -> None:
        """Reject unknown variants early: eSpeak silently ignores them and uses the default."""
        if not voice or not isinstance(voice, str):
            raise ValueError(f"voice must be a non-empty string, got {voice!r}")
        _, _, variant = voice.partition("+")
        if variant and variant not in self._variants:
            raise ValueError(f"unknown eSpeak voice variant {variant!r} in voice {voice!r}")

    def synthesize(self, text: str, voice: str, prosody: Prosody, seed: int = 0) -> np.ndarray:
        """int16 samples at :attr:`native_rate` (22050 Hz for the bundled voices)."""
        self.check_voice(voice)
        with self._lock:
            lib = self._load()
            try:
                if lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
                    raise ValueError(f"unknown eSpeak voice {voice!r}")
                for param, value in (
                    (_ESPEAK_RATE, prosody.rate),
                    (_ESPEAK_VOLUME, prosody.volume),
                    (_ESPEAK_PITCH, prosody.pitch),
                    (_ESPEAK_RANGE, prosody.pitch_range),
                ):
                    lib.espeak_SetParameter(param, int(round(value)), 0)
                seed = int(seed) % (2**31)
                if hasattr(lib, "espeak_ng_SetRandSeed"):  # eSpeak NG >= 1.52
                    lib.espeak_ng_SetRandSeed(ctypes.c_long(seed))
                if self._libc is not None:  # breathy voices draw from libc rand()
                    self._libc.srand(ctypes.c_uint(seed))
                data = text.encode("utf-8") + b"\0"
                self._chunks = []
                flags = _ESPEAK_CHARS_UTF8 | _ESPEAK_ENDPAUSE
                status = lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, flags, None, None)
                if status != _EE_OK:
                    raise RuntimeError(f"espeak_Synth failed with status {status}")
                lib.espeak_Synchronize()
                chunks, self._chunks = self._chunks, []
            finally:
                lib.espeak_Terminate()
                _dlclose(lib)
        return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)


def _dlclose(lib: ctypes.CDLL) -> None:
    """Unload ``lib`` so that its static variables are re-initialised by the next dlopen."""
    import _ctypes

    close = getattr(_ctypes, "dlclose", None) or _ctypes.FreeLibrary  # POSIX / Windows
    close(lib._handle)


_ENGINE: EspeakEngine | None = None
_ENGINE_LOCK = threading.Lock()


def _engine() -> EspeakEngine:
    global _ENGINE
    with _ENGINE_LOCK:
        if _ENGINE is None:
            _ENGINE = EspeakEngine()
        return _ENGINE


def _synthesize_native(text: str, voice: str, prosody: Prosody, seed: int) -> np.ndarray:
    """float32 audio at 16 kHz for a validated prosody."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"text to synthesise must be a non-empty string, got {text!r}")
    engine = _engine()
    pcm = engine.synthesize(text, voice, prosody, seed)
    if pcm.size == 0 or not np.any(pcm):
        raise RuntimeError(f"eSpeak produced silence for voice {voice!r} and text {text!r}")
    return _resample(pcm.astype(np.float32) / 32768.0, engine.native_rate)


def _resample(x: np.ndarray, orig_rate: int) -> np.ndarray:
    """Resample to 16 kHz on one thread: on a busy 2-core machine torch's thread pool makes this
    short convolution 50x slower (160 ms instead of 3 ms), which dominated the corpus build."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        wav = AF.resample(torch.from_numpy(x), orig_rate, SAMPLE_RATE)
    finally:
        torch.set_num_threads(threads)
    return wav.numpy().astype(np.float32, copy=False)


def synthesize(
    text: str,
    voice: str = "en-us",
    rate: float = 175,
    pitch: float = 50,
    pitch_range: float = 50,
    volume: float = 100,
    *,
    seed: int = 0,
) -> np.ndarray:
    """Synthesise ``text`` with eSpeak NG: float32 mono at 16 kHz, not normalised (volume and
    prosody are the point).  Same arguments give identical samples, whatever ran before.

    ``voice`` is an eSpeak voice name with optional variant (``"en-us+f2"``); ``rate`` is in
    words per minute (80-450), ``pitch`` and ``pitch_range`` 0-100 (50 = voice default),
    ``volume`` 0-200 (100 = default).  ``seed`` drives eSpeak's breath/noise generators.
    """
    values = {"rate": rate, "pitch": pitch, "pitch_range": pitch_range, "volume": volume}
    for key, value in values.items():
        lo, hi = _LIMITS[key]
        if not np.isfinite(value) or not lo <= value <= hi:
            raise ValueError(f"{key} must be in [{lo}, {hi}], got {value!r}")
    return _synthesize_native(text, voice, Prosody(**values), seed)


def _apply_tilt(x: np.ndarray, tilt: float) -> np.ndarray:
    """First-order spectral tilt keeping the low-frequency gain at 1: positive adds a
    differentiated (bright) component, negative mixes in a one-pole low-passed copy."""
    if tilt > 0:
        y = x + tilt * np.diff(x, prepend=x[:1])
    elif tilt < 0:
        lp = signal.lfilter([0.25], [1.0, -0.75], x)  # one-pole low-pass, unity DC gain
        y = (1.0 + tilt) * x - tilt * lp
    else:
        y = x
    return y.astype(np.float32)


# --------------------------------------------------------------------------------------------
# Noise bank
# --------------------------------------------------------------------------------------------


def _normalise_noise(x: np.ndarray, kind: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean()
    rms = float(np.sqrt(np.mean(x**2)))
    if not np.isfinite(rms) or rms == 0.0:
        raise RuntimeError(f"synthesised {kind!r} noise is silent or not finite")
    x = x * (NOISE_RMS / rms)
    peak = float(np.max(np.abs(x)))
    if peak > PEAK_LIMIT:
        x = x * (PEAK_LIMIT / peak)
    return x.astype(np.float32)


def _colored_noise(
    num_samples: int, sample_rate: int, rng: np.random.Generator, exponent: float
) -> np.ndarray:
    """Gaussian noise with power spectral density ~ 1/f**exponent above 20 Hz (flat below, so
    the signal is not dominated by inaudible sub-sonic drift)."""
    spec = np.fft.rfft(rng.standard_normal(num_samples))
    freqs = np.maximum(np.fft.rfftfreq(num_samples, 1.0 / sample_rate), 20.0)
    spec *= freqs ** (-exponent / 2.0)
    spec[0] = 0.0
    return np.fft.irfft(spec, n=num_samples)


def _hum(num_samples: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """50 Hz mains hum: fundamental-dominated harmonic series with a slow amplitude wobble."""
    t = np.arange(num_samples) / sample_rate
    x = np.zeros(num_samples)
    for k in range(1, 9):
        amp = 1.0 / k if k % 2 else 0.5 / k  # odd harmonics stronger (rectifier/transformer)
        x += amp * np.sin(2 * np.pi * 50.0 * k * t + rng.uniform(0, 2 * np.pi))
    x *= 1.0 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.1, 0.5) * t + rng.uniform(0, 2 * np.pi))
    return x + 0.01 * rng.standard_normal(num_samples)


def _clicks(num_samples: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Impulsive noise: sparse, short, exponentially decaying bursts at random times."""
    x = 1e-3 * rng.standard_normal(num_samples)
    count = max(1, rng.poisson(rng.uniform(4.0, 12.0) * num_samples / sample_rate))
    for start in rng.integers(0, num_samples, size=count):
        tau = rng.uniform(0.3e-3, 3e-3) * sample_rate
        length = min(int(5 * tau) + 1, num_samples - start)
        env = np.exp(-np.arange(length) / tau)
        amp = np.exp(rng.uniform(np.log(0.2), 0.0))
        x[start : start + length] += amp * env * rng.standard_normal(length)
    return x


def _rumble(num_samples: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Engine-like rumble: a drifting low harmonic series plus low-passed brown noise."""
    t = np.arange(num_samples) / sample_rate
    f0 = rng.uniform(25.0, 45.0) * (1.0 + 0.05 * np.sin(2 * np.pi * rng.uniform(0.05, 0.3) * t))
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    engine = sum(np.sin(k * phase + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 7))
    brown = _colored_noise(num_samples, sample_rate, rng, 2.0)
    brown *= np.std(engine) / max(np.std(brown), 1e-12)
    sos = signal.butter(4, 250.0, btype="low", fs=sample_rate, output="sos")
    return signal.sosfilt(sos, engine + brown)


def _babble(num_samples: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Cocktail-party babble: several eSpeak talkers (never corpus speakers) at once."""
    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"babble noise is synthesised at {SAMPLE_RATE} Hz, got {sample_rate}")
    mix = np.zeros(num_samples)
    for _ in range(BABBLE_TALKERS):
        offset = int(rng.integers(0, sample_rate))
        parts, total = [], 0
        while total < num_samples + offset:
            prosody = Prosody(
                rate=rng.uniform(140, 200),
                pitch=rng.uniform(30, 70),
                pitch_range=rng.uniform(30, 70),
                volume=100,
            )
            voice = BABBLE_VOICES[rng.integers(len(BABBLE_VOICES))]
            text = SENTENCES[rng.integers(len(SENTENCES))]
            speech = _synthesize_native(text, voice, prosody, int(rng.integers(2**31)))
            pause = np.zeros(int(rng.uniform(0.05, 0.4) * sample_rate), np.float32)
            parts += [speech, pause]
            total += speech.size + pause.size
        talker = np.concatenate(parts)[offset : offset + num_samples]
        talker /= max(float(np.sqrt(np.mean(talker**2))), 1e-9)
        mix += talker * 10 ** (rng.uniform(-3.0, 3.0) / 20)
    return mix


_NOISE_GENERATORS = {
    "white": lambda n, sr, rng: rng.standard_normal(n),
    "pink": lambda n, sr, rng: _colored_noise(n, sr, rng, 1.0),
    "brown": lambda n, sr, rng: _colored_noise(n, sr, rng, 2.0),
    "babble": _babble,
    "hum": _hum,
    "clicks": _clicks,
    "rumble": _rumble,
}
assert set(_NOISE_GENERATORS) == set(NOISE_TYPES)


def synthesize_noise(
    kind: str, num_samples: int, sample_rate: int, rng: np.random.Generator
) -> np.ndarray:
    """One noise signal of type ``kind`` (see :data:`NOISE_TYPES`), float32, zero-mean.

    Normalisation: RMS-normalised to :data:`NOISE_RMS`, except that the result is scaled down
    further when that would put a peak above :data:`PEAK_LIMIT` (impulsive ``clicks``), so it
    never clips.  ``babble`` needs eSpeak and only supports 16 kHz.
    """
    if kind not in _NOISE_GENERATORS:
        raise ValueError(f"unknown noise kind {kind!r}; known: {list(NOISE_TYPES)}")
    if int(num_samples) != num_samples or num_samples <= 0:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate!r}")
    return _normalise_noise(_NOISE_GENERATORS[kind](int(num_samples), sample_rate, rng), kind)


# --------------------------------------------------------------------------------------------
# Corpus building
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Speaker:
    id: str
    voice: VoiceSpec
    split: str
    pitch_offset: float
    rate_offset: float
    range_offset: float


def _resolve_params(
    seed: int,
    num_speakers: int,
    num_sentences: int,
    utterances_per_speaker: int | None,
    emotions: Sequence[str],
    noise_seconds: float,
    extra_train_voices: int = 0,
) -> dict:
    """Validate the build parameters and return them as the dict stored in corpus.json
    (``extra_train_voices`` only when there are some, so builds made before it existed keep
    their parameters and stay valid)."""
    emotions = tuple(emotions)
    if not emotions or len(set(emotions)) != len(emotions):
        raise ValueError(f"emotions must be non-empty and unique, got {emotions!r}")
    unknown = [e for e in emotions if e not in PROSODY]
    if unknown:
        raise ValueError(f"unknown emotion(s) {unknown}; known: {list(PROSODY)}")
    if not 3 <= num_speakers <= len(CORPUS_VOICES):
        raise ValueError(
            f"num_speakers must be in [3, {len(CORPUS_VOICES)}] (one speaker at least per "
            f"split), got {num_speakers}"
        )
    if not 1 <= num_sentences <= len(SENTENCES):
        raise ValueError(f"num_sentences must be in [1, {len(SENTENCES)}], got {num_sentences}")
    if utterances_per_speaker is None:
        utterances_per_speaker = min(num_sentences, _DEFAULT_SENTENCES_PER_SPEAKER) * len(emotions)
    per_emotion, rest = divmod(utterances_per_speaker, len(emotions))
    if rest or not 1 <= per_emotion <= num_sentences:
        raise ValueError(
            "utterances_per_speaker must be a multiple of the number of emotions "
            f"({len(emotions)}) between {len(emotions)} and {num_sentences * len(emotions)}, "
            f"got {utterances_per_speaker}"
        )
    if not np.isfinite(noise_seconds) or noise_seconds <= 0:
        raise ValueError(f"noise_seconds must be positive, got {noise_seconds!r}")
    if isinstance(extra_train_voices, bool) or not (
        isinstance(extra_train_voices, int | np.integer)
        and 0 <= extra_train_voices <= len(EXTRA_TRAIN_VOICES)
    ):
        raise ValueError(
            f"extra_train_voices must be an integer in [0, {len(EXTRA_TRAIN_VOICES)}], "
            f"got {extra_train_voices!r}"
        )
    extra = {"extra_train_voices": int(extra_train_voices)} if extra_train_voices else {}
    return {
        "version": CORPUS_VERSION,
        "seed": int(seed),
        "num_speakers": int(num_speakers),
        "num_sentences": int(num_sentences),
        "utterances_per_speaker": int(utterances_per_speaker),
        "emotions": list(emotions),
        "noise_seconds": float(noise_seconds),
        "noise_files_per_type": NOISE_FILES_PER_TYPE,
        "sample_rate": SAMPLE_RATE,
        **extra,
    }


def _split_sizes(num_speakers: int) -> dict[str, int]:
    held_out = max(1, round(0.15 * num_speakers))
    return {"train": num_speakers - 2 * held_out, "validation": held_out, "test": held_out}


def _plan_speakers(seed: int, num_speakers: int) -> list[_Speaker]:
    """Assign voices to speaker ids, speaker habits and a gender-balanced split."""
    voices = CORPUS_VOICES[:num_speakers]
    rng = np.random.default_rng([seed, 1])
    by_gender = {
        g: list(rng.permutation([i for i, v in enumerate(voices) if v.gender == g]))
        for g in ("male", "female")
    }
    order: list[int] = []
    while by_gender["male"] or by_gender["female"]:
        for g in ("male", "female"):
            if by_gender[g]:
                order.append(int(by_gender[g].pop(0)))
    sizes = _split_sizes(num_speakers)
    split_of = {}
    for i, idx in enumerate(order):  # test first, so it always gets both genders if possible
        split_of[idx] = (
            "test"
            if i < sizes["test"]
            else "validation"
            if i < sizes["test"] + sizes["validation"]
            else "train"
        )
    speakers = []
    for idx, voice in enumerate(voices):
        habits = np.random.default_rng([seed, 2, idx]).uniform(-1.0, 1.0, size=3)
        speakers.append(
            _Speaker(
                id=f"spk{idx:02d}",
                voice=voice,
                split=split_of[idx],
                pitch_offset=float(habits[0] * _SPEAKER_PITCH_OFFSET),
                rate_offset=float(habits[1] * _SPEAKER_RATE_OFFSET),
                range_offset=float(habits[2] * _SPEAKER_RANGE_OFFSET),
            )
        )
    return speakers


def speaker_habits(seed: int, num_speakers: int) -> list[dict]:
    """Each corpus speaker's voice, split and prosodic habits (the offsets added to every class
    centre's pitch, rate and pitch range), as :func:`build_corpus` plans them for these
    parameters (``corpus.json``'s ``params``): what makes one held-out speaker harder than
    another, since a speaker whose habits are all low sounds "sadder" in every class."""
    return [
        {
            "speaker": s.id,
            "voice": s.voice.name,
            "split": s.split,
            "pitch_offset": s.pitch_offset,
            "rate_offset": s.rate_offset,
            "range_offset": s.range_offset,
        }
        for s in _plan_speakers(seed, num_speakers)
    ]


def _plan_sentences(seed: int, num_speakers: int, num_sentences: int, per_speaker: int):
    """Sentence subsets per speaker: consecutive windows over a shuffled sentence list, so all
    sentences are used about equally often (content stays balanced across speakers)."""
    order = np.random.default_rng([seed, 3]).permutation(num_sentences)
    return [
        sorted(int(order[(s * per_speaker + j) % num_sentences]) for j in range(per_speaker))
        for s in range(num_speakers)
    ]


def _new_voice_speakers(
    params: dict, voices: Sequence[VoiceSpec], first_index: int, id_prefix: str, split: str
) -> list[tuple[int, _Speaker, list[int]]]:
    """(speaker index, speaker, sentences) of voices beyond the corpus's own speakers, each
    with habits drawn as the corpus draws them and its own random sentence subset, all seeded
    by the voice's index (``first_index + k``), so adding voices changes no other speaker."""
    per_speaker = params["utterances_per_speaker"] // len(params["emotions"])
    planned = []
    for k, voice in enumerate(voices):
        idx = first_index + k
        habits = np.random.default_rng([params["seed"], 2, idx]).uniform(-1.0, 1.0, size=3)
        speaker = _Speaker(
            id=f"{id_prefix}{k:02d}",
            voice=voice,
            split=split,
            pitch_offset=float(habits[0] * _SPEAKER_PITCH_OFFSET),
            rate_offset=float(habits[1] * _SPEAKER_RATE_OFFSET),
            range_offset=float(habits[2] * _SPEAKER_RANGE_OFFSET),
        )
        order = np.random.default_rng([params["seed"], 3, idx]).permutation(params["num_sentences"])
        planned.append((idx, speaker, sorted(int(x) for x in order[:per_speaker])))
    return planned


def _extra_speakers(params: dict) -> list[tuple[int, _Speaker, list[int]]]:
    """The build's extra training voices (``params["extra_train_voices"]`` of
    :data:`EXTRA_TRAIN_VOICES`), speaker ids ``ext00``, ..."""
    voices = EXTRA_TRAIN_VOICES[: params.get("extra_train_voices", 0)]
    return _new_voice_speakers(params, voices, _EXTRA_VOICE_INDEX, "ext", "train")


def _plan_utterances(params: dict) -> list[tuple[int, _Speaker, int, str]]:
    """(speaker index, speaker, sentence, emotion) of every utterance a build renders: the
    corpus speakers', then the extra training voices'."""
    seed, emotions = params["seed"], params["emotions"]
    per_speaker = params["utterances_per_speaker"] // len(emotions)
    speakers = _plan_speakers(seed, params["num_speakers"])
    sentences = _plan_sentences(seed, len(speakers), params["num_sentences"], per_speaker)
    planned = [(idx, spk, sentences[idx]) for idx, spk in enumerate(speakers)]
    return [
        (idx, spk, sent, emo)
        for idx, spk, spk_sentences in planned + _extra_speakers(params)
        for sent in spk_sentences
        for emo in emotions
    ]


def _file_name(speaker: _Speaker, sentence: int, emotion: str) -> str:
    return f"{speaker.split}/{emotion}_{speaker.id}_s{sentence:03d}.wav"


def _utterance_recipe(
    seed: int, speaker_idx: int, speaker: _Speaker, sentence: int, emotion: str
) -> tuple[Prosody, int]:
    """The prosody and the eSpeak seed of one (speaker, sentence, emotion): seeded by its
    identity only, so the result does not depend on build order."""
    rng = np.random.default_rng([seed, 4, speaker_idx, sentence, EMOTIONS.index(emotion)])
    prosody = emotion_prosody(
        emotion,
        rng,
        pitch_offset=speaker.pitch_offset,
        rate_offset=speaker.rate_offset,
        range_offset=speaker.range_offset,
    )
    return prosody, int(rng.integers(2**31))


def _recipe_fields(speaker: _Speaker, prosody: Prosody, render_seed: int) -> dict:
    """What every recipe row carries: the voice, the eSpeak seed, the speaker's habit offsets
    and the five prosody values (enough to render the utterance again)."""
    return {
        "voice": speaker.voice.name,
        "render_seed": render_seed,
        "pitch_offset": speaker.pitch_offset,
        "rate_offset": speaker.rate_offset,
        "range_offset": speaker.range_offset,
        **asdict(prosody),
    }


def utterance_prosody(params: dict) -> list[dict]:
    """Every utterance a build with these parameters (``corpus.json``'s ``params``) renders,
    with the prosody and eSpeak seed it is rendered with, without rendering any audio.

    Rows: ``file_name`` (as in ``metadata.csv``), ``label``, ``speaker``, ``split``,
    ``sentence_id``, ``voice``, ``render_seed``, the speaker's three habit offsets and the
    five :class:`Prosody` fields.
    ``render_speech(SENTENCES[sentence_id], voice, Prosody(...), render_seed)`` gives the
    file's audio again. This is what an ideal listener of the corpus could know: it bounds
    what any model can get out of one utterance (``benchmarks/ceiling.py``).
    """
    rows = []
    for idx, spk, sent, emo in _plan_utterances(params):
        prosody, render_seed = _utterance_recipe(params["seed"], idx, spk, sent, emo)
        rows.append(
            {
                "file_name": _file_name(spk, sent, emo),
                "label": emo,
                "speaker": spk.id,
                "split": spk.split,
                "sentence_id": sent,
                **_recipe_fields(spk, prosody, render_seed),
            }
        )
    return rows


#: Where the habit sweep puts each habit: at +-1/sqrt(3) of its half-width, the two-level
#: design with the mean and the variance of the corpus's uniform habits.
HABIT_SWEEP_LEVEL = 1.0 / np.sqrt(3.0)


def habit_sweep(
    params: dict,
    split: str = "validation",
    *,
    level: float = HABIT_SWEEP_LEVEL,
    with_audio: bool = True,
    progress: bool = True,
) -> list[dict]:
    """The utterances of ``split`` rendered again with each speaker's habits replaced by every
    corner of the habit box at ``level`` of its half-widths (pitch, rate and pitch range each
    low or high: 8 settings per speaker), in memory.

    Why: three held-out speakers sample three habit settings, and a split's F1 depends on which
    (``benchmarks/per_speaker.py``: the validation speakers all talk at a middling rate, one
    test speaker is slow, low and flat). The sweep keeps the split's voices, sentences and
    per-utterance variation (each utterance's jitter is the corpus's own draw) and moves only
    the habits, so its F1 says how a model does across the habits new speakers bring, from
    the split's voices alone. ``params`` is ``corpus.json``'s ``params``; rows carry
    ``audio`` (16 kHz float32), ``label``, ``speaker``, ``sentence_id``, ``setting`` (0-7),
    ``voice``, ``render_seed``, the three offsets and the five prosody values;
    ``with_audio=False`` leaves the audio out (the prosody is all
    :func:`ideal_listener_scores` needs).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not 0 < level <= 1:
        raise ValueError(
            f"level must be in (0, 1] (a fraction of the habit half-widths), got {level}"
        )
    signs = [(p, r, g) for p in (-1, 1) for r in (-1, 1) for g in (-1, 1)]
    jobs = [job for job in _plan_utterances(params) if job[1].split == split]
    moved = [
        (
            idx,
            replace(
                spk,
                pitch_offset=p * level * _SPEAKER_PITCH_OFFSET,
                rate_offset=r * level * _SPEAKER_RATE_OFFSET,
                range_offset=g * level * _SPEAKER_RANGE_OFFSET,
            ),
            sent,
            emo,
            setting,
        )
        for setting, (p, r, g) in enumerate(signs)
        for idx, spk, sent, emo in jobs
    ]
    return _render_rows(params["seed"], moved, f"habit sweep ({split})", with_audio, progress)


def validation_voices(
    params: dict,
    voices: Sequence[VoiceSpec] = VALIDATION_VOICES,
    *,
    with_audio: bool = True,
    progress: bool = True,
) -> list[dict]:
    """New speakers in the corpus's style, in memory: each of ``voices`` says as many corpus
    sentences as a corpus speaker does, in every emotion, with habits and per-utterance
    variation drawn as the corpus draws them (their own seeds).

    Why: the validation split has 3 voices, and at the same habits the default model scored
    0.60 on one of them and 0.92 on another (habit sweep at 0.9 of the half-widths), so which
    3 voices they are can decide a comparison of recipes more than the recipes do. These 8
    never appear in training or test, nor in ``benchmarks/outside_corpus.py``. Rows as
    :func:`habit_sweep`'s, with ``speaker`` ``"val00"``, ... and ``setting`` 0.
    """
    jobs = [
        (idx, speaker, sent, emo, 0)
        for idx, speaker, sentences in _new_voice_speakers(
            params, voices, _VALIDATION_VOICE_INDEX, "val", "validation"
        )
        for sent in sentences
        for emo in params["emotions"]
    ]
    return _render_rows(params["seed"], jobs, "validation voices", with_audio, progress)


def _render_rows(
    seed: int, jobs: list[tuple[int, _Speaker, int, str, int]], desc: str, with_audio, progress
) -> list[dict]:
    """Rows of :func:`habit_sweep` / :func:`validation_voices`: each (speaker index, speaker,
    sentence, emotion, setting) with the corpus's recipe, rendered unless ``with_audio=False``."""
    rows = []
    for idx, spk, sent, emo, setting in tqdm(
        jobs, desc=desc, unit="utt", disable=not progress or not with_audio
    ):
        prosody, render_seed = _utterance_recipe(seed, idx, spk, sent, emo)
        audio = (
            render_speech(SENTENCES[sent], spk.voice.name, prosody, render_seed)
            if with_audio
            else None
        )
        rows.append(
            {
                "audio": audio,
                "label": emo,
                "speaker": spk.id,
                "sentence_id": sent,
                "setting": setting,
                **_recipe_fields(spk, prosody, render_seed),
            }
        )
    return rows


def render_speech(text: str, voice: str, prosody: Prosody, seed: int = 0) -> np.ndarray:
    """One utterance as the corpus renders it: eSpeak NG with ``prosody``, its spectral tilt,
    and the corpus' headroom gain. For building held-out material (other voices, sentences)
    in the corpus' style."""
    audio = _synthesize_native(text, voice, prosody, seed)
    return _apply_tilt(audio, prosody.tilt) * _CORPUS_GAIN


#: Dimensional ratings on MSP-Podcast's 1-7 scale: class centres (arousal, valence, dominance).
DIMENSIONS = ("arousal", "valence", "dominance")
DIMENSION_CENTRES: dict[str, tuple[float, float, float]] = {
    "neutral": (4.0, 4.0, 4.0),
    "happy": (5.2, 5.8, 4.6),
    "sad": (2.6, 2.5, 2.8),
    "angry": (5.8, 2.4, 5.6),
}
# How far a rating follows the utterance's prosody (per jitter standard deviation) and the
# spread of the simulated annotators' mean rating.
_DIMENSION_SLOPE = 0.5
_ANNOTATOR_STD = 0.3


def dimensional_ratings(
    emotion: str, prosody: Prosody, rng: np.random.Generator | None = None
) -> dict[str, float]:
    """Arousal, valence and dominance (1-7) of one rendered utterance, as listeners would rate
    it: the class centre, moved by how the utterance's prosody departs from the class centre
    (faster, louder, wider, brighter = more aroused; louder, brighter, lower = more dominant;
    higher pitch = slightly more positive), plus annotator noise when ``rng`` is given.

    The ratings follow the audio rather than the label alone, so a dimensional head has
    within-class variation to learn and CCC is not just a relabelled F1.
    """
    if emotion not in DIMENSION_CENTRES:
        raise ValueError(f"no dimensional centre for {emotion!r}; known: {sorted(PROSODY)}")
    centre, j = PROSODY[emotion], _UTTERANCE_JITTER
    z = {
        key: (getattr(prosody, key) - getattr(centre, key)) / getattr(j, key)
        for key in ("rate", "pitch", "pitch_range", "volume", "tilt")
    }
    moves = (
        (z["rate"] + z["volume"] + z["pitch_range"] + z["tilt"]) / 4,
        z["pitch"] / 2,
        (z["volume"] + z["tilt"] - z["pitch"]) / 3,
    )
    ratings = {}
    for name, base, move in zip(DIMENSIONS, DIMENSION_CENTRES[emotion], moves, strict=True):
        noise = rng.normal(0, _ANNOTATOR_STD) if rng is not None else 0.0
        ratings[name] = round(float(np.clip(base + _DIMENSION_SLOPE * move + noise, 1, 7)), 3)
    return ratings


def _write_card(root: Path, params: dict, speakers: list[_Speaker], counts: dict) -> None:
    lines = [
        "# merit default corpus (synthetic acted-emotion speech + noise bank)",
        "",
        "Generated offline and deterministically by `merit.corpus` (corpus version "
        f"{params['version']}, seed {params['seed']}). Rebuild with "
        f"`python -m merit.corpus --out DIR --seed {params['seed']} "
        f"--num-speakers {params['num_speakers']} --num-sentences {params['num_sentences']}"
        + (
            f" --extra-train-voices {params['extra_train_voices']}"
            if params.get("extra_train_voices")
            else ""
        )
        + "`.",
        "",
        "## How it was made",
        "",
        "Speech is synthesised with eSpeak NG (formant synthesis) through `espeakng_loader`, "
        "resampled from 22.05 kHz to 16 kHz. Emotions are acted by prosody (speaking rate, "
        "pitch level, pitch range, loudness) plus a spectral tilt, with per-speaker habits and "
        "per-utterance random variation, so classes overlap. Sentences are emotionally neutral; "
        "every speaker says the same sentence subset in every emotion. The table gives the "
        "class centres; each speaker shifts pitch, rate and range by a fixed offset and each "
        f"utterance adds Gaussian variation. Files are scaled by {_CORPUS_GAIN} for headroom "
        "(no clipping) and are not loudness-normalised: loudness is part of the acting.",
        "",
        "## Classes",
        "",
        "| label | rate (wpm) | pitch | pitch range | volume | tilt |",
        "|---|---|---|---|---|---|",
    ]
    for e in params["emotions"]:
        p = PROSODY[e]
        lines.append(
            f"| {e} | {p.rate:g} | {p.pitch:g} | {p.pitch_range:g} | {p.volume:g} | {p.tilt:g} |"
        )
    lines += [
        "",
        "## Speakers and splits (speaker-independent)",
        "",
        "| speaker | eSpeak voice | gender | split |",
        "|---|---|---|---|",
    ]
    lines += [f"| {s.id} | `{s.voice.name}` | {s.voice.gender} | {s.split} |" for s in speakers]
    lines += ["", "Utterances per split: " + ", ".join(f"{k} {counts[k]}" for k in SPLITS) + "."]
    lines += [
        "",
        "## Noise bank (`noise/`)",
        "",
        f"Seen (may be used in training): {', '.join(SEEN_NOISES)}. "
        f"Unseen (test only): {', '.join(UNSEEN_NOISES)}. "
        f"{NOISE_FILES_PER_TYPE} files of {params['noise_seconds']:g} s per type, "
        f"RMS-normalised to {NOISE_RMS} (peaks limited to {PEAK_LIMIT}). Babble mixes "
        f"{BABBLE_TALKERS} eSpeak talkers that are not corpus speakers.",
        "",
        "## Layout",
        "",
        "`metadata.csv` (file_name,label,speaker,sentence_id,split,arousal,valence,dominance; "
        "dimensions rated 1-7 from each utterance's prosody), `train/`, `validation/`, "
        "`test/` (16 kHz mono PCM_16 WAV), `noise/noise.csv` (file_name relative to `noise/`,"
        "noise_type,split), "
        "`corpus.json` (build parameters).",
        "",
        "## License",
        "",
        "Sentences and generated audio: Apache-2.0, like merit. eSpeak NG (GPL-3.0-or-later) "
        "was used as a tool; none of its code or voice data is contained in this folder. "
        "Synthetic speech: not suitable for claims about human emotional speech.",
        "",
    ]
    (root / "README.md").write_text("\n".join(lines), encoding="utf-8")


def _build_into(root: Path, params: dict, progress: bool) -> dict:
    seed = params["seed"]
    emotions = params["emotions"]
    jobs = _plan_utterances(params)
    speakers = list(dict.fromkeys(spk for _, spk, _, _ in jobs))  # in plan order, extras last
    noise_jobs = [(kind, k) for kind in NOISE_TYPES for k in range(NOISE_FILES_PER_TYPE)]
    for split in SPLITS:
        (root / split).mkdir(parents=True)
    for split in ("seen", "unseen"):
        (root / "noise" / split).mkdir(parents=True)

    rows = []
    with tqdm(
        total=len(jobs) + len(noise_jobs), desc="merit corpus", unit="file", disable=not progress
    ) as bar:
        for idx, spk, sent, emo in jobs:
            name = _file_name(spk, sent, emo)
            prosody, render_seed = _utterance_recipe(seed, idx, spk, sent, emo)
            audio = render_speech(SENTENCES[sent], spk.voice.name, prosody, render_seed)
            write_audio(root / name, audio, SAMPLE_RATE)
            # Own stream for the annotators, so the audio is the same as before ratings existed.
            raters = np.random.default_rng([seed, 6, idx, sent, EMOTIONS.index(emo)])
            ratings = dimensional_ratings(emo, prosody, raters)
            rows.append((name, emo, spk.id, sent, spk.split, *ratings.values()))
            bar.update()
        noise_rows = []
        num_samples = int(round(params["noise_seconds"] * SAMPLE_RATE))
        for kind, k in noise_jobs:
            split = "seen" if kind in SEEN_NOISES else "unseen"
            rng = np.random.default_rng([seed, 5, NOISE_TYPES.index(kind), k])
            name = f"noise/{split}/{kind}_{k}.wav"
            write_audio(
                root / name, synthesize_noise(kind, num_samples, SAMPLE_RATE, rng), SAMPLE_RATE
            )
            noise_rows.append((name[len("noise/") :], kind, split))
            bar.update()

    rows.sort(key=lambda r: (SPLITS.index(r[4]), r[0]))
    with open(root / "metadata.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["file_name", "label", "speaker", "sentence_id", "split", *DIMENSIONS])
        writer.writerows(rows)
    with open(root / "noise" / "noise.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["file_name", "noise_type", "split"])
        writer.writerows(noise_rows)
    counts = dict(Counter(r[4] for r in rows))
    counts = {s: counts.get(s, 0) for s in SPLITS}
    _write_card(root, params, speakers, counts)
    info = {
        "params": params,
        "counts": {"utterances": len(rows), **counts, "noise_files": len(noise_rows)},
        "speakers": [
            {"speaker": s.id, "voice": s.voice.name, "gender": s.voice.gender, "split": s.split}
            for s in speakers
        ],
        "prosody": {e: asdict(PROSODY[e]) for e in emotions},
        "seen_noises": list(SEEN_NOISES),
        "unseen_noises": list(UNSEEN_NOISES),
    }
    # Written last: its presence marks a complete build.
    (root / "corpus.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info


def _read_params(root: Path) -> dict | None:
    try:
        return json.loads((root / "corpus.json").read_text(encoding="utf-8"))["params"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def build_corpus(
    root: str | Path,
    *,
    seed: int = 0,
    num_speakers: int = 20,
    num_sentences: int = 50,
    utterances_per_speaker: int | None = None,
    emotions: tuple[str, ...] = EMOTIONS,
    noise_seconds: float = 10.0,
    extra_train_voices: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Build the corpus at ``root`` and return it.

    Each speaker says ``utterances_per_speaker / len(emotions)`` sentences, each in every
    emotion (default: ``min(num_sentences, 20)`` sentences, i.e. 1600 utterances for the
    defaults).  ``extra_train_voices`` adds that many of :data:`EXTRA_TRAIN_VOICES` to the
    training split (80 utterances each by default), leaving every other file byte-identical,
    so validation and test stay the same sets.  The same parameters give byte-identical files.
    The build happens in a temporary sibling folder that is renamed into place at the end, so
    an interrupted build never leaves a half-written corpus at ``root``.  An existing
    non-empty ``root`` is replaced only with ``overwrite=True`` (FileExistsError otherwise).
    """
    root = Path(root).expanduser().absolute()
    params = _resolve_params(
        seed,
        num_speakers,
        num_sentences,
        utterances_per_speaker,
        emotions,
        noise_seconds,
        extra_train_voices,
    )
    if root.exists() and not root.is_dir():
        raise FileExistsError(f"corpus root {root} exists and is not a directory")
    if root.exists() and any(root.iterdir()) and not overwrite:
        raise FileExistsError(f"corpus root {root} is not empty; pass overwrite=True to replace")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        _build_into(tmp, params, progress)
        if root.exists():
            old = root.parent / f".{root.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(root, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def default_corpus_dir(extra_train_voices: int = 0) -> Path:
    """Cache location: ``$MERIT_CORPUS_DIR`` if set, else ``~/.cache/merit/corpus-v<N>`` with
    N = ``CORPUS_VERSION``, so a new recipe never reuses an old build; a build with extra
    training voices gets its own folder (``corpus-v<N>-extra<K>``), so runs with and without
    them do not rebuild each other's cache."""
    env = os.environ.get("MERIT_CORPUS_DIR")
    if env:
        return Path(env).expanduser()
    extra = f"-extra{extra_train_voices}" if extra_train_voices else ""
    return Path.home() / ".cache" / "merit" / f"corpus-v{CORPUS_VERSION}{extra}"


def ensure_corpus(root: str | Path | None = None, **kwargs) -> Path:
    """Return a corpus built with ``kwargs`` (see :func:`build_corpus`), building it only when
    ``root`` has none or one made with different parameters (then it is replaced)."""
    extra = kwargs.get("extra_train_voices", 0)
    root = Path(root).expanduser() if root is not None else default_corpus_dir(extra)
    kwargs.pop("overwrite", None)
    wanted = _resolve_params(
        kwargs.get("seed", 0),
        kwargs.get("num_speakers", 20),
        kwargs.get("num_sentences", 50),
        kwargs.get("utterances_per_speaker"),
        kwargs.get("emotions", EMOTIONS),
        kwargs.get("noise_seconds", 10.0),
        extra,
    )
    if _read_params(root) == wanted and (root / "metadata.csv").is_file():
        return root
    return build_corpus(root, overwrite=True, **kwargs)


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m merit.corpus",
        description="Build merit's synthetic acted-emotion corpus and noise bank (offline).",
    )
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: cache)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-speakers", type=int, default=20)
    parser.add_argument("--num-sentences", type=int, default=50)
    parser.add_argument("--utterances-per-speaker", type=int, default=None)
    parser.add_argument("--noise-seconds", type=float, default=10.0)
    parser.add_argument(
        "--extra-train-voices",
        type=int,
        default=0,
        help=f"add this many more training voices (0-{len(EXTRA_TRAIN_VOICES)})",
    )
    parser.add_argument("--overwrite", action="store_true", help="rebuild even if up to date")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    kwargs = dict(
        seed=args.seed,
        num_speakers=args.num_speakers,
        num_sentences=args.num_sentences,
        utterances_per_speaker=args.utterances_per_speaker,
        noise_seconds=args.noise_seconds,
        extra_train_voices=args.extra_train_voices,
        progress=not args.no_progress,
    )
    try:
        if args.overwrite:
            root = build_corpus(
                args.out or default_corpus_dir(args.extra_train_voices), overwrite=True, **kwargs
            )
        else:
            root = ensure_corpus(args.out, **kwargs)
    except (ValueError, FileExistsError) as err:
        parser.error(str(err))
    counts = json.loads((root / "corpus.json").read_text(encoding="utf-8"))["counts"]
    print(f"corpus at {root}")
    print(", ".join(f"{k}: {v}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
