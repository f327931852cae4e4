"""How training batches are made, and what it costs: padding, class mix and step time.

Whole utterances in a batch are padded to the longest, and the encoder runs on the padding
too. This script draws one pass of batches over the default run's training split with each
sampler (random; transformers' ``LengthGroupedSampler`` behind ``--train_sampling_strategy
group_by_length``; ``merit.training.PerClassLengthGroupedSampler`` behind
``--group_by_length_per_class True``) and reports the audio the model runs on over the audio
there is, and the mean share of a batch's commonest class. With ``--time_batches N`` it also
times a training step (forward and backward, every weight trainable as in stage 2 of the
default run) on the first N batches of the random and per-class orders, timed round-robin.

    python benchmarks/batching.py                      # statistics only, a few seconds
    python benchmarks/batching.py --time_batches 20    # plus step time, about 2 minutes on CPU

Any ``train.py`` data or model flag (``--extra_train_voices``, ``--dataset``, ...) changes
what is measured the same way.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from common import ROOT, write_json, write_report

sys.path.insert(0, str(ROOT))

from merit.data import DataCollatorForMerit  # noqa: E402
from merit.preparation import prepare_data, training_mixer  # noqa: E402
from merit.training import (  # noqa: E402
    NoisyTrainingSet,
    PerClassLengthGroupedSampler,
    build_model,
    majority_share,
    padding_ratio,
    parse_args,
)

SAMPLERS = ("random", "group_by_length", "per_class")
SEEDS = (0, 1, 2)


def sampler_order(name: str, lengths: list[int], labels: list, batch: int, seed: int) -> list:
    """One pass over the split in the order sampler ``name`` gives, on its own generator."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    generator = torch.Generator().manual_seed(seed)
    if name == "random":
        return torch.randperm(len(lengths), generator=generator).tolist()
    if name == "group_by_length":
        return list(LengthGroupedSampler(batch, lengths=lengths, generator=generator))
    return list(PerClassLengthGroupedSampler(batch, lengths, labels, generator=generator))


def batches_of(order: list, batch: int) -> list[list[int]]:
    return [order[i : i + batch] for i in range(0, len(order), batch)]


def time_steps(
    model: torch.nn.Module, dataset: NoisyTrainingSet, orders: dict[str, list], batch: int, n: int
) -> dict[str, float]:
    """Median seconds of forward + backward over the first ``n`` batches of each order,
    round-robin (batch ``i`` of every order, then ``i + 1``), so drift in the machine's speed
    falls on every sampler alike."""
    collate = DataCollatorForMerit()
    model.train()
    times: dict[str, list[float]] = {name: [] for name in orders}
    for i in range(n + 1):  # batch 0 warms up
        for name, order in orders.items():
            inputs = collate([dataset[j] for j in batches_of(order, batch)[i]])
            start = time.perf_counter()
            model(**inputs).loss.backward()
            elapsed = time.perf_counter() - start
            model.zero_grad(set_to_none=True)
            if i:
                times[name].append(elapsed)
            print(f"batch {i}/{n} {name}: {elapsed:.2f} s", flush=True)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--time_batches", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args, rest = parser.parse_known_args(argv)
    model_args, data_args, training_args = parse_args(["--output_dir", "/tmp/unused", *rest])
    prepared, seen, _ = prepare_data(data_args)
    label2id = {name: i for i, name in enumerate(prepared.label_names)}
    dataset = NoisyTrainingSet(
        prepared.train, training_mixer(data_args, seen, label2id), seed=training_args.seed
    )
    lengths, labels = dataset.lengths(), dataset.labels()
    if labels is None:
        raise ValueError("the training split has no class labels: nothing to group by class")
    batch = training_args.per_device_train_batch_size
    stats = {}
    for name in SAMPLERS:
        passes = [batches_of(sampler_order(name, lengths, labels, batch, s), batch) for s in SEEDS]
        stats[name] = {
            "padding_ratio": statistics.mean(padding_ratio(b, lengths) for b in passes),
            "majority_share": statistics.mean(majority_share(b, labels) for b in passes),
        }
        print(name, stats[name])
    step_seconds = None
    if args.time_batches:
        torch.manual_seed(0)
        model = build_model(model_args, dict(enumerate(prepared.label_names)))
        orders = {
            name: sampler_order(name, lengths, labels, batch, 0) for name in ("random", "per_class")
        }
        step_seconds = time_steps(model, dataset, orders, batch, args.time_batches)

    command = "python benchmarks/batching.py" + "".join(f" {a}" for a in (argv or sys.argv[1:]))
    report = {
        "command": command,
        "utterances": len(lengths),
        "batch_size": batch,
        "threads": torch.get_num_threads(),
        "samplers": stats,
        "step_seconds": step_seconds,
    }
    write_json(args.out / "batching.json", report)
    lines = [
        "# Training batches: padding and class mix (benchmarks/batching.py)",
        "",
        f"Command: `{command}`. {len(lengths)} training utterances ({prepared.dataset_name}), "
        f"batches of {batch}, one pass per sampler, mean over generator seeds {SEEDS}.",
        "",
        "| sampler | flag | audio run / audio there is | commonest class's share of a batch |",
        "|---|---|---:|---:|",
    ]
    flags = {
        "random": "(default)",
        "group_by_length": "`--train_sampling_strategy group_by_length`",
        "per_class": "`--group_by_length_per_class True`",
    }
    for name in SAMPLERS:
        lines.append(
            f"| {name} | {flags[name]} | {stats[name]['padding_ratio']:.3f} | "
            f"{100 * stats[name]['majority_share']:.1f} % |"
        )
    if step_seconds:
        ratio = step_seconds["per_class"] / step_seconds["random"]
        lines += [
            "",
            f"Training step (forward + backward, every weight trainable, {torch.get_num_threads()}"
            f" threads, median of the first {args.time_batches} batches of each order, timed "
            f"round-robin): random {step_seconds['random']:.2f} s, per-class "
            f"{step_seconds['per_class']:.2f} s, per-class / random = **{ratio:.3f}**.",
        ]
    write_report(args.out / "batching.md", lines)
    return report


if __name__ == "__main__":
    main()
