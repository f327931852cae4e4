"""ONNX export: DFT-based enhancement head, onnxruntime parity, model restored after export."""

import numpy as np
import pytest
import torch
from conftest import make_model

from merit.onnx_export import (
    DFTEnhancementHead,
    OnnxMerit,
    export_onnx,
    exportable,
    onnx_output_names,
)

pytest.importorskip("onnx", reason="ONNX export needs the 'onnx' package (pip install .[onnx])")
ort = pytest.importorskip(
    "onnxruntime", reason="ONNX parity needs 'onnxruntime' (pip install .[onnx])"
)

DIMS = ["arousal", "valence", "dominance"]


def busy_model(**overrides):
    """A tiny model whose enhancement mask really varies over time and frequency."""
    model = make_model(dimension_names=DIMS, **overrides).eval()
    with torch.no_grad():
        torch.manual_seed(1)
        model.se_head.mask_out.weight.normal_(0, 0.5)
        model.se_head.mask_out.bias.normal_(0, 1.0)
    return model


def test_dft_transforms_match_torch_stft():
    model = busy_model()
    head = DFTEnhancementHead(model.se_head)
    x = torch.randn(2, 7_001) * 0.3
    real, imag = head.stft(x)
    reference = model.se_head.stft(x)
    torch.testing.assert_close(real, reference.real, atol=1e-4, rtol=0)
    torch.testing.assert_close(imag, reference.imag, atol=1e-4, rtol=0)
    lengths = torch.tensor([7_001, 5_000])
    expected = model.se_head.istft(reference, lengths, x.shape[-1])
    actual = head.istft(real, imag, lengths, x.shape[-1])
    # Past an utterance's end the envelope is ~0 (the model zeroes those samples anyway).
    valid = torch.arange(x.shape[-1])[None, :] < lengths[:, None]
    torch.testing.assert_close(actual[valid], expected[valid], atol=1e-5, rtol=0)


def test_exportable_gives_the_same_numbers_and_restores_the_model():
    model = busy_model()
    x = torch.randn(2, 9_000) * 0.1
    head = model.se_head
    with torch.no_grad():
        reference = model(x)
        with exportable(model):
            assert isinstance(model.se_head, DFTEnhancementHead)
            assert not model.mixture.dispatch
            swapped = model(x)
    torch.testing.assert_close(swapped.logits, reference.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        swapped.enhanced_waveform, reference.enhanced_waveform, atol=1e-5, rtol=0
    )
    assert model.se_head is head and model.mixture.dispatch
    model.train()
    with pytest.raises(RuntimeError, match="boom"), exportable(model):
        raise RuntimeError("boom")
    assert model.se_head is head and model.mixture.dispatch and model.training


def test_onnxruntime_matches_pytorch_for_other_batch_sizes_and_lengths(tmp_path):
    model = busy_model()
    path = export_onnx(model, tmp_path / "merit.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    assert names == ["logits", "dimensions", "enhanced_waveform"]
    assert [i.name for i in session.get_inputs()] == ["input_values"]
    for batch, samples in ((1, 16_000), (3, 12_345)):
        x = torch.randn(batch, samples, generator=torch.Generator().manual_seed(samples)) * 0.1
        with torch.no_grad():
            reference = model(x)
        logits, dims, wave = session.run(None, {"input_values": x.numpy()})
        assert wave.shape == (batch, samples)
        np.testing.assert_allclose(logits, reference.logits.numpy(), atol=1e-4)
        np.testing.assert_allclose(dims, reference.dimensions.numpy(), atol=1e-4)
        np.testing.assert_allclose(wave, reference.enhanced_waveform.numpy(), atol=1e-3)
        assert np.abs(wave - x.numpy()).max() > 1e-2, "mask must change the audio for this test"


@pytest.mark.parametrize(
    "overrides,names",
    [
        ({"tasks": ["se"]}, ["enhanced_waveform"]),
        ({"tasks": ["ser"], "routing": "shared"}, ["logits"]),
        ({"dimension_names": DIMS, "categorical_head": False}, ["dimensions", "enhanced_waveform"]),
    ],
)
def test_outputs_follow_the_model_heads(overrides, names):
    assert onnx_output_names(make_model(**overrides)) == names


def test_cli_export_runs_under_onnxruntime(tmp_path, capsys):
    from merit import cli
    from modeling_merit import MeritFeatureExtractor

    model = make_model(tasks=["ser"], routing="dense").eval()
    model.save_pretrained(tmp_path / "model")
    MeritFeatureExtractor().save_pretrained(tmp_path / "model")
    out = tmp_path / "exported" / "model.onnx"
    assert cli.main(["export-onnx", "--model", str(tmp_path / "model"), "--out", str(out)]) == 0
    assert "outputs: logits" in capsys.readouterr().out
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((2, 8_000)).astype(np.float32) * 0.1
    (logits,) = session.run(None, {"input_values": x})
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).logits.numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-4)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = busy_model()
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "merit.onnx")
    return model, OnnxMerit(path)


def test_runner_takes_padded_batches_exactly_as_pytorch(exported):
    model, runner = exported
    assert runner.label_names == list(model.config.label_names)
    assert runner.min_input_samples == model.min_input_samples
    lengths = [9_000, 16_000, 5_000, 16_000]
    x = torch.randn(4, 16_000, generator=torch.Generator().manual_seed(5)) * 0.1
    mask = (torch.arange(16_000)[None, :] < torch.tensor(lengths)[:, None]).long()
    x = x * mask  # padding is zeros, as the feature extractor writes it
    with torch.no_grad():
        reference = model(x, attention_mask=mask)
    got = runner(x.numpy(), mask.numpy())
    np.testing.assert_allclose(got["logits"], reference.logits.numpy(), atol=1e-4)
    np.testing.assert_allclose(got["dimensions"], reference.dimensions.numpy(), atol=1e-4)
    np.testing.assert_allclose(
        got["enhanced_waveform"], reference.enhanced_waveform.numpy(), atol=1e-3
    )
    one = runner(x[2, :5_000].numpy())  # a single 1-D utterance
    np.testing.assert_allclose(one["logits"][0], got["logits"][2], atol=1e-5)


@pytest.mark.parametrize(
    "values,mask,message",
    [
        (np.array([[0.1, np.nan] * 4000], np.float32), None, "row 0 contains NaN"),
        (np.zeros((2, 100), np.float32), None, "row 0 has 100 samples; .* at least 400"),
        (np.zeros((1, 8000), np.float32), np.ones((1, 7999)), "attention_mask shape"),
        (np.zeros((1, 8000), np.float32), np.full((1, 8000), 2), "only 0 and 1"),
        (np.zeros((1, 8000), np.float32), np.r_[np.zeros(10), np.ones(7990)][None], "right"),
        (np.zeros((2, 2, 800), np.float32), None, r"\(batch, samples\)"),
    ],
)
def test_runner_refuses_what_the_graph_would_get_wrong(exported, values, mask, message):
    _, runner = exported
    with pytest.raises(ValueError, match=message):
        runner(values, mask)
