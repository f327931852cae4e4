"""Speed and memory of Sparse MERIT against its floor and its baselines, side by side.

Every system is built on the same WavLM-base-size configuration (random weights, ~94 M
backbone parameters, no download) and timed in this one run on the same input: 10 s of audio,
batch 1 and batch 8, 2 threads, warm-up first, median of repeats timed round-robin across
systems (so drift in the machine's speed cannot favour one). Peak memory is measured per system
in a fresh subprocess (maximum resident set size after the forward pass, minus the resident size
once the model and input exist), so one system's allocations cannot hide another's.

    python benchmarks/speed.py            # full run (~10 minutes on 2 cores)
    python benchmarks/speed.py --quick    # batch 1, fewer repeats

Writes benchmarks/results/speed.md and speed.json with the command that made them.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import WavLMConfig, WavLMForSequenceClassification, WavLMModel

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import write_json, write_report  # noqa: E402  (benchmarks/common.py, beside this script)

from modeling_merit import MeritConfig, MeritModel  # noqa: E402
from modeling_merit.mixture_merit import MeritMixtureOfExperts  # noqa: E402

SAMPLE_RATE = 16000
SYSTEMS = ("backbone", "hf-wavlm", "sparse", "dense", "naive-mtl", "hf-wavlm-cls", "cascade")


def merit(routing: str = "sparse", tasks: tuple[str, ...] = ("ser", "se")) -> MeritModel:
    config = MeritConfig(backbone_config=WavLMConfig(), routing=routing, tasks=list(tasks))
    return MeritModel(config).eval()


class Cascade(torch.nn.Module):
    """SE pre-processing baseline: an SE model, then an SER model on its enhanced output."""

    def __init__(self) -> None:
        super().__init__()
        self.se = merit(tasks=("se",))
        self.ser = merit(tasks=("ser",))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ser(self.se(x).enhanced_waveform).logits


class Backbone(torch.nn.Module):
    """The backbone alone, returning all hidden states as MERIT needs them.

    ``stock=False`` (the floor): the backbone module inside a MERIT model, which computes WavLM
    attention through its projection modules with ``scaled_dot_product_attention`` (so LoRA
    reaches them). ``stock=True``: transformers' own ``WavLMModel``, whose attention goes
    through ``F.multi_head_attention_forward``; the two differ in speed at batch 8, so the
    MERIT overhead is measured against the former and the latter is shown for reference.
    """

    def __init__(self, stock: bool = False) -> None:
        super().__init__()
        self.model = WavLMModel(WavLMConfig()) if stock else merit("sparse").backbone
        self.model.eval()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.model(x, output_hidden_states=True).hidden_states


def build(system: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if system == "backbone":
        return Backbone().eval()
    if system == "hf-wavlm":
        return Backbone(stock=True).eval()
    if system == "sparse":
        return merit("sparse")
    if system == "dense":
        return merit("dense")
    if system == "naive-mtl":
        return merit("shared")
    if system == "hf-wavlm-cls":
        return WavLMForSequenceClassification(WavLMConfig(num_labels=4)).eval()
    if system == "cascade":
        return Cascade().eval()
    raise ValueError(system)


def time_interleaved(
    models: dict[str, Callable[[Any], Any]], x: Any, repeats: int
) -> dict[str, float]:
    """Median forward time per system, timed round-robin (order rotated each round) so that any
    drift in the machine's speed falls on every system alike instead of on whichever ran last."""
    names = list(models)
    times: dict[str, list[float]] = {name: [] for name in names}
    with torch.inference_mode():
        for name in names:
            models[name](x)  # warm-up
        for r in range(repeats):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                start = time.perf_counter()
                models[name](x)
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def rss_mb() -> float:
    """Peak resident size of this process (MB) since start or the last ``reset_peak``."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_mb() -> float:
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return rss_mb()


def reset_peak() -> None:
    """Reset the kernel's peak-RSS counter (Linux), so model construction's own peak does not
    hide the forward pass's."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def memory_worker(system: str, batch: int, seconds: float) -> None:
    """Runs in a fresh process: prints peak extra memory of one forward pass (MB)."""
    torch.set_num_threads(2)
    model = build(system)
    x = torch.randn(batch, int(seconds * SAMPLE_RATE)) * 0.1
    reset_peak()
    base = current_mb()
    with torch.inference_mode():
        model(x)
    print(json.dumps({"base_mb": base, "peak_mb": rss_mb()}))


def measure_memory(system: str, batch: int, seconds: float) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--memory-worker", system, str(batch), str(seconds)],
        capture_output=True,
        text=True,
        check=True,
    )
    data = json.loads(out.stdout.strip().splitlines()[-1])
    return {"peak_mb": data["peak_mb"], "forward_mb": data["peak_mb"] - data["base_mb"]}


def expert_layer_ratio(repeats: int) -> dict[str, float]:
    """The expert layer alone: 8 experts, top-2 dispatch against the dense softmax mixture."""
    config = MeritConfig(backbone_config=WavLMConfig(), num_experts=8, router_top_k=2)
    torch.manual_seed(0)
    pool = MeritMixtureOfExperts(config).eval()
    tokens = torch.randn(8 * 499, config.hidden_size)  # batch 8 x 10 s of 20 ms frames
    logits = torch.randn(tokens.shape[0], config.num_experts)
    top, idx = logits.topk(2, dim=-1)
    sparse_w = top.softmax(-1)
    dense_idx = torch.arange(8).expand(tokens.shape[0], -1)
    dense_w = logits.softmax(-1)

    def run(indices: torch.Tensor, weights: torch.Tensor) -> float:
        with torch.inference_mode():
            pool.combine(tokens, indices, weights)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                pool.combine(tokens, indices, weights)
                times.append(time.perf_counter() - start)
        return statistics.median(times)

    sparse, dense = run(idx, sparse_w), run(dense_idx, dense_w)
    return {"sparse_s": sparse, "dense_s": dense, "dense_over_sparse": dense / sparse}


def task_routing_ratio(repeats: int, frames: int = 499) -> dict[str, float]:
    """The pool at the default Whisper run's widths on one 10 s utterance's frames, both tasks
    routed: one call per task (each expert runs twice, on each task's rows) against one call
    for both (each expert runs once on the rows of both), the same pool and inputs."""
    from transformers import WhisperConfig

    config = MeritConfig(backbone_config=WhisperConfig(num_mel_bins=80), **WHISPER_MERIT_SIZES)
    torch.manual_seed(0)
    pool = MeritMixtureOfExperts(config).eval()
    mask = torch.ones(1, frames, dtype=torch.bool)
    hidden = {task: torch.randn(1, frames, config.hidden_size) for task in ("ser", "se")}
    ways = {
        "per_task": lambda h: {task: pool({task: h[task]}, mask)[task] for task in h},
        "together": lambda h: pool(h, mask),
    }
    out = {f"{name}_s": s for name, s in time_interleaved(ways, hidden, repeats).items()}
    return {**out, "per_task_over_together": out["per_task_s"] / out["together_s"]}


#: Whisper encoder sizes (random weights): tiny and base, as OpenAI's.
WHISPER_SIZES = {
    "tiny": dict(d_model=384, encoder_layers=4, encoder_attention_heads=6, encoder_ffn_dim=1536),
    "base": dict(d_model=512, encoder_layers=6, encoder_attention_heads=8, encoder_ffn_dim=2048),
}
#: The MERIT layer sizes the default Whisper tiny.en run uses (merit.training).
WHISPER_MERIT_SIZES = dict(hidden_size=256, expert_hidden_size=512)
#: Half as wide (recipe_search's ``-narrow`` rows): what MERIT's widths cost on a small encoder.
WHISPER_NARROW_SIZES = dict(hidden_size=128, expert_hidden_size=256)
#: The parts of a MERIT model timed one by one (top-level modules; the mixture routes every
#: task in one call).
MERIT_PARTS = ("integration", "mixture", "ser_head", "se_head")


class EncoderFloor(torch.nn.Module):
    """A MERIT model's encoder alone as MERIT runs it (Whisper: log-mel front end and the
    actual-length encoder), every hidden state: the floor MERIT is measured against."""

    def __init__(self, model: MeritModel) -> None:
        super().__init__()
        self.backbone, self.family = model.backbone, model.backbone_family

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lengths = torch.full((x.shape[0],), x.shape[-1])
        return self.family.hidden_states(self.backbone, x, lengths)


def flop_ratio(model: MeritModel, x: torch.Tensor) -> dict[str, float]:
    """Floating-point operations (torch's FlopCounterMode: matmuls, convolutions, attention) of
    the whole model and of its encoder floor on ``x``: the ratio is what MERIT's layers cost if
    every operation ran as fast as the encoder's, so a time ratio can not go below it."""
    from torch.utils.flop_counter import FlopCounterMode

    counts = {}
    for name, module in (("encoder_flops", EncoderFloor(model)), ("sparse_flops", model)):
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            module(x)
        counts[name] = float(counter.get_total_flops())
    return {**counts, "flops_ratio": counts["sparse_flops"] / counts["encoder_flops"]}


def time_parts(model: MeritModel, x: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median milliseconds per forward in each of :data:`MERIT_PARTS` (forward hooks, summed
    over the calls of one forward) and in the rest (``encoder``: the backbone with its front
    end, plus input checks and normalisation): where a ratio above the target comes from."""
    spent: dict[str, float] = {}
    started: dict[str, float] = {}
    handles = []
    for name in MERIT_PARTS:
        module = getattr(model, name)

        def before(_module, _args, name=name) -> None:
            started[name] = time.perf_counter()

        def after(_module, _args, _output, name=name) -> None:
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - started[name]

        handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    samples: dict[str, list[float]] = {name: [] for name in (*MERIT_PARTS, "encoder")}
    try:
        with torch.inference_mode():
            model(x)  # warm-up
            for _ in range(repeats):
                spent.clear()
                start = time.perf_counter()
                model(x)
                total = time.perf_counter() - start
                for name in MERIT_PARTS:
                    samples[name].append(1000 * spent[name])
                samples["encoder"].append(1000 * (total - sum(spent.values())))
    finally:
        for handle in handles:
            handle.remove()
    return {name: statistics.median(values) for name, values in samples.items()}


def whisper_ratios(
    repeats: int, seconds: float, batch: int = 1, merit_sizes: dict[str, int] | None = None
) -> dict[str, dict[str, float]]:
    """Sparse MERIT on Whisper tiny / base against the encoder alone, timed round-robin, with
    the operation-count ratio beside the time ratio and the time of each part
    (:func:`time_parts`, ``ms_*``). ``merit_sizes`` (default: the default run's,
    :data:`WHISPER_MERIT_SIZES`) lets a narrower or wider MERIT be timed the same way."""
    from transformers import WhisperConfig

    out = {}
    x = torch.randn(batch, int(seconds * SAMPLE_RATE)) * 0.1
    for size, dims in WHISPER_SIZES.items():
        torch.manual_seed(0)
        config = MeritConfig(
            backbone_config=WhisperConfig(num_mel_bins=80, decoder_layers=1, **dims),
            **(WHISPER_MERIT_SIZES if merit_sizes is None else merit_sizes),
        )
        model = MeritModel(config).eval()
        times = time_interleaved({"encoder": EncoderFloor(model), "sparse": model}, x, repeats)
        ratio = times["sparse"] / times["encoder"]
        parts = {f"ms_{name}": ms for name, ms in time_parts(model, x, repeats).items()}
        out[size] = {**times, "sparse_over_encoder": ratio, **flop_ratio(model, x), **parts}
        print(
            f"whisper-{size}: encoder {times['encoder']:.3f} s, sparse {times['sparse']:.3f} s, "
            f"operations x {out[size]['flops_ratio']:.3f}"
        )
    return out


def training_throughput(steps: int, batch: int, seconds: float) -> dict[str, float]:
    """Samples per second of Sparse MERIT and WavLMForSequenceClassification, same Trainer."""
    import tempfile

    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    n = steps * batch
    gen = torch.Generator().manual_seed(0)
    audio = (torch.randn(n, int(seconds * SAMPLE_RATE), generator=gen) * 0.1).tolist()
    dataset = Dataset.from_dict({"input_values": audio, "labels": [i % 4 for i in range(n)]})
    dataset = dataset.with_format("torch")
    results = {}
    for name, model in (
        ("sparse", merit("sparse").train()),
        ("hf-wavlm-cls", WavLMForSequenceClassification(WavLMConfig(num_labels=4)).train()),
    ):
        with tempfile.TemporaryDirectory() as tmp:
            args = TrainingArguments(
                output_dir=tmp,
                per_device_train_batch_size=batch,
                max_steps=steps,
                report_to=[],
                save_strategy="no",
                logging_strategy="no",
                disable_tqdm=True,
                use_cpu=True,
                dataloader_num_workers=0,
            )
            trainer = Trainer(model=model, args=args, train_dataset=dataset)
            start = time.perf_counter()
            trainer.train()
            elapsed = time.perf_counter() - start
        results[name] = n / elapsed
    results["sparse_over_hf"] = results["sparse"] / results["hf-wavlm-cls"]
    return results


class ReleaseMixture(torch.nn.Module):
    """The release's MoE layer as it computes: every expert on every frame, then the one-hot
    argmax mask of the gate selects (same weights as ``pool``, same numbers)."""

    def __init__(self, pool: MeritMixtureOfExperts) -> None:
        super().__init__()
        self.pool = pool

    def forward(self, task: str, hidden: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        tokens = hidden[frame_mask]
        gate = self.pool.gates[task](tokens).softmax(-1)
        one_hot = torch.nn.functional.one_hot(gate.argmax(-1), len(self.pool.experts))
        every = torch.stack([expert(tokens) for expert in self.pool.experts], 1)
        return (every * one_hot[..., None].to(every.dtype)).sum(1)


def release_ratios(repeats: int, seconds: float) -> dict[str, dict[str, float]]:
    """At WavLM-Large size (25 x 1024 concatenated, 3 experts 25,600 -> 4,096 -> 1,024, top-1):
    the release's MoE layer against our dispatch, and both presets' whole forward against the
    backbone alone (random weights, batch 1)."""
    from modeling_merit import release_config

    torch.manual_seed(0)
    release = release_config()
    frames = int(seconds * 50) - 1
    pool = MeritMixtureOfExperts(release).eval()
    hidden = torch.randn(1, frames, release.integrated_size)
    mask = torch.ones(1, frames, dtype=torch.bool)
    layers = {
        "release-layer": lambda h: ReleaseMixture(pool)("ser", h, mask),
        "dispatch-layer": lambda h: pool({"ser": h}, mask)["ser"],
    }
    with torch.inference_mode():
        reference = ReleaseMixture(pool)("ser", hidden, mask)
        ours = pool({"ser": hidden}, mask)["ser"].hidden[mask]
        assert torch.allclose(reference, ours, atol=1e-4), "the two layers must agree"
    layer = time_interleaved(layers, hidden, repeats)
    layer["release_over_dispatch"] = layer["release-layer"] / layer["dispatch-layer"]
    print(f"MoE layer: {layer}")
    x = torch.randn(1, int(seconds * SAMPLE_RATE)) * 0.1
    paper = MeritModel(release).eval()
    ours_config = MeritConfig(backbone_config=release.backbone_config)
    models = {
        "backbone": EncoderFloor(paper),
        "release-preset": paper,
        "our-preset": MeritModel(ours_config).eval(),
    }
    whole = time_interleaved(models, x, repeats)
    whole["release_over_backbone"] = whole["release-preset"] / whole["backbone"]
    whole["ours_over_backbone"] = whole["our-preset"] / whole["backbone"]
    print(f"whole forward: {whole}")
    return {"layer": layer, "forward": whole}


def write_release_report(result: dict, args: argparse.Namespace) -> None:
    layer, whole = result["layer"], result["forward"]
    command = (
        f"python benchmarks/speed.py --release --seconds {args.seconds:g} --repeats {args.repeats}"
    )
    lines = [
        "# The release's MoE layer against ours, at WavLM-Large size",
        "",
        f"`{command}`: random weights, batch 1, {args.seconds:g} s of audio "
        f"({int(args.seconds * 50) - 1} frames), 2 threads, medians timed round-robin. The layer "
        "takes the 25 x 1,024 concatenated layers; 3 experts 25,600 -> 4,096 -> 1,024, top-1. "
        "The two layers give the same output (checked in the run).",
        "",
        "| | seconds |",
        "|---|---:|",
        f"| release layer (every expert on every frame, then the argmax mask) "
        f"| {layer['release-layer']:.3f} |",
        f"| our dispatch (each frame through its chosen expert only) "
        f"| {layer['dispatch-layer']:.3f} |",
        f"| **release / ours** (target >= 2.5) | **{layer['release_over_dispatch']:.2f}** |",
        "",
        "Whole forward, 10 s, against the WavLM-Large backbone alone (all hidden states):",
        "",
        "| system | seconds | / backbone |",
        "|---|---:|---:|",
        f"| backbone | {whole['backbone']:.2f} | 1.00 |",
        "| release preset (concat, 3 plain experts, top-1, BLSTM SE head) "
        f"| {whole['release-preset']:.2f} | {whole['release_over_backbone']:.2f} |",
        "| our defaults (weighted sum, 8 experts, top-2, MLP SE head) "
        f"| {whole['our-preset']:.2f} | {whole['ours_over_backbone']:.2f} |",
    ]
    write_report(args.out / "speed_release.md", lines)
    write_json(args.out / "speed_release.json", {"command": command, **result})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 1 only, fewer repeats")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--memory-worker", nargs=3, metavar=("SYSTEM", "BATCH", "SECONDS"))
    parser.add_argument(
        "--release",
        action="store_true",
        help="only the release-style MoE layer and presets at WavLM-Large size "
        "(writes speed_release.md)",
    )
    args = parser.parse_args()
    if args.release:
        torch.set_num_threads(2)
        result = release_ratios(args.repeats, args.seconds)
        write_release_report(result, args)
        return
    if args.memory_worker:
        system, batch, seconds = args.memory_worker
        memory_worker(system, int(batch), float(seconds))
        return

    torch.set_num_threads(2)
    batches = (1,) if args.quick else (1, 8)
    repeats = 3 if args.quick else args.repeats
    rows: dict[str, dict] = {}
    for batch in batches:
        x = torch.randn(batch, int(args.seconds * SAMPLE_RATE)) * 0.1
        models = {system: build(system) for system in SYSTEMS}
        seconds = time_interleaved(models, x, repeats)
        del models
        for system in SYSTEMS:
            memory = measure_memory(system, batch, args.seconds)
            rows.setdefault(system, {})[f"b{batch}"] = {"seconds": seconds[system], **memory}
            print(
                f"batch {batch} {system:>13}: {seconds[system]:.3f} s, "
                f"peak {memory['peak_mb']:.0f} MB"
            )

    ratios = {}
    for batch in batches:
        key = f"b{batch}"
        t = {name: rows[name][key]["seconds"] for name in SYSTEMS}
        ratios[key] = {
            "sparse_over_backbone": t["sparse"] / t["backbone"],
            "cascade_over_sparse": t["cascade"] / t["sparse"],
            "dense_over_sparse": t["dense"] / t["sparse"],
            "naive_over_sparse": t["naive-mtl"] / t["sparse"],
            "hf_cls_over_backbone": t["hf-wavlm-cls"] / t["backbone"],
            "hf_wavlm_over_backbone": t["hf-wavlm"] / t["backbone"],
        }
    layer = expert_layer_ratio(repeats=10)
    tasks_at_once = task_routing_ratio(repeats=50)
    whisper = whisper_ratios(repeats, args.seconds)
    narrow = whisper_ratios(repeats, args.seconds, merit_sizes=WHISPER_NARROW_SIZES)
    train = training_throughput(steps=3 if args.quick else 6, batch=2, seconds=4.0)

    command = "python benchmarks/" + " ".join([Path(__file__).name, *sys.argv[1:]])
    report = {
        "command": command,
        "threads": 2,
        "audio_seconds": args.seconds,
        "systems": rows,
        "ratios": ratios,
        "expert_layer": layer,
        "task_routing": tasks_at_once,
        "training_samples_per_second": train,
        "whisper": whisper,
        "whisper_narrow": {"merit_sizes": WHISPER_NARROW_SIZES, **narrow},
        "targets": {
            "sparse_over_backbone <= 1.10": {
                k: v["sparse_over_backbone"] <= 1.10 for k, v in ratios.items()
            },
            "cascade_over_sparse >= 1.8": {
                k: v["cascade_over_sparse"] >= 1.8 for k, v in ratios.items()
            },
            "expert layer dense/sparse >= 2": layer["dense_over_sparse"] >= 2.0,
            "whisper sparse_over_encoder <= 1.10": {
                k: v["sparse_over_encoder"] <= 1.10 for k, v in whisper.items()
            },
        },
    }
    write_json(args.out / "speed.json", report)
    lines = [
        "# Speed and memory (benchmarks/speed.py)",
        "",
        f"Command: `{command}`; WavLM-base-size random weights, {args.seconds:g} s of audio, "
        "2 threads, median of repeats after warm-up, timed round-robin across systems; "
        "memory = peak RSS of a fresh process "
        "(forward = growth during the forward pass).",
        "",
        "| system | " + " | ".join(f"batch {b}: s / peak MB / forward MB" for b in batches) + " |",
        "|---|" + "---|" * len(batches),
    ]
    for system in SYSTEMS:
        cells = [
            f"{rows[system][f'b{b}']['seconds']:.3f} / {rows[system][f'b{b}']['peak_mb']:.0f}"
            f" / {rows[system][f'b{b}']['forward_mb']:.0f}"
            for b in batches
        ]
        lines.append(f"| {system} | " + " | ".join(cells) + " |")
    lines += ["", "| ratio | " + " | ".join(f"batch {b}" for b in batches) + " | target |"]
    lines.append("|---|" + "---|" * (len(batches) + 1))
    targets = {
        "sparse_over_backbone": "<= 1.10",
        "cascade_over_sparse": ">= 1.8",
        "dense_over_sparse": "",
        "naive_over_sparse": "",
        "hf_cls_over_backbone": "",
        "hf_wavlm_over_backbone": "",
    }
    for name, target in targets.items():
        cells = [f"{ratios[f'b{b}'][name]:.3f}" for b in batches]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {target} |")
    lines += [
        "",
        f"Expert layer alone (8 experts, {8 * 499} frames): top-2 dispatch "
        f"{layer['sparse_s'] * 1000:.1f} ms, dense mixture {layer['dense_s'] * 1000:.1f} ms, "
        f"dense/sparse = {layer['dense_over_sparse']:.2f} (target >= 2).",
        "",
        "Both tasks through the pool (Whisper default widths, 499 frames, median of 50): one "
        f"call per task {tasks_at_once['per_task_s'] * 1000:.2f} ms, one call for both (what "
        f"the model does) {tasks_at_once['together_s'] * 1000:.2f} ms, ratio "
        f"{tasks_at_once['per_task_over_together']:.2f}.",
        "",
        f"Training throughput (same Trainer, batch 2 x 4 s): Sparse MERIT "
        f"{train['sparse']:.2f} samples/s, WavLMForSequenceClassification "
        f"{train['hf-wavlm-cls']:.2f} samples/s (ratio {train['sparse_over_hf']:.2f}).",
        "",
        f"Whisper encoders (random weights, batch 1, {args.seconds:g} s; MERIT layers "
        f"{WHISPER_MERIT_SIZES['hidden_size']} / {WHISPER_MERIT_SIZES['expert_hidden_size']} wide "
        "as in the default run; floor = the encoder as MERIT runs it, log-mel included; "
        "operations = torch's FlopCounterMode count, whole model over the floor, the ratio the "
        "time could reach if MERIT's layers ran as efficiently as the encoder's):",
        "",
        "| encoder | MERIT layers | encoder alone (s) | Sparse MERIT (s) | time ratio | "
        "GFLOP encoder -> Sparse MERIT | operations ratio | target (time) |",
        "|---|---|---:|---:|---:|---:|---:|---|",
        *(
            f"| whisper-{k} | {sizes['hidden_size']} / {sizes['expert_hidden_size']}{note} | "
            f"{v['encoder']:.3f} | {v['sparse']:.3f} | "
            f"{v['sparse_over_encoder']:.3f} | {v['encoder_flops'] / 1e9:.2f} -> "
            f"{v['sparse_flops'] / 1e9:.2f} | {v['flops_ratio']:.3f} | {target} |"
            for rows_, sizes, note, target in (
                (whisper, WHISPER_MERIT_SIZES, " (default)", "<= 1.10"),
                (narrow, WHISPER_NARROW_SIZES, "", ""),
            )
            for k, v in rows_.items()
        ),
        "",
        "Where a forward's time goes (ms, median of the same repeats, by forward hooks; "
        "encoder = the rest of the forward: front end, encoder layers, input checks):",
        "",
        "| encoder | MERIT layers | encoder | " + " | ".join(MERIT_PARTS) + " |",
        "|---|---|---:|" + "---:|" * len(MERIT_PARTS),
        *(
            f"| whisper-{k} | {sizes['hidden_size']} / {sizes['expert_hidden_size']} | "
            + " | ".join(f"{v[f'ms_{name}']:.1f}" for name in ("encoder", *MERIT_PARTS))
            + " |"
            for rows_, sizes in ((whisper, WHISPER_MERIT_SIZES), (narrow, WHISPER_NARROW_SIZES))
            for k, v in rows_.items()
        ),
    ]
    print("\n".join(lines))
    write_report(args.out / "speed.md", lines)


if __name__ == "__main__":
    main()
