"""Convert the authors' released Sparse MERIT weights into a MERIT model folder.

The release (Hub model repo ``RogerTzeng/Sparse-MERIT``; code MIT-licensed, GitHub repo of the
same name) stores the trained parts as separate PyTorch files, each ``{"model": state_dict}``:
``final_ssl.pt`` (the fine-tuned WavLM in the original unilm/fairseq naming), ``final_mmoe.pt``
(layer norms, experts, gates), ``final_pool.pt`` and ``final_ser.pt`` (the emotion head),
``final_se.pt`` (the BLSTM enhancement head) and ``train_norm_stat.pkl`` (the training set's
waveform mean and std). This module maps them onto :func:`modeling_merit.release_config`'s
model, so the authors' weights run through ``AutoModel``, the pipeline, the CLI and the demo.

Nothing of the release is executed: the ``.pt`` files are read with ``weights_only=True`` and
the pickle with an unpickler that accepts numbers and numpy arrays only. A missing or
misshapen tensor is an error naming it.

    python -m merit.convert_release SOURCE OUT_DIR    # SOURCE: a folder, or the Hub repo id
"""

from __future__ import annotations

import argparse
import io
import pickle
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "RELEASE_FILES",
    "RELEASE_REPO",
    "convert_release",
    "load_norm_stats",
    "release_state_dict",
    "unilm_to_transformers",
]

RELEASE_REPO = "RogerTzeng/Sparse-MERIT"
#: The release's files this converter reads (``WavLM-Large.pt``, the untuned original, is not).
RELEASE_FILES = (
    "final_ssl.pt",
    "final_mmoe.pt",
    "final_pool.pt",
    "final_ser.pt",
    "final_se.pt",
    "train_norm_stat.pkl",
)

# unilm/fairseq WavLM names -> transformers ``WavLMModel`` names ({i}: layer index).
_UNILM_LAYER = {
    "self_attn.q_proj": "attention.q_proj",
    "self_attn.k_proj": "attention.k_proj",
    "self_attn.v_proj": "attention.v_proj",
    "self_attn.out_proj": "attention.out_proj",
    "self_attn.grep_linear": "attention.gru_rel_pos_linear",
    "self_attn.relative_attention_bias": "attention.rel_attn_embed",
    "self_attn_layer_norm": "layer_norm",
    "fc1": "feed_forward.intermediate_dense",
    "fc2": "feed_forward.output_dense",
    "final_layer_norm": "final_layer_norm",
}
_UNILM_TOP = {
    "layer_norm": "feature_projection.layer_norm",
    "post_extract_proj": "feature_projection.projection",
    "encoder.layer_norm": "encoder.layer_norm",
    "encoder.pos_conv.0.bias": "encoder.pos_conv_embed.conv.bias",
    "encoder.pos_conv.0.weight_g": "encoder.pos_conv_embed.conv.parametrizations.weight.original0",
    "encoder.pos_conv.0.weight_v": "encoder.pos_conv_embed.conv.parametrizations.weight.original1",
    "mask_emb": "masked_spec_embed",
}
#: Pre-training leftovers of the unilm checkpoint with no place in an encoder.
_UNILM_UNUSED = ("label_embs_concat", "final_proj.")


def unilm_to_transformers(name: str) -> str | None:
    """The ``WavLMModel`` name of a unilm/fairseq WavLM tensor (``None``: not part of it)."""
    if name.startswith(_UNILM_UNUSED):
        return None
    match = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", name)
    if match and match.group(2) in _UNILM_LAYER:
        layer, part, kind = match.groups()
        return f"encoder.layers.{layer}.{_UNILM_LAYER[part]}.{kind}"
    match = re.fullmatch(r"encoder\.layers\.(\d+)\.self_attn\.grep_a", name)
    if match:
        return f"encoder.layers.{match.group(1)}.attention.gru_rel_pos_const"
    match = re.fullmatch(r"feature_extractor\.conv_layers\.(\d+)\.(.+)", name)
    if match:
        layer, rest = match.groups()
        parts = {"0.weight": "conv.weight", "0.bias": "conv.bias"}
        # layer-norm extractor: Sequential(TransposeLast, LayerNorm, TransposeLast) at 2;
        # group-norm extractor: GroupNorm at 2 (first layer only).
        parts.update({"2.1.weight": "layer_norm.weight", "2.1.bias": "layer_norm.bias"})
        parts.update({"2.weight": "layer_norm.weight", "2.bias": "layer_norm.bias"})
        if rest in parts:
            return f"feature_extractor.conv_layers.{layer}.{parts[rest]}"
    for prefix, target in _UNILM_TOP.items():
        if name == prefix:
            return target
        if name.startswith(prefix + ".") and "." not in name[len(prefix) + 1 :]:
            return f"{target}.{name[len(prefix) + 1 :]}"
    raise ValueError(f"final_ssl.pt: unknown WavLM tensor {name!r}")


class _NumbersOnly(pickle.Unpickler):
    """Unpickles numbers, containers and numpy arrays / scalars, and nothing that could run."""

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refused to load {module}.{name}: the statistics file may hold only numbers"
        )


def _as_float(value: Any, what: str) -> float:
    array = np.asarray(value, dtype=np.float64)
    if array.size != 1 or not np.isfinite(array).all():
        raise ValueError(f"train_norm_stat.pkl: {what} must be one finite number, got {value!r}")
    return float(array.reshape(()))


def load_norm_stats(data: bytes) -> tuple[float, float]:
    """The waveform ``(mean, std)`` of ``train_norm_stat.pkl``: a pair or a mean/std mapping."""
    try:
        stats = _NumbersOnly(io.BytesIO(data)).load()
    except (pickle.UnpicklingError, EOFError, ValueError) as err:
        raise ValueError(f"train_norm_stat.pkl: {err}") from err
    if isinstance(stats, Mapping):
        keys = {str(k).lower(): v for k, v in stats.items()}
        mean = next((v for k, v in keys.items() if "mean" in k), None)
        std = next((v for k, v in keys.items() if "std" in k), None)
    elif isinstance(stats, (tuple, list)) and len(stats) == 2:
        mean, std = stats
    else:
        raise ValueError(
            f"train_norm_stat.pkl: expected (mean, std) or a mean/std mapping, got {type(stats)}"
        )
    if mean is None or std is None:
        raise ValueError("train_norm_stat.pkl: no mean and std in it")
    mean, std = _as_float(mean, "the mean"), _as_float(std, "the std")
    if std <= 0:
        raise ValueError(f"train_norm_stat.pkl: the std must be positive, got {std}")
    return mean, std


def _read_part(folder: Path, name: str) -> dict[str, torch.Tensor]:
    path = folder / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (the release has {', '.join(RELEASE_FILES)})")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - pickled code, truncation: one message
        raise ValueError(f"{path}: not a plain tensor checkpoint ({err})") from err
    state = payload.get("model", payload) if isinstance(payload, Mapping) else None
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: expected {{'model': state_dict}}")
    return dict(state)


def _need(parts: Mapping[str, Mapping[str, torch.Tensor]], file: str, name: str) -> torch.Tensor:
    """Tensor ``name`` of the release's ``file``, or an error naming both."""
    if name not in parts[file]:
        raise ValueError(f"{file}: missing {name!r}")
    return parts[file][name]


def _backbone_config(parts: Mapping[str, Mapping[str, torch.Tensor]]) -> Any:
    """The WavLM config the fine-tuned encoder's tensors imply (WavLM-Large for the release)."""
    from transformers import WavLMConfig

    ssl = parts["final_ssl.pt"]

    def need(name: str) -> torch.Tensor:
        return _need(parts, "final_ssl.pt", name)

    layers = 1 + max(
        int(m.group(1)) for k in ssl if (m := re.match(r"encoder\.layers\.(\d+)\.", k))
    )
    convs = sorted(
        int(m.group(1))
        for k in ssl
        if (m := re.fullmatch(r"feature_extractor\.conv_layers\.(\d+)\.0\.weight", k))
    )
    conv_dim = tuple(
        int(need(f"feature_extractor.conv_layers.{i}.0.weight").shape[0]) for i in convs
    )
    conv_kernel = tuple(
        int(need(f"feature_extractor.conv_layers.{i}.0.weight").shape[-1]) for i in convs
    )
    hidden = int(need("post_extract_proj.weight").shape[0])
    buckets, heads = need("encoder.layers.0.self_attn.relative_attention_bias.weight").shape
    pos = need("encoder.pos_conv.0.weight_v")
    layer_norm_extractor = "feature_extractor.conv_layers.0.2.1.weight" in ssl
    return WavLMConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=int(heads),
        intermediate_size=int(need("encoder.layers.0.fc1.weight").shape[0]),
        conv_dim=conv_dim,
        conv_kernel=conv_kernel,
        conv_stride=(5,) + (2,) * (len(conv_dim) - 1),
        conv_bias="feature_extractor.conv_layers.0.0.bias" in ssl,
        feat_extract_norm="layer" if layer_norm_extractor else "group",
        do_stable_layer_norm=layer_norm_extractor,
        num_conv_pos_embeddings=int(pos.shape[-1]),
        num_conv_pos_embedding_groups=hidden // int(pos.shape[1]),
        num_buckets=int(buckets),
        layerdrop=0.0,
        mask_time_prob=0.0,
        apply_spec_augment=False,
    )


def release_state_dict(parts: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """MERIT state-dict names for the release's tensors (``parts``: file name -> state dict)."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in parts["final_ssl.pt"].items():
        target = unilm_to_transformers(name)
        if target is not None:
            out[f"backbone.{target}"] = tensor
    for name, tensor in parts["final_mmoe.pt"].items():
        if match := re.fullmatch(r"layer_norms\.(\d+)\.(weight|bias)", name):
            out[f"integration.layer_norms.{match.group(1)}.{match.group(2)}"] = tensor
        elif match := re.fullmatch(r"experts\.(\d+)\.fc([12])\.(weight|bias)", name):
            expert, layer, kind = match.groups()
            out[f"mixture.experts.{expert}.{'fc_in' if layer == '1' else 'fc_out'}.{kind}"] = tensor
        elif match := re.fullmatch(r"gates\.([01])\.fc\.(weight|bias)", name):
            task = "se" if match.group(1) == "0" else "ser"  # gate 0 is SE, gate 1 SER
            out[f"mixture.gates.{task}.router.{match.group(2)}"] = tensor
        else:
            raise ValueError(f"final_mmoe.pt: unknown tensor {name!r}")
    pool = {"sap_linear.weight", "sap_linear.bias", "attention"}
    for name, tensor in parts["final_pool.pt"].items():
        if name not in pool:
            raise ValueError(f"final_pool.pt: unknown tensor {name!r}")
        out[f"ser_head.pooling.{name}"] = tensor
    classifier = {"fc.0.0": "classifier.1", "fc.0.1": "classifier.2", "out.0": "classifier.5"}
    for name, tensor in parts["final_ser.pt"].items():
        module, _, kind = name.rpartition(".")
        if module not in classifier:
            raise ValueError(f"final_ser.pt: unknown tensor {name!r}")
        out[f"ser_head.{classifier[module]}.{kind}"] = tensor
    for name, tensor in parts["final_se.pt"].items():
        if name == "weights" or name.startswith("layer_norm."):
            continue  # stored by the release, never used by its forward pass
        if match := re.fullmatch(r"lstm_enc\.0\.(weight|bias)", name):
            out[f"se_head.encoder_in.{match.group(1)}"] = tensor
        elif match := re.fullmatch(r"lstm_enc\.1\.blstm\.(\w+)", name):
            out[f"se_head.blstm.{match.group(1)}"] = tensor
        elif match := re.fullmatch(r"lstm_enc\.2\.(weight|bias)", name):
            out[f"se_head.mask_out.{match.group(1)}"] = tensor
        else:
            raise ValueError(f"final_se.pt: unknown tensor {name!r}")
    return out


def _model_config(parts: Mapping[str, Mapping[str, torch.Tensor]], mean: float, std: float):
    from modeling_merit import release_config

    mmoe = parts["final_mmoe.pt"]
    experts = 1 + max(int(m.group(1)) for k in mmoe if (m := re.match(r"experts\.(\d+)\.", k)))
    _need(parts, "final_ser.pt", "out.0.weight")
    mask_out = _need(parts, "final_se.pt", "lstm_enc.2.weight")
    bins = int(mask_out.shape[0])
    return release_config(
        _backbone_config(parts),
        num_experts=experts,
        expert_hidden_size=int(_need(parts, "final_mmoe.pt", "experts.0.fc1.weight").shape[0]),
        se_lstm_size=int(mask_out.shape[1]),
        n_fft=2 * (bins - 1),
        win_length=2 * (bins - 1),
        input_mean=mean,
        input_std=std,
    )


def convert_release(source: str | Path, out_dir: str | Path) -> Path:
    """Convert a folder of the release's files, or the Hub repo id, into a model folder."""
    from modeling_merit import MeritFeatureExtractor, MeritModel

    folder = Path(source).expanduser()
    if not folder.is_dir():
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(str(source), allow_patterns=list(RELEASE_FILES)))
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose a new folder.")
    parts = {name: _read_part(folder, name) for name in RELEASE_FILES if name.endswith(".pt")}
    stats = folder / "train_norm_stat.pkl"
    if not stats.is_file():
        raise FileNotFoundError(f"{stats}: missing")
    mean, std = load_norm_stats(stats.read_bytes())
    config = _model_config(parts, mean, std)
    model = MeritModel(config)
    expected = model.state_dict()
    converted = release_state_dict(parts)
    for name, tensor in converted.items():
        if name not in expected:
            raise ValueError(f"converted tensor {name!r} has no place in the model")
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise ValueError(
                f"{name}: shape {tuple(tensor.shape)} in the release, "
                f"{tuple(expected[name].shape)} expected"
            )
    missing = sorted(set(expected) - set(converted))
    if missing:
        raise ValueError(f"the release's files lack {len(missing)} tensor(s), e.g. {missing[:5]}")
    model.load_state_dict(converted, strict=True)
    model.save_pretrained(out)
    MeritFeatureExtractor(sampling_rate=config.sampling_rate).save_pretrained(out)
    (out / "README.md").write_text(_card(str(source)), encoding="utf-8")
    return out


def _card(source: str) -> str:
    return f"""---
library_name: transformers
pipeline_tag: audio-classification
license: mit
tags: [speech-emotion-recognition, speech-enhancement, mixture-of-experts, merit]
---

# Sparse MERIT: the authors' released weights

Converted from `{source}` (the authors' release, Hub repo `{RELEASE_REPO}`; their code is
MIT-licensed) by `python -m merit.convert_release`. Architecture and weights are the authors':
WavLM-Large fine-tuned, a LayerNorm per layer and all 25 layers concatenated, 3 experts with
top-1 gates (a hard argmax mask, as released), attentive statistics pooling with their
classifier (classes angry, sad, happy, neutral), and their BLSTM enhancement head; the
waveform is normalised with their training set's mean and std.

Paper: Tzeng, Busso & Lee, "Sparse MERIT", IEEE/ACM TASLP (2026), arXiv:2509.08470.
Trained on MSP-Podcast; check its licence before use beyond research.

```python
from transformers import AutoModel, pipeline

model = AutoModel.from_pretrained("<this folder>", trust_remote_code=True)
classifier = pipeline("audio-classification", model="<this folder>", trust_remote_code=True)
```
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m merit.convert_release", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("source", help=f"folder with the release's files, or {RELEASE_REPO}")
    parser.add_argument("out_dir", help="new folder for the converted MERIT model")
    args = parser.parse_args(argv)
    try:
        out = convert_release(args.source, args.out_dir)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"convert_release: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
