"""The demo: inference without the UI, input checks, examples, and the served page.

The served app runs as ``python app.py`` in a subprocess on a free loopback port with a tiny
model whose emotion head is biased towards "sad", so the page must show that label. It is
driven through a real Chromium (Playwright) and through ``gradio_client``. With
``MERIT_SCREENSHOT=1`` the browser test saves ``docs/screenshot.png``, served with a trained
model when one exists (``$MERIT_SCREENSHOT_MODEL``, default ``outputs/merit-sparse``)."""

import csv
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import make_model

from merit import app
from merit.app import (
    DemoModel,
    InputError,
    build_demo,
    load_demo_model,
    prepare_examples,
    read_audio_input,
    run_inference,
)
from merit.audio import load_audio, write_audio
from merit.inference import analyze
from modeling_merit import MeritFeatureExtractor

REPO_ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SAD = 2  # index of "sad" in the default labels (neutral, happy, sad, angry)


def _save_biased_model(folder: Path) -> Path:
    """Tiny random model whose emotion head strongly prefers "sad" (about 85%)."""
    model = make_model()
    with torch.no_grad():
        model.ser_head.classifier[-1].bias.copy_(torch.tensor([0.0, 0.0, 3.0, 0.0]))
    model.save_pretrained(folder)
    MeritFeatureExtractor().save_pretrained(folder)
    return folder


def _speechlike(seconds: float, rate: int = 16000, seed: int = 0) -> np.ndarray:
    """Amplitude-modulated harmonic tone plus a little noise: non-silent, deterministic."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    voice = sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 6))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)
    return (0.1 * voice * envelope + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def demo_model(tmp_path_factory) -> DemoModel:
    folder = _save_biased_model(tmp_path_factory.mktemp("model") / "tiny")
    loaded = load_demo_model(str(folder))
    assert loaded.ready, loaded.error
    return loaded


# ---------------------------------------------------------------------------------------------
# run_inference without the UI
# ---------------------------------------------------------------------------------------------


def test_run_inference_on_a_file(demo_model, tmp_path):
    wave = _speechlike(2.0)
    path = tmp_path / "clip.wav"
    write_audio(path, wave, 16000)
    out = run_inference(demo_model.model, demo_model.feature_extractor, str(path))

    assert set(out.probabilities) == {"neutral", "happy", "sad", "angry"}
    assert sum(out.probabilities.values()) == pytest.approx(1.0, abs=1e-6)
    assert max(out.probabilities, key=out.probabilities.get) == "sad"
    assert out.probabilities["sad"] > 0.7
    # Same numbers as calling analyze on the decoded file directly.
    direct = analyze(demo_model.model, demo_model.feature_extractor, load_audio(path), 16000)
    assert out.probabilities == pytest.approx(direct.probabilities)
    rate, pcm = out.enhanced
    assert rate == 16000 and pcm.dtype == np.int16 and pcm.shape == wave.shape
    expected_pcm = np.round(np.clip(direct.enhanced, -1, 1) * 32767).astype(np.int16)
    np.testing.assert_array_equal(pcm, expected_pcm)

    noisy_ax, enhanced_ax = out.spectrogram.axes[:2]
    assert [noisy_ax.get_title(), enhanced_ax.get_title()] == ["Input (noisy)", "Enhanced"]
    assert noisy_ax.images[0].get_extent()[1] == pytest.approx(2.0)
    # Routing heat-map: one panel per task, experts x frames, 20 ms frames over the clip.
    panels = [ax for ax in out.routing.axes if ax.images]
    assert [ax.get_title() for ax in panels] == [
        "Expert routing: emotion (SER) gate",
        "Expert routing: enhancement (SE) gate",
    ]
    image = panels[0].images[0].get_array()
    assert image.shape == (4, direct.routing["ser"].shape[0])
    # Top-2 of 4 experts per frame: two non-zero gate weights summing to 1 in each column.
    assert ((image > 0).sum(0) == 2).all()
    np.testing.assert_allclose(image.sum(0), 1.0, atol=1e-5)

    assert list(out.timeline.columns[:3]) == ["start (s)", "end (s)", "emotion"]
    assert out.timeline["emotion"].tolist() == ["sad"]
    assert "**Emotion: sad**" in out.summary and "1 chunk" in out.summary
    assert len(out.as_gradio()) == 6


def test_stereo_and_other_rates_are_converted(demo_model):
    mono = _speechlike(1.5, rate=44100)
    stereo = np.stack([mono, 0.5 * mono], axis=1)  # (samples, channels), as gradio sends it
    out = run_inference(demo_model.model, demo_model.feature_extractor, (44100, stereo))
    assert out.enhanced[1].shape == (round(1.5 * 16000),)
    # Identical to giving the mono mix-down at 16 kHz.
    reference = read_audio_input((44100, 0.75 * mono), 16000)
    ref_out = run_inference(demo_model.model, demo_model.feature_extractor, (16000, reference))
    assert out.probabilities == pytest.approx(ref_out.probabilities, abs=1e-5)
    # int16 PCM (what gradio's numpy audio gives) is scaled to [-1, 1].
    pcm = np.round(reference * 32767).astype(np.int16)
    np.testing.assert_allclose(read_audio_input((16000, pcm)), reference, atol=1 / 32767)


def test_long_audio_is_chunked_into_a_timeline(demo_model):
    wave = _speechlike(20.0)  # ceil((20 - 1) / (8 - 1)) = 3 chunks of 1 s overlap
    out = run_inference(
        demo_model.model, demo_model.feature_extractor, (16000, wave), chunk_seconds=8.0
    )
    starts, ends = out.timeline["start (s)"].tolist(), out.timeline["end (s)"].tolist()
    assert len(starts) == 3 and starts[0] == 0.0 and ends[-1] == 20.0
    assert starts[1:] == ends[:-1]  # the rows tile the recording
    assert "3 chunks" in out.summary
    assert out.enhanced[1].shape == wave.shape


def test_length_limit_is_checked_before_decoding(demo_model, tmp_path, monkeypatch):
    path = tmp_path / "long.wav"
    write_audio(path, _speechlike(3.0), 16000)

    def no_decoding(*args, **kwargs):
        raise AssertionError("the file was decoded before the length check")

    monkeypatch.setattr(app, "load_audio", no_decoding)
    with pytest.raises(InputError, match=r"0\.1 min \(3 s\) long; this demo accepts up to"):
        run_inference(demo_model.model, demo_model.feature_extractor, str(path), max_seconds=2)
    with pytest.raises(InputError, match=r"up to 0\.0333333 min \(2 s\)"):
        read_audio_input((8000, np.ones((2, 24000), np.float32)), max_seconds=2)
    assert app.MAX_SECONDS == 600.0


@pytest.mark.parametrize(
    ("make_input", "message"),
    [
        (lambda d: None, "No audio was given"),
        (lambda d: "  ", "No audio was given"),
        (lambda d: _write_bytes(d / "corrupt.wav", b"RIFF\x00\x01garbage" * 20), "corrupt.wav"),
        (lambda d: _write_bytes(d / "empty.wav", b""), "Could not read 'empty.wav'"),
        (lambda d: str(d / "missing.wav"), "Could not read 'missing.wav'"),
        (lambda d: (16000, np.zeros(16000, np.float32)), "silent"),
        (lambda d: (16000, np.full(16000, 1e-5, np.float32)), "No speech"),
        (lambda d: (44100, np.stack([np.ones(44100), -np.ones(44100)])), "No speech"),
        (lambda d: (16000, np.full(80, 0.5, np.float32)), "too short"),
        (lambda d: (16000, np.full(16000, np.nan, np.float32)), "NaN"),
        (lambda d: (16000, np.zeros(0, np.float32)), "empty"),
        (lambda d: (16000, np.zeros((2, 2, 800), np.float32)), "shape"),
        (lambda d: 42, "Unsupported audio input of type int"),
    ],
)
def test_bad_input_gets_a_message(demo_model, tmp_path, make_input, message):
    with pytest.raises(InputError, match=message) as info:
        run_inference(demo_model.model, demo_model.feature_extractor, make_input(tmp_path))
    assert str(tmp_path) not in str(info.value)  # visitors see file names, not server paths


def _write_bytes(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def test_zero_length_wav_file_is_rejected(demo_model, tmp_path):
    path = tmp_path / "zero.wav"
    sf.write(path, np.zeros(0, np.float32), 16000)
    with pytest.raises(InputError, match="empty"):
        run_inference(demo_model.model, demo_model.feature_extractor, str(path))


def test_missing_model_message_names_the_training_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no outputs/merit-sparse here
    monkeypatch.delenv("MERIT_MODEL", raising=False)
    missing = load_demo_model()
    assert not missing.ready and missing.source == "outputs/merit-sparse"
    assert "`make train`" in missing.error and "`python train.py`" in missing.error
    assert "Model not loaded" in missing.describe()
    broken = load_demo_model(str(tmp_path / "nowhere"))
    assert not broken.ready and "python train.py" in broken.error
    monkeypatch.setenv("MERIT_MODEL", str(tmp_path / "from-env"))
    assert load_demo_model().source == str(tmp_path / "from-env")


def test_broken_model_folders_give_the_message_page_not_a_crash(demo_model, tmp_path):
    """A hand-edited label list and a folder without weights: messages, and the page builds."""
    import gradio as gr

    source = Path(demo_model.source)
    relabelled = tmp_path / "relabelled"
    shutil.copytree(source, relabelled)
    config = json.loads((relabelled / "config.json").read_text())
    config["id2label"] = {str(i): f"label{i}" for i in range(6)}
    config["label2id"] = {f"label{i}": i for i in range(6)}
    (relabelled / "config.json").write_text(json.dumps(config))
    broken = load_demo_model(str(relabelled))
    assert not broken.ready and "weights do not fit its config.json" in broken.error
    no_weights = tmp_path / "no-weights"
    shutil.copytree(source, no_weights)
    (no_weights / "model.safetensors").unlink()
    missing = load_demo_model(str(no_weights))
    assert not missing.ready and "model.safetensors" in missing.error
    for model in (broken, missing):
        demo = build_demo(model)
        assert demo.delete_cache == app.CACHE_CLEANUP  # the upload cache is cleaned
        predict = next(f.fn for f in demo.fns.values() if f.api_name == "predict")
        with pytest.raises(gr.Error, match="Train one"):
            predict(str(tmp_path / "x.wav"))


def test_page_without_model_answers_with_the_message(tmp_path):
    import gradio as gr

    demo = build_demo(DemoModel("outputs/merit-sparse", error="Train one with `make train`."))
    predict = next(f.fn for f in demo.fns.values() if f.api_name == "predict")
    with pytest.raises(gr.Error, match="make train"):
        predict(str(tmp_path / "x.wav"))


def test_imports_load_no_model():
    code = "import merit.app, sys; assert 'merit.inference' not in sys.modules; print('ok')"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


# ---------------------------------------------------------------------------------------------
# Examples
# ---------------------------------------------------------------------------------------------


def _fake_corpus(root: Path) -> Path:
    """A few test-split tones and white-noise files in the corpus layout."""
    rng = np.random.default_rng(0)
    rows = [("file_name", "label", "speaker", "sentence_id", "split")]
    for i, emotion in enumerate(("neutral", "happy", "sad", "angry")):
        for spk in range(2):
            name = f"test/{emotion}_spk{spk}.wav"
            t = np.arange(16000) / 16000
            write_audio(root / name, 0.1 * np.sin(2 * np.pi * (200 + 50 * i + spk) * t), 16000)
            rows.append((name, emotion, f"spk{spk}", "0", "test"))
    rows.append(("train/x.wav", "sad", "spk9", "0", "train"))  # not a test file: never used
    with (root / "metadata.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    noise_rows = [("file_name", "noise_type", "split")]
    for kind in ("babble", "pink", "white", "rumble", "clicks", "brown"):
        split = "unseen" if kind in ("rumble", "clicks", "brown") else "seen"
        write_audio(root / "noise" / split / f"{kind}.wav", 0.05 * rng.standard_normal(8000), 16000)
        noise_rows.append((f"{split}/{kind}.wav", kind, split))
    with (root / "noise" / "noise.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows(noise_rows)
    return root


def test_examples_from_the_corpus_mix_test_speech_at_the_planned_snr(tmp_path):
    corpus = _fake_corpus(tmp_path / "corpus")
    examples = prepare_examples(tmp_path / "examples", corpus_dir=corpus)
    assert [(e.emotion, e.noise_type, e.snr_db) for e in examples] == list(app.EXAMPLE_PLAN)
    assert {e.noise_split for e in examples} == {"seen", "unseen"}
    assert examples[2].label == "sad · rumble (unseen) · 5 dB"
    for index, example in enumerate(examples):
        noisy = load_audio(example.path)
        speakers = sorted((corpus / "test").glob(f"{example.emotion}_spk*.wav"))
        clean = load_audio(speakers[(index * 2) // len(app.EXAMPLE_PLAN)])
        noise = noisy - clean
        snr = 10 * np.log10(np.sum(clean**2) / np.sum(noise**2))
        assert snr == pytest.approx(example.snr_db, abs=0.05), example
    # Second call reads the manifest instead of rebuilding.
    stamp = examples[0].path.stat().st_mtime_ns
    assert prepare_examples(tmp_path / "examples", corpus_dir=tmp_path / "gone") == examples
    assert examples[0].path.stat().st_mtime_ns == stamp


def test_examples_without_a_corpus_are_synthesised(tmp_path):
    examples = prepare_examples(tmp_path / "examples", corpus_dir=tmp_path / "no-corpus")
    assert len(examples) == len(app.EXAMPLE_PLAN)
    assert {e.source for e in examples} == {"synthesised"}
    assert [e.noise_split for e in examples] == [
        "seen",
        "seen",
        "unseen",
        "unseen",
        "seen",
        "unseen",
    ]
    for example in examples:
        wave = load_audio(example.path)
        assert 1.0 < len(wave) / 16000 < 8.0 and np.abs(wave).max() > 0.05


# ---------------------------------------------------------------------------------------------
# The served app: real browser and gradio_client
# ---------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served_app(tmp_path_factory):
    """``python app.py`` on a free loopback port; yields (url, model folder, upload clip)."""
    work = tmp_path_factory.mktemp("served")
    trained = Path(os.environ.get("MERIT_SCREENSHOT_MODEL", REPO_ROOT / "outputs" / "merit-sparse"))
    if os.environ.get("MERIT_SCREENSHOT") == "1" and (trained / "config.json").is_file():
        model_dir = trained
    else:
        model_dir = _save_biased_model(work / "tiny")
    examples = prepare_examples(work / "examples")
    # Upload a stereo 22.05 kHz version of an example: the page must convert it.
    clip = work / "upload_stereo.wav"
    mono = load_audio(examples[0].path, target_sr=22050)
    sf.write(clip, np.stack([mono, mono * 0.8], axis=1), 22050, subtype="PCM_16")

    port = _free_port()
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        GRADIO_ANALYTICS_ENABLED="False",
        MPLBACKEND="Agg",
        HF_MODULES_CACHE=str(work / "modules"),
        GRADIO_TEMP_DIR=str(work / "gradio"),
    )
    env.pop("MERIT_MODEL", None)
    log = (work / "app.log").open("w")
    command = [sys.executable, "app.py", "--model", str(model_dir), "--port", str(port)]
    command += ["--examples-dir", str(work / "examples")]
    proc = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"app.py exited:\n{(work / 'app.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"app.py did not answer:\n{(work / 'app.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url, model_dir, clip
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _expected(model_dir: Path, clip: Path):
    loaded = load_demo_model(str(model_dir))
    return run_inference(loaded.model, loaded.feature_extractor, str(clip))


@pytest.mark.slow
def test_gradio_client_predict_endpoint(served_app, tmp_path):
    from gradio_client import Client, handle_file

    url, model_dir, clip = served_app
    expected = _expected(model_dir, clip)
    client = Client(url, verbose=False, analytics_enabled=False, download_files=str(tmp_path))
    label, audio, spectrogram, routing, timeline, summary = client.predict(
        handle_file(str(clip)), api_name="/predict"
    )
    assert label["label"] == expected.result.label
    scores = {c["label"]: c["confidence"] for c in label["confidences"]}
    assert scores == pytest.approx(expected.probabilities, abs=1e-4)
    enhanced, rate = sf.read(audio, dtype="int16")
    assert rate == 16000
    # The server runs in another process with its own thread count: 1 LSB of float rounding.
    np.testing.assert_allclose(enhanced, expected.enhanced[1], atol=1, rtol=0)
    assert spectrogram["type"] == "matplotlib" and routing["type"] == "matplotlib"
    assert timeline["headers"][:3] == ["start (s)", "end (s)", "emotion"]
    assert summary == expected.summary
    # Bad input comes back as the page's message, not a stack trace.
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"not audio at all" * 10)
    with pytest.raises(Exception, match="Could not read 'corrupt.wav'"):
        client.predict(handle_file(str(corrupt)), api_name="/predict")


@pytest.mark.slow
def test_browser_upload_and_example(served_app):
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}: install it with `apt-get install -y chromium`")
    sync_api = pytest.importorskip("playwright.sync_api")
    url, model_dir, clip = served_app
    expected = _expected(model_dir, clip)
    external: list[str] = []

    def loopback_only(route):
        if urlparse(route.request.url).hostname in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            external.append(route.request.url)
            route.abort()

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.route("**/*", loopback_only)
            page.goto(url)
            status = page.locator("#model-status")
            sync_api.expect(status).to_contain_text("SER + SE", timeout=30_000)

            page.locator("#audio-input input[type=file]").set_input_files(str(clip))
            sync_api.expect(page.locator("#audio-input audio").first).to_be_attached(timeout=30_000)
            page.locator("#analyse").click()
            summary = page.locator("#summary")
            sync_api.expect(summary).to_contain_text(
                f"Emotion: {expected.result.label}", timeout=60_000
            )
            sync_api.expect(page.locator("#emotion")).to_contain_text(expected.result.label)
            # The enhanced audio arrives as a playable, downloadable WAV of the input's length.
            link = page.locator("#enhanced a[download]")
            response = page.request.get(link.get_attribute("href", timeout=30_000))
            assert response.ok and response.body()[:4] == b"RIFF"
            enhanced, rate = sf.read(io.BytesIO(response.body()), dtype="int16")
            assert rate == 16000
            # The server is another process with its own thread count: 1 LSB of rounding.
            np.testing.assert_allclose(enhanced, expected.enhanced[1], atol=1, rtol=0)
            # Gradio fills the outputs one after another: wait for the plots, do not poll once
            # (a bare count() failed when CI ran beside another job).
            for plot in ("#spectrograms img", "#routing img"):
                sync_api.expect(page.locator(plot)).to_have_count(1, timeout=30_000)

            # One click on an example runs it.
            page.get_by_text("sad · rumble (unseen) · 5 dB").click()
            examples = prepare_examples(Path(clip).parent / "examples")
            example_out = _expected(model_dir, examples[2].path)
            assert example_out.summary != expected.summary
            sync_api.expect(summary).to_have_text(
                example_out.summary.replace("**", ""), timeout=60_000
            )
            if os.environ.get("MERIT_SCREENSHOT") == "1":
                page.wait_for_timeout(1000)
                page.screenshot(path=str(REPO_ROOT / "docs" / "screenshot.png"), full_page=True)
        finally:
            browser.close()
    assert external == [], f"the page tried to reach the internet: {external}"
