"""Training settings for real hardware, run on the CPU: bf16 autocast (and fp16's clear
refusal without a GPU), gradient accumulation, activation checkpointing (same gradients as
without), DataLoader workers. Multi-process DDP is tests/test_ddp.py."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_batch, make_model
from test_training import LOOP_ONLY, TINY
from transformers import TrainerCallback

from merit import training


class _Probe(TrainerCallback):
    """Counts forward passes of the model and records the dtype the experts computed in."""

    def __init__(self) -> None:
        self.forwards = 0
        self.dtypes: set[torch.dtype] = set()
        self.checkpointing: bool | None = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        model.register_forward_hook(self._count)
        model.mixture.experts[0].register_forward_hook(self._dtype)
        self.checkpointing = model.is_activation_checkpointing

    def _count(self, module, inputs, output):
        if module.training:
            self.forwards += 1

    def _dtype(self, module, inputs, output):
        if module.training:
            self.dtypes.add(output.dtype)


def _run(tiny_corpus, tmp_path, *extra: str) -> tuple[dict, _Probe]:
    probe = _Probe()
    results = training.main(
        [
            *("--dataset", str(tiny_corpus), "--output_dir", str(tmp_path / "run")),
            *("--max_steps", "2", "--backbone_frozen_steps", "1", "--logging_steps", "1"),
            *TINY,
            *LOOP_ONLY,
            *extra,
        ],
        callbacks=[probe],
    )
    return results, probe


def test_bf16_autocasts_on_the_cpu(tiny_corpus, tmp_path):
    results, probe = _run(tiny_corpus, tmp_path, "--bf16", "True")
    assert probe.dtypes == {torch.bfloat16}  # the experts ran under bf16 autocast
    assert math.isfinite(results["train_loss"]) and results["global_step"] == 2
    plain, probe32 = _run(tiny_corpus, tmp_path / "fp32", "--bf16", "False")
    assert probe32.dtypes == {torch.float32}


def _cpuinfo(tmp_path, flags: str):
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nflags\t\t: fpu sse2 avx2 {flags}\n\nprocessor\t: 1\n")
    return path


def test_native_bf16_reads_the_cpu_flags(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert training.native_bf16(_cpuinfo(tmp_path, "avx512f avx512_bf16"))
    assert training.native_bf16(_cpuinfo(tmp_path, "amx_tile amx_bf16"))
    assert not training.native_bf16(_cpuinfo(tmp_path, "avx512f avx512bw"))  # no bf16 unit
    assert not training.native_bf16(tmp_path / "missing")  # not Linux: fp32


def test_precision_defaults_to_bf16_only_where_native(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for native in (True, False):
        monkeypatch.setattr(training, "native_bf16", lambda native=native: native)
        args = training.parse_args(["--output_dir", str(tmp_path)])[2]
        assert args.bf16 is native
        # An explicit flag wins over the machine.
        assert training.parse_args(["--output_dir", str(tmp_path), "--bf16", str(not native)])[
            2
        ].bf16 is (not native)


def test_fp16_without_a_gpu_is_a_clear_error(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: fp16 is valid here")
    with pytest.raises(SystemExit):
        training.parse_args(["--fp16", "True", "--output_dir", "x"])
    assert "--fp16 needs a GPU" in capsys.readouterr().err


def test_gradient_accumulation_runs_every_micro_batch(tiny_corpus, tmp_path):
    results, probe = _run(tiny_corpus, tmp_path, "--gradient_accumulation_steps", "3")
    assert results["global_step"] == 2 and probe.forwards == 6


def test_dataloader_workers_feed_the_same_training(tiny_corpus, tmp_path):
    results, probe = _run(tiny_corpus, tmp_path, "--dataloader_num_workers", "2")
    assert results["global_step"] == 2 and probe.forwards == 2
    assert math.isfinite(results["train_loss"])


def test_activation_checkpointing_trains_with_the_same_gradients(tiny_corpus, tmp_path):
    results, probe = _run(tiny_corpus, tmp_path, "--activation_checkpointing", "True")
    assert probe.checkpointing is True and results["global_step"] == 2

    x, mask = make_batch((8000, 6000))
    labels = torch.tensor([0, 1])

    def gradients(checkpointing: bool) -> dict[str, torch.Tensor]:
        model = make_model(seed=0).train()
        if checkpointing:
            model.activation_checkpointing_enable()
        torch.manual_seed(1)  # dropout draws replayed exactly by the recomputation
        model(x, attention_mask=mask, labels=labels, clean_values=x).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain, checkpointed = gradients(False), gradients(True)
    assert plain.keys() == checkpointed.keys() and any("backbone" in n for n in plain)
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, atol=1e-6, rtol=1e-5, msg=name)
