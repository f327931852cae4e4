"""Adapter with local attributes: EMA, masking, k-means targets, losses, saving, the CLI."""

import json
from pathlib import Path

import pytest
import safetensors.torch
import torch
from conftest import MICRO_CORPUS, make_batch, make_model
from torch import nn
from transformers import AutoFeatureExtractor, AutoModel

from merit.adapter_training import (
    AdapterPretrainer,
    assign_clusters,
    ema_update,
    kmeans,
    main,
    prepare_for_finetuning,
    regression_loss,
    save_model,
    span_mask,
)
from merit.corpus import build_corpus
from merit.distillation import backbone_hidden_states


def adapter_model(seed=0, **overrides):
    kwargs = dict(adapter_layers=1, adapter_ffn_size=64, freeze_backbone=True, tasks=["ser"])
    return make_model(seed=seed, **{**kwargs, **overrides})


# ------------------------------------------------------------------------------------------
# EMA
# ------------------------------------------------------------------------------------------


def test_ema_update_hand_example():
    online, ema = nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False)
    nn.init.constant_(online.weight, 1.0)
    nn.init.constant_(ema.weight, 0.0)
    ema_update(ema, online, decay=0.9)
    assert ema.weight.item() == pytest.approx(0.1)
    ema_update(ema, online, decay=0.9)
    assert ema.weight.item() == pytest.approx(0.19)  # 0.9 * 0.1 + 0.1 * 1.0
    assert online.weight.item() == 1.0
    with pytest.raises(ValueError, match="decay"):
        ema_update(ema, online, decay=1.5)
    with pytest.raises(ValueError, match="different parameters"):
        ema_update(ema, nn.Linear(1, 1), decay=0.9)


def test_pretrainer_teacher_is_ema_of_student():
    model = adapter_model()
    pretrainer = AdapterPretrainer(model, num_clusters=4, ema_decay=0.75)
    teacher_w = pretrainer.teacher.integration.projection.weight
    assert torch.equal(teacher_w, model.integration.projection.weight)
    assert not teacher_w.requires_grad
    old_teacher = teacher_w.clone()
    with torch.no_grad():
        model.integration.projection.weight.add_(1.0)
    pretrainer.update_teacher()
    expected = 0.75 * old_teacher + 0.25 * model.integration.projection.weight
    assert torch.allclose(teacher_w, expected)
    assert int(pretrainer.num_updates) == 1


# ------------------------------------------------------------------------------------------
# Masking
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [0.3, 0.5])
def test_span_mask_rate_spans_and_padding(rate):
    lengths = [200, 120, 37, 0]
    frame_mask = torch.arange(200)[None, :] < torch.tensor(lengths)[:, None]
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        masked = span_mask(frame_mask, rate, span=5, generator=gen)
        assert masked.shape == frame_mask.shape and masked.dtype == torch.bool
        assert not (masked & ~frame_mask).any()  # padding never masked
        for row, n in enumerate(lengths):
            count = int(masked[row].sum())
            assert count == (max(1, round(rate * n)) if n else 0)
            if n:
                assert abs(count / n - rate) <= 0.5 / n + 1e-9
            # Spans: every masked run is at least a span long, except at most one cut span.
            runs, run = [], 0
            for value in masked[row, :n].tolist() + [False]:
                if value:
                    run += 1
                elif run:
                    runs.append(run)
                    run = 0
            assert sum(r < 5 for r in runs) <= 1, runs


def test_span_mask_bad_settings():
    frame_mask = torch.ones(1, 10, dtype=torch.bool)
    for rate in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="rate"):
            span_mask(frame_mask, rate)
    with pytest.raises(ValueError, match="span"):
        span_mask(frame_mask, 0.3, span=0)


# ------------------------------------------------------------------------------------------
# Local attributes (k-means)
# ------------------------------------------------------------------------------------------


def test_kmeans_finds_separated_clusters_and_assigns_ids():
    gen = torch.Generator().manual_seed(0)
    means = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    features = torch.cat([m + 0.1 * torch.randn(30, 2, generator=gen) for m in means])
    centroids = kmeans(features, 3, iterations=20, generator=gen)
    assert centroids.shape == (3, 2)
    for mean in means:
        assert (centroids - mean).norm(dim=-1).min() < 0.1
    ids = assign_clusters(features, centroids)
    assert ids.shape == (90,) and ids.dtype == torch.long
    # Each true blob maps to one cluster id, and the three ids differ.
    blob_ids = [ids[i * 30 : (i + 1) * 30].unique().tolist() for i in range(3)]
    assert all(len(b) == 1 for b in blob_ids) and len({b[0] for b in blob_ids}) == 3
    # Warm start from the solution keeps it (ids keep their meaning across refreshes).
    assert torch.allclose(kmeans(features, 3, init=centroids), centroids)
    with pytest.raises(ValueError, match="at least num_clusters"):
        kmeans(features[:2], 3)


def test_cluster_targets_shape_and_refresh_schedule():
    torch.manual_seed(0)
    model = adapter_model()
    pretrainer = AdapterPretrainer(model, num_clusters=8, refresh_every=3, ema_decay=0.5)
    x, mask = make_batch((5000, 4000))
    optimizer = torch.optim.Adam([p for p in pretrainer.parameters() if p.requires_grad], lr=1e-2)
    history = []
    for _ in range(5):
        out = pretrainer(x, mask)
        history.append((int(pretrainer.num_updates), pretrainer.centroids.clone()))
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        pretrainer.update_teacher()
    (step0, c0), (step1, c1), (step2, c2), (step3, c3), (step4, c4) = history
    assert [step0, step1, step2, step3, step4] == [0, 1, 2, 3, 4]
    assert c0.abs().sum() > 0  # clustered on the first batch
    assert torch.equal(c1, c0) and torch.equal(c2, c0)  # not before the refresh step
    assert not torch.equal(c3, c0)  # refreshed at step 3 (the teacher moved)
    assert torch.equal(c4, c3)
    assert int(pretrainer.refreshed_at) == 3
    # Cluster targets: one id in [0, k) per teacher frame.
    with torch.no_grad():
        states, frame_mask = backbone_hidden_states(model.backbone, x, mask)
        frames = model.integrate(states, "ser", frame_mask)[frame_mask]
    ids = assign_clusters(frames, pretrainer.centroids)
    assert ids.shape == (int(frame_mask.sum()),)
    assert ids.min() >= 0 and ids.max() < 8
    # Evaluation passes never refresh.
    pretrainer.eval()
    pretrainer.num_updates.fill_(100)
    pretrainer(x, mask)
    assert torch.equal(pretrainer.centroids, c4)


# ------------------------------------------------------------------------------------------
# Losses decrease; the pre-training touches only integration + adapter
# ------------------------------------------------------------------------------------------


def test_every_loss_decreases_then_ser_fine_tuning_learns():
    torch.manual_seed(0)
    model = adapter_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pretrainer = AdapterPretrainer(
        model, num_clusters=8, refresh_every=1000, ema_decay=0.99, mask_rate=0.4, mask_span=3
    )
    x, mask = make_batch((5000, 4000))
    with torch.no_grad():
        _, frame_mask = backbone_hidden_states(model.backbone, x, mask)
    masked = span_mask(frame_mask, 0.4, 3, torch.Generator().manual_seed(0))
    optimizer = torch.optim.Adam([p for p in pretrainer.parameters() if p.requires_grad], lr=3e-3)
    history = []
    for _ in range(15):
        out = pretrainer(x, mask, masked_frames=masked)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        pretrainer.update_teacher()
        history.append({k: v.item() for k, v in out.items()})
    for name in ("mask_loss", "distill_loss", "cluster_loss"):
        assert history[-1][name] < 0.95 * history[0][name], (name, history)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith(("integration.", "adapter.")) for k in changed), changed
    assert not any(k.startswith("backbone.") for k in changed)

    prepare_for_finetuning(model)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for n, p in model.named_parameters() if not n.startswith("backbone"))
    labels = torch.tensor([1, 3])
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    ser_losses = []
    for _ in range(15):
        out = model(x, attention_mask=mask, labels=labels)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        ser_losses.append(out.ser_loss.item())
    assert ser_losses[-1] < 0.75 * ser_losses[0], ser_losses


def test_pretrainer_bad_configuration():
    with pytest.raises(ValueError, match="adapter_layers"):
        AdapterPretrainer(make_model(freeze_backbone=True))
    with pytest.raises(ValueError, match="freeze_backbone"):
        AdapterPretrainer(adapter_model(freeze_backbone=False))
    for kwargs, message in (
        ({"mask_rate": 1.0}, "rate"),
        ({"mask_loss": "huber"}, "mask_loss"),
        ({"distill_level": "word"}, "distill_level"),
        ({"refresh_every": 0}, "refresh_every"),
    ):
        with pytest.raises(ValueError, match=message):
            AdapterPretrainer(adapter_model(), **kwargs)
    pretrainer = AdapterPretrainer(adapter_model(), num_clusters=4)
    x, mask = make_batch((5000, 4000))
    with pytest.raises(ValueError, match="masked_frames"):
        pretrainer(x, mask, masked_frames=torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="regression loss"):
        regression_loss(torch.zeros(2, 3), torch.zeros(2, 3), "huber")


def test_nothing_masked_gives_zero_masked_losses_not_nan():
    pretrainer = AdapterPretrainer(adapter_model(), num_clusters=4)
    x, mask = make_batch((5000, 4000))
    with torch.no_grad():
        _, frame_mask = backbone_hidden_states(pretrainer.model.backbone, x, mask)
    out = pretrainer(x, mask, masked_frames=torch.zeros_like(frame_mask))
    assert out["mask_loss"].item() == 0.0 and out["cluster_loss"].item() == 0.0
    assert torch.isfinite(out["loss"]) and out["distill_loss"].item() > 0
    out["loss"].backward()


# ------------------------------------------------------------------------------------------
# Saving: final model without pre-training state; checkpoints with it
# ------------------------------------------------------------------------------------------


def test_final_model_round_trip_with_remote_code(tmp_path):
    model = adapter_model(tasks=["ser", "se"])
    pretrainer = AdapterPretrainer(model, num_clusters=4)
    x, mask = make_batch((5000, 4000))
    pretrainer(x, mask)  # first clustering: state that must not leak into the model
    prepare_for_finetuning(model).eval()
    save_model(model, tmp_path / "model", {"method": "adapter"})
    loaded = AutoModel.from_pretrained(tmp_path / "model", trust_remote_code=True).eval()
    assert loaded.adapter is not None and loaded.config.adapter_layers == 1
    assert loaded.config.freeze_backbone and loaded.config.tasks == ["ser", "se"]
    saved = safetensors.torch.load_file(tmp_path / "model" / "model.safetensors")
    assert any(k.startswith("adapter.") for k in saved)
    assert not any(
        k.startswith(("teacher", "mask_head", "cluster_head", "centroids")) for k in saved
    )
    for key, value in model.adapter.state_dict().items():
        assert torch.equal(loaded.adapter.state_dict()[key], value), key
    with torch.no_grad():
        expected, got = model(x, attention_mask=mask), loaded(x, attention_mask=mask)
    assert torch.allclose(got.logits, expected.logits, atol=1e-6)
    assert torch.allclose(got.enhanced_waveform, expected.enhanced_waveform, atol=1e-6)
    assert AutoFeatureExtractor.from_pretrained(tmp_path / "model", trust_remote_code=True)
    assert json.loads((tmp_path / "model" / "training_settings.json").read_text())["method"]


def test_pretraining_checkpoint_restores_teacher_and_centroids(tmp_path):
    source = AdapterPretrainer(adapter_model(seed=0), num_clusters=4, ema_decay=0.5)
    x, mask = make_batch((5000, 4000))
    source(x, mask)
    with torch.no_grad():
        source.model.integration.projection.weight.add_(0.5)
    source.update_teacher()
    # What the Trainer does for a non-PreTrainedModel: safetensors state dict, non-strict load.
    safetensors.torch.save_file(source.state_dict(), tmp_path / "model.safetensors")
    target = AdapterPretrainer(adapter_model(seed=1), num_clusters=4, ema_decay=0.5)
    result = target.load_state_dict(safetensors.torch.load_file(tmp_path / "model.safetensors"))
    assert not result.missing_keys and not result.unexpected_keys
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    assert int(target.num_updates) == 1 and int(target.refreshed_at) == 0
    assert target.centroids.abs().sum() > 0


# ------------------------------------------------------------------------------------------
# Command line: both stages, save, resume
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def micro_corpus(tmp_path_factory):
    return build_corpus(tmp_path_factory.mktemp("adapter") / "corpus", seed=0, **MICRO_CORPUS)


def test_main_pretrains_finetunes_and_resumes(micro_corpus, tmp_path):
    out = tmp_path / "adapter"
    argv = [
        "--dataset",
        str(micro_corpus),
        "--output_dir",
        str(out),
        "--tasks",
        "ser,se",
        "--hidden_size",
        "32",
        "--num_experts",
        "4",
        "--expert_hidden_size",
        "64",
        "--adapter_layers",
        "1",
        "--adapter_ffn_size",
        "64",
        "--num_clusters",
        "8",
        "--pretrain_steps",
        "1",
        "--max_steps",
        "1",
        "--save_steps",
        "1",
        "--eval_steps",
        "1",
        "--eval_snrs",
        "0",
        "--per_device_train_batch_size",
        "2",
        "--max_train_seconds",
        "0.75",
        "--warmup_steps",
        "0",
        "--disable_tqdm",
        "true",
    ]
    assert main(argv) == out
    assert (out / "pretrain" / "checkpoint-1" / "model.safetensors").is_file()
    # It ends as train.py does: the best validation checkpoint kept, the test table,
    # results.json and a model card that says which method trained it.
    results = json.loads((out / "results.json").read_text())
    assert results["method"] == "adapter" and results["variant"] == "adapter-merit"
    assert Path(results["best_checkpoint"]).parent == out / "finetune"
    assert results["metric_for_best_model"] == "f1_macro"
    assert {row["condition"] for row in results["test_rows"]} == {"clean", "seen_0dB", "unseen_0dB"}
    assert "clean_f1_macro" in results["test"]
    assert (out / "evaluation" / "table.md").is_file()
    card = (out / "README.md").read_text()
    assert "WAP-Transformer adapter feeds routed experts" in card
    assert "- **Method:** adapter" in card and "checkpoint-1" in card
    assert (out / "finetune" / "checkpoint-1").is_dir()
    model = AutoModel.from_pretrained(out, trust_remote_code=True)
    assert model.config.tasks == ["ser", "se"] and model.config.adapter_layers == 1
    assert model.config.se_passthrough_weight == 0.01  # as train.py's default
    assert model.config.id2label == {0: "neutral", 1: "happy", 2: "sad", 3: "angry"}
    pretrained = AutoModel.from_pretrained(out / "pretrained", trust_remote_code=True)
    # Stage 2 trained on top of stage 1: the SER classifier moved, the encoder did not.
    final_head = model.ser_head.classifier[-1].weight
    assert not torch.equal(pretrained.ser_head.classifier[-1].weight, final_head)
    for key, value in pretrained.backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value), key

    # Resume: stage 1 is reused as saved, stage 2 goes on from its last checkpoint.
    def stamp(path):
        return path.stat().st_mtime_ns

    pretrained_stamp = stamp(out / "pretrained" / "model.safetensors")
    first_stamp = stamp(out / "finetune" / "checkpoint-1" / "optimizer.pt")
    longer = [v if v != "1" or argv[i - 1] != "--max_steps" else "2" for i, v in enumerate(argv)]
    main([*longer, "--resume_from_checkpoint", "auto"])
    assert stamp(out / "pretrained" / "model.safetensors") == pretrained_stamp
    assert stamp(out / "finetune" / "checkpoint-1" / "optimizer.pt") == first_stamp
    state = json.loads((out / "finetune" / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
