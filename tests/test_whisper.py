"""Whisper encoders as MERIT backbones: front end, variable length, loading, LoRA, padding."""

import numpy as np
import pytest
import torch
from conftest import assert_padded_batch_equals_one_by_one, make_batch, make_config
from transformers import (
    WhisperFeatureExtractor,
    WhisperForAudioClassification,
    WhisperForConditionalGeneration,
    WhisperModel,
)

from merit.peft_utils import apply_lora
from modeling_merit import MeritModel, minimal_backbone_config
from modeling_merit.backbones_merit import WhisperEncoderBackbone, WhisperLogMel

SR = 16000


def whisper_model(seed: int = 0, **overrides) -> MeritModel:
    torch.manual_seed(seed)
    return MeritModel(make_config(backbone_config=minimal_backbone_config("whisper"), **overrides))


def speech_like(seconds: float, seed: int = 0) -> torch.Tensor:
    """Harmonic bursts with silences: a log-mel with a real dynamic range (noise is flat)."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * SR)) / SR
    f0 = 120 + 40 * torch.sin(2 * torch.pi * 0.7 * t)
    voiced = sum(torch.sin(2 * torch.pi * k * torch.cumsum(f0, 0) / SR) / k for k in range(1, 8))
    envelope = (torch.sin(2 * torch.pi * 2.5 * t) > -0.2).float()
    return (0.1 * voiced * envelope + 0.003 * torch.randn(t.shape, generator=gen)).float()


def test_log_mel_matches_whisper_feature_extractor():
    """Same numbers as transformers' extractor (within 1e-4) on every frame but the last two:
    it pads to 30 s before its STFT, so the frames whose window crosses the end see zeros
    where ours (and Whisper on an unpadded clip) see the reflected signal."""
    wave = speech_like(2.7)
    reference = WhisperFeatureExtractor()(wave.numpy(), sampling_rate=SR, return_tensors="pt")
    reference = reference.input_features[0]
    ours = WhisperLogMel(80)(wave[None], torch.tensor([wave.numel()]))[0]
    frames = wave.numel() // 160
    assert ours.shape == (80, frames)
    torch.testing.assert_close(ours[:, :-2], reference[:, : frames - 2], atol=1e-4, rtol=0)
    assert (ours[:, -2:] - reference[:, frames - 2 : frames]).abs().max() < 0.05


def test_log_mel_of_a_padded_batch_equals_one_by_one():
    waves = [speech_like(1.3, seed=1), speech_like(0.9, seed=2)]
    batch = torch.zeros(2, waves[0].numel())
    batch[1, : waves[1].numel()] = waves[1]
    batch[0] = waves[0]
    lengths = torch.tensor([w.numel() for w in waves])
    together = WhisperLogMel(80)(batch, lengths)
    for row, wave in enumerate(waves):
        alone = WhisperLogMel(80)(wave[None], lengths[row : row + 1])[0]
        torch.testing.assert_close(together[row, :, : alone.shape[-1]], alone)
        assert together[row, :, alone.shape[-1] :].abs().sum().item() == 0.0
    assert together.shape[-1] > WhisperLogMel(80).num_frames(lengths[1:]).item()  # padded row


def test_encoder_on_30_seconds_equals_transformers_encoder():
    """On exactly 30 s (the only length transformers' forward takes) our variable-length path
    must compute what transformers' WhisperEncoder computes, layer by layer."""
    torch.manual_seed(0)
    family = WhisperEncoderBackbone(minimal_backbone_config("whisper"))
    encoder = family.build().eval()
    x = speech_like(30.0)[None]
    lengths = torch.tensor([x.shape[-1]])
    with torch.no_grad():
        reference = encoder(WhisperLogMel(80)(x, lengths), output_hidden_states=True)
        ours = family.hidden_states(encoder, x, lengths)
    assert ours.shape[0] == len(reference.hidden_states) == 3
    for layer, expected in enumerate(reference.hidden_states):
        torch.testing.assert_close(ours[layer], expected, atol=1e-5, rtol=1e-5)
    assert family.frame_lengths(lengths).item() == 1500 == ours.shape[2]


def test_padded_batch_equals_one_by_one_on_whisper():
    assert_padded_batch_equals_one_by_one(whisper_model().eval())


def test_whisper_model_trains_and_refuses_more_than_30_seconds():
    model = whisper_model().train()
    x, mask = make_batch()
    out = model(x, attention_mask=mask, labels=torch.tensor([0, 1]), clean_values=x)
    out.loss.backward()
    assert model.backbone.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    assert not model.backbone.conv1.weight.requires_grad  # feature encoder frozen by default
    assert model.config.normalize_input is False  # Whisper takes audio at its own level
    assert out.frame_mask.shape[1] == 8000 // 320
    with pytest.raises(ValueError, match="at most 30 s"):
        model.eval()(torch.zeros(1, 30 * SR + 320))


@pytest.mark.parametrize(
    "cls", [WhisperModel, WhisperForConditionalGeneration, WhisperForAudioClassification]
)
def test_from_backbone_loads_the_encoder_of_local_whisper_checkpoints(tmp_path, cls):
    torch.manual_seed(1)
    source = cls(minimal_backbone_config("whisper"))
    source.save_pretrained(tmp_path)
    model = MeritModel.from_backbone(str(tmp_path), num_experts=4, hidden_size=32)
    encoder = source.get_encoder() if hasattr(source, "get_encoder") else source.encoder
    expected = encoder.state_dict()
    got = model.backbone.state_dict()
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key
    assert model.config.backbone_config.model_type == "whisper"
    assert model.config.backbone_config._name_or_path == str(tmp_path)


def test_lora_on_whisper_attention_trains_and_merges_exactly():
    model = whisper_model()
    peft_model = apply_lora(model, r=4, alpha=8)
    lora = [n for n, p in peft_model.named_parameters() if "lora_" in n and p.requires_grad]
    assert lora and all(".self_attn." in n for n in lora)
    x = speech_like(0.8)[None].repeat(2, 1)
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        optimizer.zero_grad()
        out = peft_model(input_values=x, labels=torch.tensor([1, 2]), clean_values=x * 0.5)
        out.loss.backward()
        grads = [p.grad for n, p in peft_model.named_parameters() if "lora_B" in n]
        optimizer.step()
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    peft_model.eval()
    with torch.no_grad():
        unmerged = peft_model(input_values=x).logits
        merged_model = peft_model.merge_and_unload()
        merged = merged_model(input_values=x).logits
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-4)


def test_mlkd_student_of_a_whisper_teacher_builds_a_merit_model(tmp_path):
    """MLKD on Whisper: the teacher is the encoder of a Whisper checkpoint, the student its
    first layer, saved as a bare encoder that from_backbone builds on."""
    from merit.distillation import MultiLevelDistiller, make_student
    from merit.runs import load_backbone

    torch.manual_seed(2)
    WhisperForConditionalGeneration(minimal_backbone_config("whisper")).save_pretrained(
        tmp_path / "teacher"
    )
    teacher = load_backbone(str(tmp_path / "teacher"))
    assert type(teacher).__name__ == "WhisperEncoder" and not teacher.training
    student = make_student(teacher, 1)
    assert len(student.layers) == 1
    assert torch.equal(student.layers[0].fc1.weight, teacher.layers[0].fc1.weight)
    distiller = MultiLevelDistiller(teacher, student, teacher_layers="1,2", normalize=False)
    x = speech_like(0.7)[None].repeat(2, 1)
    out = distiller(x + 0.01 * torch.randn_like(x), x)
    out["loss"].backward()
    assert student.layers[0].fc1.weight.grad.abs().sum() > 0
    student.save_pretrained(tmp_path / "student")
    model = MeritModel.from_backbone(str(tmp_path / "student"), hidden_size=32, num_experts=4)
    assert model.config.backbone_config.encoder_layers == 1
    for key, value in student.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value), key


def spec_augment_family(**fields) -> WhisperEncoderBackbone:
    settings = dict(apply_spec_augment=True, mask_time_prob=0.3, mask_feature_prob=0.25)
    return WhisperEncoderBackbone(minimal_backbone_config("whisper", **{**settings, **fields}))


def test_spec_augment_masks_time_spans_inside_each_utterance_and_mel_bins():
    """Time spans of ``mask_time_length`` frames fall inside each utterance's valid frames,
    bins are masked across all frames, and masked values become 0 (as ``WhisperModel``)."""
    np.random.seed(0)
    family = spec_augment_family()
    lengths = torch.tensor([300, 120])
    mel = torch.rand(2, 80, 300) + 1.0  # never 0 before masking
    valid = torch.arange(300)[None, :] < lengths[:, None]
    out = family.spec_augment(mel.clone(), valid)
    kept = out != 0
    assert torch.equal(out[kept], mel[kept])
    time_masked = ~kept.any(1)  # B, T: every bin zero
    bin_masked = ~kept[:, :, :120].any(2)  # B, bins: zero on every valid frame of both rows
    for row, length in enumerate(lengths.tolist()):
        masked = time_masked[row].nonzero().flatten()
        assert 10 <= masked.numel() <= 0.3 * length + 10
        assert int(masked.max()) < length  # never past the utterance's end
    assert not time_masked[1, 120:].any()
    assert bin_masked.any() and bin_masked.sum(1).max() <= 0.25 * 80 + 10
    # Without apply_spec_augment the fields do nothing.
    off = spec_augment_family(apply_spec_augment=False)
    assert torch.equal(off.spec_augment(mel.clone(), valid), mel)


def test_spec_augment_acts_in_training_only():
    torch.manual_seed(0)
    family = spec_augment_family()
    encoder = family.build()
    x = speech_like(1.5)[None].repeat(2, 1)
    lengths = torch.tensor([x.shape[-1], x.shape[-1] // 2])
    with torch.no_grad():
        reference = family.hidden_states(encoder.eval(), x, lengths)
        assert torch.equal(family.hidden_states(encoder.eval(), x, lengths), reference)
        np.random.seed(0)
        trained = family.hidden_states(encoder.train(), x, lengths)
    assert not torch.allclose(trained, reference)
    plain = WhisperEncoderBackbone(minimal_backbone_config("whisper"))
    with torch.no_grad():  # the same weights, SpecAugment off: training mode changes nothing
        assert torch.equal(plain.hidden_states(encoder.train(), x, lengths), reference)
