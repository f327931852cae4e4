"""Batch prediction CLI: folders and manifests in, CSV/JSONL out, bad files reported."""

import csv
import json

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import make_model

from merit import cli
from modeling_merit import MeritFeatureExtractor

DIMS = ["arousal", "valence", "dominance"]
LABELS = ["neutral", "happy", "sad", "angry"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("model")
    make_model(dimension_names=DIMS).save_pretrained(path)
    MeritFeatureExtractor().save_pretrained(path)
    return path


@pytest.fixture
def audio_dir(tmp_path):
    root = tmp_path / "audio"
    (root / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    sf.write(root / "stereo.wav", rng.standard_normal((44_100 * 2, 2)) * 0.1, 44_100)
    sf.write(root / "sub" / "low.flac", rng.standard_normal(8_000 * 3) * 0.1, 8_000)
    (root / "corrupt.wav").write_bytes(b"RIFF\x00\x00not audio at all")
    (root / "notes.txt").write_text("not audio, not listed")
    return root


def test_folder_to_csv_reports_the_corrupt_file_and_goes_on(model_dir, audio_dir, tmp_path, capsys):
    output, enhanced = tmp_path / "results.csv", tmp_path / "enhanced"
    argv = ["predict", "--model", str(model_dir), "--input", str(audio_dir)]
    argv += ["--output", str(output), "--enhanced-dir", str(enhanced), "--chunk-seconds", "1"]
    argv += ["--overlap-seconds", "0.2", "--no-progress"]
    assert cli.main(argv) == 1  # the batch went on, and the exit code reports the failure
    stderr = capsys.readouterr().err
    assert "2 of 3 files analysed" in stderr and "corrupt.wav" in stderr

    with output.open() as handle:
        rows = {row["file"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"corrupt.wav", "stereo.wav", "sub/low.flac"}
    assert "cannot read audio" in rows["corrupt.wav"]["error"]
    assert rows["corrupt.wav"]["label"] == ""
    for name, seconds in (("stereo.wav", 2.0), ("sub/low.flac", 3.0)):
        row = rows[name]
        assert row["error"] == "" and float(row["duration"]) == pytest.approx(seconds)
        scores = {label: float(row[f"score_{label}"]) for label in LABELS}
        assert sum(scores.values()) == pytest.approx(1.0, abs=1e-6)
        assert row["label"] == max(scores, key=scores.get)
        assert all(row[f"dim_{d}"] != "" for d in DIMS)
    # Enhanced audio mirrors the input names, as 16 kHz mono WAV of the input's duration.
    data, rate = sf.read(enhanced / "sub" / "low.wav")
    assert rate == 16_000 and data.shape == (48_000,)
    assert sf.info(enhanced / "stereo.wav").frames == 32_000
    assert not (enhanced / "corrupt.wav").exists()


def test_manifest_to_jsonl(model_dir, audio_dir, tmp_path):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        f"path,label\naudio/sub/low.flac,x\n{audio_dir / 'stereo.wav'},y\nmissing.wav,z\n"
    )
    output = tmp_path / "out" / "results.jsonl"
    argv = ["predict", "--model", str(model_dir), "--input", str(manifest)]
    # One file of three is missing: the other two are analysed, the exit code says it.
    assert cli.main([*argv, "--output", str(output), "--no-progress"]) == 1
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["file"] for r in records] == [
        "audio/sub/low.flac",
        str(audio_dir / "stereo.wav"),
        "missing.wav",
    ]
    for record in records[:2]:
        assert record["error"] is None
        assert sum(record["scores"].values()) == pytest.approx(1.0, abs=1e-6)
        assert list(record["dimensions"]) == DIMS
    assert "not found" in records[2]["error"]


def test_all_files_failing_gives_a_nonzero_exit(model_dir, tmp_path, capsys):
    root = tmp_path / "bad"
    root.mkdir()
    (root / "a.wav").write_bytes(b"junk")
    (root / "b.flac").write_bytes(b"")
    argv = ["predict", "--model", str(model_dir), "--input", str(root)]
    assert cli.main([*argv, "--output", str(tmp_path / "r.jsonl"), "--no-progress"]) == 1
    stderr = capsys.readouterr().err
    assert "a.wav" in stderr and "b.flac" in stderr


def test_bad_arguments_are_explained(model_dir, tmp_path, capsys):
    predict = ["predict", "--model", str(model_dir), "--input", str(tmp_path)]
    assert cli.main([*predict, "--output", "x.txt"]) == 2
    assert ".csv or .jsonl" in capsys.readouterr().err
    (tmp_path / "one").mkdir()
    sf.write(tmp_path / "one" / "a.wav", np.zeros(1_600), 16_000)
    missing_model = ["predict", "--model", str(tmp_path / "no-model")]
    missing_model += ["--input", str(tmp_path / "one")]
    assert cli.main([*missing_model, "--output", str(tmp_path / "r.csv")]) == 2
    assert "python train.py" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    no_audio = ["predict", "--model", str(model_dir), "--input", str(tmp_path / "empty")]
    assert cli.main([*no_audio, "--output", str(tmp_path / "r.csv")]) == 2
    assert "No audio files found" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="neither a folder nor a manifest"):
        cli.find_inputs(tmp_path / "nowhere")
    (tmp_path / "m.csv").write_text("file\na.wav\n")
    with pytest.raises(ValueError, match="no 'path' column"):
        cli.find_inputs(tmp_path / "m.csv")
    with pytest.raises(SystemExit):
        cli.main(["no-such-command"])


def test_enhanced_names_stay_inside_the_folder_and_do_not_collide(tmp_path):
    taken = set()
    root = tmp_path / "enhanced"
    assert cli._mirror(root, "sub/a.wav", taken) == root / "sub" / "a.wav"
    assert cli._mirror(root, "sub/a.flac", taken) == root / "sub" / "a.flac.wav"
    assert cli._mirror(root, "../../etc/b.ogg", taken) == root / "etc" / "b.wav"
    assert cli._mirror(root, "/abs/c.wav", taken) == root / "abs" / "c.wav"


def test_subcommand_registry(capsys):
    seen = []
    cli.add_subcommand(
        "echo-test",
        "test only",
        lambda parser: parser.add_argument("--word"),
        lambda args: seen.append(args.word) or 7,
    )
    try:
        assert cli.main(["echo-test", "--word", "hi"]) == 7 and seen == ["hi"]
        with pytest.raises(ValueError, match="already registered"):
            cli.add_subcommand("echo-test", "again", lambda p: None, lambda a: 0)
    finally:
        cli._SUBCOMMANDS.pop("echo-test")
    assert {"predict", "export-onnx"} <= set(cli._SUBCOMMANDS)


def test_predict_never_overwrites_inputs_or_existing_files(model_dir, audio_dir, tmp_path, capsys):
    """--enhanced-dir inside the input folder, --output equal to the manifest or an existing
    file: refused (exit 2, one line) before any work, and the files are left byte-identical."""
    before = {p: p.read_bytes() for p in audio_dir.rglob("*") if p.is_file()}
    argv = ["predict", "--model", str(model_dir), "--no-progress"]

    def refused(extra: list[str], message: str) -> None:
        assert cli.main([*argv, *extra]) == 2
        assert message in capsys.readouterr().err

    results = str(tmp_path / "r.csv")
    folder = ["--input", str(audio_dir), "--output", results]
    refused([*folder, "--enhanced-dir", str(audio_dir)], "overlaps the input folder")
    refused([*folder, "--enhanced-dir", str(audio_dir / "sub")], "overlaps the input folder")
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path\n{audio_dir / 'stereo.wav'}\n")
    kept = manifest.read_bytes()
    refused(["--input", str(manifest), "--output", str(manifest), "--overwrite"], "is an input")
    existing = tmp_path / "old.csv"
    existing.write_text("precious")
    refused(["--input", str(manifest), "--output", str(existing)], "exists; pass --overwrite")
    assert existing.read_text() == "precious" and manifest.read_bytes() == kept
    assert {p: p.read_bytes() for p in audio_dir.rglob("*") if p.is_file()} == before

    # An enhanced file already there is kept and reported, unless --overwrite.
    out = tmp_path / "enh"

    def run(name: str, *extra: str) -> int:
        return cli.main(
            [
                *argv,
                "--input",
                str(manifest),
                "--output",
                str(tmp_path / name),
                "--enhanced-dir",
                str(out),
                *extra,
            ]
        )

    assert run("a.csv") == 0
    written = next(out.rglob("*.wav"))
    written.write_bytes(b"mine")
    assert run("b.csv") == 1
    assert written.read_bytes() == b"mine"
    assert run("c.csv", "--overwrite") == 0
    assert written.read_bytes() != b"mine"


def test_silence_and_clicks_get_a_reason_not_a_label(model_dir, tmp_path):
    root = tmp_path / "odd"
    root.mkdir()
    sf.write(root / "silence.wav", np.zeros(16_000), 16_000)
    left = np.random.default_rng(1).standard_normal(16_000) * 0.1
    sf.write(root / "anti_phase.wav", np.stack([left, -left], axis=1), 16_000)
    sf.write(root / "click.wav", np.ones(80) * 0.5, 16_000)  # 5 ms
    sf.write(root / "speechlike.wav", left, 16_000)
    output = tmp_path / "r.csv"
    argv = ["predict", "--model", str(model_dir), "--input", str(root)]
    assert cli.main([*argv, "--output", str(output), "--no-progress"]) == 0
    with output.open() as handle:
        rows = {row["file"]: row for row in csv.DictReader(handle)}
    for name, reason in [
        ("silence.wav", "no speech"),
        ("anti_phase.wav", "no speech"),
        ("click.wav", "too short"),
    ]:
        assert rows[name]["reason"] == reason and rows[name]["label"] == ""
        assert rows[name]["error"] == "" and rows[name]["score_angry"] == ""
    assert rows["speechlike.wav"]["reason"] == "" and rows["speechlike.wav"]["label"] in LABELS


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--chunk-seconds", "0"], "--chunk-seconds must be > 0"),
        (["--chunk-seconds", "nan"], "finite"),
        (["--overlap-seconds", "inf"], "finite"),
        (["--overlap-seconds", "20"], "below --chunk-seconds"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--max-seconds", "-1"], "--max-seconds must be > 0"),
        (["--device", "gpu7"], "not a device name"),
    ]
    + ([] if torch.cuda.is_available() else [(["--device", "cuda"], "no cuda device")]),
)
def test_option_values_are_checked_before_any_work(model_dir, tmp_path, capsys, extra, message):
    (tmp_path / "in").mkdir()
    sf.write(tmp_path / "in" / "a.wav", np.zeros(16_000), 16_000)
    argv = ["predict", "--model", str(model_dir), "--input", str(tmp_path / "in")]
    assert cli.main([*argv, "--output", str(tmp_path / "r.csv"), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r.csv").exists()


def test_a_single_file_input_and_the_length_limit(model_dir, tmp_path, capsys):
    rng = np.random.default_rng(2)
    sf.write(tmp_path / "one.wav", rng.standard_normal(16_000) * 0.1, 16_000)
    sf.write(tmp_path / "long.wav", rng.standard_normal(48_000) * 0.1, 16_000)
    argv = ["predict", "--model", str(model_dir), "--no-progress"]
    output = tmp_path / "one.jsonl"
    assert cli.main([*argv, "--input", str(tmp_path / "one.wav"), "--output", str(output)]) == 0
    (record,) = [json.loads(line) for line in output.read_text().splitlines()]
    assert record["file"] == "one.wav" and record["label"] in LABELS
    output = tmp_path / "long.jsonl"
    limited = [*argv, "--input", str(tmp_path / "long.wav"), "--output", str(output)]
    assert cli.main([*limited, "--max-seconds", "2"]) == 1
    (record,) = [json.loads(line) for line in output.read_text().splitlines()]
    assert "3.0 s long; the limit is 2 s" in record["error"] and record["label"] is None


def test_truncated_wav_is_warned_and_linked_folders_are_counted(model_dir, tmp_path, capsys):
    root = tmp_path / "in"
    root.mkdir()
    sf.write(tmp_path / "full.wav", np.random.default_rng(3).standard_normal(16_000) * 0.1, 16_000)
    data = (tmp_path / "full.wav").read_bytes()
    (root / "cut.wav").write_bytes(data[: len(data) // 2])  # header still says 1 s
    (tmp_path / "elsewhere").mkdir()
    sf.write(tmp_path / "elsewhere" / "x.wav", np.zeros(16_000), 16_000)
    (root / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    output = tmp_path / "r.jsonl"
    argv = ["predict", "--model", str(model_dir), "--input", str(root), "--no-progress"]
    assert cli.main([*argv, "--output", str(output)]) == 0
    err = capsys.readouterr().err
    assert "Skipped 1 linked folder(s)" in err
    assert "truncated WAV: its header announces 1.00 s, the file holds 0.50 s" in err
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["file"] for r in records] == ["cut.wav"]
    assert records[0]["duration"] == pytest.approx(0.5, abs=0.01)
