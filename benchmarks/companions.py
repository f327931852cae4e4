"""The two companion methods against their references, on the embedded corpus.

No pretrained SSL encoder can be downloaded here, so the benchmark first trains a stand-in:
the *teacher*, ``train.py``'s tiny backbone trained for SER on clean speech of the training
speakers. Every other system starts from its encoder, so the comparison is like for like at
a toy scale; absolute numbers say little about WavLM-size results.

MLKD (``merit.distillation``): a 2-layer student distilled from the frozen 4-layer teacher
(clean speech to the teacher, the noisy copy to the student, targets: teacher layers 2,3,4).
Reported: parameters and inference time of student against teacher (same input, this run;
also at WavLM-base size with random weights, 12 -> 2 layers, untrained), and SER F1-macro of
the distilled student against the *same* student without distillation, both fine-tuned for SER
(frozen backbone, same steps, same seed) on noisy speech.

Adapter with local attributes (``merit.adapter_training``): pre-training + SER fine-tuning on the
frozen teacher encoder, alone (``tasks=["ser"]``) and as the MERIT option (``["ser", "se"]``,
sparse routing), against Sparse MERIT trained from the same encoder for the same total number
of optimizer steps (pre-training + fine-tuning).

Test conditions: the test speakers at -5/0/5/10 dB of seen and unseen noise (frozen by
``merit.data.build_eval_sets``) and clean.

    python benchmarks/companions.py --quick    # ~10 minutes on a free core
    python benchmarks/companions.py            # full budget (~1 hour on a free core)

Writes benchmarks/results/companions.md and companions.json with the command that made them.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModel, TrainingArguments, WavLMConfig, WavLMModel

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from merit.adapter_training import AdapterArguments, train_adapter  # noqa: E402
from merit.data import build_eval_sets, load_speech_dataset  # noqa: E402
from merit.distillation import (  # noqa: E402
    DistillationArguments,
    distill,
    make_student,
)
from merit.evaluation import (  # noqa: E402
    EvaluationResult,
    ModelSystem,
    evaluate_systems,
    format_markdown,
)
from merit.preparation import (  # noqa: E402
    DataArguments,  # noqa: E402
    load_noise_banks,
    resolve_data_sources,
)
from merit.runs import load_backbone  # noqa: E402
from merit.training import main as train_py  # noqa: E402
from modeling_merit import MeritModel  # noqa: E402


@dataclass(frozen=True)
class Budget:
    """Steps of each training stage, batch, learning rate and crop, and the test size."""

    teacher_steps: int
    distill_steps: int
    ser_steps: int
    pretrain_steps: int
    finetune_steps: int
    batch_size: int
    learning_rate: float
    max_seconds: float
    test_utterances: int | None


BUDGETS: dict[str, Budget] = {
    "quick": Budget(
        teacher_steps=60,
        distill_steps=40,
        ser_steps=50,
        pretrain_steps=25,
        finetune_steps=25,
        batch_size=4,
        learning_rate=2e-3,
        max_seconds=2.0,
        test_utterances=32,
    ),
    "full": Budget(
        teacher_steps=400,
        distill_steps=1000,
        ser_steps=500,
        pretrain_steps=500,
        finetune_steps=500,
        batch_size=16,
        learning_rate=1e-3,
        max_seconds=2.0,
        test_utterances=None,
    ),
}
#: MERIT layers sized for the 64-wide tiny backbone (the defaults suit WavLM-base).
SIZES = dict(hidden_size=64, num_experts=4, expert_hidden_size=128)
ADAPTER_SIZES = dict(adapter_layers=2, adapter_heads=4, adapter_ffn_size=128)
SEED = 0


def training_args(
    work: Path, name: str, steps: int, budget: Budget, cli: argparse.Namespace
) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(work / name),
        max_steps=steps,
        per_device_train_batch_size=budget.batch_size,
        learning_rate=budget.learning_rate,
        warmup_steps=0.05,
        logging_steps=max(1, steps // 5),
        save_strategy="no",
        report_to="none",
        seed=SEED,
        remove_unused_columns=False,
        dataloader_pin_memory=False,
        disable_tqdm=cli.no_progress,
        use_cpu=cli.device == "cpu",
    )


def train_with_train_py(
    work: Path,
    name: str,
    backbone: str | Path,
    variant: str,
    steps: int,
    budget: Budget,
    cli: argparse.Namespace,
    *extra: str,
) -> MeritModel:
    """A MERIT variant trained by ``python train.py`` with the same optimiser settings as
    :func:`training_args` (no validation, no checkpoints)."""
    out = work / name
    train_py(
        [
            *("--backbone", str(backbone), "--variant", variant),
            *("--hidden_size", str(SIZES["hidden_size"])),
            *("--expert_hidden_size", str(SIZES["expert_hidden_size"])),
            *("--num_experts", str(SIZES["num_experts"])),
            *(
                "--max_steps",
                str(steps),
                "--per_device_train_batch_size",
                str(budget.batch_size),
            ),
            *("--learning_rate", str(budget.learning_rate), "--lr_scheduler_type", "linear"),
            *("--weight_decay", "0", "--warmup_steps", "0.05", "--seed", str(SEED)),
            *("--max_train_seconds", str(budget.max_seconds)),
            *("--eval_strategy", "no", "--load_best_model_at_end", "False"),
            *("--save_strategy", "no", "--do_predict", "False", "--report_to", "none"),
            *("--logging_steps", str(max(1, steps // 5)), "--output_dir", str(out)),
            *("--disable_tqdm", str(cli.no_progress), "--use_cpu", str(cli.device == "cpu")),
            *extra,
        ]
    )
    return MeritModel.from_pretrained(out)


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def forward_seconds(backbone: torch.nn.Module, x: torch.Tensor, repeats: int = 3) -> float:
    """Median wall time of a forward pass on ``x`` after one warm-up pass."""
    backbone.eval()
    backbone(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        backbone(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def size_and_speed(teacher: torch.nn.Module, student: torch.nn.Module, x: torch.Tensor) -> dict:
    t_params, s_params = count_parameters(teacher), count_parameters(student)
    t_time, s_time = forward_seconds(teacher, x), forward_seconds(student, x)
    return {
        "teacher_layers": teacher.config.num_hidden_layers,
        "student_layers": student.config.num_hidden_layers,
        "teacher_params": t_params,
        "student_params": s_params,
        "param_ratio": s_params / t_params,
        "input": list(x.shape),
        "teacher_seconds": t_time,
        "student_seconds": s_time,
        "time_ratio": s_time / t_time,
    }


def test_sets(budget: Budget) -> dict[str, Any]:
    """Frozen noisy copies of (a shuffled subset of) the test speakers' utterances."""
    source, noise_dir, _ = resolve_data_sources(None, None)
    test = load_speech_dataset(source)["test"].shuffle(seed=SEED)
    if budget.test_utterances is not None:
        test = test.select(range(min(budget.test_utterances, len(test))))
    seen, unseen = load_noise_banks(noise_dir)
    return build_eval_sets(test, seen, unseen, snrs=(-5, 0, 5, 10), include_clean=True)


def noisy_mean(result: EvaluationResult, system: str, metric: str = "f1_macro") -> float:
    values = [
        row[metric]
        for row in result.rows
        if row["system"] == system and row["noise"] in ("seen", "unseen") and metric in row
    ]
    return statistics.fmean(values) if values else math.nan


def summary_table(result: EvaluationResult, systems: list[str]) -> str:
    lines = [
        "| System | Mean F1-macro (%), 8 noisy conditions | Clean F1-macro (%) |",
        "|---|---:|---:|",
    ]
    for system in systems:
        clean = (result.get(system, "clean") or {}).get("f1_macro", math.nan)
        lines.append(f"| {system} | {100 * noisy_mean(result, system):.1f} | {100 * clean:.1f} |")
    return "\n".join(lines) + "\n"


def subset(result: EvaluationResult, systems: list[str]) -> EvaluationResult:
    return EvaluationResult(rows=[r for r in result.rows if r["system"] in systems])


# --------------------------------------------------------------------------------------------
# The two sections
# --------------------------------------------------------------------------------------------


def run_teacher(
    work: Path, budget: dict, cli: argparse.Namespace
) -> tuple[Path, dict[str, MeritModel]]:
    """The encoder every other system starts from, standing in for an SSL model (none can be
    downloaded here): ``train.py``'s tiny backbone trained for SER on *clean* speech of the
    training speakers, with ``train.py``'s default batch (32 one-second crops). A frozen
    random encoder is no stand-in: its features carry too little for any head to learn from
    in these budgets (the first quick run left every system at chance)."""
    teacher = train_with_train_py(
        work,
        "teacher",
        "tiny",
        "ser-only",
        budget.teacher_steps,
        budget,
        cli,
        *("--clean_prob", "1.0", "--per_device_train_batch_size", "32"),
        *("--max_train_seconds", "1.0"),
    )
    folder = work / "teacher-backbone"
    teacher.backbone.save_pretrained(folder)
    return folder, {"teacher": teacher}


def run_mlkd(
    work: Path, teacher_dir: Path, budget: dict, cli: argparse.Namespace
) -> tuple[dict[str, Any], dict[str, MeritModel]]:
    teacher = load_backbone(str(teacher_dir))
    distilled_dir = distill(
        DistillationArguments(
            teacher=str(teacher_dir), student_layers=2, teacher_layers="2,3,4", teacher_seed=SEED
        ),
        DataArguments(max_train_seconds=budget.max_seconds),
        training_args(work, "mlkd", budget.distill_steps, budget, cli),
    )
    plain_dir = work / "plain-student"
    make_student(teacher, 2).save_pretrained(plain_dir)

    x = 0.1 * torch.randn(4, 3 * 16000, generator=torch.Generator().manual_seed(SEED))
    speed = {"tiny": size_and_speed(teacher, AutoModel.from_pretrained(distilled_dir), x)}
    torch.manual_seed(SEED)
    base = WavLMModel(WavLMConfig())
    speed["wavlm-base-size"] = size_and_speed(base, make_student(base, 2), x[:1])
    del base

    models = {
        name: train_with_train_py(
            work,
            f"ser-{name}",
            folder,
            "ser-only",
            budget.ser_steps,
            budget,
            cli,
            "--freeze_backbone",
            "True",
        )
        for name, folder in (("mlkd-student", distilled_dir), ("plain-student", plain_dir))
    }
    return {"speed": speed}, models


def run_adapter(
    work: Path, teacher_dir: Path, budget: dict, cli: argparse.Namespace
) -> tuple[dict[str, Any], dict[str, MeritModel]]:
    total = budget.pretrain_steps + budget.finetune_steps
    models = {}
    for name, tasks in (("adapter", "ser"), ("adapter-merit", "ser,se")):
        folder = train_adapter(
            AdapterArguments(
                backbone=str(teacher_dir),
                tasks=tasks,
                pretrain_steps=budget.pretrain_steps,
                pretrain_learning_rate=budget.learning_rate,
                num_clusters=16,
                cluster_refresh_steps=max(1, budget.pretrain_steps // 4),
                ema_decay=0.99,
                **SIZES,
                **ADAPTER_SIZES,
            ),
            DataArguments(max_train_seconds=budget.max_seconds),
            training_args(work, name, budget.finetune_steps, budget, cli),
        )
        models[name] = MeritModel.from_pretrained(folder)
    models["sparse-merit"] = train_with_train_py(
        work, "sparse-merit", teacher_dir, "sparse", total, budget, cli
    )
    return {"total_steps": total}, models


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def speed_table(speed: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| Teacher -> student | Parameters | Ratio | Forward time (s) | Ratio | Input |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, s in speed.items():
        lines.append(
            f"| {name}: {s['teacher_layers']} -> {s['student_layers']} layers "
            f"| {s['teacher_params']:,} -> {s['student_params']:,} | {s['param_ratio']:.2f} "
            f"| {s['teacher_seconds']:.3f} -> {s['student_seconds']:.3f} "
            f"| {s['time_ratio']:.2f} | {' x '.join(map(str, s['input']))} samples |"
        )
    return "\n".join(lines) + "\n"


def write_report(out: Path, report: dict[str, Any], result: EvaluationResult) -> None:
    out.mkdir(parents=True, exist_ok=True)
    budget = report["budget"]
    mlkd_systems, adapter_systems = (
        ["teacher", "mlkd-student", "plain-student"],
        [
            "adapter",
            "adapter-merit",
            "sparse-merit",
        ],
    )
    md = [
        "# Companion methods: MLKD and adapter with local attributes",
        "",
        f"Command: `{report['command']}` ({report['elapsed_minutes']:.1f} min on "
        f"{report['device']}; {report['test_utterances']} test utterances per condition).",
        "",
        "No pretrained SSL encoder can be downloaded here, so a stand-in comes first: "
        "`teacher`, `train.py`'s tiny backbone (4 layers, 128 wide, group-norm conv encoder) "
        f"trained {budget.teacher_steps} steps for SER on *clean* speech of the training "
        "speakers (`--variant ser-only --clean_prob 1.0`, batch 32 one-second crops). Every "
        "other system starts from its encoder, so the numbers compare the methods like for "
        "like at a toy scale and say little about WavLM-size results. Unlike an SSL encoder "
        "this one has seen the emotion labels of the training speakers; the test speakers are "
        "held out. Budgets: "
        + ", ".join(f"{k}={v}" for k, v in budget.items())
        + f"; seed {SEED}; linear schedule with 5 % warm-up.",
        "",
        "## MLKD: multi-level knowledge distillation",
        "",
        "Student (2 layers, initialised from the teacher's conv encoder and first 2 layers; "
        "the `plain-student` is that initialisation, not distilled) hears noisy speech and "
        "predicts teacher layers 2, 3, 4 (teacher on the clean copy) "
        "with L1 - log sigmoid(cos). Both students are then fine-tuned for SER by `train.py "
        f"--variant ser-only --freeze_backbone True` for {budget.ser_steps} steps.",
        "",
        "### Size and speed (same input, median of 3 after a warm-up, this run)",
        "",
        speed_table(report["mlkd"]["speed"]),
        "The WavLM-base-size row uses random weights and is not trained: it shows what the "
        "12 -> 2 layer student saves at real scale.",
        "",
        "### SER F1-macro, distilled student vs the same student without distillation",
        "",
        summary_table(result, mlkd_systems),
        format_markdown(subset(result, mlkd_systems), ["f1_macro"]),
        "## Adapter with local attributes",
        "",
        f"Adapter: WAP-Transformer ({ADAPTER_SIZES['adapter_layers']} layers) pre-trained "
        f"{budget.pretrain_steps} steps (masked spans 40 %, EMA teacher 0.99, 16 k-means "
        f"local attributes), then fine-tuned {budget.finetune_steps} steps, encoder frozen; "
        "`adapter` = SER only, `adapter-merit` = the MERIT option (SER + SE, sparse routing). "
        f"`sparse-merit`: Sparse MERIT by `train.py --variant sparse` (SER + SE, conv encoder "
        "frozen, transformer fine-tuned) trained "
        f"{report['adapter']['total_steps']} steps, the same total.",
        "",
        summary_table(result, adapter_systems),
        format_markdown(subset(result, adapter_systems), ["f1_macro", "ssnr"]),
    ]
    (out / "companions.md").write_text("\n".join(md))
    (out / "companions.json").write_text(json.dumps({**report, "rows": result.rows}, indent=2))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small budget: a few minutes")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no_progress", action="store_true")
    cli = parser.parse_args(argv)
    budget = BUDGETS["quick" if cli.quick else "full"]
    start = time.perf_counter()
    sets = test_sets(budget)
    with tempfile.TemporaryDirectory(prefix="merit-companions-") as folder:
        work = Path(folder)
        teacher_dir, teacher_models = run_teacher(work, budget, cli)
        mlkd, mlkd_models = run_mlkd(work, teacher_dir, budget, cli)
        adapter, adapter_models = run_adapter(work, teacher_dir, budget, cli)
    systems = {
        name: ModelSystem(model, device=cli.device)
        for name, model in {**teacher_models, **mlkd_models, **adapter_models}.items()
    }
    result = evaluate_systems(systems, sets, batch_size=8, progress=not cli.no_progress)
    device = (
        torch.cuda.get_device_name()
        if cli.device.startswith("cuda")
        else (
            f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
        )
    )
    report = {
        "command": "python benchmarks/"
        + " ".join([Path(__file__).name, *(argv if argv is not None else sys.argv[1:])]),
        "budget": budget,
        "device": device,
        "elapsed_minutes": (time.perf_counter() - start) / 60,
        "test_utterances": len(next(iter(sets.values()))),
        "mlkd": mlkd,
        "adapter": adapter,
        "mean_noisy_f1": {name: noisy_mean(result, name) for name in systems},
    }
    write_report(cli.out, report, result)
    print((cli.out / "companions.md").read_text())
    return report


if __name__ == "__main__":
    main()
