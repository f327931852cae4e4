"""CPU latency of PyTorch vs onnxruntime for one 10 s utterance, tiny and base-size models.

Both run with the same thread count (default 2), after warm-up runs, and the median of the
timed repeats is reported. Weights are random: latency does not depend on their values. The
base-size model is ``MeritConfig(backbone_config=WavLMConfig())`` (WavLM-base geometry, about
95 M backbone parameters). PyTorch runs the model as users do (sparse expert dispatch, complex
STFT); onnxruntime runs the exported graph (:mod:`merit.onnx_export`).

Usage: ``python benchmarks/onnx_speed.py [--seconds 10] [--threads 2] [--repeats 5]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from common import write_report  # noqa: E402  (benchmarks/common.py, beside this script)

RESULTS = ROOT / "benchmarks" / "results" / "onnx_speed.md"


def _models() -> dict[str, torch.nn.Module]:
    from transformers import WavLMConfig

    from modeling_merit import MeritConfig, MeritModel, minimal_merit_config

    torch.manual_seed(0)
    tiny = minimal_merit_config()
    base = MeritConfig(backbone_config=WavLMConfig())
    return {"tiny": MeritModel(tiny).eval(), "base": MeritModel(base).eval()}


def _median_seconds(run: Callable[[], object], warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    import onnxruntime as ort

    from merit.onnx_export import export_onnx

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-write", action="store_true", help="do not write the results file")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    rows = []
    for name, model in _models().items():
        rate = model.config.sampling_rate
        audio = np.random.default_rng(0).standard_normal((1, int(args.seconds * rate)))
        audio = (audio * 0.1).astype(np.float32)
        tensor = torch.from_numpy(audio)

        def run_torch(model=model, tensor=tensor) -> object:
            with torch.inference_mode():
                return model(tensor)

        with tempfile.TemporaryDirectory() as folder:
            path = export_onnx(model, Path(folder) / f"{name}.onnx")
            options = ort.SessionOptions()
            options.intra_op_num_threads = args.threads
            options.inter_op_num_threads = 1
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            reference = run_torch()
            outputs = session.run(None, {"input_values": audio})
            logit_error = float(np.abs(outputs[0] - reference.logits.numpy()).max())
            torch_s = _median_seconds(run_torch, args.warmup, args.repeats)
            onnx_s = _median_seconds(
                lambda session=session, audio=audio: session.run(None, {"input_values": audio}),
                args.warmup,
                args.repeats,
            )
        params = sum(p.numel() for p in model.parameters()) / 1e6
        rows.append((name, params, torch_s, onnx_s, logit_error))
        print(
            f"{name:>5} ({params:.1f} M params): PyTorch {torch_s * 1000:.0f} ms, "
            f"onnxruntime {onnx_s * 1000:.0f} ms, speed-up x{torch_s / onnx_s:.2f} "
            f"(max |logit diff| {logit_error:.1e})",
            flush=True,
        )

    command = (
        f"python benchmarks/onnx_speed.py --seconds {args.seconds:g} --threads {args.threads} "
        f"--warmup {args.warmup} --repeats {args.repeats}"
    )
    lines = [
        "# PyTorch vs onnxruntime CPU latency",
        "",
        f"Command: `{command}`",
        "",
        f"One {args.seconds:g} s utterance (batch 1), {args.threads} threads for both runtimes, "
        f"{args.warmup} warm-up runs, median of {args.repeats} timed runs; random weights. "
        f"torch {torch.__version__}, onnxruntime {ort.__version__}, CPU only. The machine was "
        "shared with other jobs, so absolute times are noisy; the ratio is the useful number.",
        "",
        "| model | params (M) | PyTorch (ms) | onnxruntime (ms) | PyTorch / ORT | max logit diff |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, params, torch_s, onnx_s, error in rows:
        lines.append(
            f"| {name} | {params:.1f} | {torch_s * 1000:.0f} | {onnx_s * 1000:.0f} | "
            f"{torch_s / onnx_s:.2f} | {error:.1e} |"
        )
    if not args.no_write:
        write_report(RESULTS, lines)


if __name__ == "__main__":
    main()
