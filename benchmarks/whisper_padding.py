"""Does running Whisper's encoder on the actual length (MERIT's way) change what it encodes?

transformers' ``WhisperEncoder.forward`` only takes 30 s of mel frames, so the usual way is to
pad every utterance to 30 s. MERIT runs the encoder's layers on the actual length with the
first positional embeddings instead (``modeling_merit.backbones_merit.WhisperEncoderBackbone``).
This probe compares the two on the pretrained Whisper tiny.en, frozen: per encoder layer,
mean and standard deviation over the utterance's frames, a logistic-regression probe trained
on clean training-speaker utterances, F1-macro on the test speakers (clean, and with unseen
noise at 0 dB), for both ways of running the encoder, on the same utterances; and the time.

    python benchmarks/whisper_padding.py [--train 480] [--test 240]

Writes ``benchmarks/results/whisper_padding.{md,json}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import ROOT, write_json, write_report

sys.path.insert(0, str(ROOT))

from merit.audio import load_audio  # noqa: E402
from merit.data import build_eval_sets, load_speech_dataset  # noqa: E402
from merit.metrics import ser_metrics  # noqa: E402
from merit.preparation import load_noise_banks, resolve_data_sources, spread_subset  # noqa: E402
from merit.whisper_ct2 import TINY_EN_NAME, resolve_pretrained_backbone  # noqa: E402
from modeling_merit.backbones_merit import WhisperEncoderBackbone, WhisperLogMel  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def utterance_features(encoder, family, waves: list[np.ndarray], padded: bool) -> np.ndarray:
    """``(utterances, layers, 2 * width)``: mean and std over each utterance's own frames."""
    front = WhisperLogMel(encoder.config.num_mel_bins)
    rows = []
    with torch.inference_mode():
        for wave in waves:
            x = torch.from_numpy(np.asarray(wave, dtype=np.float32))[None]
            lengths = torch.tensor([x.shape[-1]])
            frames = int(family.frame_lengths(lengths))
            if padded:  # transformers' way: the mel of the utterance padded to 3000 frames
                mel = front(x, lengths)
                mel = torch.nn.functional.pad(mel, (0, 3000 - mel.shape[-1]))
                states = torch.stack(encoder(mel, output_hidden_states=True).hidden_states)
            else:
                states = family.hidden_states(encoder, x, lengths)
            states = states[:, 0, :frames]
            rows.append(torch.cat([states.mean(1), states.std(1)], -1).numpy())
    return np.stack(rows)


def probe(train_x: np.ndarray, train_y: np.ndarray, tests: dict[str, tuple]) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.5))
    model.fit(train_x, train_y)
    return {
        name: ser_metrics(model.predict(x), y, num_labels=4)["f1_macro"]
        for name, (x, y) in tests.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=480)
    parser.add_argument("--test", type=int, default=240)
    args = parser.parse_args()
    torch.set_num_threads(2)
    source, noise_dir, _ = resolve_data_sources(None, None)
    splits = load_speech_dataset(source)
    names = ["neutral", "happy", "sad", "angry"]
    train = spread_subset(splits["train"].shuffle(seed=0), args.train)
    test = spread_subset(splits["test"], args.test)
    seen, unseen = load_noise_banks(noise_dir)
    noisy = build_eval_sets(test, seen, unseen, snrs=(0,), include_clean=False)["unseen_0dB"]

    def waves(split) -> list[np.ndarray]:
        return [load_audio(a) for a in split.with_format("python")["audio"]]

    def labels(split) -> np.ndarray:
        return np.array([names.index(v) for v in split["label"]])

    sets = {
        "train": (waves(train), labels(train)),
        "clean": (waves(test), labels(test)),
        "unseen_0dB": ([np.asarray(r, np.float32) for r in noisy["input_values"]], labels(noisy)),
    }
    folder = resolve_pretrained_backbone(TINY_EN_NAME)
    from transformers import WhisperConfig

    family = WhisperEncoderBackbone(WhisperConfig.from_pretrained(folder))
    encoder = family.build().eval()
    encoder.load_state_dict(family.load_pretrained(folder)[1])
    report: dict = {
        "command": "python benchmarks/" + " ".join([Path(__file__).name, *sys.argv[1:]]),
        "layers": {},
    }
    features, seconds = {}, {}
    for mode in ("actual", "padded"):
        start = time.perf_counter()
        features[mode] = {
            name: utterance_features(encoder, family, w, mode == "padded")
            for name, (w, _) in sets.items()
        }
        seconds[mode] = time.perf_counter() - start
        print(f"{mode}: features in {seconds[mode]:.0f} s", flush=True)
    layers = features["actual"]["train"].shape[1]
    for layer in range(layers):
        row = {}
        for mode in ("actual", "padded"):
            feats = features[mode]
            row[mode] = probe(
                feats["train"][:, layer],
                sets["train"][1],
                {k: (feats[k][:, layer], sets[k][1]) for k in ("clean", "unseen_0dB")},
            )
        report["layers"][layer] = row
        print(layer, row, flush=True)
    report["seconds"] = seconds
    report["utterances"] = {k: len(v[1]) for k, v in sets.items()}
    write_json(RESULTS / "whisper_padding.json", report)
    lines = [
        "# Whisper tiny.en on the actual length vs padded to 30 s (frozen encoder, linear probe)",
        "",
        f"`{report['command']}`: {report['utterances']['train']} clean training-speaker "
        f"utterances train the probe (mean + std of one layer, logistic regression); "
        f"{report['utterances']['clean']} test-speaker utterances, clean and with unseen noise "
        "at 0 dB, score it (F1-macro, 4 classes). Layer 0 = the embeddings, the last = the "
        "final output (after the encoder's last LayerNorm).",
        "",
        "| layer | clean, actual | clean, padded | unseen 0 dB, actual | unseen 0 dB, padded |",
        "|---:|---:|---:|---:|---:|",
    ]
    for layer, row in report["layers"].items():
        lines.append(
            f"| {layer} | {row['actual']['clean']:.3f} | {row['padded']['clean']:.3f} | "
            f"{row['actual']['unseen_0dB']:.3f} | {row['padded']['unseen_0dB']:.3f} |"
        )
    lines += [
        "",
        f"Encoder time for all {sum(report['utterances'].values())} utterances: actual length "
        f"{seconds['actual']:.0f} s, padded to 30 s {seconds['padded']:.0f} s "
        f"({seconds['padded'] / seconds['actual']:.1f}x).",
    ]
    write_report(RESULTS / "whisper_padding.md", lines)


if __name__ == "__main__":
    main()
