"""The metrics as ``evaluate`` modules: loaded offline from the package folder with
``evaluate.load(path)``, equal to the hand-checked values of tests/test_metrics.py, used by
training and the evaluation tables, and publishable to the Hub as metric Spaces."""

from __future__ import annotations

import math
from pathlib import Path

import evaluate
import numpy as np
import pytest
from test_hub import fake_hub  # noqa: F401  (the loopback Hub fixture)
from test_metrics import SR, orthogonal_noise, speech_like

from merit import evaluate_metrics as em
from merit.metrics import pesq_score, segmental_snr, stoi_score


def test_every_module_folder_loads_offline_and_names_its_class():
    for name, cls in em.METRIC_MODULES.items():
        folder = Path(em.module_path(name))
        assert (folder / f"{name}.py").is_file() and (folder / "README.md").is_file()
        module = evaluate.load(str(folder), keep_in_memory=True)
        assert type(module).__name__ == cls.__name__
    with pytest.raises(ValueError, match="unknown metric module 'f1'"):
        em.module_path("f1")


def test_emotion_module_equals_the_hand_example():
    references = [0, 0, 1, 1, 2, 3]
    predictions = [0, 1, 1, 1, 2, 0]  # per-class F1 0.5, 0.8, 1, 0; recall 0.5, 1, 1, 0
    module = evaluate.load(em.module_path("emotion_recognition"), keep_in_memory=True)
    out = module.compute(predictions=predictions, references=references, num_labels=4)
    assert out == pytest.approx({"accuracy": 4 / 6, "f1_macro": 2.3 / 4, "uar": 2.5 / 4})
    assert em.emotion_scores(np.array(predictions), references, 5)["f1_macro"] == pytest.approx(
        2.3 / 5
    )
    with pytest.raises(ValueError, match="give num_labels"):
        module.compute(predictions=predictions, references=references)


def test_ccc_module_and_dimension_scores_equal_the_hand_example():
    module = evaluate.load(em.module_path("ccc"), keep_in_memory=True)
    refs = [1.0, 2.0, 3.0, 4.0]
    assert module.compute(predictions=[2.0, 2.0, 4.0, 5.0], references=refs)["ccc"] == (
        pytest.approx(11 / 14)
    )
    rated = np.array([refs, refs]).T
    predicted = np.array([[2.0, 2.0, 4.0, 5.0], np.array(refs) + 1.0]).T
    assert em.dimension_scores(predicted, rated, ["arousal", "valence"]) == pytest.approx(
        {"ccc": (11 / 14 + 5 / 7) / 2, "ccc_arousal": 11 / 14, "ccc_valence": 5 / 7}
    )


def test_signal_modules_average_the_per_utterance_scores():
    ref = np.random.default_rng(6).standard_normal(SR)
    ref -= ref.mean()
    estimates = [ref + orthogonal_noise(ref, snr, seed=7) for snr in (10.0, -3.0)]
    si_sdr = evaluate.load(em.module_path("si_sdr"), keep_in_memory=True)
    out = si_sdr.compute(predictions=estimates, references=[ref, ref])
    assert out["count"] == 2 and out["mean"] == pytest.approx(3.5, abs=1e-4)  # (10 - 3) / 2
    speech = speech_like()
    noisy = speech + 0.05 * np.random.default_rng(0).standard_normal(speech.shape[0])
    pairs = dict(predictions=[noisy, speech], references=[speech, speech], sample_rate=SR)
    # float32 in the module's Arrow table: within float32 rounding of the float64 functions
    for name, function, tolerance in (
        ("segmental_snr", segmental_snr, 1e-3),
        ("pesq", pesq_score, 2e-2),
        ("stoi", stoi_score, 1e-3),
    ):
        expected = np.mean([function(speech, noisy, SR), function(speech, speech, SR)])
        assert em.compute(name, **pairs)["mean"] == pytest.approx(expected, abs=tolerance), name
    # an undefined utterance (silent reference) is left out of the mean and the count
    with pytest.warns(RuntimeWarning, match="SI-SDR is undefined"):
        out = em.compute(
            "si_sdr", predictions=[estimates[0], np.ones(SR)], references=[ref, np.zeros(SR)]
        )
    assert out["count"] == 1 and out["mean"] == pytest.approx(10.0, abs=1e-4)
    with pytest.warns(RuntimeWarning):  # nothing defined: nan, count 0 (not a fake 0 dB)
        out = em.compute("si_sdr", predictions=[np.ones(8)], references=[np.zeros(8)])
    assert math.isnan(out["mean"]) and out["count"] == 0


def test_publish_metric_uploads_a_loadable_space(fake_hub, tmp_path):  # noqa: F811
    from merit.hub import publish_metric

    url = publish_metric("segmental_snr", "user/merit-ssnr", endpoint=fake_hub.url, token="t")
    assert url.endswith("spaces/user/merit-ssnr")
    repo = fake_hub.repos[("space", "user/merit-ssnr")]
    assert repo["sdk"] == "gradio" and repo.get("private") in (False, None)
    files = fake_hub.files[("space", "user/merit-ssnr")]
    assert set(files) == {"merit_ssnr.py", "README.md", "app.py", "requirements.txt"}
    assert b'evaluate.load("user/merit-ssnr")' in files["app.py"]
    script = tmp_path / "merit_ssnr" / "merit_ssnr.py"  # what evaluate.load would fetch
    script.parent.mkdir()
    script.write_bytes(files["merit_ssnr.py"])
    module = evaluate.load(str(script.parent), keep_in_memory=True)
    assert type(module).__name__ == "SegmentalSNR"
