"""Sparse MERIT model files: config, model parts and feature extractor.

The ``*_merit.py`` files are also what ``save_pretrained`` copies next to the weights (the model
file and the files it imports relatively), so a Hub copy loads with ``trust_remote_code=True``
and nothing else installed.
"""

from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoModel,
    AutoModelForAudioClassification,
)

from .configuration_merit import (
    MeritConfig,
    minimal_backbone_config,
    minimal_merit_config,
    release_config,
)
from .feature_extraction_merit import MeritFeatureExtractor
from .modeling_merit import MeritModel, MeritOutput


def register_auto_classes() -> None:
    """Let the Auto* classes resolve ``model_type="merit"`` without ``trust_remote_code``.

    Needed when this package is installed and a folder is loaded locally; the Hub copy uses the
    ``auto_map`` in its config instead.
    """
    AutoConfig.register("merit", MeritConfig, exist_ok=True)
    AutoModel.register(MeritConfig, MeritModel, exist_ok=True)
    AutoModelForAudioClassification.register(MeritConfig, MeritModel, exist_ok=True)
    AutoFeatureExtractor.register(MeritConfig, MeritFeatureExtractor, exist_ok=True)


register_auto_classes()

__all__ = [
    "MeritConfig",
    "MeritFeatureExtractor",
    "MeritModel",
    "MeritOutput",
    "minimal_backbone_config",
    "minimal_merit_config",
    "register_auto_classes",
    "release_config",
]
