"""Model cards and publishing to the Hugging Face Hub.

The card is rendered from the top-level ``model_card.md`` template so that wording lives in one
editable Markdown file, while the numbers and metadata come from the training run. Publishing
checks that the folder loads on its own (``trust_remote_code``, without this repository's
``modeling_merit`` importable) before anything is uploaded: a repository that only loads on the
author's machine is worse than none.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "DEFAULT_TEMPLATE",
    "MODEL_FILES",
    "SPACE_FILES",
    "PublishError",
    "main",
    "publish",
    "publish_metric",
    "render_model_card",
    "render_student_card",
    "set_card_model_id",
    "stage_space",
    "verify_standalone",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The card template; it sits at the top level so it is easy to find and edit.
DEFAULT_TEMPLATE = REPO_ROOT / "model_card.md"

#: Files a trained folder must hold to load with ``trust_remote_code`` alone.
MODEL_FILES = (
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
)

#: What the Space needs: ``app.py`` and the modules it imports (the UI, inference, audio, and
#: ``modeling_merit``, which ``merit.inference`` imports for its types).
SPACE_FILES = (
    "app.py",
    "requirements.txt",
    "merit/__init__.py",
    "merit/app.py",
    "merit/audio.py",
    "merit/inference.py",
    "modeling_merit/__init__.py",
    "modeling_merit/configuration_merit.py",
    "modeling_merit/feature_extraction_merit.py",
    "modeling_merit/modeling_merit.py",
    "modeling_merit/backbones_merit.py",
    "modeling_merit/integration_merit.py",
    "modeling_merit/mixture_merit.py",
    "modeling_merit/heads_merit.py",
    "modeling_merit/audio_merit.py",
    "modeling_merit/pipeline_merit.py",
)
#: Training leftovers that do not belong in a model repository.

VARIANT_DESCRIPTIONS = {
    "sparse": "Sparse MERIT: each frame goes to the top-k experts of its task's gate.",
    "dense": "Dense MERIT: each frame is a softmax mixture of all experts.",
    "naive-mtl": "Naive multi-task baseline: one shared representation, no experts or gates.",
    "ser-only": "Single-task baseline: emotion recognition only (no enhancement head).",
    "se-only": "Single-task baseline: speech enhancement only (no emotion head).",
    "adapter": "Adapter with local attributes: a WAP-Transformer adapter on a frozen encoder, "
    "pre-trained self-supervised (masked prediction, EMA-teacher self-distillation, k-means "
    "local attributes), then fine-tuned for emotion with statistical attentive pooling.",
    "adapter-merit": "Adapter with local attributes as MERIT's integration: the pre-trained "
    "WAP-Transformer adapter feeds routed experts for emotion and enhancement.",
}

#: Metrics that go into the card's ``model-index``:
#: name -> (metric type, display name, task type, task name).
_INDEX_METRICS = {
    "accuracy": ("accuracy", "Accuracy", "audio-classification", "Speech emotion recognition"),
    "f1_macro": ("f1", "F1 (macro)", "audio-classification", "Speech emotion recognition"),
    "uar": ("recall", "UAR (macro recall)", "audio-classification", "Speech emotion recognition"),
    "ccc": ("ccc", "CCC", "audio-classification", "Speech emotion recognition"),
    "ssnr": ("ssnr", "Segmental SNR (dB)", "audio-to-audio", "Speech enhancement"),
    "pesq": ("pesq", "PESQ (wide-band)", "audio-to-audio", "Speech enhancement"),
    "stoi": ("stoi", "STOI", "audio-to-audio", "Speech enhancement"),
    "si_sdr": ("si-sdr", "SI-SDR (dB)", "audio-to-audio", "Speech enhancement"),
}
#: Metric keys as the training script writes them: ``[test_|eval_][condition_]metric[_suffix]``
#: (``test_seen_0dB_ssnr_enhanced``, ``eval_f1_macro``). ``_noisy`` values describe the
#: unprocessed input, not the model, so they match nothing and stay out of the model-index.
_METRIC_KEY = re.compile(
    r"(?:(?P<split>test|eval)_)?(?:(?P<condition>.+?)_)?"
    rf"(?P<metric>{'|'.join(_INDEX_METRICS)})(?:_(?P<suffix>enhanced|improvement))?"
)
_SPLITS = {"test": "test", "eval": "validation"}

_PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_MODEL_ID_LINE = re.compile(r'^model_id = "[^"\n]*"', re.MULTILINE)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class PublishError(RuntimeError):
    """The folder is incomplete or does not load standalone; nothing was uploaded."""


# ---------------------------------------------------------------------------------------------
# Model card
# ---------------------------------------------------------------------------------------------


def _is_hub_id(value: str | None) -> bool:
    """Hub metadata fields (``base_model``, ``datasets``) only accept ``owner/name`` ids."""
    return bool(value) and _HUB_ID.match(value) is not None and not Path(value).exists()


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def _metrics_summary(metrics: Mapping[str, Any]) -> str:
    rows = [
        (name, value)
        for name, value in metrics.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    ]
    if not rows:
        return "_No evaluation metrics were recorded for this model._"
    lines = ["| Metric | Value |", "| --- | --- |"]
    lines += [f"| {name} | {_format_value(value)} |" for name, value in rows]
    return "\n".join(lines)


def _metadata_yaml(
    model_name: str,
    metrics: Mapping[str, Any],
    dataset_name: str,
    base_model: str | None,
) -> str:
    """The card's variable YAML keys: base model, datasets, metrics and the model-index."""
    meta: dict[str, Any] = {}
    if _is_hub_id(base_model):
        meta["base_model"] = base_model
    if _is_hub_id(dataset_name):
        meta["datasets"] = [dataset_name]
    results: dict[tuple[str, str, str | None], list[dict[str, Any]]] = {}
    for key, value in metrics.items():
        match = _METRIC_KEY.fullmatch(key)
        if match is None or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        if not math.isfinite(float(value)):
            continue
        metric_type, display, task_type, task_name = _INDEX_METRICS[match["metric"]]
        if match["suffix"] == "improvement":
            metric_type, display = f"{metric_type}-improvement", f"{display} improvement"
        if match["condition"]:
            display = f"{display}, {match['condition']}"
        split = _SPLITS.get(match["split"] or "")
        results.setdefault((task_type, task_name, split), []).append(
            {"type": metric_type, "name": display, "value": round(float(value), 4)}
        )
    if results:
        meta["metrics"] = sorted({m["type"] for ms in results.values() for m in ms})
        entries = []
        for (task_type, task_name, split), values in results.items():
            dataset = {
                "name": dataset_name,
                "type": dataset_name if _is_hub_id(dataset_name) else "custom",
            }
            if split:
                dataset["split"] = split
            entries.append(
                {
                    "task": {"type": task_type, "name": task_name},
                    "dataset": dataset,
                    "metrics": values,
                }
            )
        meta["model-index"] = [{"name": model_name, "results": entries}]
    if not meta:
        return ""
    return yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).rstrip("\n")


def _read_config(output_dir: Path) -> dict[str, Any]:
    path = output_dir / "config.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def render_model_card(
    output_dir: str | os.PathLike,
    *,
    model_name: str,
    metrics: Mapping[str, Any],
    eval_table_markdown: str | None = None,
    dataset_name: str = "merit embedded eSpeak corpus",
    base_model: str | None = None,
    variant: str = "sparse",
    id2label: Mapping[int | str, str] | None = None,
    model_id: str | None = None,
    template: str | os.PathLike | None = None,
    training_details: Mapping[str, str] | None = None,
    computed_metrics: Sequence[str] | None = None,
) -> str:
    """Fill the ``model_card.md`` template and write ``output_dir/README.md``.

    ``id2label`` and ``base_model`` default to what ``output_dir/config.json`` records, so the
    training script only passes what the folder cannot tell. ``model_id`` is the id the usage
    snippet loads (the folder name until :func:`publish` swaps in the Hub id).
    ``training_details`` (name -> text: steps, batch, learning rate, kept checkpoint, noise,
    framework versions) fills the "Training procedure" section; ``computed_metrics`` (keys of
    the evaluation rows) is what the card says the table holds, so it claims nothing else.
    Returns the card.
    """
    output_dir = Path(output_dir)
    template_path = Path(template) if template is not None else DEFAULT_TEMPLATE
    if not template_path.is_file():
        raise FileNotFoundError(
            f"Model card template {template_path} not found; it ships at the top level of the "
            "merit repository (model_card.md)."
        )
    if variant not in VARIANT_DESCRIPTIONS:
        raise ValueError(
            f"Unknown variant '{variant}'; expected one of {list(VARIANT_DESCRIPTIONS)}"
        )
    config = _read_config(output_dir)
    if id2label is None:
        id2label = config.get("id2label") or {}
    if base_model is None:
        base_model = (config.get("backbone_config") or {}).get("_name_or_path") or None
    tasks = config.get("tasks") or []
    labels = [str(id2label[k]) for k in sorted(id2label, key=lambda k: int(k))]
    if labels and "ser" in (tasks or ["ser"]):
        label_text = ", ".join(f"`{label}`" for label in labels)
    else:
        label_text = "none (this variant has no emotion head)"

    values = {
        "metadata": _metadata_yaml(model_name, metrics, dataset_name, base_model),
        "model_name": model_name,
        "model_id": model_id or output_dir.as_posix(),
        "variant": variant,
        "variant_description": VARIANT_DESCRIPTIONS[variant],
        "base_model": f"`{base_model}`" if base_model else "randomly initialised SSL backbone",
        "backbone_notice": _backbone_notice(base_model),
        "labels": label_text,
        "dataset_name": dataset_name,
        "metrics_summary": _metrics_summary(metrics),
        "eval_table": (eval_table_markdown or "").strip()
        or "_No per-condition evaluation table was provided._",
        "metrics_note": _metrics_note(computed_metrics),
        "training_details": "\n".join(
            f"- **{name}:** {text}" for name, text in (training_details or {}).items()
        )
        or "_Not recorded (the card was written outside a training run)._",
    }

    def substitute(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise KeyError(f"{template_path}: unknown placeholder '{{{{ {key} }}}}'")
        return values[key]

    text = template_path.read_text()
    if not values["metadata"]:
        # A blank line would be left inside the YAML header; drop the placeholder's line.
        text = re.sub(r"^\{\{\s*metadata\s*\}\}\n", "", text, flags=re.MULTILINE)
    text = _PLACEHOLDER.sub(substitute, text)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "README.md").write_text(text)
    return text


def render_student_card(
    student_dir: str | os.PathLike,
    results: Mapping[str, Any],
    training_details: Mapping[str, str],
    fidelity_table: str | None,
) -> str:
    """Write ``student_dir/README.md`` for an MLKD student (``train.py --method mlkd``): a
    backbone checkpoint, not a MERIT model, so it gets its own short card: what it was
    distilled from, how faithful it is under each noise condition, how it was trained, how to
    build an emotion model on it."""
    student_dir = Path(student_dir)
    teacher = str(results.get("teacher") or "")
    metadata = [
        "library_name: transformers",
        "tags:",
        "- knowledge-distillation",
        "- speech",
        "- noise-robust",
        "- merit",
    ]
    if _is_hub_id(teacher):
        metadata.append(f"base_model: {teacher}")
    layers = ", ".join(str(n) for n in results.get("teacher_layers") or [])
    procedure = "\n".join(f"- **{name}:** {text}" for name, text in training_details.items())
    text = f"""---
{chr(10).join(metadata)}
---

# {student_dir.parent.name}/{student_dir.name}

A {results.get("student_layers")}-layer student backbone distilled from `{teacher}` by
multi-level knowledge distillation (MLKD): the frozen teacher hears clean speech, the student
hears the same utterance with noise and learns to predict the teacher's layers {layers} from its
last layer (one prediction head per layer; loss L1 - log sigmoid(cosine), as DistilHuBERT). It
is an ordinary `{json.loads((student_dir / "config.json").read_text()).get("model_type")}`
checkpoint: build an emotion model on it with the `merit` package,

```bash
python train.py --backbone {student_dir.as_posix()}
```

or load it with `AutoModel.from_pretrained` like its teacher. The teacher's licence applies to
weights derived from it.

## Fidelity under noise (test split)

Per condition: the distillation loss and, per target layer, the mean cosine similarity (1 =
the clean teacher reproduced) and the L1 distance between the student's prediction on the
noisy audio and the teacher's layer on the clean audio.

{(fidelity_table or "_No test evaluation was run._").strip()}

## Training procedure

{procedure}

## Citation

Multi-level knowledge distillation for speech emotion recognition in noisy conditions (the MLKD
method); DistilHuBERT (Chang, Yang & Lee, ICASSP 2022, arXiv:2110.01900) for the layer-wise
prediction heads and loss.
"""
    (student_dir / "README.md").write_text(text)
    return text


#: How the card names the metrics of an evaluation table (keys as the rows have them).
_METRIC_WORDS = {
    "f1_macro": "F1-macro",
    "uar": "UAR (macro recall)",
    "accuracy": "accuracy",
    "ccc": "CCC of the rated dimensions",
    "ssnr": "segmental SNR of the enhanced speech (dB, Loizou's definition)",
    "si_sdr": "SI-SDR (dB)",
    "pesq": "PESQ (wide-band)",
    "stoi": "STOI",
}


def _metrics_note(computed: Sequence[str] | None) -> str:
    """One sentence naming the metrics the table holds, and the enhancement ones it does not."""
    if computed is None:
        return "Metrics: see the table."
    present = [words for key, words in _METRIC_WORDS.items() if key in computed]
    note = "Computed for this card: " + (", ".join(present) or "none") + "."
    absent = [_METRIC_WORDS[k] for k in ("pesq", "stoi") if k not in computed]
    if absent and any(k in computed for k in ("ssnr", "si_sdr")):
        note += (
            f" Not computed: {' and '.join(absent)} (slow; `python evaluate_models.py --pesq "
            "--stoi` adds them)."
        )
    return note


def _backbone_notice(base_model: str | None) -> str:
    """Origin and licence of the backbone's pretrained weights, where this package knows them."""
    from merit.whisper_ct2 import TINY_EN_HUB_ID, TINY_EN_NOTICE

    if base_model == TINY_EN_HUB_ID:
        return f"The backbone is {TINY_EN_NOTICE}"
    if base_model:
        return f"The backbone's weights come from `{base_model}`; its licence applies to them."
    return "The backbone was trained from scratch with the rest of the model."


def set_card_model_id(card: str, model_id: str) -> str:
    """Point the card's usage snippet at ``model_id`` (the Hub id once published)."""
    return _MODEL_ID_LINE.sub(f'model_id = "{model_id}"', card, count=1)


# ---------------------------------------------------------------------------------------------
# Standalone check
# ---------------------------------------------------------------------------------------------

# Runs in a fresh interpreter where this repository's packages cannot be imported, exactly like
# a stranger's machine with only torch and transformers: the code files in the folder must do.
_STANDALONE_SCRIPT = r"""
import json, sys

class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("modeling_merit", "merit"):
            raise ModuleNotFoundError(f"{name} is blocked: the folder must load without it")

sys.meta_path.insert(0, _Block())
import torch
from transformers import AutoFeatureExtractor, AutoModel

folder = sys.argv[1]
model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
extractor = AutoFeatureExtractor.from_pretrained(folder, trust_remote_code=True)
rate = int(model.config.sampling_rate)
wave = (torch.randn(rate, generator=torch.Generator().manual_seed(0)) * 0.1).numpy()
inputs = extractor([wave], sampling_rate=rate, return_tensors="pt")
with torch.no_grad():
    out = model(**inputs)
report = {"model_class": type(model).__module__ + "." + type(model).__name__}
report["tasks"] = list(model.config.tasks)
if out.logits is not None:
    if not torch.isfinite(out.logits).all():
        raise SystemExit("non-finite emotion logits")
    report["num_labels"] = int(out.logits.shape[-1])
if out.enhanced_waveform is not None:
    if out.enhanced_waveform.shape[-1] != wave.shape[0]:
        raise SystemExit("enhanced waveform length differs from the input")
    if not torch.isfinite(out.enhanced_waveform).all():
        raise SystemExit("non-finite enhanced waveform")
print("MERIT_REPORT " + json.dumps(report))
"""


def _check_model_files(model_dir: Path) -> None:
    if not model_dir.is_dir():
        raise PublishError(f"{model_dir} is not a folder; `python train.py` writes one.")
    missing = [name for name in MODEL_FILES if not (model_dir / name).is_file()]
    if missing:
        raise PublishError(
            f"{model_dir} is missing {', '.join(missing)}; it must hold the weights, config, "
            "code files and feature extractor that `model.save_pretrained` and "
            "`MeritFeatureExtractor.save_pretrained` write."
        )


def verify_standalone(model_dir: str | os.PathLike, *, timeout: float = 600) -> dict[str, Any]:
    """Load ``model_dir`` with ``trust_remote_code`` in a clean subprocess and run 1 s of audio.

    ``modeling_merit`` and ``merit`` are blocked in the child (even an editable install), the
    remote-code cache is a fresh folder and the working directory is empty, so only the files
    in ``model_dir`` can make it load. Returns what the child reports (class, tasks, labels);
    raises :class:`PublishError` with the child's error otherwise.
    """
    model_dir = Path(model_dir).resolve()
    _check_model_files(model_dir)
    with tempfile.TemporaryDirectory(prefix="merit-verify-") as scratch:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(Path(scratch) / "modules"))
        try:
            done = subprocess.run(
                [sys.executable, "-c", _STANDALONE_SCRIPT, str(model_dir)],
                cwd=scratch,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as err:
            raise PublishError(f"{model_dir} did not load within {timeout:g} s") from err
    reports = [line for line in done.stdout.splitlines() if line.startswith("MERIT_REPORT ")]
    if done.returncode != 0 or not reports:
        tail = (done.stderr or done.stdout).strip()[-2000:]
        raise PublishError(
            f"{model_dir} does not load standalone with trust_remote_code; refusing to publish."
            f"\n{tail}"
        )
    return json.loads(reports[-1].removeprefix("MERIT_REPORT "))


# ---------------------------------------------------------------------------------------------
# Publishing
# ---------------------------------------------------------------------------------------------


#: What a model repository gets: the loadable model (:data:`MODEL_FILES`), its card, and the
#: evaluation it reports. Anything else in the folder (tokens, credentials, logs, checkpoints,
#: notes) is never uploaded, whatever its name.
UPLOAD_PATTERNS = (
    *MODEL_FILES,
    "README.md",
    "results.json",
    "evaluation/*.md",
    "evaluation/*.csv",
    "evaluation/*.png",
)


def plan_model_upload(model_dir: str | os.PathLike) -> tuple[list[Path], list[Path]]:
    """The files of ``model_dir`` that :func:`publish` uploads, and those it leaves out.

    An allow-list (:data:`UPLOAD_PATTERNS`), not a deny-list: a stray ``token.txt`` or
    ``credentials.json`` is left out because it is not a model file, not because its name was
    foreseen. Symbolic links are never followed or uploaded (a link can point anywhere, a
    private key included); they are listed as left out.
    """
    model_dir = Path(model_dir)
    uploaded, left_out = [], []
    for path in sorted(model_dir.rglob("*")):
        relative = path.relative_to(model_dir)
        if path.is_symlink() or any(
            parent.is_symlink() for parent in path.parents if model_dir in parent.parents
        ):
            left_out.append(relative)
            continue
        if not path.is_file():
            continue
        name = relative.as_posix()
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in UPLOAD_PATTERNS):
            uploaded.append(relative)
        else:
            left_out.append(relative)
    return uploaded, left_out


def _space_readme(model_id: str, title: str) -> str:
    try:
        from importlib.metadata import version

        sdk_version = f"sdk_version: {version('gradio')}\n"
    except Exception:  # noqa: BLE001 - gradio not installed here: let the Hub pick a version
        sdk_version = ""
    return (
        "---\n"
        f"title: {title}\n"
        "emoji: 🎙️\n"
        "colorFrom: indigo\n"
        "colorTo: purple\n"
        "sdk: gradio\n"
        f"{sdk_version}"
        "app_file: app.py\n"
        "pinned: false\n"
        "license: apache-2.0\n"
        f"models:\n- {model_id}\n"
        "short_description: Noisy-speech emotion recognition + enhancement (MoE)\n"
        "---\n\n"
        f"# {title}\n\n"
        f"Gradio demo of [`{model_id}`](https://huggingface.co/{model_id}), a Sparse MERIT "
        "model: one mixture-of-experts model recognises the emotion in speech and returns an "
        "enhanced (denoised) copy, and the page shows which experts each 20 ms frame used.\n\n"
        "The model is chosen by the Space variable `MERIT_MODEL`. For a private model repo, add "
        "an `HF_TOKEN` secret with read access. Run locally with `python app.py --model "
        f"{model_id}`.\n"
    )


def stage_space(
    space_dir: str | os.PathLike,
    *,
    model_id: str,
    examples_dir: str | os.PathLike | None = None,
    title: str = "Sparse MERIT demo",
) -> list[str]:
    """Write the Space's files into ``space_dir``; returns their relative paths.

    The Space gets ``app.py``, ``requirements.txt``, the modules the app imports
    (:data:`SPACE_FILES`), the example clips under ``examples/`` (so the Space needs no corpus)
    and a README with the Space metadata.
    """
    space_dir = Path(space_dir)
    missing = [name for name in SPACE_FILES if not (REPO_ROOT / name).is_file()]
    if missing:
        raise PublishError(f"Space files missing from {REPO_ROOT}: {', '.join(missing)}")
    for name in SPACE_FILES:
        target = space_dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, target)
    from merit.app import prepare_examples

    try:
        examples = prepare_examples(examples_dir)
    except Exception as err:  # noqa: BLE001 - a Space without examples still works
        print(f"[merit.hub] Space examples skipped: {err}")
        examples = []
    if examples:
        source = examples[0].path.parent
        (space_dir / "examples").mkdir(parents=True, exist_ok=True)
        for path in [source / "examples.csv", *(ex.path for ex in examples)]:
            shutil.copy2(path, space_dir / "examples" / path.name)
    (space_dir / "README.md").write_text(_space_readme(model_id, title), encoding="utf-8")
    return sorted(p.relative_to(space_dir).as_posix() for p in space_dir.rglob("*") if p.is_file())


def publish(
    model_dir: str | os.PathLike,
    repo_id: str,
    *,
    space_id: str | None = None,
    private: bool = False,
    endpoint: str | None = None,
    token: str | None = None,
    examples_dir: str | os.PathLike | None = None,
) -> dict[str, str]:
    """Upload a trained folder as a model repo and, with ``space_id``, the demo as a Space.

    The folder is checked first (:func:`verify_standalone`); nothing is created or uploaded
    when it fails. The card's usage snippet is pointed at ``repo_id`` in the uploaded copy
    (the local README is left alone), and the Space's ``MERIT_MODEL`` variable at the model.
    Returns the URLs of what was created.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    model_dir = Path(model_dir)
    verify_standalone(model_dir)
    card_path = model_dir / "README.md"
    if card_path.is_file():
        card = card_path.read_text(encoding="utf-8")
    else:
        card = render_model_card(
            model_dir, model_name=repo_id.split("/")[-1], metrics={}, model_id=repo_id
        )
    operations = [
        CommitOperationAdd(path_in_repo=rel.as_posix(), path_or_fileobj=str(model_dir / rel))
        for rel in plan_model_upload(model_dir)[0]
        if rel.as_posix() != "README.md"
    ]
    operations.append(
        CommitOperationAdd(
            path_in_repo="README.md",
            path_or_fileobj=set_card_model_id(card, repo_id).encode("utf-8"),
        )
    )
    api = HfApi(endpoint=endpoint, token=token)
    model_url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    api.create_commit(
        repo_id,
        operations=operations,
        commit_message="Upload Sparse MERIT model",
        repo_type="model",
    )
    urls = {"model": str(model_url)}
    if space_id:
        with tempfile.TemporaryDirectory(prefix="merit-space-") as staging:
            stage_space(staging, model_id=repo_id, examples_dir=examples_dir)
            space_url = api.create_repo(
                space_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True
            )
            api.upload_folder(
                folder_path=staging,
                repo_id=space_id,
                repo_type="space",
                commit_message="Upload Sparse MERIT demo",
            )
        api.add_space_variable(
            space_id, "MERIT_MODEL", repo_id, description="Model the demo serves"
        )
        urls["space"] = str(space_url)
    return urls


_METRIC_APP = """import evaluate
from evaluate.utils import launch_gradio_widget

module = evaluate.load("{repo_id}")
launch_gradio_widget(module)
"""


def publish_metric(
    name: str,
    repo_id: str,
    *,
    private: bool = False,
    endpoint: str | None = None,
    token: str | None = None,
) -> str:
    """Upload one of :data:`merit.evaluate_metrics.METRIC_MODULES` as a Hub metric (a Gradio
    Space with the module script, its card, ``app.py`` and ``requirements.txt``), so others can
    ``evaluate.load("user/name")`` it. Returns the Space URL."""
    from huggingface_hub import CommitOperationAdd, HfApi

    from merit.evaluate_metrics import module_path

    folder = Path(module_path(name))
    script = repo_id.split("/")[-1].replace("-", "_")
    operations = [
        # evaluate finds a Hub module by the script named after the repo
        CommitOperationAdd(f"{script}.py", str(folder / f"{name}.py")),
        CommitOperationAdd("README.md", str(folder / "README.md")),
        CommitOperationAdd("app.py", _METRIC_APP.format(repo_id=repo_id).encode()),
        # The module runs merit.metrics: the Space (and every user) needs the package.
        CommitOperationAdd("requirements.txt", b"evaluate\nmerit-ser\n"),
    ]
    api = HfApi(endpoint=endpoint, token=token)
    url = api.create_repo(
        repo_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True
    )
    api.create_commit(
        repo_id, operations=operations, commit_message=f"Upload {name}", repo_type="space"
    )
    return str(url)


def main(argv: list[str] | None = None) -> int:
    """``python -m merit.hub publish --model-dir DIR --repo-id USER/NAME [--space-id ...]``."""
    parser = argparse.ArgumentParser(
        prog="python -m merit.hub", description="Publish a trained MERIT model (and its demo)."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    pub = commands.add_parser("publish", help="upload a model folder (and the demo Space)")
    pub.add_argument("--model-dir", required=True, help="trained folder, e.g. outputs/merit-sparse")
    pub.add_argument("--repo-id", required=True, help="model repo, e.g. user/merit-sparse")
    pub.add_argument("--space-id", default=None, help="also publish the demo, e.g. user/merit-demo")
    pub.add_argument("--private", action="store_true", help="create private repos")
    pub.add_argument("--endpoint", default=None, help="Hub URL (default: $HF_ENDPOINT or the Hub)")
    pub.add_argument("--token", default=None, help="access token (default: $HF_TOKEN / login)")
    pub.add_argument("--examples-dir", default=None, help="example clips folder for the Space")
    pub.add_argument(
        "--yes", action="store_true", help="upload without asking (the file list is still shown)"
    )
    met = commands.add_parser("publish-metric", help="upload an evaluate metric module")
    met.add_argument("name", help="segmental_snr, si_sdr, pesq, stoi, emotion_recognition, ccc")
    met.add_argument("--repo-id", required=True, help="Space id, e.g. user/segmental_snr")
    met.add_argument("--private", action="store_true")
    met.add_argument("--endpoint", default=None)
    met.add_argument("--token", default=None)
    met.add_argument("--yes", action="store_true", help="upload without asking")
    args = parser.parse_args(argv)
    if args.command == "publish-metric":
        return _publish_metric_command(args)
    model_dir = Path(args.model_dir)
    try:
        _check_model_files(model_dir)  # a folder that cannot be published fails before asking
    except PublishError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    uploaded, left_out = plan_model_upload(model_dir)
    visibility = "private" if args.private else "PUBLIC"
    print(f"To upload to the {visibility} model repo {args.repo_id}:")
    for rel in uploaded:
        print(f"  {rel.as_posix()}")
    if left_out:
        print("Not uploaded (not model files, or symbolic links):")
        for rel in left_out:
            print(f"  {rel.as_posix()}")
    if args.space_id:
        print(f"and the demo's files to the {visibility} Space {args.space_id}.")
    refused = _refused(args.yes, "Upload these files?")
    if refused is not None:
        return refused
    try:
        urls = publish(
            args.model_dir,
            args.repo_id,
            space_id=args.space_id,
            private=args.private,
            endpoint=args.endpoint,
            token=args.token,
            examples_dir=args.examples_dir,
        )
    except PublishError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for kind, url in urls.items():
        print(f"{kind}: {url}")
    return 0


def _refused(yes: bool, question: str) -> int | None:
    """``None`` when the upload may go ahead (``--yes``, or the user typed yes), else the exit
    code: nothing is uploaded without a confirmation, and none can come from a pipe."""
    if yes:
        return None
    if not sys.stdin.isatty():
        print("error: nothing uploaded; pass --yes to confirm", file=sys.stderr)
        return 2
    if input(f"{question} [y/N] ").strip().lower() not in ("y", "yes"):
        print("nothing uploaded")
        return 1
    return None


def _publish_metric_command(args: argparse.Namespace) -> int:
    from merit.evaluate_metrics import METRIC_MODULES

    if args.name not in METRIC_MODULES:
        known = ", ".join(sorted(METRIC_MODULES))
        print(f"error: unknown metric {args.name!r}; one of {known}", file=sys.stderr)
        return 1
    visibility = "private" if args.private else "PUBLIC"
    print(f"To upload the {args.name} metric module to the {visibility} Space {args.repo_id}.")
    refused = _refused(args.yes, "Upload it?")
    if refused is not None:
        return refused
    url = publish_metric(
        args.name, args.repo_id, private=args.private, endpoint=args.endpoint, token=args.token
    )
    print(f"metric: {url}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
