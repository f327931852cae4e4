"""The two companion methods against their references, on the embedded corpus.

The pretrained encoder is OpenAI's Whisper tiny.en (4 layers, 384 wide; the packaged offline
weights, ``--backbone whisper-tiny.en``): it is the MLKD teacher (on clean speech) and the
frozen encoder under the adapter, as the papers use a pretrained SSL model.

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

    python benchmarks/companions.py --quick    # pipeline check, a few minutes
    python benchmarks/companions.py            # full budget (about 40 min on 2 cores)

Writes benchmarks/results/companions.md and companions.json with the command that made them.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import TrainingArguments, WavLMConfig, WavLMModel

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import write_json  # noqa: E402  (benchmarks/common.py, beside this script)

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
    DataArguments,
    load_noise_banks,
    mixing_text,
    resolve_data_sources,
    training_audio_text,
)
from merit.runs import load_backbone  # noqa: E402
from merit.training import main as train_py  # noqa: E402
from merit.whisper_ct2 import TINY_EN_NAME, resolve_pretrained_backbone  # noqa: E402
from modeling_merit import MeritModel  # noqa: E402
from modeling_merit.modeling_merit import backbone_hidden_states  # noqa: E402


@dataclass(frozen=True)
class Budget:
    """Steps of each training stage, batch, learning rate and crop, and the test size."""

    distill_steps: int
    ser_steps: int
    pretrain_steps: int
    finetune_steps: int
    batch_size: int
    learning_rate: float
    max_seconds: float | None
    test_utterances: int | None


BUDGETS: dict[str, Budget] = {
    "quick": Budget(
        distill_steps=20,
        ser_steps=20,
        pretrain_steps=10,
        finetune_steps=10,
        batch_size=4,
        learning_rate=1e-3,
        max_seconds=2.0,
        test_utterances=24,
    ),
    "full": Budget(
        distill_steps=400,
        ser_steps=300,
        pretrain_steps=200,
        finetune_steps=200,
        batch_size=16,
        learning_rate=1e-3,
        max_seconds=None,
        test_utterances=None,
    ),
}
#: MERIT layers as the default Whisper tiny.en run sizes them.
SIZES = dict(hidden_size=128, num_experts=8, expert_hidden_size=256)
ADAPTER_SIZES = dict(adapter_layers=2, adapter_heads=4, adapter_ffn_size=256)
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
            *(("--max_train_seconds", str(budget.max_seconds)) if budget.max_seconds else ()),
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
    """Median wall time of a forward pass (all hidden states, as MERIT runs the backbone) on
    ``x`` after one warm-up pass."""
    backbone.eval()
    backbone_hidden_states(backbone, x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        backbone_hidden_states(backbone, x)
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


def run_teacher() -> Path:
    """The pretrained encoder every system starts from: Whisper tiny.en, converted once from
    the packaged CTranslate2 weights (sha256-checked)."""
    return Path(resolve_pretrained_backbone(TINY_EN_NAME))


def run_mlkd(
    work: Path, teacher_dir: Path, budget: Budget, cli: argparse.Namespace
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
    speed = {"whisper-tiny.en": size_and_speed(teacher, load_backbone(str(distilled_dir)), x)}
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
    work: Path, teacher_dir: Path, budget: Budget, cli: argparse.Namespace
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
    # The default run's two stages: encoder frozen for the first third, then at 0.1 x the rate.
    models["sparse-merit"] = train_with_train_py(
        work,
        "sparse-merit",
        teacher_dir,
        "sparse",
        total,
        budget,
        cli,
        *("--backbone_frozen_steps", str(total // 3), "--backbone_learning_rate_factor", "0.1"),
    )
    return {"total_steps": total}, models


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def training_data_text(data: DataArguments) -> str:
    """The training augmentation every system here gets (the shared data defaults)."""
    return f"Training data for every system: {training_audio_text(data)}; {mixing_text(data)}."


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
    budget = Budget(**report["budget"])
    mlkd_systems, adapter_systems = (
        ["mlkd-student", "plain-student"],
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
        "The pretrained encoder is OpenAI's Whisper tiny.en (4 layers, 384 wide; the packaged "
        "offline weights): the MLKD teacher hears clean speech, and the adapter and Sparse "
        "MERIT run on it. It has never seen this corpus's emotion labels. Budgets: "
        + ", ".join(f"{k}={v}" for k, v in asdict(budget).items())
        + f"; seed {SEED}; linear schedule with 5 % warm-up; MERIT layers {SIZES}. "
        + training_data_text(DataArguments(max_train_seconds=budget.max_seconds)),
        "",
        "## MLKD: multi-level knowledge distillation",
        "",
        "Student (2 layers, initialised from the teacher's convolutions and first 2 layers; "
        "the `plain-student` is that initialisation, not distilled) hears noisy speech and "
        "predicts teacher layers 2, 3, 4 (teacher on the clean copy) "
        "with L1 - log sigmoid(cos). Both students are then fine-tuned for SER by `train.py "
        f"--variant ser-only --freeze_backbone True` for {budget.ser_steps} steps.",
        "",
        "### Size and speed (same input, median of 3 after a warm-up, this run)",
        "",
        speed_table(report["mlkd"]["speed"]),
        "The WavLM-base-size row uses random weights and is not trained: it shows what a "
        "12 -> 2 layer student saves at that scale.",
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
        f"`sparse-merit`: Sparse MERIT by `train.py --variant sparse` (SER + SE, convolutions "
        "frozen; the encoder frozen for the first third of the steps, then fine-tuned at 0.1 x "
        "the learning rate) trained "
        f"{report['adapter']['total_steps']} steps, the same total.",
        "",
        summary_table(result, adapter_systems),
        format_markdown(subset(result, adapter_systems), ["f1_macro", "ssnr"]),
    ]
    (out / "companions.md").write_text("\n".join(md))
    write_json(out / "companions.json", {**report, "rows": result.rows})


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
        teacher_dir = run_teacher()
        mlkd, mlkd_models = run_mlkd(work, teacher_dir, budget, cli)
        adapter, adapter_models = run_adapter(work, teacher_dir, budget, cli)
    systems = {
        name: ModelSystem(model, device=cli.device)
        for name, model in {**mlkd_models, **adapter_models}.items()
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
        "budget": asdict(budget),
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
