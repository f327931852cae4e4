"""Training entry point: variants, config files, a real (tiny) run, resume, LoRA, bad data."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import load_file
from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, TrainerCallback

from merit import training
from merit.data import NoiseBank, NoisyMixer, load_speech_dataset
from merit.evaluation import ModelSystem, evaluate_systems
from merit.preparation import DataArguments, build_test_sets, prepare_data, training_mixer
from merit.runs import resolve_checkpoint
from merit.training import (
    ModelArguments,
    NoisyTrainingSet,
    build_model,
    length_grouping_skew,
    parse_args,
    variant_config_kwargs,
)

LABELS = {0: "neutral", 1: "happy", 2: "sad", 3: "angry"}
#: A model small enough for a few training steps in seconds.
TINY = [
    "--backbone",
    "tiny",
    "--tiny_hidden_size",
    "32",
    "--tiny_layers",
    "2",
    "--hidden_size",
    "16",
    "--expert_hidden_size",
    "32",
    "--num_experts",
    "4",
    "--per_device_train_batch_size",
    "2",
    "--per_device_eval_batch_size",
    "4",
    "--max_train_seconds",
    "1.0",
    "--disable_tqdm",
    "True",
    # fp32 whatever the machine (the default is bf16 where it is native): the same numbers on
    # every CI runner; tests/test_hardware.py covers bf16.
    "--bf16",
    "False",
]
#: No evaluation, checkpoints every 2 steps: for runs that only test the training loop.
LOOP_ONLY = [
    "--eval_strategy",
    "no",
    "--load_best_model_at_end",
    "False",
    "--do_predict",
    "False",
    "--save_steps",
    "2",
]


def test_variants_build_the_matching_configs():
    expected = {
        "sparse": ("sparse", ["ser", "se"]),
        "dense": ("dense", ["ser", "se"]),
        "naive-mtl": ("shared", ["ser", "se"]),
        "ser-only": ("sparse", ["ser"]),
        "se-only": ("sparse", ["se"]),
    }
    for variant, (routing, tasks) in expected.items():
        assert variant_config_kwargs(variant) == {"routing": routing, "tasks": tasks}
        args = ModelArguments(
            variant=variant, backbone="tiny", tiny_hidden_size=32, tiny_layers=1, num_experts=4
        )
        model = build_model(args, LABELS)
        assert (model.config.routing, model.config.tasks) == (routing, tasks)
        assert (model.ser_head is not None) == ("ser" in tasks)
        assert (model.se_head is not None) == ("se" in tasks)
        assert hasattr(model.mixture, "gates") == (routing != "shared")
        assert model.config.id2label == LABELS
        # "tiny" defaults: MERIT widths 128/256 and a trainable conv encoder.
        assert (model.config.hidden_size, model.config.expert_hidden_size) == (128, 256)
        assert all(p.requires_grad for p in model.backbone.feature_extractor.parameters())
    with pytest.raises(ValueError, match="unknown variant 'moe'"):
        variant_config_kwargs("moe")


def test_best_metric_follows_the_variant_and_heads():
    cases = (
        (["--variant", "sparse"], "f1_macro"),
        (["--variant", "se-only"], "ssnr"),
        (["--categorical_head", "False", "--dimension_columns", "arousal"], "ccc"),
    )
    for flags, metric in cases:
        model_args, _, args = parse_args([*flags, "--output_dir", "x"])
        training._resolve_best_metric(args, model_args)
        assert (args.metric_for_best_model, args.greater_is_better) == (metric, True)
    model_args, _, args = parse_args(["--metric_for_best_model", "uar"])
    training._resolve_best_metric(args, model_args)
    assert args.metric_for_best_model == "uar"


def test_defaults_and_config_files(tmp_path):
    model_args, data_args, args = parse_args([])
    assert (model_args.backbone, model_args.variant, model_args.peft) == (
        "whisper-tiny.en",
        "sparse",
        "none",
    )
    assert args.output_dir == "outputs/merit-sparse"
    assert args.remove_unused_columns is False and args.load_best_model_at_end is True
    assert data_args.snr_range == [-5.0, 20.0] and data_args.dataset is None

    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("variant: dense\nlearning_rate: 0.0005\nsnr_range: [0, 10]\n")
    model_args, data_args, args = parse_args(["--config", str(yaml_file), "--variant", "ser-only"])
    assert model_args.variant == "ser-only"  # the command line wins over the file
    assert args.learning_rate == 0.0005 and data_args.snr_range == [0, 10]

    # The example config spells out the defaults; it must not drift from them.
    example = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"
    from_file = parse_args([str(example)])

    def as_dict(arguments) -> dict:
        return arguments.to_dict() if hasattr(arguments, "to_dict") else vars(arguments)

    for defaults, loaded in zip(parse_args([]), from_file, strict=True):
        assert as_dict(loaded) == as_dict(defaults)

    json_file = tmp_path / "run.json"
    json_file.write_text(json.dumps({"peft": "lora", "lora_r": 4, "max_steps": 7}))
    model_args, _, args = parse_args([str(json_file)])
    assert (model_args.peft, model_args.lora_r, args.max_steps) == ("lora", 4, 7)

    json_file.write_text(json.dumps({"lora_rank": 4}))
    with pytest.raises(SystemExit):
        parse_args([str(json_file)])
    with pytest.raises(SystemExit):
        parse_args(["--variant", "moe"])


def test_training_noise_depends_only_on_seed_epoch_and_example(tiny_corpus):
    train = load_speech_dataset(str(tiny_corpus))["train"]
    mixer = NoisyMixer(
        NoiseBank.from_dir(tiny_corpus / "noise"),
        {name: i for i, name in enumerate(LABELS.values())},
        clean_prob=0.0,
        max_seconds=1.0,
    )
    data = NoisyTrainingSet(train, mixer, seed=3)
    first = data[5]
    torch.manual_seed(123)  # the global RNG plays no part
    np.random.seed(9)
    again = NoisyTrainingSet(train, mixer, seed=3)[5]
    np.testing.assert_array_equal(first["input_values"], again["input_values"])
    assert first["label"] == list(LABELS.values()).index(train[5]["label"])
    assert len(first["input_values"]) == 16000 and math.isfinite(first["snr"])
    assert not np.allclose(first["input_values"], first["clean_values"])
    data.set_epoch(1)
    assert not np.allclose(data[5]["input_values"], first["input_values"])
    other_seed = NoisyTrainingSet(train, mixer, seed=4)[5]
    assert not np.allclose(other_seed["input_values"], first["input_values"])
    assert len(data) == len(train)


def _length_grouped_args(tmp_path: Path) -> training.MeritTrainingArguments:
    """Training arguments for a trainer built only to ask for its length-grouped sampler."""
    return training.MeritTrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        train_sampling_strategy="group_by_length",
        eval_strategy="no",
        load_best_model_at_end=False,
        use_cpu=True,
        report_to="none",
    )


def test_length_grouped_batches_use_header_lengths(tiny_corpus, tmp_path):
    """``--train_sampling_strategy group_by_length``: the sampler sorts by the lengths read
    from the file headers, which equal the mixed examples' lengths (capped at the crop)."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    train = load_speech_dataset(str(tiny_corpus))["train"]
    bank = NoiseBank.from_dir(tiny_corpus / "noise")
    whole = NoisyTrainingSet(train, NoisyMixer(bank, clean_prob=0.0), seed=0)
    lengths = whole.lengths()
    assert lengths == [len(whole[i]["input_values"]) for i in range(len(whole))]
    assert len(set(lengths)) > 1
    cropped = NoisyTrainingSet(train, NoisyMixer(bank, max_seconds=0.5), seed=0)
    assert cropped.lengths() == [min(n, 8000) for n in lengths]

    from conftest import make_model

    args = _length_grouped_args(tmp_path)
    trainer = training.MeritTrainer(model=make_model(), args=args, train_dataset=whole)
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, LengthGroupedSampler)
    assert list(sampler.lengths) == lengths
    order = list(iter(sampler))
    assert sorted(order) == list(range(len(whole)))
    # each mega-batch is sorted longest first: the first batch holds long utterances
    first = [lengths[i] for i in order[:4]]
    assert first == sorted(first, reverse=True)


def test_length_grouped_batches_warn_when_length_tells_the_class(tiny_corpus, tmp_path, caplog):
    """Where the class follows the length, length-grouped batches hold mostly one class and
    the run says so; where it does not, it stays quiet. The check draws on its own generator,
    so the training run's sampler order is the same with or without it."""
    from conftest import make_model

    train = load_speech_dataset(str(tiny_corpus))["train"]
    bank = NoiseBank.from_dir(tiny_corpus / "noise")
    lengths = NoisyTrainingSet(train, NoisyMixer(bank), seed=0).lengths()
    rank = np.argsort(np.argsort(lengths))
    by_length = [f"c{4 * r // len(lengths)}" for r in rank]  # quartiles of length
    by_index = [f"c{i % 4}" for i in range(len(lengths))]
    grouped, shuffled = length_grouping_skew(lengths, by_length, 4)
    assert grouped - shuffled > training.GROUPED_SKEW_WARNING
    assert length_grouping_skew(lengths, by_length, 4) == (grouped, shuffled)  # seeded
    grouped, shuffled = length_grouping_skew(lengths, by_index, 4)
    assert grouped - shuffled < training.GROUPED_SKEW_WARNING

    args = _length_grouped_args(tmp_path)
    from transformers.trainer_pt_utils import LengthGroupedSampler

    torch.manual_seed(7)
    expected = list(iter(LengthGroupedSampler(4, lengths=lengths)))
    for labels, warns in ((by_length, True), (by_index, False)):
        relabelled = train.remove_columns("label").add_column("label", labels)
        dataset = NoisyTrainingSet(relabelled, NoisyMixer(bank), seed=0)
        trainer = training.MeritTrainer(model=make_model(), args=args, train_dataset=dataset)
        caplog.clear()
        torch.manual_seed(7)
        with caplog.at_level("WARNING", logger="merit.training"):
            order = list(iter(trainer._get_train_sampler()))
        warned = [r.getMessage() for r in caplog.records if "group_by_length" in r.getMessage()]
        assert bool(warned) == warns, warned
        assert order == expected  # the check drew nothing from the global RNG
    # a corpus without class labels (dimensional ratings only) has nothing to check
    unlabelled = NoisyTrainingSet(train.remove_columns("label"), NoisyMixer(bank), seed=0)
    assert unlabelled.labels() is None


def test_length_grouping_skew_on_lengths_that_do_and_do_not_follow_the_class():
    rng = np.random.default_rng(1)
    labels = [i % 4 for i in range(400)]
    tied = [int(20000 + 8000 * label + rng.integers(0, 2000)) for label in labels]
    free = [int(20000 + rng.integers(0, 30000)) for _ in labels]
    grouped, shuffled = length_grouping_skew(tied, labels, 16)
    assert grouped > 0.8 and shuffled < 0.45
    grouped, shuffled = length_grouping_skew(free, labels, 16)
    assert abs(grouped - shuffled) < 0.05


def _tied_lengths(n: int = 1600, seed: int = 1) -> tuple[list[int], list[int]]:
    """Four classes whose lengths differ (as emotions do: sad is slow) and vary within each."""
    rng = np.random.default_rng(seed)
    labels = [int(c) for c in rng.integers(0, 4, n)]
    lengths = [int(30000 + 6000 * c + rng.integers(0, 32000)) for c in labels]
    return lengths, labels


def _batches(order: list[int], size: int) -> list[list[int]]:
    return [order[i : i + size] for i in range(0, len(order), size)]


def test_per_class_length_grouping_keeps_class_shares_and_cuts_padding():
    """Every utterance once per pass; batches hold each class about in its share (as random
    batches do, unlike ``LengthGroupedSampler``'s) with less padding than random batches; the
    same generator seed gives the same order."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    lengths, labels = _tied_lengths()
    sampler = training.PerClassLengthGroupedSampler(
        16, lengths, labels, generator=torch.Generator().manual_seed(0)
    )
    order = list(iter(sampler))
    assert sorted(order) == list(range(len(lengths))) and len(sampler) == len(lengths)
    again = training.PerClassLengthGroupedSampler(
        16, lengths, labels, generator=torch.Generator().manual_seed(0)
    )
    assert list(iter(again)) == order
    per_class = _batches(order, 16)
    shuffled = _batches([int(i) for i in torch.randperm(len(lengths)).tolist()], 16)
    grouped = _batches(
        list(LengthGroupedSampler(16, lengths=lengths, generator=torch.Generator())), 16
    )
    share = training.majority_share
    # 4 classes in batches of 16: random batches' commonest class is ~0.39 of a batch
    assert share(per_class, labels) < share(shuffled, labels) < 0.45 < share(grouped, labels)
    ratio = training.padding_ratio
    assert ratio(grouped, lengths) < ratio(per_class, lengths) < ratio(shuffled, lengths) - 0.1
    assert ratio([[0], [1, 2]], [5, 3, 6]) == pytest.approx((5 + 12) / 14)


def test_per_class_length_grouping_refuses_bad_input(tiny_corpus, tmp_path):
    with pytest.raises(ValueError, match="one length and one label"):
        training.PerClassLengthGroupedSampler(4, [1, 2, 3], ["a", "b"])
    with pytest.raises(ValueError, match="at least 1"):
        training.PerClassLengthGroupedSampler(0, [1], ["a"])
    with pytest.raises(ValueError, match="cannot go with"):
        training.MeritTrainingArguments(
            output_dir=str(tmp_path),
            group_by_length_per_class=True,
            train_sampling_strategy="group_by_length",
        )
    from conftest import make_model

    train = load_speech_dataset(str(tiny_corpus))["train"]
    bank = NoiseBank.from_dir(tiny_corpus / "noise")
    args = training.MeritTrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        group_by_length_per_class=True,
        eval_strategy="no",
        load_best_model_at_end=False,
        use_cpu=True,
        report_to="none",
    )
    labelled = NoisyTrainingSet(train, NoisyMixer(bank), seed=0)
    trainer = training.MeritTrainer(model=make_model(), args=args, train_dataset=labelled)
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, training.PerClassLengthGroupedSampler)
    assert list(sampler.lengths) == labelled.lengths()
    unlabelled = NoisyTrainingSet(train.remove_columns("label"), NoisyMixer(bank), seed=0)
    trainer = training.MeritTrainer(model=make_model(), args=args, train_dataset=unlabelled)
    with pytest.raises(ValueError, match="class labels"):
        trainer._get_train_sampler()


def test_training_mixer_follows_the_data_flags(tiny_corpus):
    bank = NoiseBank.from_dir(tiny_corpus / "noise", "seen")
    _, data_args, _ = parse_args([])
    mixer = training_mixer(data_args, bank, None)
    assert mixer.speed_range is None and mixer.clean_prob == 0.1  # speed perturbation off
    assert mixer.snr_range == (-5.0, 20.0) and mixer.max_samples is None
    flags = ["--speed_range", "0.9", "1.1", "--max_train_seconds", "2"]
    mixer = training_mixer(parse_args(flags)[1], bank, {"angry": 0})
    assert mixer.speed_range == (0.9, 1.1) and mixer.max_samples == 32000
    assert mixer.label2id == {"angry": 0}


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_two_step_run_saves_a_complete_loadable_folder(tiny_corpus, tmp_path):
    out = tmp_path / "run"
    results = training.main(
        [
            "--dataset",
            str(tiny_corpus),
            "--output_dir",
            str(out),
            "--max_steps",
            "2",
            "--eval_steps",
            "1",
            "--save_steps",
            "1",
            "--logging_steps",
            "1",
            "--eval_snrs",
            "0",
            "--max_eval_samples",
            "4",
            "--max_test_samples",
            "4",
            *TINY,
        ]
    )
    for name in (
        "model.safetensors",
        "config.json",
        "preprocessor_config.json",
        "configuration_merit.py",
        "modeling_merit.py",
        "feature_extraction_merit.py",
        "README.md",
        "results.json",
        "evaluation/table.md",
        "evaluation/f1_vs_snr.png",
    ):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert set(config["auto_map"]) >= {"AutoConfig", "AutoModel", "AutoModelForAudioClassification"}
    assert config["routing"] == "sparse" and config["tasks"] == ["ser", "se"]
    card = (out / "README.md").read_text()
    assert "Sparse MERIT" in card

    # The best checkpoint (by validation F1) is what ends up in the output folder.
    assert results["global_step"] == 2 and results["metric_for_best_model"] == "f1_macro"
    best = Path(results["best_checkpoint"])
    # The card says how it was trained: steps, batch, rate, kept checkpoint, noise, versions.
    procedure = card.split("## Training procedure")[1].split("\n## ")[0]
    assert "- **Optimizer steps:** 2 (seed 42)" in procedure
    assert "- **Effective batch:** 2 utterances (2 per device x 1 accumulation" in procedure
    assert f"`{best.name}` (f1_macro = {results['best_validation_metric']:.4f})" in procedure
    assert "- **Training audio:** random 1 s crops, no speed perturbation" in procedure
    assert (
        "- **Losses:** emotion cross-entropy (label smoothing 0.1) x 1; enhancement: "
        "compressed-magnitude MSE x 1, "
        "pass-through (35 dB minus the segmental SNR of enhanced clean examples) x 0.01; "
        "routers: load balancing x 0.01, z-loss x 0.001"
    ) in procedure
    assert "- **SpecAugment:** none" in procedure
    seen_types = "white, pink, babble, hum"
    assert all(t in procedure for t in seen_types.split(", "))
    assert f"transformers {transformers.__version__}" in procedure
    # and claims only the metrics its table holds
    assert "Computed for this card: F1-macro, UAR (macro recall), accuracy, segmental SNR" in card
    assert "Not computed: PESQ (wide-band) and STOI" in card
    assert best.parent == out and best.name in {"checkpoint-1", "checkpoint-2"}
    saved, from_best = _weights(out), _weights(best)
    assert saved.keys() == from_best.keys()
    assert all(torch.equal(saved[k], from_best[k]) for k in saved)

    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["test"] == pytest.approx(results["test"])
    test = results["test"]
    assert 0.0 <= test["clean_f1_macro"] <= 1.0
    assert test["seen_0dB_ssnr_improvement"] == pytest.approx(
        test["seen_0dB_ssnr_enhanced"] - test["seen_0dB_ssnr_noisy"]
    )

    # Reloaded with trust_remote_code, the folder reproduces the numbers of the training run.
    model = AutoModel.from_pretrained(out, trust_remote_code=True)
    assert type(model).__name__ == "MeritModel"
    assert type(AutoFeatureExtractor.from_pretrained(out, trust_remote_code=True)).__name__ == (
        "MeritFeatureExtractor"
    )
    sets, _ = build_test_sets(str(tiny_corpus), snrs=(0,), max_utterances=4)
    again = evaluate_systems({"sparse": ModelSystem(model)}, sets, progress=False)
    for row in again.rows:
        logged = next(
            r
            for r in results["test_rows"]
            if r["system"] == "sparse" and r["condition"] == row["condition"]
        )
        assert row["f1_macro"] == pytest.approx(logged["f1_macro"])
        assert row["ssnr"] == pytest.approx(logged["ssnr"], abs=1e-4)


class _StopAt(TrainerCallback):
    """Ends training after ``step`` as if the job had been killed right after a checkpoint."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


TWO_STAGES = ["--backbone_frozen_steps", "1", "--backbone_learning_rate_factor", "0.5"]


@pytest.mark.parametrize("stages", [[], TWO_STAGES], ids=["one-stage", "two-stage"])
def test_resume_continues_where_the_interrupted_run_stopped(tiny_corpus, tmp_path, stages):
    """Killed after step 2 and resumed: steps 3-4 equal the uninterrupted run's. With two
    stages the kill falls in stage 2 (the backbone was frozen for step 1 only)."""

    def run(out: Path, *extra: str, callbacks=None) -> dict:
        argv = ["--dataset", str(tiny_corpus), "--output_dir", str(out), "--max_steps", "4"]
        argv += ["--logging_steps", "1", "--seed", "7", *LOOP_ONLY, *TINY, *stages, *extra]
        return training.main(argv, callbacks=callbacks)

    straight = run(tmp_path / "straight")
    interrupted = run(tmp_path / "resumed", callbacks=[_StopAt(2)])
    assert interrupted["global_step"] == 2
    assert not (tmp_path / "resumed" / "checkpoint-4").exists()
    resumed = run(
        tmp_path / "resumed", "--resume_from_checkpoint", str(tmp_path / "resumed/checkpoint-2")
    )
    assert straight["global_step"] == resumed["global_step"] == 4

    a, b = tmp_path / "straight/checkpoint-4", tmp_path / "resumed/checkpoint-4"
    weights_a, weights_b = _weights(a), _weights(b)
    for key in weights_a:
        torch.testing.assert_close(weights_a[key], weights_b[key], rtol=0, atol=1e-6)
    optim_a = torch.load(a / "optimizer.pt", weights_only=True)["state"]
    optim_b = torch.load(b / "optimizer.pt", weights_only=True)["state"]
    assert optim_a.keys() == optim_b.keys()
    for key in optim_a:
        # 4 steps; 3 for the backbone's parameters when step 1 kept them frozen
        assert (
            int(optim_a[key]["step"]) == int(optim_b[key]["step"]) in ((4, 3) if stages else (4,))
        )
        torch.testing.assert_close(
            optim_a[key]["exp_avg"], optim_b[key]["exp_avg"], atol=1e-6, rtol=0
        )

    def losses(folder: Path) -> list[float]:
        history = json.loads((folder / "trainer_state.json").read_text())["log_history"]
        return [h["loss"] for h in history if "loss" in h]

    # Steps 3 and 4 saw the same examples and noise in both runs.
    assert losses(a) == pytest.approx(losses(b), abs=1e-5)
    assert len(losses(b)) == 4
    if stages:  # the backbone has its own parameter groups at half the learning rate
        groups = torch.load(b / "optimizer.pt", weights_only=True)["param_groups"]
        rates = sorted({g["initial_lr"] for g in groups})
        assert len(rates) == 2 and rates[0] == pytest.approx(rates[1] * 0.5)


class _Snapshot(TrainerCallback):
    """Keeps a copy of the weights as training starts."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_stage_one_trains_merit_layers_on_a_frozen_backbone(tiny_corpus, tmp_path):
    """Two stages: during the frozen steps the backbone's weights do not move, the MERIT
    layers' do; from the boundary on the backbone trains too."""
    argv = ["--dataset", str(tiny_corpus), "--max_steps", "4", "--seed", "3", *LOOP_ONLY, *TINY]
    argv += ["--backbone_frozen_steps", "2", "--output_dir", str(tmp_path / "run")]
    snapshot = _Snapshot()
    training.main(argv, callbacks=[snapshot])
    start = snapshot.weights
    first, second = _weights(tmp_path / "run/checkpoint-2"), _weights(tmp_path / "run/checkpoint-4")
    layers = [k for k in first if k.startswith("backbone.encoder.layers.")]
    assert layers
    for key in layers:
        assert torch.equal(first[key], start[key]), key  # frozen in stage 1
    assert any(not torch.equal(second[k], first[k]) for k in layers)  # trains in stage 2
    merit = [k for k in first if k.startswith("mixture.")]
    assert any(not torch.equal(first[k], start[k]) for k in merit)
    with pytest.raises(SystemExit):
        training.parse_args(["--backbone_learning_rate_factor", "0"])


@pytest.mark.parametrize("factor", [1.0, 20.0])
def test_layer_weights_train_at_their_own_learning_rate(tiny_corpus, tmp_path, factor):
    """AdamW's first step moves every parameter with a gradient by about its learning rate:
    the layer-weighting logits by ``factor`` x 1e-3, the other MERIT layers by 1e-3."""
    out = tmp_path / "run"
    argv = ["--dataset", str(tiny_corpus), "--max_steps", "1", "--seed", "3", *LOOP_ONLY, *TINY]
    argv += ["--save_steps", "1", "--learning_rate", "1e-3", "--warmup_steps", "0"]
    argv += ["--lr_scheduler_type", "constant", "--output_dir", str(out)]
    argv += ["--layer_weights_learning_rate_factor", str(factor)]
    snapshot = _Snapshot()
    training.main(argv, callbacks=[snapshot])
    after = _weights(out / "checkpoint-1")

    def largest_move(keys: list[str]) -> float:
        assert keys
        return max((after[k] - snapshot.weights[k]).abs().max().item() for k in keys)

    assert largest_move(["integration.layer_logits"]) == pytest.approx(factor * 1e-3, rel=0.02)
    assert largest_move([k for k in after if k.startswith("mixture.")]) == pytest.approx(
        1e-3, rel=0.02
    )
    with pytest.raises(SystemExit):
        training.parse_args(["--layer_weights_learning_rate_factor", "0"])


def _manifest(corpus: Path, tmp_path: Path, rename: dict[str, str] | None = None) -> Path:
    """The corpus as a CSV manifest with absolute paths, labels optionally renamed per split."""
    rows = list(csv.DictReader((corpus / "metadata.csv").open()))
    rename = rename or {}
    manifest = tmp_path / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", "label", "speaker", "split"])
        for row in rows:
            label = (
                rename.get(row["split"], row["label"]) if row["label"] == "sad" else row["label"]
            )
            writer.writerow([str(corpus / row["file_name"]), label, row["speaker"], row["split"]])
    return manifest


def test_unknown_labels_are_named_before_training(tiny_corpus, tmp_path):
    noise = ["--noise_dir", str(tiny_corpus / "noise"), "--output_dir", str(tmp_path / "o")]
    manifest = _manifest(tiny_corpus, tmp_path, rename={"validation": "bored"})
    with pytest.raises(ValueError, match=r"validation split.*unknown label\(s\) 'bored'"):
        training.main(["--dataset", str(manifest), *noise])
    assert not (tmp_path / "o").exists()


def test_labels_keep_a_class_subset_and_split_values_are_mapped(tiny_corpus, tmp_path, caplog):
    noise = str(tiny_corpus / "noise")
    with caplog.at_level("WARNING", logger="merit.preparation"):
        prepared, _, _ = prepare_data(
            DataArguments(dataset=str(tiny_corpus), noise_dir=noise, labels="neutral,happy,sad")
        )
    assert prepared.label_names == ["neutral", "happy", "sad"]
    assert set(prepared.train["label"]) == {"neutral", "happy", "sad"}
    assert "(train split): --labels keeps neutral, happy, sad; dropped 'angry' (" in caplog.text

    def msp(rows):  # MSP-Podcast's split names, plus a second test set
        names = {"train": "Train", "validation": "Development", "test": "Test1"}
        out = [{**r, "split": names[r["split"]]} for r in rows]
        return out + [{**r, "split": "Test2"} for r in rows if r["split"] == "test"][:3]

    manifest = _rows_manifest(tmp_path, tiny_corpus, msp)
    with pytest.raises(ValueError, match=r"'Test2' \(3 rows\) are not train / validation / test"):
        prepare_data(DataArguments(dataset=str(manifest), noise_dir=noise))
    mapped, _, _ = prepare_data(
        DataArguments(dataset=str(manifest), noise_dir=noise, split_map="Test2=drop")
    )
    rows = list(csv.DictReader((tiny_corpus / "metadata.csv").open()))
    assert len(mapped.validation) == sum(r["split"] == "validation" for r in rows)
    assert len(mapped.test) == sum(r["split"] == "test" for r in rows)
    with pytest.raises(ValueError, match="NAME=train|validation|test|drop"):
        prepare_data(DataArguments(dataset=str(manifest), noise_dir=noise, split_map="Test2"))

    def renamed(rows):  # MSP-Podcast's column names
        return [
            {"file_name": r["file_name"], "label": r["label"], "SpkrID": r["speaker"],
             "Split_Set": r["split"]}
            for r in msp(rows)
        ]  # fmt: skip

    manifest = _rows_manifest(tmp_path, tiny_corpus, renamed)
    named, _, _ = prepare_data(
        DataArguments(
            dataset=str(manifest),
            noise_dir=noise,
            split_column="Split_Set",
            speaker_column="SpkrID",
            split_map="Test2=drop",
        )
    )
    assert len(named.test) == len(mapped.test) and "speaker" in named.train.column_names


def test_lora_run_on_a_manifest_with_a_broken_file(tiny_corpus, tmp_path):
    manifest = _manifest(tiny_corpus, tmp_path)
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"not audio at all")
    with manifest.open("a", newline="") as handle:
        csv.writer(handle).writerow([str(broken), "happy", "spk99", "train"])
    common = ["--dataset", str(manifest), "--noise_dir", str(tiny_corpus / "noise"), *TINY]
    out = tmp_path / "lora"
    with pytest.raises(ValueError, match=r"broken\.wav.*--skip_bad_files"):
        training.main([*common, "--output_dir", str(out)])

    model = build_model(ModelArguments(peft="lora", tiny_hidden_size=32, tiny_layers=2), LABELS)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert any("lora_" in name for name in trainable)
    assert all("lora_" in name or "modules_to_save" in name for name in trainable), trainable
    assert not any("backbone" in name and "lora_" not in name for name in trainable)

    results = training.main(
        [
            *common,
            "--output_dir",
            str(out),
            "--peft",
            "lora",
            "--max_steps",
            "2",
            "--skip_bad_files",
        ]
        + LOOP_ONLY
    )
    assert len(results["skipped_files"]) == 1 and "broken.wav" in results["skipped_files"][0]
    # The adapters are merged: the folder is a plain MERIT model, no PEFT needed to load it.
    assert not (out / "adapter_config.json").exists()
    assert AutoConfig.from_pretrained(out, trust_remote_code=True).model_type == "merit"
    merged = AutoModel.from_pretrained(out, trust_remote_code=True).eval()
    assert not any("lora" in name for name, _ in merged.named_parameters())
    wave = torch.from_numpy(np.sin(np.arange(8000) / 7.0).astype(np.float32))[None]
    with torch.no_grad():
        assert torch.isfinite(merged(input_values=wave).logits).all()


def test_dimensional_rows_give_ccc_per_dimension():
    """compute_metrics reads [logits, predicted dims, rated dims, ssnr, si_sdr] rows."""
    from transformers import EvalPrediction

    from merit.metrics import ccc

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 4))
    labels = np.array([0, 1, 2, 3, 0, 1])
    predicted, rated = rng.normal(size=(6, 2)), rng.normal(size=(6, 2))
    se = rng.normal(size=(6, 2))
    rows = np.concatenate([logits, predicted, rated, se], axis=1)
    metrics = training.make_compute_metrics(list(LABELS.values()), True, ["arousal", "valence"])(
        EvalPrediction(predictions=rows, label_ids=labels)
    )
    assert metrics["ccc_arousal"] == pytest.approx(ccc(predicted[:, 0], rated[:, 0]))
    assert metrics["ccc_valence"] == pytest.approx(ccc(predicted[:, 1], rated[:, 1]))
    assert metrics["ccc"] == pytest.approx((metrics["ccc_arousal"] + metrics["ccc_valence"]) / 2)
    assert metrics["ssnr"] == pytest.approx(se[:, 0].mean())
    assert metrics["si_sdr"] == pytest.approx(se[:, 1].mean())
    assert metrics["accuracy"] == pytest.approx(np.mean(logits.argmax(-1) == labels))


def test_dimensional_only_run_trains_selects_and_evaluates_by_ccc(tiny_corpus, tmp_path):
    out = tmp_path / "dims"
    dims = "arousal,valence,dominance"
    results = training.main(
        [
            *("--dataset", str(tiny_corpus), "--output_dir", str(out)),
            *("--dimension_columns", dims, "--categorical_head", "False"),
            *("--max_steps", "2", "--eval_steps", "1", "--save_steps", "1"),
            *("--eval_snrs", "0", "--max_eval_samples", "4", "--max_test_samples", "4"),
            *TINY,
        ]
    )
    assert results["metric_for_best_model"] == "ccc"
    assert -1.0 <= results["best_validation_metric"] <= 1.0
    config = json.loads((out / "config.json").read_text())
    assert config["dimension_names"] == dims.split(",") and config["categorical_head"] is False
    test = results["test"]
    assert "clean_f1_macro" not in test and -1.0 <= test["clean_ccc"] <= 1.0
    row = next(r for r in results["test_rows"] if r["condition"] == "clean" and "ccc" in r)
    assert row["ccc"] == pytest.approx(
        np.mean([row["ccc_arousal"], row["ccc_valence"], row["ccc_dominance"]])
    )
    assert "ccc" in (out / "evaluation" / "table.md").read_text().lower()

    # The saved folder reproduces the CCC of the run through the public evaluation API.
    model = AutoModel.from_pretrained(out, trust_remote_code=True)
    sets, _ = build_test_sets(
        str(tiny_corpus), snrs=(0,), max_utterances=4, dimension_columns=dims.split(",")
    )
    again = evaluate_systems({"sparse": ModelSystem(model)}, sets, progress=False)
    for condition in ("clean", "seen_0dB"):
        logged = next(
            r
            for r in results["test_rows"]
            if r["system"] == "sparse" and r["condition"] == condition
        )
        assert again.get("sparse", condition)["ccc"] == pytest.approx(logged["ccc"], abs=1e-5)


def test_dimensional_flags_are_checked(tiny_corpus, tmp_path):
    with pytest.raises(ValueError, match="--dimension_columns"):
        training.main(
            ["--dataset", str(tiny_corpus), "--categorical_head", "False", *TINY, *LOOP_ONLY]
        )
    with pytest.raises(ValueError, match="no dimension column arousl"):
        training.main(
            ["--dataset", str(tiny_corpus), "--dimension_columns", "arousl", *TINY, *LOOP_ONLY]
        )


def test_corpus_without_class_labels_trains_the_dimensional_head(tiny_corpus, tmp_path):
    """An A/V/D-only corpus: --label_column none, no classifier, selection and test by CCC."""
    with (tiny_corpus / "metadata.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    manifest = tmp_path / "ratings.csv"
    columns = ["file_name", "speaker", "split", "arousal", "valence", "dominance"]
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([str(tiny_corpus / row["file_name"])] + [row[c] for c in columns[1:]])
    noise = ["--noise_dir", str(tiny_corpus / "noise")]
    out = tmp_path / "ratings-only"
    common = ["--dataset", str(manifest), "--label_column", "none", *noise, *TINY]
    results = training.main(
        [
            *common,
            *("--dimension_columns", "arousal,valence,dominance", "--categorical_head", "False"),
            *("--output_dir", str(out), "--max_steps", "2", "--eval_steps", "1"),
            *("--save_steps", "1", "--eval_snrs", "0", "--max_eval_samples", "4"),
            "--max_test_samples",
            "4",
        ]
    )
    assert results["metric_for_best_model"] == "ccc"
    assert "clean_ccc" in results["test"] and "clean_f1_macro" not in results["test"]
    with pytest.raises(ValueError, match="has no class labels"):
        training.main([*common, *LOOP_ONLY])


def test_label_smoothing_factor_reaches_the_models_own_loss(tiny_corpus, tmp_path):
    """``--label_smoothing_factor`` goes into the model's cross-entropy (saved in its config
    and named on the card); Trainer's own label smoother, which would score the logits alone
    and drop the enhancement loss, is not what trains it."""
    out = tmp_path / "smooth"
    argv = ["--dataset", str(tiny_corpus), "--output_dir", str(out), "--max_steps", "1"]
    training.main([*argv, "--label_smoothing_factor", "0.1", *LOOP_ONLY, *TINY])
    config = json.loads((out / "config.json").read_text())
    assert config["label_smoothing"] == 0.1
    assert "cross-entropy (label smoothing 0.1) x 1" in (out / "README.md").read_text()


def test_rerun_over_checkpoints_is_refused_and_resume_true_takes_the_latest(tiny_corpus, tmp_path):
    out = tmp_path / "run"
    argv = ["--dataset", str(tiny_corpus), "--output_dir", str(out), "--max_steps", "2"]
    argv += ["--seed", "5", *LOOP_ONLY, *TINY]
    training.main(argv)
    saved = (out / "checkpoint-2" / "model.safetensors").read_bytes()
    with pytest.raises(ValueError, match="already holds checkpoints .*checkpoint-2"):
        training.main(argv)
    assert (out / "checkpoint-2" / "model.safetensors").read_bytes() == saved  # untouched
    # The Trainer convention: True resumes from the latest checkpoint.
    resumed = training.main([*argv, "--resume_from_checkpoint", "True", "--max_steps", "3"])
    assert resumed["global_step"] == 3
    assert training.main([*argv, "--overwrite_output_dir", "True"])["global_step"] == 2


def test_resume_refuses_a_checkpoint_without_optimizer_state(tmp_path):
    checkpoint = tmp_path / "run" / "checkpoint-8"
    checkpoint.mkdir(parents=True)
    (checkpoint / "model.safetensors").write_bytes(b"")
    for value in ("auto", "True", str(checkpoint)):
        with pytest.raises(ValueError, match="has no optimizer.pt"):
            resolve_checkpoint(value, str(tmp_path / "run"))
    (checkpoint / "optimizer.pt").write_bytes(b"")
    assert resolve_checkpoint("true", str(tmp_path / "run")) == str(checkpoint)
    assert resolve_checkpoint(None, str(tmp_path / "run"), overwrite_output_dir=True) is None
    assert resolve_checkpoint("auto", str(tmp_path / "empty")) is None  # nothing yet: fresh


def _rows_manifest(tmp_path: Path, corpus: Path, edit) -> Path:
    rows = list(csv.DictReader((corpus / "metadata.csv").open()))
    for row in rows:
        row["file_name"] = str(corpus / row["file_name"])
    rows = edit(rows)
    manifest = tmp_path / "edited.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def _first(rows, split, label=None):
    return next(r for r in rows if r["split"] == split and (label is None or r["label"] == label))


@pytest.mark.parametrize(
    "edit,message",
    [
        (
            lambda rows: [
                {**r, "label": "Sad"} if r is _first(rows, "train", "sad") else r for r in rows
            ],
            r"differ only in case or spacing.*'Sad' / 'sad'",
        ),
        (
            lambda rows: [{**r, "label": "happy"} if r["split"] == "train" else r for r in rows],
            r"train split has a single class \('happy'\)",
        ),
        (
            lambda rows: [*rows, {**_first(rows, "train"), "split": "test"}],
            r"1 recording\(s\) appear in more than one split.*\(train and test\)",
        ),
    ],
    ids=["case-variants", "single-class", "train-test-leak"],
)
def test_data_that_would_train_the_wrong_model_is_refused(tiny_corpus, tmp_path, edit, message):
    manifest = _rows_manifest(tmp_path, tiny_corpus, edit)
    with pytest.raises(ValueError, match=message):
        prepare_data(DataArguments(dataset=str(manifest), noise_dir=str(tiny_corpus / "noise")))


def test_duplicates_and_rare_labels_are_warned_missing_files_skipped(tiny_corpus, tmp_path, caplog):
    def edit(rows):
        train = [r for r in rows if r["split"] == "train"]
        extra = [{**train[0]}, {**train[1], "label": "angyr"}]
        extra.append({**train[2], "file_name": str(tmp_path / "gone.wav")})
        return rows + extra

    manifest = _rows_manifest(tmp_path, tiny_corpus, edit)
    args = dict(dataset=str(manifest), noise_dir=str(tiny_corpus / "noise"), labels=None)
    with pytest.raises(ValueError, match="1 audio file\\(s\\) not found"):
        prepare_data(DataArguments(**args))
    with caplog.at_level("WARNING", logger="merit.preparation"):
        prepared, _, _ = prepare_data(DataArguments(**args, skip_bad_files=True))
    assert any("gone.wav: audio file not found" in message for message in prepared.skipped)
    assert "repeat a recording already listed" in caplog.text
    assert "very few training examples (a typo?): 'angyr' (1)" in caplog.text


def test_paper_configs_parse_and_build_the_release_architecture():
    root = Path(__file__).resolve().parents[1] / "configs"
    model_args, data_args, args = parse_args([str(root / "paper.yaml")])
    assert model_args.preset == "release" and model_args.backbone == "microsoft/wavlm-large"
    assert (args.learning_rate, args.gradient_accumulation_steps, args.seed) == (5e-5, 8, 7)
    assert args.backbone_learning_rate_factor == 0.5 and data_args.eval_snrs == [-5.0]
    assert (data_args.validation_snrs, data_args.split_column) == ([5.0], "Split_Set")
    model_args, _, args = parse_args([str(root / "paper-small.yaml"), *TINY[:6]])
    assert model_args.preset == "release" and args.max_steps == 450
    model = build_model(model_args, LABELS)
    config = model.config
    assert (config.integration, config.expert_type, config.router_top_k) == ("concat", "plain", 1)
    assert (config.num_experts, config.se_head_type, config.ser_head_type) == (
        3,
        "blstm",
        "release",
    )
    # Widths from the backbone: tiny_hidden_size 32, 3 hidden states -> 96 features, 4 x 32 inner.
    assert config.integrated_size == 3 * 32 and config.hidden_size == 32


def test_each_system_gets_its_own_output_folder_by_default():
    assert parse_args([])[2].output_dir == "outputs/merit-sparse"
    assert parse_args(["--variant", "dense"])[2].output_dir == "outputs/merit-dense"
    assert parse_args(["--variant", "se-only"])[2].output_dir == "outputs/merit-se-only"
    assert parse_args(["--preset", "release"])[2].output_dir == "outputs/merit-sparse-release"
    given = parse_args(["--variant", "dense", "--output_dir", "elsewhere"])[2]
    assert given.output_dir == "elsewhere"


def test_class_weights_flag(tiny_corpus):
    from datasets import Dataset

    from merit.training import class_weights

    train = Dataset.from_dict({"label": ["a"] * 6 + ["b"] * 2 + ["c"] * 4})
    weights = class_weights("auto", train, ["a", "b", "c"])
    assert weights == pytest.approx(
        [2 / 3 * 3 / (2 / 3 + 2 + 1), 2 * 3 / (2 / 3 + 2 + 1), 1 * 3 / (2 / 3 + 2 + 1)]
    )
    assert sum(weights) == pytest.approx(3.0) and weights[1] > weights[2] > weights[0]
    assert class_weights("1,2.5,1", train, ["a", "b", "c"]) == [1.0, 2.5, 1.0]
    for bad in ("1,2", "1,0,1", "x,y,z"):
        with pytest.raises(ValueError, match="class_weights"):
            class_weights(bad, train, ["a", "b", "c"])
    with pytest.raises(ValueError, match="no training examples of \\['d'\\]"):
        class_weights("auto", train, ["a", "b", "c", "d"])
    model_args, _, _ = parse_args(["--class_weights", "auto", *TINY[:6]])
    model = build_model(model_args, LABELS, class_weights=[1.0, 2.0, 1.0, 0.5])
    assert model.config.class_weights == [1.0, 2.0, 1.0, 0.5]
    assert model.class_weights.tolist() == [1.0, 2.0, 1.0, 0.5]  # a buffer: moves with the model


def test_smoke_mode_shrinks_every_stage_and_keeps_its_own_folder():
    model_args, data_args, args = parse_args(["--smoke", "True"])
    assert (args.max_steps, args.backbone_frozen_steps, args.eval_steps, args.save_steps) == (
        6,
        3,
        6,
        6,
    )
    assert (data_args.max_eval_samples, data_args.max_test_samples) == (24, 24)
    assert data_args.eval_snrs == [0.0] and args.output_dir == "outputs/smoke-sparse"
    assert parse_args(["--smoke", "True", "--output_dir", "x"])[2].output_dir == "x"


def test_card_names_every_loss_term_with_its_weight():
    from modeling_merit import minimal_merit_config

    dims_only = minimal_merit_config(
        dimension_names=["arousal", "valence"], categorical_head=False, se_sisdr_weight=0.01
    )
    assert training.merit_loss_text(dims_only) == (
        "dimensions 1 - CCC x 1; enhancement: compressed-magnitude MSE x 1, negative SI-SDR "
        f"x 0.01; routers: load balancing x {dims_only.load_balance_coef:g}, z-loss x "
        f"{dims_only.router_z_loss_coef:g}"
    )
    se_only = minimal_merit_config(tasks=["se"], load_balance_coef=0.0, router_z_loss_coef=0.0)
    assert training.merit_loss_text(se_only) == "enhancement: compressed-magnitude MSE x 1"


def test_extra_train_voices_apply_to_the_embedded_corpus_only(tiny_corpus, monkeypatch) -> None:
    from merit import corpus, preparation

    calls = []
    monkeypatch.setattr(corpus, "ensure_corpus", lambda **kw: calls.append(kw) or tiny_corpus)
    source, noise, name = preparation.resolve_data_sources(None, None, 3)
    assert calls == [{"extra_train_voices": 3}]
    assert (source, noise) == (str(tiny_corpus), tiny_corpus / "noise")
    assert name == f"{preparation.DEFAULT_DATASET_NAME} (+3 training voices)"
    with pytest.raises(ValueError, match="embedded corpus"):
        prepare_data(DataArguments(dataset=str(tiny_corpus), extra_train_voices=3))
    # Unset: the default number for the embedded corpus, none (and no error) for a dataset.
    calls.clear()
    assert DataArguments().extra_train_voices is None
    preparation.resolve_data_sources(None, None, None)
    preparation.resolve_data_sources(None, None, 0)
    assert calls == [
        {"extra_train_voices": preparation.DEFAULT_EXTRA_TRAIN_VOICES},
        {"extra_train_voices": 0},
    ]
    assert preparation.DEFAULT_EXTRA_TRAIN_VOICES == 24
    assert preparation.resolve_data_sources(str(tiny_corpus), None, None)[0] == str(tiny_corpus)
    assert preparation.resolve_data_sources(None, None, 0)[2] == preparation.DEFAULT_DATASET_NAME


def test_spec_augment_flags_set_the_backbone_config(tmp_path):
    from transformers import WhisperModel

    from modeling_merit import minimal_backbone_config

    WhisperModel(minimal_backbone_config("whisper")).save_pretrained(tmp_path / "whisper")
    for backbone in ("tiny", str(tmp_path / "whisper")):
        common = dict(backbone=backbone, tiny_hidden_size=32, tiny_layers=1, num_experts=4)
        plain = build_model(ModelArguments(**common), LABELS).config.backbone_config
        assert not plain.apply_spec_augment
        model = build_model(
            ModelArguments(**common, mask_time_prob=0.05, mask_feature_prob=0.1), LABELS
        )
        config = model.config.backbone_config
        assert config.apply_spec_augment
        assert (config.mask_time_prob, config.mask_feature_prob) == (0.05, 0.1)
        assert model.backbone_family.config.mask_feature_prob == 0.1  # what the forward reads
        assert training.spec_augment_text(config) == (
            f"backbone input masked in training: time 0.05 in spans of "
            f"{config.mask_time_length}, channels 0.1 in spans of {config.mask_feature_length}"
        )
        assert training.spec_augment_text(plain) == "none"
        # Both families train with it (WavLMConfig lacks mask_feature_min_masks, which
        # WavLMModel reads once mask_feature_prob > 0).
        x = torch.randn(2, 16000, generator=torch.Generator().manual_seed(0)) * 0.1
        model.train()(x, labels=torch.tensor([0, 1]), clean_values=x).loss.backward()
    model_args, _, _ = parse_args(["--mask_feature_prob", "0.1"])
    assert (model_args.mask_time_prob, model_args.mask_feature_prob) == (None, 0.1)
    with pytest.raises(ValueError, match=r"--mask_time_prob must be in \[0, 1\)"):
        build_model(
            ModelArguments(backbone="tiny", tiny_hidden_size=32, mask_time_prob=1.5), LABELS
        )
