"""Chunked inference: cross-fade, timeline, batching, any-rate input, errors, loading."""

import numpy as np
import pytest
import torch
from conftest import make_model

from merit.audio import prepare_waveform
from merit.inference import analyze, cross_fade_weights, load_model, plan_chunks
from modeling_merit import MeritFeatureExtractor

SR = 16000


def noise(seconds: float, seed: int = 0, rate: int = SR, channels: int | None = None) -> np.ndarray:
    shape = (int(seconds * rate),) if channels is None else (int(seconds * rate), channels)
    return (np.random.default_rng(seed).standard_normal(shape) * 0.1).astype(np.float32)


def pass_through(model):
    """Force the enhancement mask to 1 so the enhanced audio must equal the input."""
    with torch.no_grad():
        model.se_head.mask_out.weight.zero_()
        model.se_head.mask_out.bias.fill_(40.0)
    return model


@pytest.fixture(scope="module")
def model():
    return make_model().eval()


@pytest.mark.parametrize(
    "total,chunk,overlap",
    [
        (100_000, 16_000, 1_600),
        (16_001, 16_000, 1_600),
        (50_000, 8_000, 3_900),
        (50_001, 8_000, 0),
        (7_777, 8_000, 0),
    ],
)
def test_chunk_plan_tiles_the_file_and_weights_sum_to_one(total, chunk, overlap):
    plan = plan_chunks(total, chunk, overlap)
    assert plan.starts[0] == 0 and plan.starts[-1] + plan.length == total
    assert plan.length <= chunk
    overlaps = [
        plan.starts[i] + plan.length - plan.starts[i + 1] for i in range(len(plan.starts) - 1)
    ]
    assert all(abs(o - overlap) <= 1 for o in overlaps), overlaps
    bounds = plan.bounds
    assert bounds[0] == 0 and bounds[-1] == total and list(bounds) == sorted(bounds)
    coverage = np.zeros(total)
    for i, start in enumerate(plan.starts):
        coverage[start : start + plan.length] += cross_fade_weights(plan, i)
    np.testing.assert_allclose(coverage, 1.0, atol=1e-6)


def test_cross_fade_is_a_raised_cosine_over_the_overlap():
    plan = plan_chunks(30_000, 10_000, 1_000)
    first = cross_fade_weights(plan, 0)
    fade = plan.starts[0] + plan.length - plan.starts[1]
    assert np.all(first[: plan.length - fade] == 1.0)
    tail = first[plan.length - fade :]
    expected = np.cos(0.5 * np.pi * (np.arange(fade) + 0.5) / fade) ** 2
    np.testing.assert_allclose(tail, expected, atol=1e-6)
    assert np.all(np.diff(tail) < 0)


def test_seams_pass_a_sine_through_unchanged():
    model = pass_through(make_model().eval())
    t = np.arange(int(9.3 * SR)) / SR
    sine = (0.5 * np.sin(2 * np.pi * 400 * t)).astype(np.float32)
    result = analyze(model, None, sine, SR, chunk_seconds=2.0, overlap_seconds=0.5, batch_size=3)
    assert len(result.timeline) >= 5
    np.testing.assert_allclose(result.enhanced, sine, atol=2e-4)
    # Local energy in 10 ms windows (exactly 4 periods, so constant for the input) must not bump
    # where chunks are cross-faded: compare those windows with the rest of the file.
    win = SR // 100
    usable = len(sine) // win * win
    energy = (result.enhanced[:usable].reshape(-1, win) ** 2).mean(1)
    plan = plan_chunks(len(sine), 2 * SR, SR // 2)
    seam = np.zeros(energy.shape, dtype=bool)
    for nxt, prev in zip(plan.starts[1:], plan.starts[:-1], strict=True):
        seam[nxt // win : (prev + plan.length) // win + 1] = True
    assert seam.sum() >= 4 * 50 and (~seam).sum() > 0
    expected = 0.125  # mean square of a 0.5-amplitude sine
    seam_deviation = np.max(np.abs(energy[seam] / expected - 1))
    other_deviation = np.max(np.abs(energy[~seam] / expected - 1))
    assert seam_deviation < 1e-3 and other_deviation < 1e-3, (seam_deviation, other_deviation)


def test_timeline_covers_the_file_and_scores_are_weighted_means(model):
    audio = noise(7.3)
    result = analyze(model, None, audio, SR, chunk_seconds=2.0, overlap_seconds=0.4)
    timeline = result.timeline
    assert result.duration == pytest.approx(7.3)
    assert timeline[0].start == 0 and timeline[-1].end == pytest.approx(7.3)
    for before, after in zip(timeline[:-1], timeline[1:], strict=True):
        assert before.end == after.start
    for segment in timeline:
        assert sum(segment.scores.values()) == pytest.approx(1.0, abs=1e-6)
        assert segment.label == max(segment.scores, key=segment.scores.get)
    durations = np.array([s.end - s.start for s in timeline])
    expected = {
        label: float(np.dot(durations, [s.scores[label] for s in timeline]) / durations.sum())
        for label in result.probabilities
    }
    assert result.probabilities == pytest.approx(expected, abs=1e-6)
    assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-6)
    assert result.label == max(expected, key=expected.get)


def test_batched_equals_one_by_one(model):
    audio = noise(9.0, seed=1)
    kwargs = dict(chunk_seconds=2.0, overlap_seconds=0.5)
    batched = analyze(model, None, audio, SR, batch_size=4, **kwargs)
    single = analyze(model, None, audio, SR, batch_size=1, progress=True, **kwargs)
    assert batched.probabilities == pytest.approx(single.probabilities, abs=1e-6)
    np.testing.assert_allclose(batched.enhanced, single.enhanced, atol=1e-6)
    for task in ("ser", "se"):
        np.testing.assert_allclose(batched.routing[task], single.routing[task], atol=1e-6)


def test_single_chunk_matches_a_plain_forward_pass(model):
    audio = noise(1.5, seed=2)
    result = analyze(model, MeritFeatureExtractor(), audio, SR)
    with torch.no_grad():
        out = model(torch.from_numpy(audio)[None])
    probs = out.logits.softmax(-1)[0].numpy()
    assert list(result.probabilities.values()) == pytest.approx(probs.tolist(), abs=1e-6)
    np.testing.assert_allclose(result.enhanced, out.enhanced_waveform[0].numpy(), atol=1e-6)
    # Routing: one row per 20 ms frame, the top-k gate weights at the chosen experts.
    routing = result.routing["ser"]
    indices, weights = out.routing_indices["ser"][0].numpy(), out.routing_weights["ser"][0].numpy()
    assert routing.shape == (indices.shape[0], model.config.num_experts)
    assert result.routing_hop == pytest.approx(0.02)
    expected = np.zeros_like(routing)
    np.put_along_axis(expected, indices, weights, axis=1)
    np.testing.assert_allclose(routing, expected, atol=1e-6)


def test_long_audio_routing_has_one_row_per_frame(model):
    result = analyze(model, None, noise(6.0, seed=3), SR, chunk_seconds=2.0)
    frames = int(model.backbone._get_feat_extract_output_lengths(torch.tensor(6 * SR)))
    for matrix in result.routing.values():
        assert matrix.shape == (frames, model.config.num_experts)
        np.testing.assert_allclose(matrix.sum(1), 1.0, atol=1e-5)
        assert np.all((matrix > 0).sum(1) == model.config.router_top_k)


def test_stereo_44k_input_is_mixed_down_and_resampled():
    model = pass_through(make_model().eval())
    stereo = noise(3.0, seed=4, rate=44_100, channels=2)
    result = analyze(model, None, stereo, 44_100, chunk_seconds=1.0, overlap_seconds=0.2)
    expected = prepare_waveform(stereo, 44_100, SR)
    assert result.sampling_rate == SR and result.duration == pytest.approx(3.0)
    assert result.enhanced.shape == expected.shape == (3 * SR,)
    np.testing.assert_allclose(result.enhanced, expected, atol=1e-4)
    channels_first = analyze(model, None, stereo.T, 44_100, chunk_seconds=1.0, overlap_seconds=0.2)
    np.testing.assert_allclose(channels_first.enhanced, expected, atol=1e-4)


def test_audio_shorter_than_the_model_minimum_is_padded_and_cropped():
    model = pass_through(make_model().eval())
    audio = noise(1.0, seed=5)[:300]
    result = analyze(model, None, audio, SR, min_speech_seconds=0.0)
    assert result.enhanced.shape == (300,)
    np.testing.assert_allclose(result.enhanced, audio, atol=1e-4)
    assert result.timeline[-1].end == pytest.approx(300 / SR)


@pytest.mark.parametrize(
    "audio,kwargs,message",
    [
        (np.zeros(0, dtype=np.float32), {}, "empty"),
        (np.array([0.1, np.nan] * 400, dtype=np.float32), {}, "NaN"),
        (np.zeros(6 * SR, dtype=np.float32), {"max_seconds": 5}, "limit is 5 s"),
        (np.zeros(SR, dtype=np.float32), {"chunk_seconds": 0.01}, "minimum input"),
        (np.zeros(SR, dtype=np.float32), {"overlap_seconds": 10.0}, "overlap_seconds"),
        (np.zeros(SR, dtype=np.float32), {"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_input_is_refused(model, audio, kwargs, message):
    with pytest.raises(ValueError, match=message):
        analyze(model, None, audio, SR, **kwargs)


def test_dimensions_are_returned_per_file_and_per_segment():
    names = ["arousal", "valence", "dominance"]
    model = make_model(dimension_names=names).eval()
    result = analyze(model, None, noise(5.0, seed=6), SR, chunk_seconds=2.0)
    assert list(result.dimensions) == names
    durations = np.array([s.end - s.start for s in result.timeline])
    for name in names:
        values = [s.dimensions[name] for s in result.timeline]
        expected = np.dot(durations, values) / durations.sum()
        assert result.dimensions[name] == pytest.approx(expected, abs=1e-6)

    # Dimensional head only: no label or class scores, the dimensions and enhancement remain.
    only = make_model(dimension_names=names, categorical_head=False).eval()
    result = analyze(only, None, noise(3.0, seed=7), SR, chunk_seconds=2.0)
    assert result.label is None and result.probabilities is None
    assert list(result.dimensions) == names and result.enhanced is not None
    assert all(s.scores == {} and list(s.dimensions) == names for s in result.timeline)


def test_single_task_models():
    ser = analyze(make_model(tasks=["ser"]).eval(), None, noise(1.0), SR)
    assert ser.enhanced is None and set(ser.routing) == {"ser"}
    se = analyze(make_model(tasks=["se"]).eval(), None, noise(1.0), SR)
    assert se.probabilities is None and se.label is None and se.timeline[0].scores == {}
    shared = analyze(make_model(routing="shared").eval(), None, noise(1.0), SR)
    assert shared.routing == {} and shared.enhanced is not None


def test_analyze_leaves_a_training_model_in_training_mode():
    model = make_model().train()
    analyze(model, None, noise(1.0), SR)
    assert model.training


def test_load_model_round_trip_and_missing_folder(tmp_path, model):
    for missing in (str(tmp_path / "missing"), "models/not-trained-yet"):
        with pytest.raises(FileNotFoundError, match="python train.py"):
            load_model(missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="config.json"):
        load_model(str(tmp_path / "empty"))
    model.save_pretrained(tmp_path / "saved")
    MeritFeatureExtractor().save_pretrained(tmp_path / "saved")
    loaded, extractor = load_model(str(tmp_path / "saved"))
    assert not loaded.training and extractor.sampling_rate == SR
    audio = noise(1.0, seed=7)
    assert analyze(loaded, extractor, audio, SR).probabilities == pytest.approx(
        analyze(model, None, audio, SR).probabilities, abs=1e-6
    )


def test_load_model_never_runs_code_a_folder_carries(tmp_path, tiny_model):
    """A non-MERIT folder is refused from its config.json alone; a MERIT folder whose code
    files were tampered with loads with this package's code (the tampered files never run)."""
    from merit.inference import load_model
    from modeling_merit import MeritFeatureExtractor

    sentinel = tmp_path / "ran"
    payload = f"open({str(sentinel)!r}, 'w').write('pwned')\n"
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "config.json").write_text(
        '{"model_type": "evil", "auto_map": {"AutoConfig": "configuration_evil.EvilConfig",'
        ' "AutoModel": "modeling_evil.EvilModel"}}'
    )
    (evil / "configuration_evil.py").write_text(payload)
    (evil / "modeling_evil.py").write_text(payload)
    with pytest.raises(ValueError, match="'evil' model, not a MERIT model"):
        load_model(str(evil))
    assert not sentinel.exists()

    folder = tmp_path / "merit"
    tiny_model.save_pretrained(folder)
    MeritFeatureExtractor().save_pretrained(folder)
    for name in ("modeling_merit.py", "configuration_merit.py"):
        (folder / name).write_text(payload)
    model, _ = load_model(str(folder))
    assert not sentinel.exists()
    assert type(model).__module__.startswith("modeling_merit")  # this package's code


def _anti_phase(seconds: float) -> np.ndarray:
    left = noise(seconds, seed=8)
    return np.stack([left, -left], axis=1)  # channels-last stereo that mixes down to zero


@pytest.mark.parametrize(
    "audio,rate,reason",
    [
        (np.zeros(2 * SR, np.float32), SR, "no speech"),
        (_anti_phase(2.0), SR, "no speech"),
        (noise(2.0, seed=9) * 1e-4, SR, "no speech"),  # about -80 dBFS
        (noise(0.005, seed=10), SR, "too short"),  # a 5 ms click
        (noise(0.01, seed=10, rate=44_100), 44_100, "too short"),
        (noise(0.2, seed=11), SR, "too short"),
    ],
)
def test_silence_and_clips_get_no_label_but_a_reason(model, audio, rate, reason):
    result = analyze(model, None, audio, rate)
    assert result.reason == reason
    assert result.label is None and result.probabilities is None and result.dimensions is None
    assert result.timeline == [] and result.routing == {}
    expected = prepare_waveform(audio, rate, SR)
    np.testing.assert_array_equal(result.enhanced, expected)  # passed through untouched


def test_quiet_speech_is_still_analysed(model):
    quiet = noise(1.0, seed=12) * 0.01  # about -50 dBFS: quiet, not silent
    result = analyze(model, None, quiet, SR)
    assert result.reason is None and result.label is not None
    assert sum(result.probabilities.values()) == pytest.approx(1.0)


@pytest.mark.parametrize("rate,channels", [(SR, None), (44_100, 2), (8_000, 1)])
def test_file_analysis_streams_and_matches_the_in_memory_analysis(tmp_path, rate, channels):
    import soundfile as sf

    from merit.audio import load_audio
    from merit.inference import analyze_file

    model = make_model(dimension_names=["arousal"]).eval()
    path = tmp_path / "long.wav"
    sf.write(path, noise(7.3, seed=13, rate=rate, channels=channels), rate, subtype="FLOAT")
    kwargs = dict(chunk_seconds=2.0, overlap_seconds=0.5, batch_size=2)
    expected = analyze(model, None, load_audio(path), SR, **kwargs)
    out = tmp_path / "enhanced" / "long.wav"
    streamed = analyze_file(model, None, path, enhanced_path=out, **kwargs)
    assert streamed.enhanced is None and streamed.reason is None
    assert streamed.probabilities == pytest.approx(expected.probabilities, abs=1e-5)
    assert streamed.dimensions == pytest.approx(expected.dimensions, abs=1e-5)
    assert [s.label for s in streamed.timeline] == [s.label for s in expected.timeline]
    for task, matrix in expected.routing.items():
        np.testing.assert_allclose(streamed.routing[task], matrix, atol=1e-5)
    written, written_rate = sf.read(out, dtype="float32")
    assert written_rate == SR and written.shape == expected.enhanced.shape
    pcm = np.round(np.clip(expected.enhanced, -1, 1) * 32767) / 32768
    np.testing.assert_allclose(written, pcm, atol=2 / 32768)
    assert list(out.parent.iterdir()) == [out]  # no partial file left behind


def test_file_analysis_of_silence_and_of_a_file_that_breaks_mid_way(tmp_path):
    import soundfile as sf

    from merit.inference import analyze_file

    model = make_model().eval()
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(3 * SR), SR)
    out = tmp_path / "out" / "silent.wav"
    result = analyze_file(model, None, silent, enhanced_path=out)
    assert result.reason == "no speech" and result.label is None
    assert np.all(sf.read(out)[0] == 0) and sf.info(out).frames == 3 * SR
    broken = tmp_path / "broken.wav"
    audio = noise(4.0, seed=14)
    audio[3 * SR] = np.nan  # decodes fine up to the third second
    sf.write(broken, audio, SR, subtype="FLOAT")
    target = tmp_path / "out" / "broken.wav"
    with pytest.raises(ValueError, match="NaN"):
        analyze_file(
            model, None, broken, enhanced_path=target, chunk_seconds=1.0, overlap_seconds=0.2
        )
    assert not target.exists() and not (tmp_path / "out" / "broken.wav.partial").exists()
    with pytest.raises(ValueError, match="limit is 2 s"):
        analyze_file(model, None, broken, max_seconds=2)
