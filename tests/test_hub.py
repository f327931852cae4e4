"""Model card rendering, the standalone-load check and publishing against a loopback fake Hub.

The fake Hub implements only the endpoints ``create_repo``, ``create_commit``,
``upload_folder`` and ``add_space_variable`` call, on 127.0.0.1; a socket guard fails the test
if anything tries to reach another address.
"""

import base64
import hashlib
import json
import re
import shutil
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import yaml
from conftest import make_model
from huggingface_hub import ModelCard

from merit import hub
from merit.hub import PublishError, publish, render_model_card, verify_standalone
from modeling_merit import MeritFeatureExtractor

REPO_ROOT = Path(__file__).resolve().parents[1]
LABELS = {0: "neutral", 1: "happy", 2: "sad", 3: "angry"}
#: Named as merit.training writes them.
TRAINING_METRICS = {
    "test_clean_f1_macro": 0.61234,
    "test_clean_accuracy": 0.65,
    "test_seen_0dB_ssnr_enhanced": 4.5,
    "test_seen_0dB_ssnr_noisy": 1.0,
    "test_seen_0dB_ssnr_improvement": 3.5,
    "eval_f1_macro": 0.7,
    "epoch": 3,
}


def _front_matter(text: str) -> dict:
    match = re.match(r"^---\n(.*?)\n---\n", text, re.DOTALL)
    assert match, "card has no YAML front matter"
    return yaml.safe_load(match.group(1))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("trained") / "merit-sparse"
    make_model().save_pretrained(folder)
    MeritFeatureExtractor().save_pretrained(folder)
    # Training leftovers that must not be uploaded.
    (folder / "checkpoint-10").mkdir()
    (folder / "checkpoint-10" / "optimizer.pt").write_bytes(b"x" * 10)
    (folder / "training_args.bin").write_bytes(b"x" * 10)
    render_model_card(
        folder,
        model_name="merit-sparse",
        metrics=TRAINING_METRICS,
        eval_table_markdown="| condition | F1 |\n| --- | --- |\n| seen 0 dB | 0.55 |",
        base_model="microsoft/wavlm-base-plus",
    )
    return folder


# ---------------------------------------------------------------------------------------------
# Model card
# ---------------------------------------------------------------------------------------------


def test_card_fills_template_metadata_and_tables(model_dir):
    text = (model_dir / "README.md").read_text()
    assert "{{" not in text and "}}" not in text
    meta = _front_matter(text)
    assert meta["library_name"] == "transformers"
    assert meta["pipeline_tag"] == "audio-classification"
    assert {"speech-emotion-recognition", "mixture-of-experts", "wavlm"} <= set(meta["tags"])
    assert meta["base_model"] == "microsoft/wavlm-base-plus"
    assert meta["metrics"] == ["accuracy", "f1", "ssnr", "ssnr-improvement"]
    results = {
        (r["task"]["type"], r["dataset"]["split"]): r for r in meta["model-index"][0]["results"]
    }
    assert set(results) == {
        ("audio-classification", "test"),
        ("audio-classification", "validation"),
        ("audio-to-audio", "test"),
    }
    ser = results[("audio-classification", "test")]["metrics"]
    assert ser == [
        {"type": "f1", "name": "F1 (macro), clean", "value": 0.6123},  # rounded to 4 decimals
        {"type": "accuracy", "name": "Accuracy, clean", "value": 0.65},
    ]
    assert results[("audio-classification", "validation")]["metrics"] == [
        {"type": "f1", "name": "F1 (macro)", "value": 0.7}
    ]
    # The unprocessed input's SSNR ("_noisy") describes no model: left out of the index.
    assert [
        (m["type"], m["name"], m["value"]) for m in results[("audio-to-audio", "test")]["metrics"]
    ] == [
        ("ssnr", "Segmental SNR (dB), seen_0dB", 4.5),
        ("ssnr-improvement", "Segmental SNR (dB) improvement, seen_0dB", 3.5),
    ]
    # huggingface_hub parses the same metadata into evaluation results.
    card = ModelCard(text)
    assert sorted(
        (r.metric_type, r.metric_value, r.dataset_split) for r in card.data.eval_results
    ) == [
        ("accuracy", 0.65, "test"),
        ("f1", 0.6123, "test"),
        ("f1", 0.7, "validation"),
        ("ssnr", 4.5, "test"),
        ("ssnr-improvement", 3.5, "test"),
    ]
    # Labels come from config.json when not passed; the eval table is inserted verbatim.
    assert "`neutral`, `happy`, `sad`, `angry`" in text
    assert "| seen 0 dB | 0.55 |" in text
    assert (
        "| test_clean_f1_macro | 0.6123 |" in text
        and "| test_seen_0dB_ssnr_noisy | 1.0000 |" in text
    )
    assert "| epoch | 3 |" in text
    assert "trust_remote_code=True" in text and 'pipeline("audio-classification"' in text
    assert "surveillance" in text


def test_card_usage_snippet_runs(model_dir, capsys):
    """The first code block of the card, as written, loads the folder and prints emotions."""
    text = (model_dir / "README.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", text, re.DOTALL).group(1)
    assert f'model_id = "{model_dir.as_posix()}"' in snippet
    namespace: dict = {}
    exec(compile(snippet, "model-card-snippet", "exec"), namespace)
    printed = eval(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(printed) == set(LABELS.values())
    assert sum(printed.values()) == pytest.approx(1.0, abs=1e-5)
    assert namespace["enhanced"].shape == (16000,)
    assert namespace["experts"].shape[-1] == 2  # top-2 routing


def test_card_without_metrics_or_hub_ids_keeps_valid_yaml(tmp_path):
    text = render_model_card(
        tmp_path / "out",
        model_name="local-run",
        metrics={},
        base_model="/some/local/wavlm",
        id2label={0: "calm", 1: "tense"},
        variant="dense",
    )
    meta = _front_matter(text)
    # Local paths and free-text dataset names are not valid Hub ids, so they stay out.
    assert "base_model" not in meta and "datasets" not in meta and "model-index" not in meta
    assert "`calm`, `tense`" in text and "Dense MERIT" in text
    assert "_No evaluation metrics were recorded" in text
    assert (tmp_path / "out" / "README.md").read_text() == text


def test_card_rejects_unknown_variant_and_placeholder(tmp_path):
    with pytest.raises(ValueError, match="Unknown variant 'moe'"):
        render_model_card(tmp_path, model_name="x", metrics={}, variant="moe")
    template = tmp_path / "template.md"
    template.write_text("---\nlicense: mit\n---\n# {{ model_name }} {{ typo_here }}\n")
    with pytest.raises(KeyError, match="typo_here"):
        render_model_card(tmp_path, model_name="x", metrics={}, template=template)


def test_set_card_model_id_rewrites_usage_snippet(model_dir):
    text = hub.set_card_model_id((model_dir / "README.md").read_text(), "alice/merit-sparse")
    assert 'model_id = "alice/merit-sparse"' in text
    assert str(model_dir) not in text.split("## Usage")[1].split("## Evaluation")[0]


# ---------------------------------------------------------------------------------------------
# Standalone check
# ---------------------------------------------------------------------------------------------


def test_verify_standalone_loads_the_folder_without_the_package(model_dir):
    report = verify_standalone(model_dir)
    assert report["model_class"].startswith("transformers_modules")
    assert report["model_class"].endswith("MeritModel")
    assert report["tasks"] == ["ser", "se"] and report["num_labels"] == 4


def test_verify_standalone_refuses_broken_folders(model_dir, tmp_path):
    incomplete = tmp_path / "incomplete"
    shutil.copytree(model_dir, incomplete)
    (incomplete / "modeling_merit.py").unlink()
    with pytest.raises(PublishError, match="missing modeling_merit.py"):
        verify_standalone(incomplete)
    # A code file that only works with this repository installed: refused by the clean child.
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    code = broken / "modeling_merit.py"
    code.write_text("import merit.audio\n" + code.read_text())
    with pytest.raises(PublishError, match="does not load standalone"):
        verify_standalone(broken)


# ---------------------------------------------------------------------------------------------
# Publishing against a loopback fake Hub
# ---------------------------------------------------------------------------------------------


class FakeHub:
    """Records repos, commits and Space variables sent by ``huggingface_hub``."""

    def __init__(self) -> None:
        self.repos: dict[tuple[str, str], dict] = {}
        self.files: dict[tuple[str, str], dict[str, bytes]] = {}
        self.variables: dict[str, dict[str, str]] = {}
        self.requests: list[tuple[str, str]] = []
        self.auth: set[str] = set()
        self.unknown: list[str] = []
        self.commit = "c" * 40
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def _send(self, status: int, payload: dict | list) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                self._serve(body=True)

            def do_HEAD(self):
                self._serve(body=False)

            def _serve(self, body: bool) -> None:
                """Repo info and file downloads of the repos whose files the test put in
                ``fake.files`` (what ``snapshot_download`` / ``hf_hub_download`` ask)."""
                path = self.path.split("?")[0]
                fake.requests.append((self.command, path))
                info = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path)
                if info and ("model", info.group(1)) in fake.files:
                    files = fake.files["model", info.group(1)]
                    return self._send(
                        200,
                        {
                            "id": info.group(1),
                            "sha": fake.commit,
                            "siblings": [{"rfilename": name} for name in sorted(files)],
                        },
                    )
                tree = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)", path)
                if tree and ("model", tree.group(1)) in fake.files:
                    files = fake.files["model", tree.group(1)]
                    entries = [
                        {
                            "type": "file",
                            "path": name,
                            "size": len(content),
                            "oid": hashlib.sha1(content).hexdigest(),
                        }
                        for name, content in sorted(files.items())
                    ]
                    return self._send(200, entries)
                resolve = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
                if resolve and ("model", resolve.group(1)) in fake.files:
                    content = fake.files["model", resolve.group(1)].get(resolve.group(3))
                    if content is not None:
                        self.send_response(200)
                        self.send_header("Content-Length", str(len(content)))
                        self.send_header("X-Repo-Commit", fake.commit)
                        etag = hashlib.sha256(content).hexdigest()
                        self.send_header("ETag", f'"{etag}"')
                        self.end_headers()
                        if body:
                            self.wfile.write(content)
                        return None
                fake.unknown.append(f"{self.command} {self.path}")
                return self._send(404, {"error": "not implemented by the fake Hub"})

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length)
                path = self.path.split("?")[0]
                fake.requests.append(("POST", path))
                fake.auth.add(self.headers.get("Authorization", ""))
                if path == "/api/repos/create":
                    return self._create(json.loads(body))
                if path == "/api/validate-yaml":
                    yaml.safe_load(_front_matter_text(json.loads(body)["content"]))
                    return self._send(200, {"errors": [], "warnings": []})
                match = re.fullmatch(
                    r"/api/(model|space)s/([^/]+/[^/]+)/(preupload|commit)/main", path
                )
                if match:
                    kind, repo, action = match.groups()
                    if (kind, repo) not in fake.repos:
                        return self._send(404, {"error": "Repository not found"})
                    if action == "preupload":
                        files = json.loads(body)["files"]
                        modes = [
                            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                            for f in files
                        ]
                        return self._send(200, {"files": modes})
                    return self._commit(kind, repo, body)
                match = re.fullmatch(r"/api/spaces/([^/]+/[^/]+)/variables", path)
                if match:
                    data = json.loads(body)
                    fake.variables.setdefault(match.group(1), {})[data["key"]] = data["value"]
                    values = fake.variables[match.group(1)]
                    return self._send(200, {k: {"value": v} for k, v in values.items()})
                fake.unknown.append(f"POST {path}")
                return self._send(404, {"error": "not implemented by the fake Hub"})

            def _create(self, data: dict) -> None:
                kind = data.get("type", "model")
                repo = f"{data['organization']}/{data['name']}"
                prefix = "spaces/" if kind == "space" else ""
                url = f"{fake.url}/{prefix}{repo}"
                if (kind, repo) in fake.repos:  # the real Hub also sends the URL with a 409
                    return self._send(409, {"error": "You already created this repo", "url": url})
                fake.repos[(kind, repo)] = data
                return self._send(200, {"url": url})

            def _commit(self, kind: str, repo: str, body: bytes) -> None:
                store = fake.files.setdefault((kind, repo), {})
                for line in body.decode().splitlines():
                    entry = json.loads(line)
                    if entry["key"] == "file":
                        value = entry["value"]
                        assert value["encoding"] == "base64"
                        store[value["path"]] = base64.b64decode(value["content"])
                    elif entry["key"] != "header":
                        fake.unknown.append(f"commit entry {entry['key']}")
                prefix = "spaces/" if kind == "space" else ""
                return self._send(
                    200,
                    {"commitUrl": f"{fake.url}/{prefix}{repo}/commit/1", "commitOid": "1" * 40},
                )

        return Handler


def _front_matter_text(text: str) -> str:
    match = re.match(r"^---\n(.*?)\n---\n", text, re.DOTALL)
    return match.group(1) if match else ""


@pytest.fixture
def fake_hub(monkeypatch):
    """A fake Hub on a loopback port; any connection elsewhere fails the test."""
    real_connect = socket.socket.connect

    def guarded_connect(sock, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and host not in ("127.0.0.1", "::1", "localhost"):
            raise AssertionError(f"test tried to reach {address}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    fake = FakeHub()
    fake.thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


def _small_examples(folder: Path) -> Path:
    """Two tiny example clips with a manifest, so staging needs no corpus."""
    from merit.audio import write_audio

    folder.mkdir(parents=True, exist_ok=True)
    rows = ["file_name,emotion,noise_type,noise_split,snr_db,source"]
    for i, (emotion, noise, split) in enumerate(
        [("happy", "pink", "seen"), ("sad", "rumble", "unseen")]
    ):
        write_audio(folder / f"{i}.wav", np.full(800, 0.1 * (i + 1), np.float32), 16000)
        rows.append(f"{i}.wav,{emotion},{noise},{split},5.0,synthesised")
    (folder / "examples.csv").write_text("\n".join(rows) + "\n")
    return folder


def test_publish_uploads_model_and_space(model_dir, fake_hub, tmp_path, monkeypatch):
    examples = _small_examples(tmp_path / "examples")
    urls = publish(
        model_dir,
        "alice/merit-sparse",
        space_id="alice/merit-demo",
        endpoint=fake_hub.url,
        token="hf_fake_token",
        examples_dir=examples,
    )
    assert not fake_hub.unknown
    assert urls == {
        "model": f"{fake_hub.url}/alice/merit-sparse",
        "space": f"{fake_hub.url}/spaces/alice/merit-demo",
    }
    assert fake_hub.auth == {"Bearer hf_fake_token"}
    assert fake_hub.repos[("model", "alice/merit-sparse")]["name"] == "merit-sparse"
    space_repo = fake_hub.repos[("space", "alice/merit-demo")]
    assert space_repo["sdk"] == "gradio" and space_repo["organization"] == "alice"

    model_files = fake_hub.files[("model", "alice/merit-sparse")]
    assert set(model_files) == {
        "README.md",
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "configuration_merit.py",
        "modeling_merit.py",
        "backbones_merit.py",
        "integration_merit.py",
        "mixture_merit.py",
        "heads_merit.py",
        "feature_extraction_merit.py",
        "pipeline_merit.py",
        "audio_merit.py",
    }  # no checkpoint-*/ or training_args.bin
    assert model_files["model.safetensors"] == (model_dir / "model.safetensors").read_bytes()
    card = model_files["README.md"].decode()
    assert 'model_id = "alice/merit-sparse"' in card
    assert str(model_dir) in (model_dir / "README.md").read_text()  # local card untouched

    space_files = fake_hub.files[("space", "alice/merit-demo")]
    expected = set(hub.SPACE_FILES) | {
        "README.md",
        "examples/examples.csv",
        "examples/0.wav",
        "examples/1.wav",
    }
    assert set(space_files) == expected
    for name in hub.SPACE_FILES:
        assert space_files[name] == (REPO_ROOT / name).read_bytes(), name
    space_meta = _front_matter(space_files["README.md"].decode())
    assert space_meta["sdk"] == "gradio" and space_meta["app_file"] == "app.py"
    assert space_meta["models"] == ["alice/merit-sparse"]
    assert len(space_meta["short_description"]) <= 60
    assert fake_hub.variables == {"alice/merit-demo": {"MERIT_MODEL": "alice/merit-sparse"}}

    # Publishing again reuses the existing repos (409 from create is accepted). The standalone
    # check ran above; a spy keeps this second round fast and shows it is always called.
    checked = []
    monkeypatch.setattr(hub, "verify_standalone", lambda folder: checked.append(folder) or {})
    publish(model_dir, "alice/merit-sparse", endpoint=fake_hub.url, token="hf_fake_token")
    assert checked == [model_dir]
    assert fake_hub.requests.count(("POST", "/api/repos/create")) == 3


def test_publish_refuses_broken_folder_before_any_request(model_dir, fake_hub, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    (broken / "config.json").write_text("{not json")
    with pytest.raises(PublishError, match="does not load standalone"):
        publish(broken, "alice/broken", endpoint=fake_hub.url, token="hf_fake_token")
    assert fake_hub.requests == []


def test_staged_space_imports_without_the_repository(tmp_path):
    """The Space's copy of the app must import from its own files only."""
    files = hub.stage_space(
        tmp_path / "space", model_id="alice/m", examples_dir=_small_examples(tmp_path / "ex")
    )
    assert "merit/app.py" in files and "examples/examples.csv" in files
    script = (
        "import sys\n"
        # Drop the repository from the path, but not a virtual environment that lives in it.
        f"sys.path = [p for p in sys.path if not p.startswith({str(REPO_ROOT)!r})"
        " or 'site-packages' in p]\n"
        "import merit.app, merit.inference\n"
        "assert merit.app.__file__.startswith(sys.argv[1]), merit.app.__file__\n"
        "print(len(merit.app.prepare_examples()))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "space")],
        cwd=tmp_path / "space",
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "2"  # the shipped examples/ folder is found next to app.py


def test_cli_reports_missing_files(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code = hub.main(["publish", "--model-dir", str(tmp_path / "empty"), "--repo-id", "a/b"])
    assert code == 1
    assert "missing config.json, model.safetensors" in capsys.readouterr().err


def test_publish_uploads_only_model_files_never_secrets_or_links(model_dir, fake_hub, tmp_path):
    """A hostile folder: credentials beside the model and a link to a private key. Only the
    allow-listed model files go up; the CLI shows the list and needs --yes without a tty."""
    folder = tmp_path / "with-secrets"
    shutil.copytree(model_dir, folder)
    secret = tmp_path / "id_rsa"
    secret.write_text("-----BEGIN PRIVATE KEY-----")
    for name in ("token.txt", "hf_token", "secrets.json", "credentials.json"):
        (folder / name).write_text("hf_secret")
    (folder / "wandb").mkdir()
    (folder / "wandb" / "settings").write_text("api_key=secret")
    (folder / "evaluation").mkdir(exist_ok=True)
    (folder / "evaluation" / "table.md").write_text("| a |")
    (folder / "key.pem").symlink_to(secret)
    (folder / "linked").symlink_to(tmp_path, target_is_directory=True)
    (folder / "results.json").write_text("{}")

    uploaded, left_out = hub.plan_model_upload(folder)
    names = {p.as_posix() for p in uploaded}
    assert names == set(hub.MODEL_FILES) | {"README.md", "results.json", "evaluation/table.md"}
    assert {"token.txt", "hf_token", "secrets.json", "credentials.json", "wandb/settings"} <= {
        p.as_posix() for p in left_out
    }
    assert {"key.pem", "linked"} <= {p.as_posix() for p in left_out}

    publish(folder, "alice/safe", endpoint=fake_hub.url, token="hf_fake_token")
    files = fake_hub.files[("model", "alice/safe")]
    assert set(files) == names
    assert not any(b"secret" in content or b"PRIVATE KEY" in content for content in files.values())

    before = list(fake_hub.requests)
    code = hub.main(
        [
            "publish",
            "--model-dir",
            str(folder),
            "--repo-id",
            "alice/other",
            "--endpoint",
            fake_hub.url,
            "--token",
            "hf_fake_token",
        ]
    )  # stdin is not a terminal under pytest: refused without --yes
    assert code == 2 and fake_hub.requests == before
