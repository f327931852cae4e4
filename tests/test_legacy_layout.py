"""Checkpoints saved before the model was reshaped (2026-11 layout: ``expert_pool``, ``gates``,
``task_norm``, ``shared_projection`` at the top level) still load, and give exactly the outputs
that code computed. ``tests/fixtures/legacy_layout`` holds such folders, written by the old code
with its outputs on a fixed padded batch (``reference_outputs.safetensors``)."""

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from modeling_merit import MeritModel

FIXTURES = Path(__file__).parent / "fixtures" / "legacy_layout"


@pytest.mark.parametrize("name", ["sparse", "shared", "dense"])
def test_legacy_checkpoint_loads_with_identical_outputs(name):
    folder = FIXTURES / name
    with safe_open(str(folder / "model.safetensors"), "pt") as handle:
        old_keys = set(handle.keys())
    assert any(k.startswith(("expert_pool.", "shared_projection.")) for k in old_keys)
    assert any(k.startswith("task_norm.") for k in old_keys)

    model = MeritModel.from_pretrained(folder).eval()
    # Every stored tensor landed somewhere: the loaded weights equal the file's, renamed.
    state = model.state_dict()
    stored = load_file(str(folder / "model.safetensors"))
    assert len(state) == len(stored)
    renamed = {
        "expert_pool.experts.": "mixture.experts.",
        "gates.": "mixture.gates.",
        "task_norm.": "mixture.norm.",
        "shared_projection.": "mixture.feed_forward.",
    }
    for key, value in stored.items():
        new = next((n + key[len(o) :] for o, n in renamed.items() if key.startswith(o)), key)
        torch.testing.assert_close(state[new], value, rtol=0, atol=0, msg=key)

    ref = load_file(str(folder / "reference_outputs.safetensors"))
    with torch.no_grad():
        out = model(ref["input_values"], attention_mask=ref["attention_mask"])
    assert torch.equal(out.frame_mask, ref["frame_mask"].bool())
    compared = 0
    for key, value in ref.items():
        if key in ("input_values", "attention_mask", "frame_mask"):
            continue
        field, _, task = key.partition(".")
        actual = getattr(out, field)[task] if task else getattr(out, field)
        if field == "routing_indices":
            assert torch.equal(actual, value), key
        else:
            torch.testing.assert_close(actual, value, rtol=1e-5, atol=1e-6, msg=key)
        compared += 1
    assert compared >= 3


def test_saving_writes_the_new_layout_and_round_trips(tmp_path):
    model = MeritModel.from_pretrained(FIXTURES / "sparse").eval()
    model.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as handle:
        keys = set(handle.keys())
    assert not any(k.startswith(("expert_pool.", "gates.", "task_norm.")) for k in keys)
    assert any(k.startswith("mixture.gates.ser.") for k in keys)
    again = MeritModel.from_pretrained(tmp_path).eval()
    ref = load_file(str(FIXTURES / "sparse" / "reference_outputs.safetensors"))
    with torch.no_grad():
        a = model(ref["input_values"], attention_mask=ref["attention_mask"])
        b = again(ref["input_values"], attention_mask=ref["attention_mask"])
    assert torch.equal(a.logits, b.logits)
    assert torch.equal(a.enhanced_waveform, b.enhanced_waveform)
