"""Configuration of Sparse MERIT models.

This file is loaded on its own by ``trust_remote_code``: it imports only ``transformers`` and
must stay free of project-level imports.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, PretrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

TASKS = ("ser", "se")
ROUTING_MODES = ("sparse", "dense", "shared")
SUPPORTED_BACKBONES = ("wavlm", "wav2vec2", "hubert", "whisper")
INTEGRATIONS = ("weighted_sum", "concat")
EXPERT_TYPES = ("residual", "plain")
ROUTER_WEIGHTINGS = ("topk_softmax", "probability", "hard")
SER_HEADS = ("attentive_statistics", "release")
SE_HEADS = ("mask_mlp", "blstm")
STFT_WINDOWS = ("hann", "hamming")
DEFAULT_EMOTIONS = ("neutral", "happy", "sad", "angry")
#: Whisper's front end: 10 ms mel frames, and the encoder's second convolution halves them.
WHISPER_MEL_HOP = 160
WHISPER_FRAME_HOP = 2 * WHISPER_MEL_HOP


def backbone_frame_geometry(backbone_config: PretrainedConfig) -> tuple[int, int]:
    """Receptive field and hop (samples) of one backbone output frame.

    Conv encoders (WavLM, wav2vec 2.0, HuBERT): from their kernels and strides (400 / 320 at
    16 kHz). Whisper: a 400-sample mel window, then two 3-tap convolutions over 10 ms mel
    frames, the second with stride 2 (1040 / 320).
    """
    if backbone_config.model_type == "whisper":
        return 400 + 4 * WHISPER_MEL_HOP, WHISPER_FRAME_HOP
    field, stride = 1, 1
    for kernel, step in zip(backbone_config.conv_kernel, backbone_config.conv_stride, strict=True):
        field += (kernel - 1) * stride
        stride *= step
    return field, stride


def minimal_backbone_config(model_type: str = "wavlm", **overrides: Any) -> PretrainedConfig:
    """A very small random backbone for tests and benchmarks of the code paths (milliseconds).

    Not a model to train: ``merit.training``'s ``--backbone tiny`` is the small from-scratch
    backbone meant for training.

    ``feat_extract_norm="layer"`` keeps padded and unpadded forward passes identical (group norm
    normalises over the padded time axis); ``do_stable_layer_norm`` matches WavLM-large style.
    ``"whisper"``: a 2-layer, 64-wide Whisper (encoder and a 1-layer decoder, 80 mel bins).
    """
    if model_type == "whisper":
        whisper: dict[str, Any] = dict(
            d_model=64,
            encoder_layers=2,
            encoder_attention_heads=4,
            encoder_ffn_dim=128,
            decoder_layers=1,
            decoder_attention_heads=4,
            decoder_ffn_dim=128,
            num_mel_bins=80,
            vocab_size=128,
            max_source_positions=1500,
            max_target_positions=32,
            dropout=0.0,
            attention_dropout=0.0,
            activation_dropout=0.0,
            encoder_layerdrop=0.0,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            decoder_start_token_id=1,
        )
        whisper.update(overrides)
        return CONFIG_MAPPING["whisper"](**whisper)
    kwargs: dict[str, Any] = dict(
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=128,
        conv_dim=(32, 32, 32, 32, 32, 32, 32),
        conv_stride=(5, 2, 2, 2, 2, 2, 2),
        conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        feat_proj_dropout=0.0,
        layerdrop=0.0,
        mask_time_prob=0.0,
        apply_spec_augment=False,
    )
    if model_type == "wavlm":
        kwargs.update(num_buckets=32, max_bucket_distance=64)
    kwargs.update(overrides)
    return CONFIG_MAPPING[model_type](**kwargs)


def minimal_merit_config(**overrides: Any) -> MeritConfig:
    """A minimal MERIT config on :func:`minimal_backbone_config`: 4 experts 32 wide, a 256-point
    STFT.

    One definition for tests, benchmarks and demos that need a model in milliseconds.
    """
    kwargs: dict[str, Any] = dict(
        backbone_config=minimal_backbone_config(),
        hidden_size=32,
        num_experts=4,
        expert_hidden_size=64,
        n_fft=256,
        hop_length=80,
        win_length=200,
    )
    kwargs.update(overrides)
    return MeritConfig(**kwargs)


#: The authors' release (``RogerTzeng/Sparse-MERIT``) as option values: LayerNorm-and-concatenate
#: integration, 3 plain experts, top-1 hard (untrained) gates with a bias, their SER and BLSTM SE
#: heads, a 400-point Hamming STFT. The widths follow the backbone (``release_config``).
RELEASE_PRESET: dict[str, Any] = dict(
    integration="concat",
    expert_type="plain",
    routing="sparse",
    num_experts=3,
    router_top_k=1,
    router_weighting="hard",
    router_bias=True,
    router_noise_std=0.0,
    load_balance_coef=0.0,
    router_z_loss_coef=0.0,
    ser_head_type="release",
    se_head_type="blstm",
    se_lstm_size=256,
    n_fft=400,
    hop_length=160,
    win_length=400,
    stft_window="hamming",
)
#: The release's class order (MSP-Podcast's A, S, H, N).
RELEASE_EMOTIONS = ("angry", "sad", "happy", "neutral")


def release_config(
    backbone_config: PretrainedConfig | None = None, **overrides: Any
) -> MeritConfig:
    """A config with the release's architecture on ``backbone_config`` (WavLM-Large by default):
    experts ``layers x width -> 4 x width -> width`` (25,600 -> 4,096 -> 1,024 on WavLM-Large)."""
    backbone_config = backbone_config or CONFIG_MAPPING["wavlm"](
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        conv_bias=True,
        layerdrop=0.0,
    )
    width = backbone_config.hidden_size
    kwargs: dict[str, Any] = dict(
        RELEASE_PRESET,
        backbone_config=backbone_config,
        hidden_size=width,
        expert_hidden_size=4 * width,
        id2label=dict(enumerate(RELEASE_EMOTIONS)),
    )
    kwargs.update(overrides)
    return MeritConfig(**kwargs)


class MeritConfig(PretrainedConfig):
    r"""Configuration of a Sparse MERIT model (Tzeng, Busso & Lee, 2025).

    One SSL speech backbone feeds a shared pool of experts; every task (speech emotion
    recognition ``"ser"``, speech enhancement ``"se"``) integrates the backbone layers with its
    own weights and routes each frame through its own gating network.

    Args:
        backbone_config (`dict` or `PretrainedConfig`, *optional*):
            Config of the speech backbone (WavLM, wav2vec 2.0, HuBERT, or a Whisper model of
            which only the encoder is built). Stored in full so that ``from_pretrained``
            rebuilds the model without downloading anything. Defaults to a WavLM-base-size
            configuration with random weights.
        tasks (`list[str]`, *optional*, defaults to `["ser", "se"]`):
            Tasks with a head. One task alone gives the SER-only or SE-only baselines.
        routing (`str`, *optional*, defaults to `"sparse"`):
            ``"sparse"``: each frame goes to the top-``router_top_k`` experts of its task's gate
            (Sparse MERIT). ``"dense"``: softmax mixture over all experts (dense MERIT).
            ``"shared"``: the naive multi-task baseline, one shared layer integration and one
            shared feed-forward projection, no gates.
        integration (`str`, *optional*, defaults to `"weighted_sum"`):
            How each task combines the backbone layers: ``"weighted_sum"``, a learned softmax
            weight per layer, then a LayerNorm and a projection to ``hidden_size`` (ours: the
            experts see a ``hidden_size``-wide frame whatever the backbone's depth);
            ``"concat"``, the authors' release: a LayerNorm per layer, then all layers
            concatenated (``num_backbone_layers x backbone_hidden_size`` features per frame,
            25,600 for WavLM-Large), shared by the tasks. Needs ``expert_type="plain"``.
        expert_type (`str`, *optional*, defaults to `"residual"`):
            ``"residual"``: experts are GELU MLPs ``hidden -> expert_hidden -> hidden`` whose
            routed mix is added to the frame and LayerNorm-ed (ours: a frame keeps its
            integrated representation when its experts add little). ``"plain"``: the release's
            ``integrated -> expert_hidden -> ReLU -> hidden_size`` MLP, no residual, no norm.
        router_weighting (`str`, *optional*, defaults to `"topk_softmax"`):
            How the chosen experts' outputs are weighted, which decides whether the task loss
            trains the gate. ``"topk_softmax"``: softmax over the ``k`` chosen logits (ours,
            Mixtral-style; with top-1 the weight is always 1, so only the auxiliary losses train
            the gate). ``"probability"``: each chosen expert's full-softmax gate probability
            (Switch-style: with top-1 the task gradient reaches the gate). ``"hard"``: the
            release's one-hot argmax mask, weight 1, no auxiliary losses: the gate gets no
            gradient and keeps its initial weights, a fixed random partition of the features.
        router_bias (`bool`, *optional*, defaults to `False`):
            Gates with a bias term (the release's gates have one).
        ser_head_type (`str`, *optional*, defaults to `"attentive_statistics"`):
            Emotion head: attentive statistics pooling, then an MLP classifier (and the
            dimensional regressor when ``dimension_names`` is set). ``"release"``: the
            authors' parametrisation: attention ``tanh(W x) . a`` with a ``hidden_size``-wide
            ``W``, the standard deviation clamped at 1e-5 inside the root, and a classifier
            Dropout 0.5, Linear, LayerNorm, ReLU, Dropout 0.5, Linear.
        se_head_type (`str`, *optional*, defaults to `"mask_mlp"`):
            Enhancement head: a frame-wise MLP predicting a bounded magnitude mask on the noisy
            STFT, trained on compressed magnitudes. ``"blstm"``: the release's head: noisy
            log1p magnitudes and the SE feature (backbone frames repeated onto STFT frames),
            Linear to ``se_lstm_size``, a 2-layer bidirectional LSTM with the directions
            summed, a sigmoid mask on the log1p magnitude, L1 loss on log1p magnitudes.
        se_lstm_size (`int`, *optional*, defaults to 256):
            Width of the ``"blstm"`` head's LSTM (and its input projection).
        stft_window (`str`, *optional*, defaults to `"hann"`):
            Window of the SE head's STFT (``"hamming"`` for the release).
        input_mean / input_std (`float`, *optional*):
            A stored global waveform mean and standard deviation (the release normalises
            with the training set's). When set they replace per-utterance normalisation.
        hidden_size (`int`, *optional*, defaults to 256):
            Width of the representation the experts produce and the heads read (with
            ``"weighted_sum"`` also what the experts work on).
        num_experts (`int`, *optional*, defaults to 8):
            Size of the shared expert pool.
        router_top_k (`int`, *optional*, defaults to 2):
            Experts per frame in sparse routing.
        expert_hidden_size (`int`, *optional*, defaults to 512):
            Inner width of each feed-forward expert.
        expert_dropout (`float`, *optional*, defaults to 0.1):
            Dropout inside experts and heads.
        router_noise_std (`float`, *optional*, defaults to 1.0):
            Scale of the learned noise added to gate logits in training (noisy top-k gating);
            0 disables it.
        load_balance_coef (`float`, *optional*, defaults to 0.01):
            Weight of the Switch-Transformer load-balancing loss (sparse routing).
        router_z_loss_coef (`float`, *optional*, defaults to 0.001):
            Weight of the router z-loss, which keeps gate logits small and routing stable.
        ser_loss_weight / se_loss_weight (`float`, *optional*, default 1.0):
            Weights of the task losses in the total loss.
        class_weights (`list[float]`, *optional*):
            Per-class weights for the emotion cross-entropy (imbalanced corpora).
        label_smoothing (`float`, *optional*, defaults to 0.0):
            Label smoothing of the emotion cross-entropy (torch's ``label_smoothing``): the
            target puts this much mass evenly on all classes, for corpora whose classes
            overlap. ``train.py`` sets it from ``--label_smoothing_factor``; ``Trainer``'s
            own label smoother would score the logits alone and leave out the other tasks.
        dimension_names (`list[str]`, *optional*):
            Names of dimensional attributes (for example ``["arousal", "valence",
            "dominance"]``). When set, an extra regression head predicts them from the pooled
            SER representation and is trained with a concordance-correlation loss.
        dimension_loss_weight (`float`, *optional*, defaults to 1.0):
            Weight of the CCC loss.
        categorical_head (`bool`, *optional*, defaults to `True`):
            Whether the SER task has the categorical emotion classifier; set `False` for a
            dimensional-only model.
        n_fft / hop_length / win_length (`int`, *optional*, 512 / 160 / 400):
            STFT of the enhancement head (32 ms / 10 ms / 25 ms at 16 kHz).
        mag_compression (`float`, *optional*, defaults to 0.3):
            Exponent applied to magnitudes in the SE loss, which weights quiet bins more like
            hearing does.
        mask_ceiling (`float`, *optional*, defaults to 1.0):
            The SE mask is `min(1, mask_ceiling * sigmoid(z))`. A sigmoid only approaches 1,
            so with the default a clean input is always attenuated a little (a uniform gain g
            caps each frame's SNR at -20 log10(1 - g): 20 dB at g = 0.9); above 1 the mask
            reaches exactly 1 at moderate logits and clean speech can pass untouched.
        se_sisdr_weight (`float`, *optional*, defaults to 0.0):
            Weight of an extra negative SI-SDR loss on the enhanced waveform.
        se_passthrough_weight (`float`, *optional*, defaults to 0.0):
            Weight of a loss on training examples that are already clean (the input equals
            its clean reference): the segmental SNR (dB) the enhancer takes from them, each
            frame capped at 35 dB as in the evaluation. The spectral loss barely asks a mask
            to pass clean speech through (a 0.9 gain costs ~0.001 per bin in compressed
            magnitude, but 15 dB of segmental SNR).
        adapter_layers (`int`, *optional*, defaults to 0):
            Layers of the light WAP-Transformer adapter (Adapter with local attributes) placed
            on each task's weighted-average-pooled backbone representation, before the experts.
            0 disables it. Its self-supervised pre-training (EMA teacher, mask prediction,
            k-means local attributes) lives in ``merit.adapter_training``.
        adapter_heads (`int`, *optional*, defaults to 4):
            Attention heads of the adapter.
        adapter_ffn_size (`int`, *optional*, defaults to 512):
            Feed-forward width of the adapter layers.
        normalize_input (`bool`, *optional*):
            Zero-mean, unit-variance normalise each utterance (valid samples only) before the
            backbone, as WavLM / wav2vec 2.0 / HuBERT were trained. Defaults to `True` for
            those and `False` for Whisper, whose log-mel front end expects audio at its natural
            level. The enhancement head always works on the raw input, so its output keeps the
            input's scale.
        freeze_feature_encoder (`bool`, *optional*, defaults to `True`):
            Freeze the convolutional feature encoder of the backbone (Whisper: its two
            convolutions).
        freeze_backbone (`bool`, *optional*, defaults to `False`):
            Freeze the whole backbone (only MERIT layers and heads train).
        sampling_rate (`int`, *optional*, defaults to 16000):
            Rate the model expects.
    """

    model_type = "merit"
    sub_configs = {"backbone_config": AutoConfig}

    def __init__(
        self,
        backbone_config: dict | PretrainedConfig | None = None,
        tasks: list[str] | tuple[str, ...] = TASKS,
        routing: str = "sparse",
        integration: str = "weighted_sum",
        ser_head_type: str = "attentive_statistics",
        se_head_type: str = "mask_mlp",
        expert_type: str = "residual",
        router_weighting: str = "topk_softmax",
        router_bias: bool = False,
        se_lstm_size: int = 256,
        stft_window: str = "hann",
        input_mean: float | None = None,
        input_std: float | None = None,
        hidden_size: int = 256,
        num_experts: int = 8,
        router_top_k: int = 2,
        expert_hidden_size: int = 512,
        expert_dropout: float = 0.1,
        router_noise_std: float = 1.0,
        load_balance_coef: float = 0.01,
        router_z_loss_coef: float = 0.001,
        ser_loss_weight: float = 1.0,
        se_loss_weight: float = 1.0,
        class_weights: list[float] | None = None,
        label_smoothing: float = 0.0,
        dimension_names: list[str] | None = None,
        dimension_loss_weight: float = 1.0,
        categorical_head: bool = True,
        n_fft: int = 512,
        hop_length: int = 160,
        win_length: int = 400,
        mag_compression: float = 0.3,
        mask_ceiling: float = 1.0,
        se_sisdr_weight: float = 0.0,
        se_passthrough_weight: float = 0.0,
        adapter_layers: int = 0,
        adapter_heads: int = 4,
        adapter_ffn_size: int = 512,
        normalize_input: bool | None = None,
        freeze_feature_encoder: bool = True,
        freeze_backbone: bool = False,
        sampling_rate: int = 16000,
        **kwargs: Any,
    ) -> None:
        if backbone_config is None:
            backbone_config = CONFIG_MAPPING["wavlm"]()
        elif isinstance(backbone_config, dict):
            backbone_config = dict(backbone_config)
            model_type = backbone_config.pop("model_type", None)
            if model_type is None:
                raise ValueError(
                    f"backbone_config needs a 'model_type' ({', '.join(SUPPORTED_BACKBONES)})."
                )
            backbone_config = CONFIG_MAPPING[model_type](**backbone_config)
        if backbone_config.model_type not in SUPPORTED_BACKBONES:
            raise ValueError(
                f"Unsupported backbone '{backbone_config.model_type}'; "
                f"supported: {', '.join(SUPPORTED_BACKBONES)}."
            )
        tasks = list(tasks)
        unknown = [t for t in tasks if t not in TASKS]
        if not tasks or unknown:
            raise ValueError(f"tasks must be a non-empty subset of {TASKS}, got {tasks}.")
        for name, value, choices in (
            ("routing", routing, ROUTING_MODES),
            ("integration", integration, INTEGRATIONS),
            ("ser_head_type", ser_head_type, SER_HEADS),
            ("se_head_type", se_head_type, SE_HEADS),
            ("expert_type", expert_type, EXPERT_TYPES),
            ("router_weighting", router_weighting, ROUTER_WEIGHTINGS),
            ("stft_window", stft_window, STFT_WINDOWS),
        ):
            if value not in choices:
                raise ValueError(f"{name} must be one of {choices}, got '{value}'.")
        if integration == "concat" and expert_type != "plain":
            raise ValueError(
                "integration='concat' needs expert_type='plain': residual experts add their "
                "output to a hidden_size-wide frame, the concatenation is far wider."
            )
        if (input_mean is None) != (input_std is None) or (
            input_std is not None and input_std <= 0
        ):
            raise ValueError("input_mean and input_std go together, with input_std > 0.")
        if normalize_input is None:
            normalize_input = backbone_config.model_type != "whisper"
        if not 1 <= router_top_k <= num_experts:
            raise ValueError(
                f"router_top_k must be in [1, num_experts={num_experts}], got {router_top_k}."
            )
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}.")
        if hop_length > win_length or win_length > n_fft:
            raise ValueError("Need hop_length <= win_length <= n_fft for the SE STFT.")
        if adapter_layers and hidden_size % adapter_heads:
            raise ValueError(f"hidden_size {hidden_size} must be divisible by adapter_heads.")
        if "id2label" not in kwargs and "num_labels" not in kwargs:
            kwargs["id2label"] = dict(enumerate(DEFAULT_EMOTIONS))
        if "id2label" in kwargs and "label2id" not in kwargs and kwargs["id2label"] is not None:
            kwargs["label2id"] = {v: int(k) for k, v in kwargs["id2label"].items()}

        self.backbone_config = backbone_config
        self.expert_type = expert_type
        self.router_weighting = router_weighting
        self.router_bias = router_bias
        self.se_lstm_size = se_lstm_size
        self.stft_window = stft_window
        self.input_mean = input_mean
        self.input_std = input_std
        self.tasks = tasks
        self.routing = routing
        self.integration = integration
        self.ser_head_type = ser_head_type
        self.se_head_type = se_head_type
        self.hidden_size = hidden_size
        self.num_experts = num_experts
        self.router_top_k = router_top_k
        self.expert_hidden_size = expert_hidden_size
        self.expert_dropout = expert_dropout
        self.router_noise_std = router_noise_std
        self.load_balance_coef = load_balance_coef
        self.router_z_loss_coef = router_z_loss_coef
        self.ser_loss_weight = ser_loss_weight
        self.se_loss_weight = se_loss_weight
        self.class_weights = list(class_weights) if class_weights is not None else None
        self.label_smoothing = label_smoothing
        self.dimension_names = list(dimension_names) if dimension_names else None
        self.dimension_loss_weight = dimension_loss_weight
        self.categorical_head = categorical_head
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.win_length = win_length
        self.mag_compression = mag_compression
        if not mask_ceiling >= 1.0:
            raise ValueError(f"mask_ceiling must be >= 1, got {mask_ceiling}")
        self.mask_ceiling = mask_ceiling
        self.se_sisdr_weight = se_sisdr_weight
        if se_passthrough_weight < 0:
            raise ValueError(f"se_passthrough_weight must be >= 0, got {se_passthrough_weight}")
        self.se_passthrough_weight = se_passthrough_weight
        self.adapter_layers = adapter_layers
        self.adapter_heads = adapter_heads
        self.adapter_ffn_size = adapter_ffn_size
        self.normalize_input = normalize_input
        self.freeze_feature_encoder = freeze_feature_encoder
        self.freeze_backbone = freeze_backbone
        self.sampling_rate = sampling_rate
        super().__init__(**kwargs)
        if self.class_weights is not None and len(self.class_weights) != self.num_labels:
            raise ValueError(
                f"class_weights has {len(self.class_weights)} entries for {self.num_labels} labels."
            )

    # -- the public vocabulary other code uses instead of re-deriving it ----------------------

    @property
    def num_backbone_layers(self) -> int:
        """Hidden states the backbone returns: the embeddings plus every transformer layer."""
        return self.backbone_config.num_hidden_layers + 1

    @property
    def backbone_hidden_size(self) -> int:
        return self.backbone_config.hidden_size

    @property
    def integrated_size(self) -> int:
        """Width of one frame after layer integration: what the gates and experts read."""
        if self.integration == "concat":
            return self.num_backbone_layers * self.backbone_hidden_size
        return self.hidden_size

    @property
    def routed_tasks(self) -> list[str]:
        """Tasks with their own gate (none for the ungated ``"shared"`` baseline)."""
        return [] if self.routing == "shared" else list(self.tasks)

    @property
    def integration_groups(self) -> list[str]:
        """Names of the layer-integration weightings: one per routed task, else one shared."""
        return self.routed_tasks or ["shared"]

    @property
    def has_emotion_head(self) -> bool:
        """Categorical emotion classifier present (``logits`` in the output)."""
        return "ser" in self.tasks and bool(self.categorical_head)

    @property
    def has_dimension_head(self) -> bool:
        """Dimensional regressor present (``dimensions`` in the output)."""
        return "ser" in self.tasks and bool(self.dimension_names)

    @property
    def has_enhancement_head(self) -> bool:
        """Enhancement head present (``enhanced_waveform`` in the output)."""
        return "se" in self.tasks

    @property
    def heads(self) -> list[str]:
        """The model's outputs by name, in their fixed order: ``logits``, ``dimensions``,
        ``enhanced_waveform`` (what inference, evaluation, export and the demo show)."""
        present = (
            ("logits", self.has_emotion_head),
            ("dimensions", self.has_dimension_head),
            ("enhanced_waveform", self.has_enhancement_head),
        )
        return [name for name, there in present if there]

    @property
    def label_names(self) -> list[str]:
        """Emotion classes in id order (empty without a categorical head)."""
        if not self.has_emotion_head:
            return []
        return [self.id2label[i] for i in range(self.num_labels)]

    @property
    def predicted_dimensions(self) -> list[str]:
        """Names of the dimensional outputs, in column order (empty without that head)."""
        return list(self.dimension_names) if self.has_dimension_head else []

    @property
    def receptive_field(self) -> int:
        """Samples one backbone frame sees."""
        return backbone_frame_geometry(self.backbone_config)[0]

    @property
    def min_input_samples(self) -> int:
        """The shortest input the model accepts: one frame's receptive field for conv encoders,
        one 25 ms mel window for Whisper (its convolutions zero-pad)."""
        if self.backbone_config.model_type == "whisper":
            return 400
        return self.receptive_field

    @property
    def frame_hop(self) -> int:
        """Samples between backbone frames (320 = 20 ms at 16 kHz for every supported family)."""
        return backbone_frame_geometry(self.backbone_config)[1]


__all__ = [
    "RELEASE_EMOTIONS",
    "RELEASE_PRESET",
    "release_config",
    "EXPERT_TYPES",
    "ROUTER_WEIGHTINGS",
    "MeritConfig",
    "backbone_frame_geometry",
    "minimal_backbone_config",
    "minimal_merit_config",
]
