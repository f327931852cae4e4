"""The authors' release as options: concatenation, plain experts, hard top-1 gates, their heads.

The reference forward below is written from the description of the release
(``shared/reference/sparse-merit-official.md``) with plain torch operations on the model's own
weights, independently of the modules under test.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_model

from modeling_merit import MeritModel, minimal_backbone_config, release_config

SR = 16000


def release_model(**overrides) -> MeritModel:
    torch.manual_seed(0)
    config = release_config(minimal_backbone_config(), expert_hidden_size=48, se_lstm_size=24)
    for key, value in overrides.items():
        setattr(config, key, value)
    return MeritModel(config).eval()


def reference_forward(
    model: MeritModel, wave: torch.Tensor, mean: float | None = None, std: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Emotion logits and enhanced waveform of one utterance, by the description (waveform
    normalised per utterance, or with a stored ``mean`` and ``std`` as the release does)."""
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    if mean is None:
        x = (wave - wave.mean()) / wave.std(unbiased=False).clamp_min(1e-5)
    else:
        x = (wave - mean) / std
    states = model.backbone(x[None], output_hidden_states=True).hidden_states
    layers = len(states)
    normed = [
        F.layer_norm(
            h[0],
            h.shape[-1:],
            sd[f"integration.layer_norms.{i}.weight"],
            sd[f"integration.layer_norms.{i}.bias"],
        )
        for i, h in enumerate(states)
    ]
    feats = torch.cat(normed, -1)  # frames, layers * width
    assert feats.shape[-1] == layers * model.config.backbone_hidden_size

    def task_feature(task: str) -> torch.Tensor:
        gate = feats @ sd[f"mixture.gates.{task}.router.weight"].T
        gate = gate + sd[f"mixture.gates.{task}.router.bias"]
        one_hot = F.one_hot(gate.softmax(-1).argmax(-1), model.config.num_experts).float()
        outputs = []
        for e in range(model.config.num_experts):
            inner = F.relu(
                feats @ sd[f"mixture.experts.{e}.fc_in.weight"].T
                + sd[f"mixture.experts.{e}.fc_in.bias"]
            )
            outputs.append(
                inner @ sd[f"mixture.experts.{e}.fc_out.weight"].T
                + sd[f"mixture.experts.{e}.fc_out.bias"]
            )
        return (torch.stack(outputs, 1) * one_hot[..., None]).sum(1)  # every expert, then mask

    ser = task_feature("ser")
    h = torch.tanh(
        ser @ sd["ser_head.pooling.sap_linear.weight"].T + sd["ser_head.pooling.sap_linear.bias"]
    )
    w = (h @ sd["ser_head.pooling.attention"]).squeeze(-1).softmax(0)[:, None]
    mean = (w * ser).sum(0)
    std = ((w * ser * ser).sum(0) - mean**2).clamp_min(1e-5).sqrt()
    pooled = torch.cat([mean, std])
    hidden = pooled @ sd["ser_head.classifier.1.weight"].T + sd["ser_head.classifier.1.bias"]
    hidden = F.layer_norm(
        hidden, hidden.shape, sd["ser_head.classifier.2.weight"], sd["ser_head.classifier.2.bias"]
    )
    logits = (
        F.relu(hidden) @ sd["ser_head.classifier.5.weight"].T + sd["ser_head.classifier.5.bias"]
    )

    se = task_feature("se")
    n_fft, hop = model.config.n_fft, model.config.hop_length
    window = torch.hamming_window(n_fft)
    spec = torch.stft(
        wave, n_fft, hop, window=window, center=True, pad_mode="constant", return_complex=True
    )
    log_mag = torch.log1p(spec.abs() + 1e-8)  # F, T
    frames = spec.shape[-1]
    repeated = se[torch.clamp(torch.arange(frames) // 2, max=se.shape[0] - 1)]
    inputs = torch.cat([log_mag.T, repeated], -1) @ sd["se_head.encoder_in.weight"].T
    inputs = inputs + sd["se_head.encoder_in.bias"]
    lstm = torch.nn.LSTM(
        inputs.shape[-1], inputs.shape[-1], num_layers=2, bidirectional=True, batch_first=True
    )
    lstm.load_state_dict({k[len("se_head.blstm.") :]: v for k, v in sd.items() if "blstm" in k})
    encoded = lstm(inputs[None])[0][0]
    half = encoded.shape[-1] // 2
    summed = encoded[:, :half] + encoded[:, half:]
    mask = torch.sigmoid(summed @ sd["se_head.mask_out.weight"].T + sd["se_head.mask_out.bias"]).T
    magnitude = torch.expm1(log_mag * mask)
    enhanced_spec = magnitude * spec / spec.abs().clamp_min(1e-12)
    enhanced = torch.istft(enhanced_spec, n_fft, hop, window=window, center=True, length=len(wave))
    return logits, enhanced


def test_release_model_matches_the_described_forward():
    model = release_model()
    wave = torch.randn(12_000, generator=torch.Generator().manual_seed(1)) * 0.1
    with torch.no_grad():
        out = model(wave[None])
        logits, enhanced = reference_forward(model, wave)
    torch.testing.assert_close(out.logits[0], logits, atol=1e-4, rtol=1e-4)
    # torch.istft and our overlap-add agree away from the edges (the last frame's window).
    torch.testing.assert_close(
        out.enhanced_waveform[0, :11_600], enhanced[:11_600], atol=1e-4, rtol=1e-3
    )
    assert out.routing_indices["ser"].shape[-1] == 1  # top-1
    assert torch.all(out.routing_weights["ser"] == 1.0)  # hard one-hot mask


def test_release_model_padded_batch_equals_one_by_one():
    model = release_model()
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, 14_000, generator=gen) * 0.1
    lengths = [14_000, 9_000, 5_000]
    mask = (torch.arange(14_000)[None] < torch.tensor(lengths)[:, None]).long()
    with torch.no_grad():
        batch = model(x * mask, attention_mask=mask)
        for row, n in enumerate(lengths):
            single = model(x[row : row + 1, :n])
            torch.testing.assert_close(batch.logits[row], single.logits[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(
                batch.enhanced_waveform[row, :n], single.enhanced_waveform[0], atol=1e-5, rtol=0
            )


@pytest.mark.parametrize(
    "weighting,gate_learns", [("hard", False), ("probability", True), ("topk_softmax", False)]
)
def test_which_top1_weighting_lets_the_task_loss_train_the_gate(weighting, gate_learns):
    """With top-1, only the gate probability as weight carries the task gradient to the gate;
    the release's hard mask and the top-k softmax (always 1 for k=1) do not."""
    model = release_model(router_weighting=weighting, load_balance_coef=0.0)
    model.mixture.routing.__init__(model.config)
    model.train()
    x = torch.randn(2, 8000, generator=torch.Generator().manual_seed(3)) * 0.1
    out = model(x, labels=torch.tensor([0, 1]), clean_values=x)
    (out.ser_loss + out.se_loss).backward()
    grad = model.mixture.gates["ser"].router.weight.grad
    moved = grad is not None and float(grad.abs().sum()) > 0
    assert moved is gate_learns
    if weighting == "hard":
        assert float(out.aux_loss.detach()) == 0.0  # no auxiliary loss trains it either


def test_global_input_normalisation_uses_the_stored_statistics():
    stored = make_model(input_mean=0.05, input_std=0.2).eval()
    per_utterance = make_model().eval()
    per_utterance.load_state_dict(stored.state_dict())
    x = torch.randn(1, 8000, generator=torch.Generator().manual_seed(4)) * 0.1 + 0.05
    with torch.no_grad():
        expected = stored.backbone((x - 0.05) / 0.2, output_hidden_states=True).hidden_states[-1]
        got, _ = stored.backbone_features(x)
        other, _ = per_utterance.backbone_features(x)
    torch.testing.assert_close(got[-1, 0], expected[0], atol=1e-5, rtol=0)
    assert not torch.allclose(got[-1], other[-1], atol=1e-3)


def test_release_preset_saves_and_reloads(tmp_path):
    model = release_model()
    model.save_pretrained(tmp_path)
    loaded = MeritModel.from_pretrained(tmp_path).eval()
    x = torch.randn(1, 6000, generator=torch.Generator().manual_seed(5)) * 0.1
    with torch.no_grad():
        np.testing.assert_allclose(model(x).logits.numpy(), loaded(x).logits.numpy(), atol=1e-6)
    assert loaded.config.integration == "concat" and loaded.config.se_head_type == "blstm"
    assert loaded.config.label_names == ["angry", "sad", "happy", "neutral"]
