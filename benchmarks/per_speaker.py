"""Emotion F1-macro per held-out speaker on clean speech, beside each speaker's habits.

The embedded corpus holds out 3 validation and 3 test speakers, and each speaker shifts every
class centre's pitch, rate and pitch range by fixed offsets (its habits). Recipes are chosen on
the validation speakers; this report shows, for one or more trained models, how every held-out
speaker scores on its clean utterances, next to its habits and the range the 14 training
speakers cover, so a gap between the validation and the test figures can be traced to
speakers. It chooses nothing and trains nothing.

    python benchmarks/per_speaker.py --model NAME=FOLDER [NAME=FOLDER ...]

Writes ``benchmarks/results/per_speaker.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import ROOT, write_json, write_report

sys.path.insert(0, str(ROOT))

from datasets import Dataset  # noqa: E402

from merit.audio import load_audio  # noqa: E402
from merit.corpus import speaker_habits  # noqa: E402
from merit.data import load_speech_dataset  # noqa: E402
from merit.evaluation import ModelSystem, evaluate_systems  # noqa: E402
from merit.preparation import clean_eval_set, resolve_data_sources  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
HABITS = ("pitch_offset", "rate_offset", "range_offset")


def parse_models(specs: list[str]) -> dict[str, str]:
    models = {}
    for spec in specs:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not folder:
            raise SystemExit(f"--model takes NAME=FOLDER, got {spec!r}")
        if not Path(folder).is_dir():
            raise SystemExit(f"--model {name}: no such folder {folder}")
        models[name] = folder
    return models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", nargs="+", required=True, help="NAME=FOLDER, one or more")
    parser.add_argument("--splits", nargs="+", default=["validation", "test"])
    args = parser.parse_args()
    models = parse_models(args.model)
    corpus = Path(resolve_data_sources(None, None)[0])
    params = json.loads((corpus / "corpus.json").read_text())["params"]
    habits = {h["speaker"]: h for h in speaker_habits(params["seed"], params["num_speakers"])}
    splits = load_speech_dataset(str(corpus))
    sets: dict[str, Dataset] = {}
    order: list[str] = []  # the report's rows: each split's speakers, then the split pooled
    for name in args.splits:
        split = splits[name]
        order += [*sorted(set(split["speaker"])), name]
        sets[name] = clean_eval_set(
            [load_audio(a) for a in split["audio"]], split["label"], speaker=split["speaker"]
        )
    scores: dict[str, dict[str, float]] = {name: {} for name in models}
    for name, folder in models.items():
        system = ModelSystem.from_pretrained(folder)
        # One pass per split; each speaker's F1 comes from that pass's decisions.
        result = evaluate_systems({name: system}, sets, progress=False)
        for split_name, dataset in sets.items():
            scores[name].update(result.grouped_f1(name, split_name, dataset["speaker"]))
            scores[name][split_name] = result.get(name, split_name)["f1_macro"]
        print(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in scores[name].items()))
    train = [h for h in habits.values() if h["split"] == "train"]
    report = {
        "command": "python benchmarks/" + " ".join([Path(__file__).name, *sys.argv[1:]]),
        "models": models,
        "corpus_params": params,
        "speakers": {k: habits[k] for k in order if k in habits},
        "training_habit_range": {
            h: [min(t[h] for t in train), max(t[h] for t in train)] for h in HABITS
        },
        "f1_macro": scores,
    }
    write_json(RESULTS / "per_speaker.json", report)
    names = list(models)
    lines = [
        "# Clean F1-macro per held-out speaker, with the speakers' habits",
        "",
        f"`{report['command']}`. Clean utterances of each held-out speaker (80 each: 20 "
        "sentences x 4 emotions; chance 25 %); habits are the offsets the corpus adds to every "
        "class centre (pitch and pitch range on eSpeak's 0-100 scale, rate in words per "
        "minute; the class centres differ by 10-40 pitch-range points and 10-60 wpm). "
        "Models: " + ", ".join(f"`{n}` = `{f}`" for n, f in models.items()) + ".",
        "",
        "| speaker | voice | split | pitch | rate | range | " + " | ".join(names) + " |",
        "|---|---|---|---:|---:|---:|" + "---:|" * len(names),
    ]
    for key in order:
        if key in habits:
            h = habits[key]
            cells = [key, f"`{h['voice']}`", h["split"]] + [f"{h[x]:+.1f}" for x in HABITS]
        else:
            cells = [f"**{key} (pooled)**", "", "", "", "", ""]
        cells += [f"{100 * scores[n][key]:.1f}" for n in names]
        lines.append("| " + " | ".join(cells) + " |")
    ranges = report["training_habit_range"]
    lines += [
        "",
        "Training speakers' habits span: "
        + ", ".join(f"{h.split('_')[0]} {lo:+.1f} to {hi:+.1f}" for h, (lo, hi) in ranges.items())
        + ".",
    ]
    write_report(RESULTS / "per_speaker.md", lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
