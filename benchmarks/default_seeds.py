"""The default run over training seeds: how much of a change in its test table is the seed.

Each seed is ``python train.py --seed S`` with every other setting at its default (what
``make train`` runs), into ``--work_dir/seed-S``; a folder that already holds a finished run's
``evaluation/rows.json`` is read back, not retrained (copy ``make train``'s
``outputs/merit-sparse`` to ``seed-42`` to reuse it: it is the same command). The report lists
each seed's test F1-macro and segmental SNR per condition and their mean and sample standard
deviation, with the unprocessed input's SSNR (the same frozen test sets for every seed).

    OMP_NUM_THREADS=2 python benchmarks/default_seeds.py [--seeds 42 1 2]

About 15-22 minutes per seed trained on 2 cores (1200 bf16 steps; 750 fp32 steps before
2026-12-06). Writes
``benchmarks/results/default_seeds.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, write_json, write_report

RESULTS = ROOT / "benchmarks" / "results"
MODEL = "sparse"
INPUT = "unprocessed"


def run_seed(seed: int, folder: Path) -> tuple[list[dict], float | None]:
    """The test rows of one seed's run (training it unless ``folder`` already has them)."""
    rows_file = folder / "evaluation" / "rows.json"
    seconds = None
    if rows_file.is_file():
        print(f"reusing {folder}", flush=True)
    else:
        command = [sys.executable, str(ROOT / "train.py"), "--seed", str(seed)]
        command += ["--output_dir", str(folder)]
        print("$", " ".join(command[1:]), flush=True)
        start = time.perf_counter()
        subprocess.run(command, check=True, cwd=ROOT)
        seconds = time.perf_counter() - start
    return json.loads(rows_file.read_text()), seconds


def summarize(runs: dict[int, list[dict]]) -> dict[str, dict]:
    """Per condition: each seed's model F1 and SSNR, their mean and std, the input's SSNR.

    Every run must have scored the same conditions; a run that did not is an error, not a gap.
    """
    conditions: list[str] | None = None
    table: dict[str, dict] = {}
    for seed, rows in runs.items():
        model = {r["condition"]: r for r in rows if r["system"] == MODEL}
        unprocessed = {r["condition"]: r for r in rows if r["system"] == INPUT}
        if conditions is None:
            conditions = list(model)
        elif list(model) != conditions:
            raise ValueError(f"seed {seed} scored {list(model)}, the first run {conditions}")
        for condition in conditions:
            cell = table.setdefault(condition, {"f1_macro": {}, "ssnr": {}, "input_ssnr": None})
            cell["f1_macro"][seed] = model[condition]["f1_macro"]
            cell["ssnr"][seed] = model[condition]["ssnr"]
            if condition in unprocessed:
                cell["input_ssnr"] = unprocessed[condition]["ssnr"]
    for cell in table.values():
        for metric in ("f1_macro", "ssnr"):
            values = list(cell[metric].values())
            cell[f"{metric}_mean"] = statistics.fmean(values)
            cell[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    return table


def report(
    table: dict[str, dict],
    seeds: list[int],
    seconds: dict[int, float | None],
    note: str | None = None,
) -> list[str]:
    lines = [
        "# The default run over training seeds",
        "",
        f"`{' '.join(['python', 'benchmarks/default_seeds.py', *sys.argv[1:]])}`: "
        f"`python train.py --seed S` with the defaults, seeds {', '.join(map(str, seeds))}; "
        "test speakers (240 utterances per condition, the same frozen sets for every seed). "
        "Training time per seed (s): "
        + ", ".join(
            f"{s}: " + ("earlier run" if seconds[s] is None else f"{seconds[s]:.0f}") for s in seeds
        )
        + "."
        + (f" {note}" if note else ""),
        "",
        "| condition | F1-macro (%) per seed | mean ± std | SSNR (dB) per seed | mean ± std "
        "| input SSNR (dB) |",
        "|---|---|---:|---|---:|---:|",
    ]
    for condition, cell in table.items():
        f1 = " / ".join(f"{100 * cell['f1_macro'][s]:.1f}" for s in seeds)
        ssnr = " / ".join(f"{cell['ssnr'][s]:.2f}" for s in seeds)
        given = cell["input_ssnr"]
        lines.append(
            f"| {condition} | {f1} | {100 * cell['f1_macro_mean']:.1f} ± "
            f"{100 * cell['f1_macro_std']:.1f} | {ssnr} | {cell['ssnr_mean']:.2f} ± "
            f"{cell['ssnr_std']:.2f} | " + ("-" if given is None else f"{given:.2f}") + " |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    parser.add_argument("--work_dir", type=Path, default=ROOT / "outputs" / "default-seeds")
    parser.add_argument(
        "--note", help="a sentence for the report, e.g. where reused runs were trained"
    )
    args = parser.parse_args()
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds repeats a seed: {args.seeds}")
    runs, seconds = {}, {}
    for seed in args.seeds:
        runs[seed], seconds[seed] = run_seed(seed, args.work_dir / f"seed-{seed}")
    table = summarize(runs)
    write_json(
        RESULTS / "default_seeds.json", {"command": sys.argv, "seeds": args.seeds, "table": table}
    )
    lines = report(table, args.seeds, seconds, args.note)
    print("\n".join(lines))
    write_report(RESULTS / "default_seeds.md", lines)


if __name__ == "__main__":
    main()
