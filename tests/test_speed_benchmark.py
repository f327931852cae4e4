"""benchmarks/speed.py's operation count: it must count the routed experts' work exactly."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from transformers import WhisperConfig

from modeling_merit import MeritConfig, MeritModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import speed  # noqa: E402

TINY_WHISPER = dict(
    num_mel_bins=80,
    d_model=32,
    encoder_layers=2,
    encoder_attention_heads=2,
    encoder_ffn_dim=64,
    decoder_layers=1,
    max_source_positions=1500,
)


def _model(top_k: int) -> MeritModel:
    torch.manual_seed(0)
    config = MeritConfig(
        backbone_config=WhisperConfig(**TINY_WHISPER),
        hidden_size=16,
        expert_hidden_size=24,
        num_experts=4,
        router_top_k=top_k,
    )
    return MeritModel(config).eval()


def test_each_extra_routed_expert_adds_its_two_matmuls_per_frame_and_task():
    x = torch.randn(1, 16000) * 0.1
    top1 = _model(1)
    one, two = speed.flop_ratio(top1, x), speed.flop_ratio(_model(2), x)
    assert one["encoder_flops"] == two["encoder_flops"] > 0
    assert two["flops_ratio"] == pytest.approx(two["sparse_flops"] / two["encoder_flops"])
    assert one["flops_ratio"] > 1.0
    frames = int(top1.frame_lengths(torch.tensor([x.shape[-1]]))[0])
    tasks, h, e = 2, 16, 24
    # fc_in (h -> e) and fc_out (e -> h), 2 operations per multiply-add, for every frame of
    # each task's routing: the second expert per frame is exactly this much more work.
    assert two["sparse_flops"] - one["sparse_flops"] == tasks * frames * 2 * (h * e + e * h)


def test_time_parts_times_each_merit_part_once_per_call_and_leaves_no_hooks():
    """Every part is reported (integration summed over its two per-task calls), the parts
    and the rest add up to a forward, and the model carries no timing hooks afterwards."""
    model = _model(2)
    x = torch.randn(1, 16000) * 0.1
    calls = {name: 0 for name in speed.MERIT_PARTS}
    for name in speed.MERIT_PARTS:
        getattr(model, name).register_forward_hook(
            lambda *_, name=name: calls.__setitem__(name, calls[name] + 1)
        )
    parts = speed.time_parts(model, x, repeats=3)
    assert set(parts) == {*speed.MERIT_PARTS, "encoder"}
    assert all(ms > 0 for ms in parts.values())
    # warm-up + 3 repeats; integration runs once per task (SER and SE), the mixture routes
    # both tasks in one call
    assert calls == {"integration": 8, "mixture": 4, "ser_head": 4, "se_head": 4}
    for name in speed.MERIT_PARTS:
        module = getattr(model, name)
        assert not module._forward_pre_hooks
        assert len(module._forward_hooks) == 1  # only this test's counter is left
