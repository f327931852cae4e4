"""Sparse MERIT model: routing, losses, padding invariance, errors."""

import math

import numpy as np
import pytest
import torch
from conftest import assert_padded_batch_equals_one_by_one, make_batch, make_config, make_model

from modeling_merit import MeritConfig, MeritFeatureExtractor, MeritModel, minimal_backbone_config
from modeling_merit.mixture_merit import MeritMixtureOfExperts
from modeling_merit.modeling_merit import (
    concordance_correlation_loss,
    load_balancing_loss,
    router_z_loss,
)

SR = 16000


@pytest.mark.parametrize("routing", ["sparse", "dense", "shared"])
@pytest.mark.parametrize("tasks", [["ser", "se"], ["ser"], ["se"]])
def test_forward_backward_every_mode(routing, tasks):
    model = make_model(routing=routing, tasks=tasks).train()
    x, mask = make_batch()
    out = model(x, attention_mask=mask, labels=torch.tensor([0, 3]), clean_values=x * 0.5)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert ("ser" in tasks) == (out.logits is not None) == (out.ser_loss is not None)
    assert ("se" in tasks) == (out.enhanced_waveform is not None) == (out.se_loss is not None)
    if out.enhanced_waveform is not None:
        assert out.enhanced_waveform.shape == x.shape
    if routing == "shared":
        assert out.routing_indices is None and out.aux_loss is None
    else:
        k = 2 if routing == "sparse" else 4
        for task in tasks:
            assert out.routing_indices[task].shape[-1] == k
            assert torch.isfinite(out.aux_loss)
    trained = [p for n, p in model.named_parameters() if p.requires_grad and "backbone" not in n]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trained)
    # The conv feature encoder is frozen by default.
    assert not any(p.requires_grad for p in model.backbone.feature_extractor.parameters())


def test_sparse_gradients_reach_only_chosen_experts():
    model = make_model(tasks=["ser"], num_experts=16, router_top_k=1).eval()
    x, _ = make_batch(lengths=(4000,))
    out = model(x, labels=torch.tensor([1]))
    out.loss.backward()
    chosen = set(out.routing_indices["ser"][out.frame_mask.bool()].flatten().tolist())
    assert 0 < len(chosen) < 16, "test needs some experts left out"
    for index, expert in enumerate(model.mixture.experts):
        grad = expert.fc_in.weight.grad
        has_grad = grad is not None and grad.abs().sum() > 0
        assert has_grad == (index in chosen), index


def test_sparse_routing_renormalises_top_k_weights():
    model = make_model().eval()
    x, mask = make_batch()
    out = model(x, attention_mask=mask)
    for task in ("ser", "se"):
        weights = out.routing_weights[task]
        valid = out.frame_mask.bool()
        torch.testing.assert_close(weights[valid].sum(-1), torch.ones(int(valid.sum())))
        assert (out.routing_indices[task][~valid] == -1).all()
        assert (weights[~valid] == 0).all()


def test_load_balancing_loss_matches_formula():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]])
    # Top-1: f = [1/2, 1/2, 0], P = [0.4, 0.5, 0.1] -> 3 * (0.2 + 0.25) = 1.35
    assert load_balancing_loss(probs, torch.tensor([[0], [1]]), 3).item() == pytest.approx(1.35)
    # Top-2: slots [0,1,1,2] -> f = [1/4, 1/2, 1/4] -> 3 * (0.1 + 0.25 + 0.025) = 1.125
    top2 = torch.tensor([[0, 1], [1, 2]])
    assert load_balancing_loss(probs, top2, 3).item() == pytest.approx(1.125)
    # A uniform router scores exactly 1.
    uniform = torch.full((4, 4), 0.25)
    assert load_balancing_loss(uniform, torch.tensor([[0], [1], [2], [3]]), 4).item() == 1.0


def test_router_z_loss_matches_formula():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    expected = (math.log(2.0) ** 2 + math.log(4.0) ** 2) / 2
    assert router_z_loss(logits).item() == pytest.approx(expected)


def test_dense_pool_is_weighted_sum_of_all_experts():
    config = make_config(routing="dense")
    torch.manual_seed(0)
    pool = MeritMixtureOfExperts(config).eval()
    tokens = torch.randn(10, config.hidden_size)
    probs = torch.randn(10, config.num_experts).softmax(-1)
    indices = torch.arange(config.num_experts).expand(10, -1)
    expected = sum(probs[:, e : e + 1] * pool.experts[e](tokens) for e in range(4))
    torch.testing.assert_close(pool.combine(tokens, indices, probs), expected)


@pytest.mark.parametrize("routing", ["sparse", "dense"])
def test_routing_every_task_at_once_equals_one_task_at_a_time(routing):
    """The pool computes both tasks' frames in one pass per expert; each task's output,
    choices, probabilities and auxiliary loss are what routing that task alone gives, and
    gradients reach both gates and the experts."""
    config = make_config(routing=routing)
    torch.manual_seed(0)
    pool = MeritMixtureOfExperts(config).eval()
    mask = torch.tensor([[True] * 9 + [False] * 3, [True] * 12])
    hidden = {
        task: torch.randn(2, 12, config.hidden_size, requires_grad=True)
        for task in "ser se".split()
    }
    together = pool(hidden, mask)
    for task in hidden:
        alone = pool({task: hidden[task]}, mask)[task]
        for field in ("hidden", "expert_indices", "expert_weights", "router_probs", "aux_loss"):
            torch.testing.assert_close(getattr(together[task], field), getattr(alone, field))
        assert (together[task].hidden[~mask] == 0).all()
    sum(out.hidden.sum() + out.aux_loss for out in together.values()).backward()
    assert all(pool.gates[task].router.weight.grad.abs().sum() > 0 for task in hidden)
    assert all(h.grad.abs().sum() > 0 for h in hidden.values())


def test_dispatch_equals_static_all_expert_compute():
    model = make_model().eval()
    x, mask = make_batch()
    with torch.no_grad():
        dispatched = model(x, attention_mask=mask)
        model.set_expert_dispatch(False)
        static = model(x, attention_mask=mask)
    torch.testing.assert_close(dispatched.logits, static.logits)
    torch.testing.assert_close(dispatched.enhanced_waveform, static.enhanced_waveform)


@pytest.mark.parametrize("norm", ["layer", "group"])
@pytest.mark.parametrize("backbone", ["wavlm", "wav2vec2", "hubert"])
def test_padded_batch_equals_one_by_one(backbone, norm):
    config = make_config(
        backbone_config=minimal_backbone_config(
            backbone, feat_extract_norm=norm, do_stable_layer_norm=norm == "layer"
        )
    )
    torch.manual_seed(0)
    assert_padded_batch_equals_one_by_one(MeritModel(config).eval())


def test_enhancement_head_reconstructs_like_torch_istft():
    """With the mask forced to 1 the head must give back the input (perfect reconstruction)."""
    model = make_model(tasks=["se"]).eval()
    torch.nn.init.constant_(model.se_head.mask_out.bias, 50.0)
    x, _ = make_batch(lengths=(7000,))
    with torch.no_grad():
        out = model(x)
    torch.testing.assert_close(out.enhanced_waveform, x, atol=1e-5, rtol=1e-4)


def test_mask_projects_before_interpolating_with_the_same_numbers():
    """``predict_mask`` applies the first layer's context half at the backbone's frame rate and
    interpolates after: it must equal the mask network on [interpolated frames, log-magnitude]
    (the head as written in the paper), per utterance of a padded batch."""
    model = make_model(tasks=["se"]).double().eval()
    head = model.se_head
    torch.nn.init.normal_(head.mask_out.weight, std=0.1)  # a mask that is not all pass-through
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 30, model.config.hidden_size, generator=gen, dtype=torch.float64)
    magnitude = torch.rand(2, head.n_fft // 2 + 1, 61, generator=gen, dtype=torch.float64)
    frame_lengths = torch.tensor([30, 17])
    with torch.no_grad():
        context = head.frames_to_stft(hidden, frame_lengths, magnitude.shape[-1])
        features = torch.log(magnitude + 1e-5).transpose(1, 2)
        inputs = torch.cat([context, features], -1)
        expected = torch.sigmoid(head.mask_out(head.mask_net(inputs))).transpose(1, 2)
        actual = head.predict_mask(hidden, frame_lengths, magnitude)
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-12)
    assert actual.std() > 0.01


@pytest.mark.parametrize("n_fft, hop", [(512, 160), (256, 80), (400, 160), (160, 160)])
def test_overlap_add_equals_fold(n_fft, hop):
    """The enhancement head's overlap-add is ``F.fold`` (col2im) done by shifted additions."""
    model = make_model(tasks=["se"], n_fft=n_fft, hop_length=hop, win_length=n_fft)
    chunks = torch.randn(3, 11, n_fft, dtype=torch.float64, requires_grad=True)
    length = 10 * hop + n_fft
    expected = torch.nn.functional.fold(
        chunks.transpose(1, 2), output_size=(1, length), kernel_size=(1, n_fft), stride=(1, hop)
    ).reshape(3, length)
    actual = model.se_head.overlap_add(chunks)
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-12)
    weights = torch.randn_like(expected)
    (grad_expected,) = torch.autograd.grad((expected * weights).sum(), chunks)
    (grad_actual,) = torch.autograd.grad((actual * weights).sum(), chunks)
    torch.testing.assert_close(grad_actual, grad_expected, rtol=0, atol=1e-12)


def test_segmental_snr_loss_matches_the_evaluation_metric():
    """The differentiable segmental SNR equals ``merit.metrics.segmental_snr`` per utterance
    of a padded batch (frames past each utterance's end not counted)."""
    from merit.metrics import segmental_snr as metric_ssnr
    from modeling_merit.modeling_merit import segmental_snr

    gen = torch.Generator().manual_seed(0)
    lengths = torch.tensor([8000, 5123])
    clean = torch.randn(2, 8000, generator=gen, dtype=torch.float64) * 0.1
    estimate = clean + torch.randn(2, 8000, generator=gen, dtype=torch.float64) * 0.02
    estimate[1, :1000] = clean[1, :1000]  # a stretch above the 35 dB cap
    values, scored = segmental_snr(estimate, clean, lengths)
    assert scored.all()
    for i, n in enumerate(lengths.tolist()):
        expected = metric_ssnr(clean[i, :n].numpy(), estimate[i, :n].numpy())
        assert values[i].item() == pytest.approx(expected, abs=1e-6)


def test_passthrough_loss_charges_what_the_mask_takes_from_clean_examples():
    """``se_passthrough_weight`` adds 35 dB minus the enhanced clean example's segmental SNR
    (the evaluation's metric) for examples whose input is their clean reference, and nothing
    for noisy ones; its gradient raises the mask."""
    from merit.metrics import segmental_snr as metric_ssnr

    x, _ = make_batch(lengths=(8000,))
    noisy = x + 0.05 * torch.randn_like(x)
    losses = {}
    for weight in (0.0, 1.0):
        model = make_model(tasks=["se"], se_passthrough_weight=weight).eval()
        torch.nn.init.constant_(model.se_head.mask_out.bias, 0.0)  # mask ~ 0.5: costs clean
        clean_out = model(x, clean_values=x)
        losses[weight] = (clean_out.se_loss, model(noisy, clean_values=x).se_loss)
    enhanced = clean_out.enhanced_waveform[0].detach().numpy()
    cost = 35.0 - metric_ssnr(x[0].numpy(), enhanced)
    assert cost > 5
    assert (losses[1.0][0] - losses[0.0][0]).item() == pytest.approx(cost, rel=1e-4)
    assert losses[1.0][1].item() == pytest.approx(losses[0.0][1].item())  # noisy: unchanged
    losses[1.0][0].backward()
    assert model.se_head.mask_out.bias.grad.sum() < 0  # descending raises the mask
    with pytest.raises(ValueError, match="se_passthrough_weight"):
        make_config(se_passthrough_weight=-1.0)


def test_class_weights_change_the_loss():
    x, mask = make_batch()
    labels = torch.tensor([0, 1])
    plain = make_model().eval()(x, attention_mask=mask, labels=labels).ser_loss
    weighted_model = make_model(class_weights=[1.0, 5.0, 1.0, 1.0]).eval()
    weighted = weighted_model(x, attention_mask=mask, labels=labels).ser_loss
    logits = weighted_model(x, attention_mask=mask).logits
    expected = torch.nn.functional.cross_entropy(
        logits, labels, weight=torch.tensor([1.0, 5, 1, 1])
    )
    torch.testing.assert_close(weighted, expected)
    assert not torch.isclose(plain, weighted)


def test_label_smoothing_smooths_the_emotion_targets():
    """(1 - e) x cross-entropy + e x the mean of -log p over the classes, as torch defines it;
    0 is the plain loss; a value outside [0, 1) fails."""
    x, mask = make_batch()
    labels = torch.tensor([0, 3])
    torch.manual_seed(0)
    smooth = make_model(label_smoothing=0.2).eval()
    torch.manual_seed(0)
    plain = make_model().eval()
    logits = smooth(x, attention_mask=mask).logits
    log_p = logits.log_softmax(-1)
    nll = -log_p.gather(1, labels[:, None]).squeeze(1)
    expected = (0.8 * nll + 0.2 * -log_p.mean(-1)).mean()
    torch.testing.assert_close(smooth(x, attention_mask=mask, labels=labels).ser_loss, expected)
    unsmoothed = plain(x, attention_mask=mask, labels=labels).ser_loss
    torch.testing.assert_close(unsmoothed, nll.mean())
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="label_smoothing"):
            make_config(label_smoothing=bad)


def test_dimensional_head_and_ccc_loss():
    model = make_model(dimension_names=["arousal", "valence", "dominance"]).train()
    x, mask = make_batch()
    dims = torch.tensor([[0.2, 0.5, 0.1], [0.9, -0.3, 0.4]])
    out = model(x, attention_mask=mask, dimension_labels=dims, labels=torch.tensor([0, 1]))
    assert out.dimensions.shape == (2, 3) and torch.isfinite(out.dimension_loss)
    out.loss.backward()
    # CCC loss is 0 for a perfect prediction and 1 - ccc by the formula otherwise.
    pred = torch.tensor([[1.0], [2.0], [3.0]])
    assert concordance_correlation_loss(pred, pred).item() == pytest.approx(0.0, abs=1e-6)
    shifted = concordance_correlation_loss(pred + 1, pred).item()
    # var = 2/3 each, cov = 2/3, mean diff 1 -> ccc = (4/3) / (4/3 + 1) = 4/7
    assert shifted == pytest.approx(1 - 4 / 7, rel=1e-5)


def test_freeze_backbone_option():
    model = make_model(freeze_backbone=True)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.mixture.parameters())


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, message",
    [
        (torch.zeros(1, 0), "empty"),
        (torch.full((1, 8000), float("nan")), "NaN"),
        (torch.zeros(8000), "shape"),
        (torch.zeros(1, 2, 8000), "shape"),
        (torch.zeros(1, 100), "too short"),
        (torch.zeros(1, 8000, dtype=torch.long), "floating-point"),
    ],
)
def test_model_rejects_bad_input(tiny_model, bad, message):
    with pytest.raises(ValueError, match=message):
        tiny_model(bad)


def test_model_rejects_bad_labels_and_mismatched_targets(tiny_model):
    x, mask = make_batch()
    with pytest.raises(ValueError, match="class ids"):
        tiny_model(x, attention_mask=mask, labels=torch.tensor([0, 9]))
    with pytest.raises(ValueError, match="clean_values"):
        tiny_model(x, attention_mask=mask, clean_values=x[:, :100])
    with pytest.raises(ValueError, match="attention_mask"):
        tiny_model(x, attention_mask=mask[:, :100])


def test_silent_audio_gives_finite_outputs(tiny_model):
    out = tiny_model(
        torch.zeros(2, 8000), labels=torch.tensor([0, 1]), clean_values=torch.zeros(2, 8000)
    )
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.loss)
    assert out.enhanced_waveform.abs().max().item() == 0.0


def test_feature_extractor_pads_and_rejects_bad_input():
    fe = MeritFeatureExtractor()
    a, b = np.ones(800, dtype=np.float32), np.ones(500, dtype=np.float32)
    out = fe([a, b], sampling_rate=SR, return_tensors="pt")
    assert out["input_values"].shape == (2, 800)
    assert out["attention_mask"].sum(-1).tolist() == [800, 500]
    assert out["input_values"][1, 500:].abs().sum() == 0
    with pytest.raises(ValueError, match="44100 Hz"):
        fe(a, sampling_rate=44100)
    with pytest.raises(ValueError, match="mono"):
        fe([np.ones((2, 800), dtype=np.float32)], sampling_rate=SR)
    with pytest.raises(ValueError, match="empty"):
        fe(np.zeros(0, dtype=np.float32), sampling_rate=SR)
    with pytest.raises(ValueError, match="NaN"):
        fe(np.full(800, np.nan, dtype=np.float32), sampling_rate=SR)


def test_config_validation():
    with pytest.raises(ValueError, match="routing"):
        MeritConfig(backbone_config=minimal_backbone_config(), routing="magic")
    with pytest.raises(ValueError, match="tasks"):
        MeritConfig(backbone_config=minimal_backbone_config(), tasks=["asr"])
    with pytest.raises(ValueError, match="router_top_k"):
        MeritConfig(backbone_config=minimal_backbone_config(), num_experts=2, router_top_k=3)
    with pytest.raises(ValueError, match="Unsupported backbone"):
        MeritConfig(backbone_config={"model_type": "bert"})
    with pytest.raises(ValueError, match="class_weights"):
        MeritConfig(backbone_config=minimal_backbone_config(), class_weights=[1.0])


def test_wap_adapter_option_padding_invariant_and_maskable():
    model = make_model(adapter_layers=2, adapter_heads=4).eval()
    assert model.adapter is not None
    x, mask = make_batch(lengths=(8000, 5200))
    with torch.no_grad():
        together = model(x, attention_mask=mask)
        alone = model(x[1:, :5200])
    torch.testing.assert_close(alone.logits, together.logits[1:], atol=1e-5, rtol=1e-4)
    frames = together.frame_mask.shape[1]
    masked = torch.zeros(2, frames, dtype=torch.bool)
    masked[:, ::3] = True
    with torch.no_grad():
        hidden = model(x, attention_mask=mask, output_task_representations=True)
        with_mask = model(
            x, attention_mask=mask, masked_frames=masked, output_task_representations=True
        )
    assert not torch.allclose(
        hidden.task_representations["ser"], with_mask.task_representations["ser"]
    )
    model.train()
    out = model(x, attention_mask=mask, labels=torch.tensor([0, 1]), clean_values=x)
    out.loss.backward()
    assert model.adapter.layers.layers[0].linear1.weight.grad.abs().sum() > 0


def test_backbone_layerdrop_is_disabled_so_every_layer_is_weighted():
    """Pretrained configs ship LayerDrop (wavlm-base-plus: 0.05); a dropped layer would leave
    the layer weighting one hidden state short in training."""
    model = make_model(backbone_config=minimal_backbone_config(layerdrop=0.9)).train()
    assert model.config.backbone_config.layerdrop == 0.0
    x, mask = make_batch()
    for _ in range(3):
        model(x, attention_mask=mask, labels=torch.tensor([0, 1]), clean_values=x).loss.backward()


def test_config_vocabulary_names_heads_tasks_and_geometry():
    config = make_config(dimension_names=["arousal"])
    assert config.heads == ["logits", "dimensions", "enhanced_waveform"]
    assert config.label_names == ["neutral", "happy", "sad", "angry"]
    assert config.routed_tasks == ["ser", "se"] == config.integration_groups
    assert config.predicted_dimensions == ["arousal"]
    assert (config.receptive_field, config.frame_hop) == (400, 320)
    shared = make_config(routing="shared", tasks=["se"])
    assert shared.heads == ["enhanced_waveform"] and shared.label_names == []
    assert shared.routed_tasks == [] and shared.integration_groups == ["shared"]
    dims_only = make_config(categorical_head=False, dimension_names=["valence"], tasks=["ser"])
    assert dims_only.heads == ["dimensions"] and dims_only.label_names == []
    whisper = make_config(backbone_config=minimal_backbone_config("whisper"))
    assert (whisper.receptive_field, whisper.frame_hop, whisper.min_input_samples) == (
        1040,
        320,
        400,
    )
    assert whisper.normalize_input is False and make_config().normalize_input is True
    model = MeritModel(make_config())
    assert model.frame_lengths(torch.tensor([16000, 400])).tolist() == [49, 1]
    with pytest.raises(ValueError, match="integration must be one of"):
        make_config(integration="attention")
    with pytest.raises(ValueError, match="needs expert_type='plain'"):
        make_config(integration="concat")
    with pytest.raises(ValueError, match="input_mean and input_std go together"):
        make_config(input_mean=0.0)
    concat = make_config(integration="concat", expert_type="plain")
    assert concat.integrated_size == 5 * 64 and make_config().integrated_size == 32


def test_wavlm_attention_swap_fails_loudly_if_transformers_renames_it(monkeypatch):
    """The LoRA-capable attention replaces a WavLMAttention method by name; if a transformers
    release renames it, building the model must fail, not silently train LoRA on nothing."""
    from transformers.models.wavlm import modeling_wavlm

    monkeypatch.delattr(modeling_wavlm.WavLMAttention, "torch_multi_head_self_attention")
    with pytest.raises(RuntimeError, match="must be updated"):
        make_model()
