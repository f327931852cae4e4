"""What the embedded corpus allows: the ideal listener's F1-macro on the held-out speakers.

Each utterance is rendered from five prosodic parameters (rate, pitch, pitch range, loudness,
spectral tilt) = its emotion's class centre + its speaker's habits + per-utterance variation;
the voice and the sentence say nothing about the emotion. So the Bayes-optimal decision from
the exact parameters, knowing the corpus's generative model but not the speaker
(``merit.corpus.ideal_listener_scores``), bounds what any model can get out of one clean
utterance of an unseen speaker. This script computes that listener's F1-macro on the
validation and test speakers, per speaker and on the validation habit sweep, for all cues and
for subsets of them (what a model that cannot read some cue is left with), beside the
default model's clean F1 per speaker from ``benchmarks/results/per_speaker.json``.

That listener is told more than the audio says: eSpeak's voices differ in their own level and
brightness, and by more than the emotions' loudness and tilt do. So the script also measures
every voice's level and brightness (``merit.corpus.voice_level_and_brightness``: four
sentences each at the neutral centre) and scores a listener who has never heard the voice
(``merit.corpus.voice_blind_listener_scores``): loudness and tilt heard on top of the voice's
own, whose spread it knows from the training voices. Rate, pitch and range stay exact for it,
so it still bounds a model from above unless the rest of the audio gives a new voice's level
away.

It trains nothing and renders 4 sentences per voice (about a minute, no torch model):

    python benchmarks/ceiling.py

Writes ``benchmarks/results/ceiling.{md,json}``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from common import ROOT, write_json, write_report

sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from merit.corpus import (  # noqa: E402
    EMOTIONS,
    PROSODY_CUES,
    VOICE_OFFSET_KEYS,
    habit_sweep,
    ideal_listener_scores,
    utterance_prosody,
    voice_blind_listener_scores,
    voice_level_and_brightness,
)
from merit.evaluate_metrics import emotion_scores  # noqa: E402
from merit.preparation import resolve_data_sources  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
HABIT_FREE = ("volume", "tilt")
#: name -> (cues the listener hears, whether it knows each speaker's habits).
LISTENERS: dict[str, tuple[tuple[str, ...], bool]] = {
    "all five cues": (PROSODY_CUES, False),
    "all five, habits known": (PROSODY_CUES, True),
    # Absolute pitch also depends on the voice (eSpeak's pitch is relative to it).
    "without pitch level": (tuple(c for c in PROSODY_CUES if c != "pitch"), False),
    "loudness and tilt (no habits)": (HABIT_FREE, False),
    "rate, pitch and range (habit-shifted)": (
        tuple(c for c in PROSODY_CUES if c not in HABIT_FREE),
        False,
    ),
}


#: Listeners who have never heard the voice (``voice_blind_listener_scores``): loudness and
#: tilt heard on top of the voice's own level and brightness. Rate, pitch and range stay
#: exact, so these still bound what a model can do from above.
VOICE_BLIND: dict[str, tuple[str, ...]] = {
    "all five, voice's level and brightness unknown": PROSODY_CUES,
    "without pitch level, voice's level and brightness unknown": tuple(
        c for c in PROSODY_CUES if c != "pitch"
    ),
}
#: Tilts at which each voice's brightness is measured: the slope (dB per tilt unit) turns a
#: voice's brightness into tilt units.
SLOPE_TILTS = (-0.4, 0.45)


def f1_of(scores: np.ndarray, rows: list[dict]) -> float:
    references = [EMOTIONS.index(r["label"]) for r in rows]
    return emotion_scores(scores.argmax(axis=1), references, len(EMOTIONS))["f1_macro"]


def voice_offsets(rows: list[dict]) -> tuple[dict[str, dict[str, float]], np.ndarray, dict]:
    """Each voice's own level (dB) and brightness (tilt units), relative to the mean of the
    training voices, and their covariance over the training voices (what a listener who
    learned from them knows about a new voice's)."""
    voices = sorted({r["voice"] for r in rows})
    train = sorted({r["voice"] for r in rows if r["split"] == "train"})
    measured, slopes = {}, []
    for n, voice in enumerate(voices, 1):
        level, brightness = voice_level_and_brightness(voice)
        measured[voice] = (level, brightness)
        if voice in train:
            low, high = (voice_level_and_brightness(voice, t)[1] for t in SLOPE_TILTS)
            slopes.append((high - low) / (SLOPE_TILTS[1] - SLOPE_TILTS[0]))
        print(
            f"voice {n}/{len(voices)} {voice}: level {level:.2f} dB, "
            f"brightness {brightness:.2f} dB",
            flush=True,
        )
    slope = float(np.mean(slopes))
    values = {v: np.array([lv, b / slope]) for v, (lv, b) in measured.items()}
    centre = np.mean([values[v] for v in train], axis=0)
    offsets = {
        v: {
            VOICE_OFFSET_KEYS["volume"]: float(x[0] - centre[0]),
            VOICE_OFFSET_KEYS["tilt"]: float(x[1] - centre[1]),
        }
        for v, x in values.items()
    }
    cov = np.cov(np.array([values[v] for v in train]).T)
    summary = {
        "brightness_db_per_tilt_unit": slope,
        "training_voices": len(train),
        "level_std_db": float(np.sqrt(cov[0, 0])),
        "brightness_std_db": float(np.sqrt(cov[1, 1]) * slope),
        "tilt_std_units": float(np.sqrt(cov[1, 1])),
        "correlation": float(cov[0, 1] / np.sqrt(cov[0, 0] * cov[1, 1])),
        "measured": {v: {"level_db": lv, "brightness_db": b} for v, (lv, b) in measured.items()},
    }
    return offsets, cov, summary


def main() -> None:
    corpus = Path(resolve_data_sources(None, None)[0])
    params = json.loads((corpus / "corpus.json").read_text())["params"]
    rows = utterance_prosody(params)
    groups: dict[str, list[dict]] = {}
    for split in ("validation", "test"):
        held_out = [r for r in rows if r["split"] == split]
        groups[split] = held_out
        for speaker in sorted({r["speaker"] for r in held_out}):
            groups[speaker] = [r for r in held_out if r["speaker"] == speaker]
    sweep = habit_sweep(params, "validation", with_audio=False, progress=False)
    groups["validation habit sweep"] = sweep
    offsets, cov, voices = voice_offsets(rows)
    held_out_voices = sorted(
        {(r["speaker"], r["voice"]) for r in rows if r["split"] in ("validation", "test")}
    )
    f1: dict[str, dict[str, float]] = {}
    for name, (cues, known) in LISTENERS.items():
        f1[name] = {
            g: f1_of(ideal_listener_scores(members, cues, habits_known=known), members)
            for g, members in groups.items()
        }
        print(f"{name}: " + ", ".join(f"{g} {v:.3f}" for g, v in f1[name].items()), flush=True)
    for name, cues in VOICE_BLIND.items():
        f1[name] = {}
        for g, members in groups.items():
            heard = [{**r, **offsets[r["voice"]]} for r in members]
            f1[name][g] = f1_of(voice_blind_listener_scores(heard, cov, cues), members)
        print(f"{name}: " + ", ".join(f"{g} {v:.3f}" for g, v in f1[name].items()), flush=True)

    measured_path = RESULTS / "per_speaker.json"
    measured = json.loads(measured_path.read_text()) if measured_path.is_file() else None
    model = measured["f1_macro"].get("default") if measured else None
    report = {
        "command": "python benchmarks/ceiling.py",
        "corpus_params": params,
        "listeners": {
            **{n: {"cues": list(c), "habits_known": k} for n, (c, k) in LISTENERS.items()},
            **{n: {"cues": list(c), "voice_blind": True} for n, c in VOICE_BLIND.items()},
        },
        "voices": voices,
        "voice_cov": cov.tolist(),
        "f1_macro": f1,
        "default_model_clean_f1": model,
        "default_model_from": measured["command"] if measured else None,
    }
    write_json(RESULTS / "ceiling.json", report)

    columns = list(groups)
    lines = [
        "# The ideal listener: what one clean utterance of an unseen speaker allows",
        "",
        f"`{report['command']}`. F1-macro (%) of the Bayes-optimal decision from an "
        "utterance's exact rendering parameters under the corpus's generative model (class "
        "centre + uniform speaker habits + Gaussian per-utterance variation, clipped as the "
        "corpus clips), classes equally likely, speaker unknown unless the row says so. The "
        "audio is made from these parameters, a voice and a sentence that are independent of "
        "the emotion, so no model of one utterance does better on average. Held-out speakers: "
        "80 clean utterances each; the habit sweep is the validation voices with their habits "
        "at the 8 corners of the habit box (1920 utterances; `merit.corpus.habit_sweep`).",
        "",
        "The rows *voice's level and brightness unknown* drop one thing the listener was told: "
        "what the voice itself sounds like. Over the "
        f"{voices['training_voices']} training voices, the voices' own level spreads by "
        f"{voices['level_std_db']:.1f} dB (standard deviation) and their brightness (2-6 kHz "
        f"over 0.1-1 kHz) by {voices['brightness_std_db']:.1f} dB, correlation "
        f"{voices['correlation']:.2f}, against class centres 1.3-3.4 dB apart in level and "
        f"{voices['brightness_db_per_tilt_unit']:.1f} dB per tilt unit (neutral to happy: "
        f"{0.15 * voices['brightness_db_per_tilt_unit']:.1f} dB). That listener hears loudness "
        "and tilt on top of the voice's own (its measured offset from the training voices' "
        "mean), knowing only their spread; rate, pitch and range it still hears exactly. "
        "Held-out voices' offsets (level dB, brightness in tilt units): "
        + ", ".join(
            f"{spk} `{voice}` {offsets[voice][VOICE_OFFSET_KEYS['volume']]:+.1f} / "
            f"{offsets[voice][VOICE_OFFSET_KEYS['tilt']]:+.2f}"
            for spk, voice in held_out_voices
        )
        + ".",
        "",
        "| listener | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for name in [*LISTENERS, *VOICE_BLIND]:
        lines.append(
            f"| {name} | " + " | ".join(f"{100 * f1[name][g]:.1f}" for g in columns) + " |"
        )
    if model:
        cells = [f"{100 * model[g]:.1f}" if g in model else "" for g in columns]
        lines.append("| *default model, clean (measured)* | " + " | ".join(cells) + " |")
        lines += ["", f"The model row is `{measured['command']}`'s `default` column."]
    if model:
        for listener in ("all five cues", next(iter(VOICE_BLIND))):
            gap = {g: f1[listener][g] - model[g] for g in columns if g in model}
            lines += [
                "",
                f"Gap from the listener *{listener}* to the default model, in points: "
                + ", ".join(f"{g} {100 * v:.1f}" for g, v in gap.items())
                + ".",
            ]
    write_report(RESULTS / "ceiling.md", lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
