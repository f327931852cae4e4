"""Converting the authors' released files: names, shapes, the norm-stat pickle, errors.

The real weights cannot be downloaded here, so the test writes files with exactly the
release's key names (listed below, from the release's description, not from the converter)
at reduced widths, converts them, and checks the result against the reference forward of
``test_release_preset`` on the source weights.
"""

import pickle
import shutil

import numpy as np
import pytest
import torch
from test_hub import fake_hub  # noqa: F401  (the loopback Hub stand-in)
from test_release_preset import reference_forward, release_model

from merit.convert_release import convert_release, load_norm_stats, main
from modeling_merit import MeritModel

MEAN, STD = 0.01, 0.2

# transformers WavLMModel name -> the release's unilm name, for the tiny test backbone.
HF_TO_UNILM_LAYER = {
    "attention.q_proj": "self_attn.q_proj",
    "attention.k_proj": "self_attn.k_proj",
    "attention.v_proj": "self_attn.v_proj",
    "attention.out_proj": "self_attn.out_proj",
    "attention.gru_rel_pos_linear": "self_attn.grep_linear",
    "attention.rel_attn_embed": "self_attn.relative_attention_bias",
    "layer_norm": "self_attn_layer_norm",
    "feed_forward.intermediate_dense": "fc1",
    "feed_forward.output_dense": "fc2",
    "final_layer_norm": "final_layer_norm",
}


POS = "encoder.pos_conv_embed.conv.parametrizations.weight"


def unilm_name(hf: str) -> str:
    top = {
        "feature_projection.layer_norm.weight": "layer_norm.weight",
        "feature_projection.layer_norm.bias": "layer_norm.bias",
        "feature_projection.projection.weight": "post_extract_proj.weight",
        "feature_projection.projection.bias": "post_extract_proj.bias",
        "encoder.layer_norm.weight": "encoder.layer_norm.weight",
        "encoder.layer_norm.bias": "encoder.layer_norm.bias",
        "encoder.pos_conv_embed.conv.bias": "encoder.pos_conv.0.bias",
        f"{POS}.original0": "encoder.pos_conv.0.weight_g",
        f"{POS}.original1": "encoder.pos_conv.0.weight_v",
    }
    if hf in top:
        return top[hf]
    parts = hf.split(".")
    if parts[0] == "feature_extractor":  # conv_layers.i.{conv,layer_norm}.x
        index, module, kind = parts[2], parts[3], parts[4]
        return f"feature_extractor.conv_layers.{index}.{'0' if module == 'conv' else '2.1'}.{kind}"
    if hf.endswith("gru_rel_pos_const"):
        return f"encoder.layers.{parts[2]}.self_attn.grep_a"
    module, kind = ".".join(parts[3:-1]), parts[-1]
    return f"encoder.layers.{parts[2]}.{HF_TO_UNILM_LAYER[module]}.{kind}"


def write_release(model: MeritModel, folder, stats=(MEAN, STD)) -> None:
    """The model's weights as the release's files, under the release's names."""
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    ssl = {unilm_name(k[len("backbone.") :]): v for k, v in sd.items() if k.startswith("backbone.")}
    ssl["label_embs_concat"] = torch.zeros(3, 8)  # pre-training leftovers the release carries
    mmoe = {}
    for i in range(model.config.num_backbone_layers):
        for kind in ("weight", "bias"):
            mmoe[f"layer_norms.{i}.{kind}"] = sd[f"integration.layer_norms.{i}.{kind}"]
    for e in range(model.config.num_experts):
        for ours, theirs in (("fc_in", "fc1"), ("fc_out", "fc2")):
            for kind in ("weight", "bias"):
                mmoe[f"experts.{e}.{theirs}.{kind}"] = sd[f"mixture.experts.{e}.{ours}.{kind}"]
    for index, task in (("0", "se"), ("1", "ser")):
        for kind in ("weight", "bias"):
            mmoe[f"gates.{index}.fc.{kind}"] = sd[f"mixture.gates.{task}.router.{kind}"]
    pool = {
        "sap_linear.weight": sd["ser_head.pooling.sap_linear.weight"],
        "sap_linear.bias": sd["ser_head.pooling.sap_linear.bias"],
        "attention": sd["ser_head.pooling.attention"],
    }
    ser = {}
    for theirs, ours in (("fc.0.0", "1"), ("fc.0.1", "2"), ("out.0", "5")):
        for kind in ("weight", "bias"):
            ser[f"{theirs}.{kind}"] = sd[f"ser_head.classifier.{ours}.{kind}"]
    se = {f"lstm_enc.0.{k}": sd[f"se_head.encoder_in.{k}"] for k in ("weight", "bias")}
    se.update({f"lstm_enc.2.{k}": sd[f"se_head.mask_out.{k}"] for k in ("weight", "bias")})
    for name, value in sd.items():
        if name.startswith("se_head.blstm."):
            se[f"lstm_enc.1.blstm.{name[len('se_head.blstm.') :]}"] = value
    se["weights"] = torch.zeros(model.config.num_backbone_layers)  # unused by their forward
    se["layer_norm.0.weight"] = torch.ones(model.config.backbone_hidden_size)
    folder.mkdir(parents=True, exist_ok=True)
    for name, state in (
        ("final_ssl.pt", ssl),
        ("final_mmoe.pt", mmoe),
        ("final_pool.pt", pool),
        ("final_ser.pt", ser),
        ("final_se.pt", se),
    ):
        torch.save({"model": state}, folder / name)
    (folder / "train_norm_stat.pkl").write_bytes(
        pickle.dumps([np.float32(stats[0]), np.float64(stats[1])])
    )


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    model = release_model()
    model.config.input_mean, model.config.input_std = MEAN, STD
    folder = tmp_path_factory.mktemp("release")
    write_release(model, folder)
    return model, folder


def test_converted_release_matches_the_described_forward(source, tmp_path):
    model, folder = source
    out = convert_release(folder, tmp_path / "converted")
    converted = MeritModel.from_pretrained(out).eval()
    config = converted.config
    assert (config.integration, config.expert_type, config.router_weighting) == (
        "concat",
        "plain",
        "hard",
    )
    assert (config.input_mean, config.input_std) == pytest.approx((MEAN, STD))
    assert config.label_names == ["angry", "sad", "happy", "neutral"]
    assert config.n_fft == model.config.n_fft and config.num_experts == model.config.num_experts
    wave = torch.randn(9_000, generator=torch.Generator().manual_seed(6)) * 0.1
    with torch.no_grad():
        out_model = converted(wave[None])
        logits, enhanced = reference_forward(model, wave, mean=MEAN, std=STD)
    torch.testing.assert_close(out_model.logits[0], logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(
        out_model.enhanced_waveform[0, :8_600], enhanced[:8_600], atol=1e-4, rtol=1e-3
    )
    card = (out / "README.md").read_text()
    assert "RogerTzeng/Sparse-MERIT" in card and "MIT" in card and "2509.08470" in card


def test_hub_id_is_fetched_with_the_release_files_only(
    source,
    tmp_path,
    monkeypatch,
    fake_hub,  # noqa: F811
):
    """The Hub path for real: ``snapshot_download`` against the loopback Hub stand-in, which
    holds the release's files and a large file the converter must not download."""
    import huggingface_hub

    model, folder = source
    repo = "RogerTzeng/Sparse-MERIT"
    files = {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()}
    fake_hub.files["model", repo] = {**files, "WavLM-Large.pt": b"x" * 4096}
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", fake_hub.url)
    monkeypatch.setattr(
        huggingface_hub.constants,
        "HUGGINGFACE_CO_URL_TEMPLATE",
        fake_hub.url + "/{repo_id}/resolve/{revision}/{filename}",
    )
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    out = convert_release(repo, tmp_path / "from-hub")
    fetched = {path.rsplit("/", 1)[-1] for method, path in fake_hub.requests if "/resolve/" in path}
    assert fetched == set(files) and "WavLM-Large.pt" not in fetched
    local = convert_release(folder, tmp_path / "local")
    converted, expected = MeritModel.from_pretrained(out), MeritModel.from_pretrained(local)
    for key, value in expected.state_dict().items():
        torch.testing.assert_close(converted.state_dict()[key], value, rtol=0, atol=0)


class Payload:
    def __reduce__(self):
        return (print, ("pwned",))


def test_norm_stats_accept_numbers_only():
    assert load_norm_stats(pickle.dumps({"mean": 0.5, "std": np.float32(2.0)})) == (0.5, 2.0)
    assert load_norm_stats(pickle.dumps((np.array(0.1), np.array([0.3])))) == pytest.approx(
        (0.1, 0.3)
    )
    with pytest.raises(ValueError, match="refused to load builtins.print"):
        load_norm_stats(pickle.dumps(Payload()))
    with pytest.raises(ValueError, match="std must be positive"):
        load_norm_stats(pickle.dumps([0.0, 0.0]))
    with pytest.raises(ValueError, match="one finite number"):
        load_norm_stats(pickle.dumps([0.0, [1.0, 2.0]]))


@pytest.mark.parametrize(
    "file,edit,message",
    [
        ("final_mmoe.pt", lambda s: s.pop("experts.1.fc2.bias"), "lack 1 tensor"),
        (
            "final_ser.pt",
            lambda s: s.update({"out.0.weight": torch.zeros(3, 2)}),
            r"ser_head.classifier.5.weight: shape \(3, 2\)",
        ),
        ("final_pool.pt", lambda s: s.update({"query": torch.zeros(1)}), "unknown tensor 'query'"),
        ("final_ssl.pt", lambda s: s.update({"encoder.oddity": torch.zeros(1)}), "encoder.oddity"),
    ],
)
def test_broken_release_files_are_named(source, tmp_path, file, edit, message):
    _, folder = source
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    state = torch.load(broken / file, weights_only=True)
    edit(state["model"])
    torch.save(state, broken / file)
    with pytest.raises(ValueError, match=message):
        convert_release(broken, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_refuses_a_non_empty_target_and_missing_files(source, tmp_path, capsys):
    _, folder = source
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    assert main([str(folder), str(tmp_path / "taken")]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"
    partial = tmp_path / "partial"
    shutil.copytree(folder, partial)
    (partial / "final_se.pt").unlink()
    assert main([str(partial), str(tmp_path / "x")]) == 2
    assert "final_se.pt: missing" in capsys.readouterr().err
