"""MLKD: student initialisation, the multi-level loss, training, and the saved student."""

import json
import math

import pytest
import safetensors.torch
import torch
from conftest import MICRO_CORPUS, make_batch
from transformers import AutoFeatureExtractor, AutoModel

from merit.corpus import build_corpus
from merit.distillation import (
    MultiLevelDistiller,
    backbone_hidden_states,
    default_teacher_layers,
    main,
    make_student,
    multi_level_loss,
    normalize_waveforms,
    parse_layers,
)
from merit.runs import load_backbone, resolve_checkpoint
from modeling_merit import MeritModel


@pytest.fixture(scope="module")
def teacher():
    return load_backbone("tiny", seed=0)


def test_student_copies_teacher_first_layers(teacher):
    student = make_student(teacher, 2)
    assert student.config.num_hidden_layers == 2 and len(student.encoder.layers) == 2
    teacher_state = teacher.state_dict()
    student_state = student.state_dict()
    assert set(student_state) == {
        k for k in teacher_state if not k.startswith(("encoder.layers.2.", "encoder.layers.3."))
    }
    for key, value in student_state.items():
        assert torch.equal(value, teacher_state[key]), key
    # Same weights, same computation: the first layer's output is the teacher's.
    x, mask = make_batch((5000, 4000))
    with torch.no_grad():
        t_states, t_frames = backbone_hidden_states(teacher, x, mask)
        s_states, s_frames = backbone_hidden_states(student.eval(), x, mask)
    assert torch.equal(t_frames, s_frames)
    assert torch.allclose(s_states[1], t_states[1], atol=1e-6)
    assert s_states.shape[0] == 3 and t_states.shape[0] == 5
    # The student is its own copy: training it leaves the teacher alone.
    assert all(p.requires_grad for p in student.parameters())
    assert not any(p.requires_grad for p in teacher.parameters())
    assert student.encoder.layers[0].feed_forward is not teacher.encoder.layers[0].feed_forward


def test_seeded_tiny_teacher_is_reproducible_and_keeps_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    a = load_backbone("tiny", seed=5)
    after = torch.rand(1)
    b = load_backbone("tiny", seed=5)
    assert torch.equal(after, expected)
    for (key, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), key


@pytest.mark.parametrize("layers", [0, 5])
def test_student_layer_count_out_of_range(teacher, layers):
    with pytest.raises(ValueError, match="num_layers"):
        make_student(teacher, layers)


def test_teacher_layer_parsing():
    assert parse_layers("2,3,4", 4) == [2, 3, 4]
    assert parse_layers("auto", 4) == [2, 3, 4] == default_teacher_layers(4)
    assert default_teacher_layers(12) == [4, 8, 12]
    assert default_teacher_layers(24) == [8, 16, 24]
    for bad, message in (("0,4", "out of range"), ("2,5", "out of range"), ("a,b", "integers")):
        with pytest.raises(ValueError, match=message):
            parse_layers(bad, 4)
    with pytest.raises(ValueError, match="distinct"):
        parse_layers("3,3", 4)


def test_multi_level_loss_matches_formula():
    mask = torch.tensor([[1, 1, 0]])
    pred1 = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [9.0, 9.0]]])
    target1 = torch.tensor([[[1.0, 1.0], [0.0, 1.0], [-5.0, 3.0]]])
    target2 = torch.tensor([[[3.0, 4.0], [1.0, 0.0], [0.0, 0.0]]])
    pred2 = target2.clone()
    pred2[0, 2] = 100.0  # padding: must not count
    loss, parts = multi_level_loss([pred1, pred2], [target1, target2], mask, cos_weight=0.5)

    def neg_log_sigmoid(c):
        return math.log1p(math.exp(-c))

    l1_layer1 = (0 + 1 + 0 + 1) / 4
    cos_layer1 = (neg_log_sigmoid(1 / math.sqrt(2)) + neg_log_sigmoid(1.0)) / 2
    cos_layer2 = neg_log_sigmoid(1.0)
    expected = l1_layer1 + 0.5 * cos_layer1 + 0.0 + 0.5 * cos_layer2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert parts["l1"].tolist() == pytest.approx([0.5, 0.0])
    assert parts["cos"].tolist() == pytest.approx([cos_layer1, cos_layer2], rel=1e-6)


def test_multi_level_loss_bad_input():
    x = torch.zeros(1, 2, 3)
    with pytest.raises(ValueError, match="padding"):
        multi_level_loss([x], [x], torch.zeros(1, 2))
    with pytest.raises(ValueError, match="shape"):
        multi_level_loss([x], [torch.zeros(1, 2, 4)], torch.ones(1, 2))
    with pytest.raises(ValueError, match="as many"):
        multi_level_loss([x, x], [x], torch.ones(1, 2))


def test_distillation_loss_decreases_and_teacher_stays_frozen(teacher):
    torch.manual_seed(0)
    distiller = MultiLevelDistiller(teacher, make_student(teacher, 2), "2,3,4").train()
    assert not distiller.teacher.training and distiller.student.training
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    clean, mask = make_batch((5000, 4000))
    noisy = clean + 0.05 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(1))
    trainable = [p for p in distiller.parameters() if p.requires_grad]
    assert len(trainable) == len(list(distiller.student.parameters())) + 6  # 3 linear heads
    optimizer = torch.optim.Adam(trainable, lr=2e-3)
    losses = []
    for _ in range(5):
        out = distiller(noisy * mask, clean, mask)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append(out["loss"].item())
    assert losses[-1] < 0.85 * losses[0], losses
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, before[key]), key
    with pytest.raises(ValueError, match="clean_values"):
        distiller(noisy, clean[:, :4500], mask)


@pytest.fixture(scope="module")
def micro_corpus(tmp_path_factory):
    return build_corpus(tmp_path_factory.mktemp("mlkd") / "corpus", seed=0, **MICRO_CORPUS)


def test_main_saves_a_student_that_builds_merit_models(micro_corpus, tmp_path):
    out = main(
        [
            "--dataset",
            str(micro_corpus),
            "--output_dir",
            str(tmp_path / "mlkd"),
            "--max_steps",
            "2",
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
            "--teacher_layers",
            "3,4",
            "--disable_tqdm",
            "true",
        ]
    )
    assert out == tmp_path / "mlkd" / "student"
    assert (tmp_path / "mlkd" / "checkpoint-2" / "model.safetensors").is_file()
    # Ends as train.py does: validated (distillation loss), best checkpoint kept, a test table
    # per noise condition, results.json, a card.
    results = json.loads((tmp_path / "mlkd" / "results.json").read_text())
    assert results["method"] == "mlkd" and results["metric_for_best_model"] == "loss"
    states = json.loads((tmp_path / "mlkd" / "checkpoint-2" / "trainer_state.json").read_text())
    losses = {e["step"]: e["eval_loss"] for e in states["log_history"] if "eval_loss" in e}
    best_step = min(losses, key=losses.get)
    assert results["best_checkpoint"].endswith(f"checkpoint-{best_step}")
    assert results["best_validation_metric"] == pytest.approx(losses[best_step])
    kept = safetensors.torch.load_file(
        tmp_path / "mlkd" / f"checkpoint-{best_step}" / "model.safetensors"
    )
    saved = AutoModel.from_pretrained(out).state_dict()
    pairs = [(kept[f"student.{k}"], v) for k, v in saved.items() if f"student.{k}" in kept]
    assert len(pairs) > 10 and all(torch.equal(a, b) for a, b in pairs)
    rows = {row["condition"]: row for row in results["test_rows"]}
    assert set(rows) == {"clean", "seen_0dB", "unseen_0dB"}
    for row in rows.values():
        assert -1.0 <= row["cos_layer3"] <= 1.0 and row["l1_layer4"] > 0 and row["utterances"] > 0
        # loss = the L1 terms plus the (positive) -log sigmoid(cosine) terms
        assert row["loss"] > row["l1_layer3"] + row["l1_layer4"]
    card = (out / "README.md").read_text()
    assert "| seen_0dB |" in card and "- **Optimizer steps:** 2" in card
    assert (tmp_path / "mlkd" / "evaluation" / "table.md").is_file()
    assert json.loads((out / "distillation.json").read_text())["teacher_layers"] == [3, 4]
    student = AutoModel.from_pretrained(out)
    assert student.config.num_hidden_layers == 2
    assert AutoFeatureExtractor.from_pretrained(out).sampling_rate == 16000
    teacher = load_backbone("tiny", seed=0)
    # Trained: the copied layers moved away from the teacher's.
    assert not torch.equal(
        student.encoder.layers[1].feed_forward.output_dense.weight,
        teacher.encoder.layers[1].feed_forward.output_dense.weight,
    )

    labels = {0: "neutral", 1: "happy", 2: "sad", 3: "angry"}
    small = dict(hidden_size=32, num_experts=4, expert_hidden_size=64, n_fft=256, hop_length=80)
    ser = MeritModel.from_backbone(
        str(out), tasks=["ser"], id2label=labels, win_length=200, **small
    )
    for key, value in student.state_dict().items():
        assert torch.equal(ser.backbone.state_dict()[key], value), key
    ser.save_pretrained(tmp_path / "ser")
    loaded = AutoModel.from_pretrained(tmp_path / "ser", trust_remote_code=True).eval()
    assert type(loaded).__name__ == "MeritModel" and loaded.config.tasks == ["ser"]
    x, mask = make_batch((5000, 4000))
    with torch.no_grad():
        expected = ser.eval()(x, attention_mask=mask).logits
        assert torch.allclose(loaded(x, attention_mask=mask).logits, expected, atol=1e-6)

    merit = MeritModel.from_backbone(str(out), id2label=labels, win_length=200, **small).eval()
    with torch.no_grad():
        both = merit(x, attention_mask=mask)
    assert both.logits.shape == (2, 4) and both.enhanced_waveform.shape == x.shape


def test_normalize_waveforms_uses_valid_samples_only():
    values = torch.tensor([[1.0, 3.0, 50.0], [2.0, 4.0, 6.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    out = normalize_waveforms(values, mask)[0]
    scale = 1 / math.sqrt(1 + 1e-7)  # first row: mean 2, variance 1
    assert out[0].tolist() == pytest.approx([-scale, scale, 0.0])
    std = math.sqrt(8 / 3 + 1e-7)  # second row: mean 4, variance 8/3
    assert out[1].tolist() == pytest.approx([-2 / std, 0.0, 2 / std])


def test_backbone_input_errors(teacher):
    x, mask = make_batch((5000, 4000))
    with pytest.raises(ValueError, match="too short"):
        backbone_hidden_states(teacher, x[:, :300])
    with pytest.raises(ValueError, match="NaN"):
        backbone_hidden_states(teacher, torch.full((1, 1000), float("nan")))
    with pytest.raises(ValueError, match="shape"):
        backbone_hidden_states(teacher, x[0])


def test_resolve_checkpoint(tmp_path):
    assert resolve_checkpoint(None, str(tmp_path)) is None
    assert resolve_checkpoint("false", str(tmp_path)) is None
    assert resolve_checkpoint("auto", str(tmp_path / "missing")) is None
    assert resolve_checkpoint("auto", str(tmp_path)) is None  # nothing saved yet: fresh start
    for step in (2, 10):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "optimizer.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="already holds checkpoints"):
        resolve_checkpoint(None, str(tmp_path))  # a fresh run would write over them
    assert resolve_checkpoint("auto", str(tmp_path)) == str(tmp_path / "checkpoint-10")
    assert resolve_checkpoint("True", str(tmp_path)) == str(tmp_path / "checkpoint-10")
    given = str(tmp_path / "checkpoint-2")
    assert resolve_checkpoint(given, str(tmp_path)) == given
    with pytest.raises(ValueError, match="not found"):
        resolve_checkpoint(str(tmp_path / "checkpoint-7"), str(tmp_path))


def test_unknown_teacher_type_is_refused(tmp_path):
    with pytest.raises(ValueError, match="Unsupported backbone"):
        load_backbone("tiny", model_type="bert")


def test_companion_methods_read_config_files_like_train_py(tmp_path):
    """--config FILE works for --method mlkd as for the main method (merit.runs)."""
    from transformers import TrainingArguments

    from merit.distillation import DistillationArguments
    from merit.preparation import DataArguments
    from merit.runs import parse_arguments

    config = tmp_path / "mlkd.yaml"
    config.write_text("student_layers: 1\nsnr_range: [0, 5]\nmax_steps: 3\n")
    args, data_args, training_args = parse_arguments(
        (DistillationArguments, DataArguments, TrainingArguments),
        ["--config", str(config), "--output_dir", str(tmp_path), "--max_steps", "4"],
    )
    assert args.student_layers == 1 and data_args.snr_range == [0, 5]
    assert training_args.max_steps == 4  # the command line wins
    config.write_text("studnet_layers: 1\n")
    with pytest.raises(SystemExit):
        parse_arguments((DistillationArguments, DataArguments, TrainingArguments), [str(config)])
