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

It trains nothing and reads no audio (seconds, no torch model):

    python benchmarks/ceiling.py

Writes ``benchmarks/results/ceiling.{md,json}``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from common import ROOT, write_json, write_report

sys.path.insert(0, str(ROOT))

from merit.corpus import (  # noqa: E402
    EMOTIONS,
    PROSODY_CUES,
    habit_sweep,
    ideal_listener_scores,
    utterance_prosody,
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


def ideal_f1(rows: list[dict], cues: tuple[str, ...], habits_known: bool) -> float:
    decisions = ideal_listener_scores(rows, cues, habits_known=habits_known).argmax(axis=1)
    references = [EMOTIONS.index(r["label"]) for r in rows]
    return emotion_scores(decisions, references, len(EMOTIONS))["f1_macro"]


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
    f1: dict[str, dict[str, float]] = {}
    for name, (cues, known) in LISTENERS.items():
        f1[name] = {g: ideal_f1(members, cues, known) for g, members in groups.items()}
        print(f"{name}: " + ", ".join(f"{g} {v:.3f}" for g, v in f1[name].items()), flush=True)

    measured_path = RESULTS / "per_speaker.json"
    measured = json.loads(measured_path.read_text()) if measured_path.is_file() else None
    model = measured["f1_macro"].get("default") if measured else None
    report = {
        "command": "python benchmarks/ceiling.py",
        "corpus_params": params,
        "listeners": {n: {"cues": list(c), "habits_known": k} for n, (c, k) in LISTENERS.items()},
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
        "| listener | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for name in LISTENERS:
        lines.append(
            f"| {name} | " + " | ".join(f"{100 * f1[name][g]:.1f}" for g in columns) + " |"
        )
    if model:
        cells = [f"{100 * model[g]:.1f}" if g in model else "" for g in columns]
        lines.append("| *default model, clean (measured)* | " + " | ".join(cells) + " |")
        lines += ["", f"The model row is `{measured['command']}`'s `default` column."]
    if model:
        gap = {g: f1["all five cues"][g] - model[g] for g in columns if g in model}
        lines += [
            "",
            "Gap from the ideal listener (all five cues) to the default model, in points: "
            + ", ".join(f"{g} {100 * v:.1f}" for g, v in gap.items())
            + ".",
        ]
    write_report(RESULTS / "ceiling.md", lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
