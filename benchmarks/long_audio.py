"""Peak memory of ``merit.inference.analyze`` on long recordings: is it flat in the length?

Each length runs in a fresh subprocess (no allocator caches or earlier peaks carried over).
The subprocess builds the model and the input, then resets the kernel's peak-RSS counter
(``echo 5 > /proc/self/clear_refs``, Linux >= 4.0) and reads ``VmHWM`` after ``analyze``: the
peak of *everything* the process touched during analysis (numpy, torch's CPU allocator, Python
objects), not only what one allocator reports. ``getrusage`` max RSS cannot be reset, so input
generation and model loading would hide the analysis peak. Reported per length:

* peak increase over the pre-analysis RSS, *including* the result (enhanced waveform and the
  routing matrices, which necessarily grow with the length), and
* the same *excluding* the bytes of those result arrays: the working memory, which should be
  constant.

and the ``tracemalloc`` peak of live numpy/Python memory (excluding the result), which shows
what ``analyze`` itself holds, free of allocator effects (torch tensors are not traced; they
are dropped after every batch).

The tiny random test model is used (the question is how memory scales with length, not the
model's size); the audio is synthetic noise at 16 kHz, so no resampling copy is made.

Reading the numbers: the live numpy/Python memory is flat in the length. Resident memory
follows it up to allocator effects: with glibc's default (adaptive) mmap threshold, freed
temporaries of a forward pass stay in the heap and the peak climbs over the first tens of
batches to a plateau, so 1 minute (2 batches) sits below the 30- and 60-minute runs, which
match; with ``MALLOC_MMAP_THRESHOLD_`` fixed, the climb is small.

Usage: ``python benchmarks/long_audio.py [--minutes 1 30 60] [--chunk-seconds 10]``

``--files`` measures what a user of ``merit predict`` sees instead: the peak resident memory of
the whole CLI process (model loading included; ``wait4`` max RSS of the child) on WAV files
of 1 min, 30 min and 2 h, mono and stereo, at 16 and 44.1 kHz, with enhanced audio written
(``analyze_file`` streams: each chunk is decoded, resampled and written out on its own). The
model is a very small random one (the question is how memory scales with the file, not the
model's size). Writes ``benchmarks/results/long_audio_files.md``:

    python benchmarks/long_audio.py --files [--minutes 1 30 120]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
from common import write_report  # noqa: E402  (benchmarks/common.py, beside this script)

RESULTS = ROOT / "benchmarks" / "results" / "long_audio.md"


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _worker(minutes: float, chunk_seconds: float, batch_size: int, threads: int) -> dict:
    """Runs in the subprocess: one analysis, memory measured around it."""
    import gc
    import tracemalloc

    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT))
    from merit.inference import analyze
    from modeling_merit import MeritModel, minimal_merit_config

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = MeritModel(minimal_merit_config()).eval()
    rate = model.config.sampling_rate
    total = int(minutes * 60 * rate)
    # Fill the input block by block: a float64 draw of the whole length would double the peak.
    audio = np.empty(total, dtype=np.float32)
    rng = np.random.default_rng(0)
    block = 60 * rate
    for start in range(0, total, block):
        stop = min(total, start + block)
        audio[start:stop] = rng.standard_normal(stop - start, dtype=np.float32) * 0.1
    # Warm up once on a short clip so one-off allocations (thread pools, kernels) are not
    # charged to the long run.
    analyze(model, None, audio[: 3 * rate], rate, chunk_seconds=chunk_seconds)
    gc.collect()

    tracemalloc.start()
    traced_before = tracemalloc.get_traced_memory()[0]
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    before = _status_kib("VmRSS")
    started = time.perf_counter()
    result = analyze(model, None, audio, rate, chunk_seconds=chunk_seconds, batch_size=batch_size)
    seconds = time.perf_counter() - started
    peak = _status_kib("VmHWM")
    traced_peak = tracemalloc.get_traced_memory()[1] - traced_before
    tracemalloc.stop()
    result_bytes = result.enhanced.nbytes + sum(m.nbytes for m in result.routing.values())
    return {
        "minutes": minutes,
        "chunks": len(result.timeline),
        "seconds": seconds,
        "input_mib": audio.nbytes / 2**20,
        "result_mib": result_bytes / 2**20,
        "peak_increase_mib": (peak - before) / 1024,
        "working_mib": (peak - before) / 1024 - result_bytes / 2**20,
        "traced_working_mib": (traced_peak - result_bytes) / 2**20,
    }


ALLOCATORS = {
    # What users get: glibc adapts its mmap threshold upwards, so freed large blocks are kept
    # in the heap and resident memory rises during the first batches until it saturates.
    "default": {},
    # Large blocks always mmap'ed and returned on free: shows the working set without that.
    "fixed-mmap": {"MALLOC_MMAP_THRESHOLD_": "131072"},
}


def _run_worker(minutes: float, allocator: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--worker", "--minutes", str(minutes)]
    command += ["--chunk-seconds", str(args.chunk_seconds), "--batch-size", str(args.batch_size)]
    command += ["--threads", str(args.threads)]
    env = {**os.environ, **ALLOCATORS[allocator]}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{minutes} min worker failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


RESULTS_FILES = ROOT / "benchmarks" / "results" / "long_audio_files.md"


def _write_noise_wav(path: Path, minutes: float, rate: int, channels: int) -> None:
    """Synthetic noise as 16-bit PCM, written a minute at a time (never whole in memory)."""
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(0)
    total = int(minutes * 60 * rate)
    with sf.SoundFile(str(path), "w", samplerate=rate, channels=channels, subtype="PCM_16") as f:
        for start in range(0, total, 60 * rate):
            count = min(60 * rate, total - start)
            f.write(rng.standard_normal((count, channels), dtype=np.float32) * 0.1)


def _small_model(folder: Path) -> None:
    import torch

    sys.path.insert(0, str(ROOT))
    from modeling_merit import (
        MeritFeatureExtractor,
        MeritModel,
        minimal_backbone_config,
        minimal_merit_config,
    )

    torch.manual_seed(0)
    backbone = minimal_backbone_config(
        conv_dim=(16,) * 7,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    config = minimal_merit_config(backbone_config=backbone)
    MeritModel(config).save_pretrained(folder)
    MeritFeatureExtractor().save_pretrained(folder)


def _predict_peak(model: Path, audio: Path, out: Path, args: argparse.Namespace) -> dict:
    """Run ``merit predict`` on one file in a fresh process; its peak RSS and wall time."""
    command = [sys.executable, "-m", "merit.cli", "predict", "--model", str(model)]
    command += ["--input", str(audio), "--output", str(out / "results.jsonl")]
    command += ["--enhanced-dir", str(out / "enhanced"), "--no-progress", "--overwrite"]
    command += ["--chunk-seconds", str(args.chunk_seconds), "--batch-size", str(args.batch_size)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    stderr = process.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"merit predict failed on {audio.name}:\n{stderr[-3000:]}")
    record = json.loads((out / "results.jsonl").read_text().splitlines()[0])
    return {"seconds": seconds, "peak_mib": usage.ru_maxrss / 1024, "label": record["label"]}


def _import_torch_peak(args: argparse.Namespace) -> float:
    """Peak RSS (MiB) of a process that imports torch and nothing else: the floor of any run."""
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    process = subprocess.Popen([sys.executable, "-c", "import torch"], env=env)
    _, _, usage = os.wait4(process.pid, 0)
    return usage.ru_maxrss / 1024


def files_main(args: argparse.Namespace) -> None:
    import tempfile

    rows, table = [], []
    with tempfile.TemporaryDirectory(prefix="merit-long-") as tmp:
        work = Path(tmp)
        _small_model(work / "model")
        for minutes in args.minutes:
            for rate in (16_000, 44_100):
                for channels in (1, 2):
                    audio = work / f"{minutes:g}min-{rate}-{channels}ch.wav"
                    _write_noise_wav(audio, minutes, rate, channels)
                    row = _predict_peak(work / "model", audio, work / "out", args)
                    row.update(
                        minutes=minutes,
                        rate=rate,
                        channels=channels,
                        file_mib=audio.stat().st_size / 2**20,
                    )
                    audio.unlink()
                    rows.append(row)
                    line = (
                        f"| {minutes:g} | {rate} | {channels} | {row['file_mib']:.0f} | "
                        f"{row['seconds']:.0f} | {row['peak_mib']:.0f} |"
                    )
                    table.append(line)
                    print(line, flush=True)
    torch_only = _import_torch_peak(args)
    shortest = [r for r in rows if r["minutes"] == min(args.minutes)]
    longest = [r for r in rows if r["minutes"] == max(args.minutes)]
    ratios = [
        f"- {hi['rate']} Hz, {hi['channels']} ch: peak({hi['minutes']:g} min) / "
        f"peak({lo['minutes']:g} min) = {hi['peak_mib'] / lo['peak_mib']:.2f}"
        for lo, hi in zip(shortest, longest, strict=True)
    ]
    worst = max(r["peak_mib"] for r in rows)
    command = (
        "python benchmarks/long_audio.py --files --minutes "
        + " ".join(f"{m:g}" for m in args.minutes)
        + f" --chunk-seconds {args.chunk_seconds:g} --batch-size {args.batch_size}"
        + f" --threads {args.threads}"
    )
    lines = [
        "# Peak memory of `merit predict` on long files (streamed)",
        "",
        f"Command: `{command}`",
        "",
        "Whole-process peak resident memory (`wait4` max RSS: Python, torch, the model and the "
        "analysis) of `merit predict --enhanced-dir` on one 16-bit PCM WAV of synthetic noise, "
        "a fresh process per file, a very small random model. The target was under 1 GiB for "
        f"any length; the largest peak measured is {worst:.0f} MiB. For scale, a Python "
        f"process that only imports torch peaks at {torch_only:.0f} MiB on this machine: what "
        "matters is that the peak does not grow with the file (the ratios below).",
        "",
        "| minutes | rate (Hz) | channels | file (MiB) | wall (s) | peak RSS (MiB) |",
        "|---:|---:|---:|---:|---:|---:|",
        *table,
        "",
        *ratios,
    ]
    if not args.no_write:
        write_report(RESULTS_FILES, lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 30, 60])
    parser.add_argument("--chunk-seconds", type=float, default=10.0)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--allocators", nargs="+", choices=sorted(ALLOCATORS), default=list(ALLOCATORS)
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-write", action="store_true", help="do not write the results file")
    parser.add_argument(
        "--files", action="store_true", help="measure `merit predict` on WAV files instead"
    )
    args = parser.parse_args()
    if args.files:
        files_main(args)
        return

    if args.worker:
        row = _worker(args.minutes[0], args.chunk_seconds, args.batch_size, args.threads)
        print(json.dumps(row))
        return

    table, summary = [], []
    for allocator in args.allocators:
        rows = []
        for minutes in args.minutes:
            row = _run_worker(minutes, allocator, args)
            rows.append(row)
            print(
                f"[{allocator}] {minutes:>5g} min: {row['chunks']} chunks in "
                f"{row['seconds']:.1f} s; peak +{row['peak_increase_mib']:.1f} MiB incl. result "
                f"({row['result_mib']:.1f} MiB), {row['working_mib']:.1f} MiB excluding it; "
                f"numpy/Python live peak excl. result {row['traced_working_mib']:.1f} MiB",
                flush=True,
            )
            table.append(
                f"| {allocator} | {row['minutes']:g} | {row['chunks']} | {row['seconds']:.1f} | "
                f"{row['input_mib']:.1f} | {row['result_mib']:.1f} | "
                f"{row['peak_increase_mib']:.1f} | {row['working_mib']:.1f} | "
                f"{row['traced_working_mib']:.1f} |"
            )
        pairs = [(rows[0], row) for row in rows[1:]]
        if len(rows) > 2:
            pairs.append((rows[-2], rows[-1]))
        for low, high in pairs:
            excl = high["working_mib"] / low["working_mib"]
            incl = high["peak_increase_mib"] / low["peak_increase_mib"]
            message = (
                f"[{allocator}] peak({high['minutes']:g} min) / peak({low['minutes']:g} min): "
                f"{excl:.2f} excluding the result arrays, {incl:.2f} including them"
            )
            print(message)
            summary.append(f"- {message}")

    command = (
        "python benchmarks/long_audio.py --minutes "
        + " ".join(f"{m:g}" for m in args.minutes)
        + f" --chunk-seconds {args.chunk_seconds:g} --batch-size {args.batch_size}"
        + f" --threads {args.threads} --allocators {' '.join(args.allocators)}"
    )
    lines = [
        "# Peak memory of `analyze` on long audio",
        "",
        f"Command: `{command}`",
        "",
        "Tiny random MERIT model (4-layer 64-wide WavLM-style backbone), synthetic noise at "
        "16 kHz, one fresh process per length.",
        "",
        "- *peak incl. result*: kernel `VmHWM` after resetting it via `/proc/self/clear_refs` "
        "just before `analyze`, minus the RSS at that moment (model and input already resident).",
        "- *result*: the enhanced waveform plus the routing matrices returned to the caller; "
        "they necessarily grow with the length.",
        "- *peak excl. result*: the previous minus the result bytes: working memory.",
        "- *numpy/Python live*: `tracemalloc` peak of live numpy and Python allocations during "
        "`analyze`, minus the result bytes (torch tensors are not traced; they are freed after "
        "every batch).",
        "- *default*: glibc malloc as users run it; *fixed-mmap*: `MALLOC_MMAP_THRESHOLD_=131072`, "
        "so large blocks are always mmap'ed and handed back on free, never kept in the heap.",
        "",
        "| allocator | minutes | chunks | time (s) | input (MiB) | result (MiB) "
        "| peak incl. result (MiB) | peak excl. result (MiB) | numpy/Python live (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        *table,
        "",
        *summary,
    ]
    if not args.no_write:
        write_report(RESULTS, lines)


if __name__ == "__main__":
    main()
