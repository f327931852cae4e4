"""The default-recipe rule of benchmarks/recipe_search.py, on synthetic rows (no training)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import recipe_search  # noqa: E402


def _row(name: str, f1: float, ssnr: float, clean_ssnr: float) -> dict:
    return {
        "name": name,
        "val_f1_macro": f1,
        "val_ssnr": ssnr,
        "val_clean_ssnr": clean_ssnr,
        "val_clean_input_ssnr": 30.0,
    }


REFERENCE = _row("two-stage-x0.1", 0.78, 3.7, 15.0)  # 15 dB clean cost


def test_best_f1_among_cheap_candidates_that_keep_the_enhancement():
    rows = [
        REFERENCE,
        _row("keeps", 0.74, 3.3, 27.5),  # 2.5 dB cost, SSNR -0.4 dB
        _row("passes-clean", 0.79, 1.8, 29.9),  # cheaper and better F1, but halves SSNR
        _row("expensive", 0.80, 3.8, 26.0),  # 4 dB cost
    ]
    name, why = recipe_search.pick(rows)
    assert name == "keeps" and "within 0.5 dB" in why


def test_falls_back_to_the_clean_cost_alone_then_to_f1():
    rows = [REFERENCE, _row("a", 0.70, 1.0, 29.0), _row("b", 0.72, 2.0, 28.0)]
    assert recipe_search.pick(rows) == (
        "b",
        "best F1 among: clean cost <= 3 dB (none keeps the noisy SSNR)",
    )
    rows = [REFERENCE, _row("c", 0.70, 3.7, 20.0)]
    assert recipe_search.pick(rows)[0] == "two-stage-x0.1"
    with pytest.raises(ValueError, match="two-stage-x0.1"):
        recipe_search.pick([_row("no-reference", 0.7, 3.0, 29.0)])


def _swept(name: str, f1: float, swept: float, ssnr: float = 3.5) -> dict:
    return {**_row(name, f1, ssnr, 29.0), "val_swept_f1_macro": swept}


def test_once_rows_have_the_habit_sweep_only_they_compete_on_the_mean():
    incumbent = recipe_search.INCUMBENT
    rows = [
        REFERENCE,
        _row("old-high", 0.95, 3.7, 29.0),  # no sweep: cannot be ranked on it
        _swept(incumbent, 0.86, 0.60),  # score 0.73
        _swept("robust", 0.80, 0.75),  # score 0.775: beats the default by more than 0.02
        _swept("noisy-only", 0.90, 0.58),  # score 0.74
        _swept("robust-no-ssnr", 0.85, 0.90, ssnr=2.0),  # fails the SSNR condition
    ]
    name, why = recipe_search.pick(rows)
    assert name == "robust" and why.startswith("best mean of noisy and habit-swept F1")
    assert recipe_search.score(rows[3]) == pytest.approx(0.775)
    assert recipe_search.score(rows[1]) == 0.95  # an old row ranks by noisy F1 alone


def test_rows_with_the_new_voices_compete_on_the_mean_of_three():
    incumbent = recipe_search.INCUMBENT
    rows = [
        REFERENCE,
        _swept("swept-only", 0.95, 0.95),  # no new-voice figure: out once others have it
        {**_swept(incumbent, 0.86, 0.78), "val_voices_f1_macro": 0.60},  # 0.7467
        {**_swept("voices", 0.83, 0.78), "val_voices_f1_macro": 0.70},  # 0.77
    ]
    name, why = recipe_search.pick(rows)
    assert name == "voices"
    assert why.startswith("best mean of noisy, habit-swept and new-voice F1")
    assert recipe_search.score(rows[3]) == pytest.approx(0.77)


def test_the_default_stays_unless_beaten_by_the_margin():
    incumbent = recipe_search.INCUMBENT
    rows = [REFERENCE, _swept(incumbent, 0.86, 0.60), _swept("slightly", 0.84, 0.65)]
    name, why = recipe_search.pick(rows)  # 0.745 vs 0.73: within the 0.02 margin
    assert name == incumbent and "by 0.02" in why
    rows.append(_swept("clearly", 0.84, 0.67))  # 0.755
    assert recipe_search.pick(rows)[0] == "clearly"


def test_candidates_with_their_own_length_are_candidates_and_train_that_long(tmp_path, monkeypatch):
    """A name in LENGTHS that is no candidate would be silently trained for --steps."""
    assert set(recipe_search.LENGTHS) <= set(recipe_search.CANDIDATES)
    commands = []

    def fake_train(command, check, cwd):
        commands.append(command)
        raise RuntimeError("stop after the command is built")

    monkeypatch.setattr(recipe_search.subprocess, "run", fake_train)
    name = next(iter(recipe_search.LENGTHS))
    monkeypatch.setattr(sys, "argv", ["recipe_search.py", "--only", name, "--out", str(tmp_path)])
    monkeypatch.setattr(recipe_search, "RESULTS", tmp_path / "results")
    with pytest.raises(RuntimeError, match="stop after"):
        recipe_search.main()
    command = commands[0]
    steps = recipe_search.LENGTHS[name]
    assert command[command.index("--max_steps") + 1] == str(steps)
    assert command[command.index("--backbone_frozen_steps") + 1] == str(steps // 3)


def test_rows_keep_the_defaults_they_were_measured_with(tmp_path, monkeypatch):
    """A row's command parses to the settings it ran with when it was added, whatever
    train.py's defaults are now: the pinned baseline first, the row's own flags winning."""
    from merit.training import parse_args

    commands = []

    def fake_train(command, check, cwd):
        commands.append(command)
        raise RuntimeError("stop after the command is built")

    monkeypatch.setattr(recipe_search.subprocess, "run", fake_train)
    monkeypatch.setattr(recipe_search, "RESULTS", tmp_path / "results")
    passthrough = recipe_search.PASSTHROUGH
    expected = {  # name -> (learning rate, pass-through weight, speed range)
        "two-stage-x0.1": (1e-3, 0.0, [1.0, 1.0]),
        f"{passthrough}-600steps": (1e-3, 0.01, [1.0, 1.0]),
        f"{passthrough}-600steps-lr0.002": (2e-3, 0.01, [1.0, 1.0]),
        f"{passthrough}-750steps-lr0.002-speed0.9-1.1": (2e-3, 0.01, [0.9, 1.1]),
    }
    for name, (rate, weight, speed) in expected.items():
        argv = ["recipe_search.py", "--only", name, "--out", str(tmp_path)]
        monkeypatch.setattr(sys, "argv", argv)
        with pytest.raises(RuntimeError, match="stop after"):
            recipe_search.main()
        model_args, data_args, args = parse_args(commands[-1][2:])
        assert args.learning_rate == rate, name
        assert model_args.se_passthrough_weight == weight, name
        assert data_args.speed_range == speed, name


def test_swept_validation_scores_the_sweep_and_each_habit_corner(
    tiny_corpus, tmp_path, monkeypatch
):
    from conftest import make_model

    from merit.evaluation import ModelSystem, evaluate_systems
    from merit.preparation import habit_sweep_set

    sweep = habit_sweep_set("validation", corpus_dir=tiny_corpus, progress=False)
    monkeypatch.setattr(recipe_search, "_habit_sweep", lambda: sweep)
    from modeling_merit import MeritFeatureExtractor

    make_model(seed=3).save_pretrained(tmp_path / "model")
    MeritFeatureExtractor().save_pretrained(tmp_path / "model")
    got = recipe_search.swept_validation(tmp_path / "model")
    again = evaluate_systems(
        {"m": ModelSystem.from_pretrained(tmp_path / "model")}, {"s": sweep}, progress=False
    )
    assert got["val_swept_f1_macro"] == pytest.approx(again.get("m", "s")["f1_macro"])
    corners = got["val_swept_f1_by_corner"]
    assert len(corners) == 8 and "pitch- rate+ range-" in corners
    assert all(0.0 <= v <= 1.0 for v in corners.values())


def test_voices_validation_scores_each_new_voice(tiny_corpus, tmp_path, monkeypatch):
    from conftest import make_model

    from merit.evaluate_metrics import emotion_scores
    from merit.evaluation import ModelSystem
    from merit.preparation import validation_voices_set
    from modeling_merit import MeritFeatureExtractor

    voices = validation_voices_set(corpus_dir=tiny_corpus, progress=False)
    assert len(voices) == 8 * 16 and len(set(voices["speaker"])) == 8
    monkeypatch.setattr(recipe_search, "_validation_voices", lambda: voices)
    make_model(seed=3).save_pretrained(tmp_path / "model")
    MeritFeatureExtractor().save_pretrained(tmp_path / "model")
    got = recipe_search.voices_validation(tmp_path / "model")
    system = ModelSystem.from_pretrained(tmp_path / "model")
    first = [i for i, s in enumerate(voices["speaker"]) if s == "val00"]
    logits = system.predict([voices[i]["input_values"] for i in first]).logits
    labels = [system.label_names.index(voices[i]["label"]) for i in first]
    expected = emotion_scores(logits.argmax(-1), labels, 4)["f1_macro"]
    assert got["val_voices_f1_by_speaker"]["val00"] == pytest.approx(expected)
    assert set(got["val_voices_f1_by_speaker"]) == {f"val{k:02d}" for k in range(8)}


def _three(name: str, f1: float, swept: float, voices: float, ssnr: float = 3.5) -> dict:
    return {**_swept(name, f1, swept, ssnr), "val_voices_f1_macro": voices}


def test_seeds_of_a_recipe_are_one_candidate_with_their_means():
    rows = [
        _three("r", 0.80, 0.70, 0.60, ssnr=3.0),
        _three("r-seed1", 0.90, 0.80, 0.40, ssnr=4.0),
        _three("alone", 0.70, 0.70, 0.70),
    ]
    merged = {r["name"]: r for r in recipe_search.over_seeds(rows)}
    assert set(merged) == {"r", "alone"}
    assert merged["r"]["seeds"] == 2 and merged["alone"]["seeds"] == 1
    assert merged["r"]["val_f1_macro"] == pytest.approx(0.85)
    assert merged["r"]["val_voices_f1_macro"] == pytest.approx(0.50)
    assert merged["r"]["val_ssnr"] == pytest.approx(3.5)
    assert merged["r"]["seed_scores"] == pytest.approx([0.7, 0.7])
    assert merged["alone"] == {**rows[2], "seeds": 1}


def test_a_default_run_over_seeds_competes_only_with_recipes_run_over_as_many():
    incumbent = recipe_search.INCUMBENT
    rows = [REFERENCE]
    for suffix, shift in (("", 0.0), ("-seed1", 0.01), ("-seed2", -0.01)):
        rows.append(_three(incumbent + suffix, 0.84 + shift, 0.80, 0.48))  # mean 0.7067
        rows.append(_three("more" + suffix, 0.80 + shift, 0.77, 0.66))  # mean 0.7433
    rows.append(_three("lucky", 0.90, 0.85, 0.70))  # 0.8167, but one run
    name, why = recipe_search.pick(rows)
    assert name == "more" and why.endswith("(means over 3 seeds)")
    # Within the margin of the incumbent's mean, the default stays.
    close = [r for r in rows if not r["name"].startswith("more")]
    close += [_three("close" + s, 0.82, 0.79, 0.50) for s in ("", "-seed1", "-seed2")]
    assert recipe_search.pick(close)[0] == incumbent


def test_runs_past_the_budget_are_never_picked():
    over = next(iter(recipe_search.OVER_BUDGET))
    rows = [REFERENCE, _three(recipe_search.INCUMBENT, 0.84, 0.80, 0.48), _three(over, 1, 1, 1)]
    assert recipe_search.pick(rows)[0] == recipe_search.INCUMBENT
    assert recipe_search.OVER_BUDGET <= set(recipe_search.CANDIDATES)


def test_last_trainer_state_is_the_highest_step_not_the_last_name(tmp_path):
    for step in (400, 800, 1200):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        history = [{"step": s, "eval_f1_macro": s / 2000} for s in range(400, step + 1, 400)]
        (folder / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    state = recipe_search.last_trainer_state(tmp_path)
    assert [h["step"] for h in state["log_history"]] == [400, 800, 1200]
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        recipe_search.last_trainer_state(tmp_path / "missing")
