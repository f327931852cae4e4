"""A trained model on speech and noise from outside the embedded corpus.

The corpus' test speakers are unseen voices, but they share the corpus' 60 sentences, and its
"unseen" noises come from the same generator family. This set is further out: 8 eSpeak voices
that no corpus split uses, 10 sentences that are not corpus sentences, each in the 4 emotions
with the corpus' prosody rules (its class centres and per-utterance variation, new per-speaker
habits), mixed with 4 noise types the noise bank does not have (violet noise, a siren sweep,
rain-like impulses on a hiss, a 3-tone machine drone) at -5/0/5/10 dB, and with the corpus'
seen noises too. Nothing here was used to choose anything.

    python benchmarks/outside_corpus.py --model outputs/merit-sparse

Writes ``benchmarks/results/outside_corpus.{md,json}``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from common import ROOT, write_json, write_report

sys.path.insert(0, str(ROOT))

from merit.audio import write_audio  # noqa: E402
from merit.corpus import CORPUS_VOICES, EMOTIONS, emotion_prosody, render_speech  # noqa: E402
from merit.data import NoiseBank, build_eval_sets, load_speech_dataset  # noqa: E402
from merit.evaluation import ModelSystem, evaluate_systems, format_markdown  # noqa: E402
from merit.preparation import load_noise_banks, resolve_data_sources  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SR = 16000
#: The corpus builds 20 speakers from the first 20 voices; the last 4 are never used, and the
#: other 4 are not in its list (nor among its babble talkers).
VOICES = [v.name for v in CORPUS_VOICES[20:]] + [
    "en-us+m3",
    "en-GB-x-rp+f4",
    "en-029+m2",
    "en-US-nyc+f5",
]
SENTENCES = (
    "The bakery on the corner sells fresh bread every morning.",
    "My brother bought a red bicycle last summer.",
    "We will paint the kitchen walls on Saturday.",
    "The museum closes early on public holidays.",
    "She left her umbrella on the crowded bus.",
    "Our neighbours are planting tomatoes in the garden.",
    "The printer on the third floor is out of paper.",
    "He reads the newspaper while he waits for the train.",
    "The children built a castle out of cardboard boxes.",
    "Please send me the invoice before the end of the month.",
)


def outside_noises(seconds: float = 20.0, seed: int = 7) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    violet = np.diff(np.diff(rng.standard_normal(n + 2)))
    siren = np.sin(2 * np.pi * np.cumsum(900 + 300 * np.sin(2 * np.pi * 0.5 * t)) / SR)
    drops = (rng.random(n) < 40 / SR) * rng.standard_normal(n)
    decay = np.exp(-np.arange(int(0.01 * SR)) / (0.002 * SR))
    rain = np.convolve(drops, decay, mode="same") + 0.05 * rng.standard_normal(n)
    drone = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 6.3)) for f in (97.0, 194.0, 331.0))
    out = {"violet": violet, "siren": siren, "rain": rain, "drone": drone}
    return {k: (0.1 * v / np.std(v)).astype(np.float32) for k, v in out.items()}


def build(folder: Path, seed: int = 11) -> Path:
    """Write the utterances (manifest) and the outside noise bank (noise/unseen/)."""
    rng = np.random.default_rng(seed)
    rows = ["file_name,label,speaker,split"]
    for v, voice in enumerate(VOICES):
        habits = dict(
            pitch_offset=rng.uniform(-10, 10),
            rate_offset=rng.uniform(-12, 12),
            range_offset=rng.uniform(-8, 8),
        )
        for s, text in enumerate(SENTENCES):
            for emotion in EMOTIONS:
                prosody = emotion_prosody(emotion, rng, **habits)
                audio = render_speech(text, voice, prosody, int(rng.integers(2**31)))
                name = f"audio/v{v}_s{s}_{emotion}.wav"
                write_audio(folder / name, audio, SR)
                rows.append(f"{name},{emotion},v{v},test")
    (folder / "metadata.csv").write_text("\n".join(rows) + "\n")
    for name, noise in outside_noises().items():
        write_audio(folder / "noise" / "unseen" / f"{name}.wav", noise, SR)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(ROOT / "outputs" / "merit-sparse"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="merit-outside-") as tmp:
        folder = build(Path(tmp) / "outside")
        test = load_speech_dataset(str(folder))["test"]
        corpus_seen, _ = load_noise_banks(resolve_data_sources(None, None)[1])
        outside = NoiseBank.from_dir(folder / "noise", split="unseen")
        sets = build_eval_sets(test, corpus_seen, outside, snrs=(-5, 0, 5, 10), seed=5)
        system = ModelSystem.from_pretrained(args.model)
        result = evaluate_systems({"model": system}, sets, batch_size=8, progress=False)
    table = format_markdown(result, ["f1_macro", "ssnr"])
    rows = {r["condition"]: r for r in result.rows if r["system"] == "model"}
    report = {
        "command": "python benchmarks/" + " ".join([Path(__file__).name, *sys.argv[1:]]),
        "model": args.model,
        "utterances": len(test),
        "voices": VOICES,
        "f1_macro": {c: r.get("f1_macro") for c, r in rows.items()},
        "rows": result.rows,
    }
    write_json(RESULTS / "outside_corpus.json", report)
    lines = [
        "# Outside the embedded corpus: new voices, new sentences, new noise types",
        "",
        f"`{report['command']}` on `{args.model}`: {len(test)} utterances ({len(VOICES)} "
        f"voices no corpus split uses: {', '.join(VOICES)}; {len(SENTENCES)} new sentences; "
        "4 emotions with the corpus' prosody rules). *Seen* columns: the corpus' training "
        "noises; *unseen* columns: violet noise, a siren sweep, rain-like impulses, a machine "
        "drone, none of them in the corpus. Chance F1-macro is 0.25.",
        "",
        table,
    ]
    write_report(RESULTS / "outside_corpus.md", lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
