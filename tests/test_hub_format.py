"""Saving, loading as remote code, the audio-classification pipeline, backbones and LoRA."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import make_config, make_model
from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoModel,
    HubertModel,
    Wav2Vec2Config,
    WavLMConfig,
    WavLMForSequenceClassification,
    WavLMModel,
    pipeline,
)

from merit.peft_utils import apply_lora, trainable_parameter_names
from modeling_merit import (
    MeritFeatureExtractor,
    MeritModel,
    minimal_backbone_config,
    release_config,
)

CODE_FILES = {
    "configuration_merit.py",
    "modeling_merit.py",
    "backbones_merit.py",
    "integration_merit.py",
    "mixture_merit.py",
    "heads_merit.py",
    "feature_extraction_merit.py",
    "pipeline_merit.py",
    "audio_merit.py",
}


@pytest.fixture(scope="module", params=["wavlm", "whisper", "release"])
def saved_model(tmp_path_factory, request):
    """A saved minimal model per backbone family, and the authors' release architecture
    (every one must load standalone)."""
    folder = tmp_path_factory.mktemp(f"merit-{request.param}")
    if request.param == "release":
        config = release_config(minimal_backbone_config(), expert_hidden_size=48, se_lstm_size=24)
        config.id2label = {0: "neutral", 1: "happy", 2: "sad", 3: "angry"}
        config.label2id = {v: k for k, v in config.id2label.items()}
        model = MeritModel(config).eval()
    else:
        model = make_model(backbone_config=minimal_backbone_config(request.param)).eval()
    model.save_pretrained(folder)
    MeritFeatureExtractor().save_pretrained(folder)
    return folder, model


def test_saved_folder_layout(saved_model):
    folder, _ = saved_model
    files = set(os.listdir(folder))
    assert CODE_FILES | {"config.json", "model.safetensors", "preprocessor_config.json"} <= files
    assert not any(name.endswith(".bin") for name in files), "weights must be safetensors only"
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert set(auto_map) == {"AutoConfig", "AutoModel", "AutoModelForAudioClassification"}
    fe_map = json.loads((folder / "preprocessor_config.json").read_text())["auto_map"]
    assert fe_map == {"AutoFeatureExtractor": "feature_extraction_merit.MeritFeatureExtractor"}


def test_remote_code_load_in_fresh_process_without_the_package(saved_model, tmp_path):
    """The Hub copy must work alone: `modeling_merit` is made unimportable in the child."""
    folder, model = saved_model
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 7000, generator=gen) * 0.1
    mask = torch.ones(2, 7000, dtype=torch.long)
    mask[1, 5000:] = 0
    torch.save({"x": x, "mask": mask}, tmp_path / "inputs.pt")
    with torch.no_grad():
        expected = model(x, attention_mask=mask)
    script = textwrap.dedent(
        f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("modeling_merit", "merit"):
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        import torch
        from transformers import AutoModel, AutoConfig, AutoModelForAudioClassification
        folder = {str(folder)!r}
        config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
        assert type(config).__name__ == "MeritConfig", type(config)
        model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        clf = AutoModelForAudioClassification.from_pretrained(folder, trust_remote_code=True)
        assert type(clf).__name__ == "MeritModel"
        inputs = torch.load({str(tmp_path / "inputs.pt")!r})
        with torch.no_grad():
            out = model(inputs["x"], attention_mask=inputs["mask"])
        torch.save({{"logits": out.logits, "enhanced": out.enhanced_waveform}},
                   {str(tmp_path / "outputs.pt")!r})
        """
    )
    env = dict(os.environ, HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    got = torch.load(tmp_path / "outputs.pt")
    torch.testing.assert_close(got["logits"], expected.logits)
    torch.testing.assert_close(got["enhanced"], expected.enhanced_waveform)


def test_auto_classes_and_feature_extractor_round_trip(saved_model):
    folder, model = saved_model
    loaded = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    fe = AutoFeatureExtractor.from_pretrained(folder, trust_remote_code=True)
    assert fe.sampling_rate == 16000 and fe.return_attention_mask
    assert AutoConfig.from_pretrained(folder, trust_remote_code=True).id2label[3] == "angry"


def test_audio_classification_pipeline(saved_model):
    folder, model = saved_model
    classifier = pipeline("audio-classification", model=str(folder), trust_remote_code=True)
    audio = (np.random.default_rng(0).standard_normal(12000) * 0.1).astype(np.float32)
    result = classifier(audio, top_k=4)
    assert {r["label"] for r in result} == {"neutral", "happy", "sad", "angry"}
    assert sum(r["score"] for r in result) == pytest.approx(1.0, abs=1e-4)
    with torch.no_grad():
        probs = model(torch.from_numpy(audio)[None]).logits.softmax(-1)[0]
    by_label = {r["label"]: r["score"] for r in result}
    for i, label in model.config.id2label.items():
        assert by_label[label] == pytest.approx(probs[i].item(), abs=1e-5)
    # The pipeline resamples other rates itself (8 kHz in -> 16 kHz model).
    assert len(classifier({"raw": audio[:8000], "sampling_rate": 8000})) == 4


PIPELINE_SCRIPT = """
import json, sys
for name in sys.argv[2].split(","):
    sys.modules[name] = None  # as if not installed: `import` fails, find_spec says None
import numpy as np
from transformers import pipeline
folder = sys.argv[1]
clf = pipeline("audio-classification", model=folder, trust_remote_code=True)
assert type(clf).__name__ == "MeritAudioClassificationPipeline", type(clf)
def scores(result):
    return {r["label"]: r["score"] for r in result}
inputs = json.load(open("inputs.json"))
arrays = [np.asarray(a, dtype=np.float32) for a in inputs["arrays"]]
out = {
    "file": scores(clf("stereo44k.wav", top_k=None)),
    "one_by_one": [scores(clf(a, top_k=None)) for a in arrays],
    "batched": [scores(r) for r in clf(arrays, batch_size=2, top_k=None)],
    "long": scores(clf(np.asarray(inputs["long"], np.float32), top_k=None, chunk_seconds=1.0,
                       overlap_seconds=0.25)),
    "silence": clf(np.zeros(16000, np.float32)),
    "click": clf("click.wav"),
}
try:
    pipeline("audio-classification", model=sys.argv[3], trust_remote_code=True)
    out["se_only"] = "no error"
except ValueError as err:
    out["se_only"] = str(err)
json.dump(out, open("outputs.json", "w"))
"""


@pytest.mark.parametrize("blocked", ["modeling_merit,merit", "modeling_merit,merit,soundfile"])
def test_pipeline_from_the_folder_alone(saved_model, tmp_path, blocked):
    """The README's first call, in a process without the package (and without soundfile):
    files without ffmpeg, batching, chunking, silence, and a clear refusal for SE-only."""
    from merit.audio import load_audio
    from merit.inference import analyze

    folder, model = saved_model
    se_only = tmp_path / "se-only"
    make_model(tasks=["se"], backbone_config=model.config.backbone_config).save_pretrained(se_only)
    MeritFeatureExtractor().save_pretrained(se_only)
    rng = np.random.default_rng(4)
    stereo = (rng.standard_normal((44_100, 2)) * 0.1).astype(np.float32)
    sf.write(tmp_path / "stereo44k.wav", stereo, 44_100, subtype="PCM_16")
    sf.write(tmp_path / "click.wav", np.full(80, 0.5), 16_000, subtype="PCM_16")
    arrays = [(rng.standard_normal(n) * 0.1).astype(np.float32) for n in (9000, 16000, 5000)]
    long = (rng.standard_normal(16_000 * 3) * 0.1).astype(np.float32)
    (tmp_path / "inputs.json").write_text(
        json.dumps({"arrays": [a.tolist() for a in arrays], "long": long.tolist()})
    )
    env = dict(os.environ, HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-c", PIPELINE_SCRIPT, str(folder), blocked, str(se_only)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads((tmp_path / "outputs.json").read_text())
    labels = model.config.id2label

    def expected(audio, **kwargs):
        probs = analyze(model, None, audio, 16_000, **kwargs).probabilities
        return {labels[i]: probs[labels[i]] for i in labels}

    # A 44.1 kHz stereo file: read (PCM 16), mixed down and resampled like the package does.
    file_audio = load_audio(tmp_path / "stereo44k.wav")
    assert out["file"] == pytest.approx(expected(file_audio), abs=2e-4)
    for single, batched, audio in zip(out["one_by_one"], out["batched"], arrays, strict=True):
        assert single == pytest.approx(expected(audio), abs=1e-5)
        assert batched == pytest.approx(single, abs=1e-5)  # padding is masked
    long_expected = expected(long, chunk_seconds=1.0, overlap_seconds=0.25)
    assert out["long"] == pytest.approx(long_expected, abs=1e-5)  # analyze's chunking
    assert out["silence"] == [{"label": None, "score": None, "reason": "no speech"}]
    assert out["click"] == [{"label": None, "score": None, "reason": "too short"}]
    assert "no emotion head (enhancement only)" in out["se_only"]


@pytest.mark.parametrize("checkpoint_kind", ["wavlm", "wavlm-with-head", "wav2vec2", "hubert"])
def test_from_backbone_loads_local_checkpoint_weights(tmp_path, checkpoint_kind):
    torch.manual_seed(1)
    small = minimal_backbone_config("wavlm").to_dict()
    small.pop("model_type")
    if checkpoint_kind == "wavlm":
        backbone = WavLMModel(WavLMConfig(**small))
    elif checkpoint_kind == "wavlm-with-head":
        backbone = WavLMForSequenceClassification(WavLMConfig(**small))
    elif checkpoint_kind == "wav2vec2":
        from transformers import Wav2Vec2Model

        backbone = Wav2Vec2Model(minimal_backbone_config("wav2vec2"))
    else:
        from transformers import HubertConfig

        cfg = minimal_backbone_config("hubert").to_dict()
        cfg.pop("model_type")
        backbone = HubertModel(HubertConfig(**cfg))
    backbone.save_pretrained(tmp_path)
    model = MeritModel.from_backbone(str(tmp_path), hidden_size=32, num_experts=4)
    reference = backbone.wavlm if checkpoint_kind == "wavlm-with-head" else backbone
    ref_state = reference.state_dict()
    for name, value in model.backbone.state_dict().items():
        torch.testing.assert_close(value, ref_state[name], msg=name)
    assert model.config.backbone_config.model_type == (
        "wavlm" if "wavlm" in checkpoint_kind else checkpoint_kind
    )
    assert isinstance(Wav2Vec2Config, type)
    out = model.eval()(torch.randn(1, 4000))
    assert out.logits.shape == (1, 4)


def test_lora_keeps_every_merit_module_trainable_including_the_adapter():
    """modules_to_save comes from the model (a hand-kept list once missed the adapter, which
    apply_lora then froze)."""
    model = make_model(adapter_layers=1, adapter_ffn_size=32)
    assert model.merit_module_names() == [
        "integration",
        "adapter",
        "mixture",
        "ser_head",
        "se_head",
    ]
    peft_model = apply_lora(model, r=4, alpha=8)
    names = trainable_parameter_names(peft_model)
    adapter = [n for n in names if ".adapter." in n]
    assert adapter and all("modules_to_save" in n for n in adapter)
    x = torch.randn(2, 6000, generator=torch.Generator().manual_seed(0)) * 0.1
    peft_model(input_values=x, labels=torch.tensor([1, 2]), clean_values=x * 0.5).loss.backward()
    # Every adapter weight but the mask embedding (used only in pre-training) learns.
    grads = {n: p.grad for n, p in peft_model.named_parameters() if n in set(adapter)}
    layers = {n: g for n, g in grads.items() if "mask_embedding" not in n}
    assert layers and all(g is not None and g.abs().sum() > 0 for g in layers.values())


def test_lora_trains_only_lora_and_merit_and_changes_backbone(tmp_path):
    model = make_model()
    peft_model = apply_lora(model, r=4, alpha=8)
    names = trainable_parameter_names(peft_model)
    assert any("lora_A" in n for n in names)
    backbone_trainable = [n for n in names if ".backbone." in n and "lora_" not in n]
    assert backbone_trainable == [], backbone_trainable
    for module in ("experts", "gates", "integration", "ser_head", "se_head"):
        assert any(module in n for n in names), module

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6000, generator=gen) * 0.1
    labels = torch.tensor([1, 2])
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        optimizer.zero_grad()
        out = peft_model(input_values=x, labels=labels, clean_values=x * 0.5)
        out.loss.backward()
        lora_grads = [
            p.grad for n, p in peft_model.named_parameters() if "lora_B" in n and p.grad is not None
        ]
        # WavLM's stock attention bypasses q_proj/v_proj modules; LoRA must really be called.
        assert lora_grads and any(g.abs().sum() > 0 for g in lora_grads)
        optimizer.step()

    peft_model.eval()
    with torch.no_grad():
        unmerged = peft_model(input_values=x)
    peft_model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()

    from peft import PeftModel

    base = make_model()
    reloaded = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    with torch.no_grad():
        again = reloaded(input_values=x)
    torch.testing.assert_close(again.logits, unmerged.logits, atol=1e-5, rtol=1e-4)

    merged = reloaded.merge_and_unload().eval()
    with torch.no_grad():
        merged_out = merged(x)
    torch.testing.assert_close(merged_out.logits, unmerged.logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(
        merged_out.enhanced_waveform, unmerged.enhanced_waveform, atol=1e-5, rtol=1e-4
    )


def test_projection_attention_matches_stock_wavlm():
    """The LoRA-friendly attention is the same computation as stock WavLM attention."""
    config = make_config()
    torch.manual_seed(0)
    model = MeritModel(config).eval()
    stock = AutoModel.from_config(config.backbone_config).eval()
    stock.load_state_dict(model.backbone.state_dict())
    x = torch.randn(2, 6000) * 0.1
    mask = torch.ones(2, 6000, dtype=torch.long)
    mask[1, 4000:] = 0
    with torch.no_grad():
        ours = model.backbone(x, attention_mask=mask).last_hidden_state
        theirs = stock(x, attention_mask=mask).last_hidden_state
    frames = model.backbone._get_feat_extract_output_lengths(mask.sum(-1))
    for i, n in enumerate(frames.tolist()):
        torch.testing.assert_close(ours[i, :n], theirs[i, :n], atol=1e-5, rtol=1e-4)
