"""Representation integration: how each task combines the backbone's layers.

Loaded by ``trust_remote_code``: imports only torch and sibling files.
"""

from __future__ import annotations

import torch
from torch import nn

from .configuration_merit import MeritConfig

__all__ = [
    "INTEGRATIONS",
    "MeritLayerConcat",
    "MeritWeightedLayerSum",
    "WAPTransformerAdapter",
    "build_integration",
]


class MeritWeightedLayerSum(nn.Module):
    """A learnable softmax weighting of all backbone layers per task, then a shared projection.

    Different layers carry different information (paralinguistic cues sit in middle layers,
    acoustic detail for enhancement in lower ones), so each task learns its own mix before a
    shared LayerNorm and projection to the experts' width.
    """

    def __init__(self, config: MeritConfig):
        super().__init__()
        self.groups = list(config.integration_groups)
        self.layer_logits = nn.Parameter(torch.zeros(len(self.groups), config.num_backbone_layers))
        self.layer_norm = nn.LayerNorm(config.backbone_hidden_size)
        self.projection = nn.Linear(config.backbone_hidden_size, config.hidden_size)

    def group_index(self, task: str) -> int:
        return self.groups.index(task) if task in self.groups else 0

    def layer_weights(self, task: str) -> torch.Tensor:
        return self.layer_logits[self.group_index(task)].softmax(-1)

    def forward(self, hidden_states: torch.Tensor, task: str) -> torch.Tensor:
        """``hidden_states``: ``(layers, batch, frames, size)`` -> ``(batch, frames, hidden)``."""
        mixed = torch.einsum("l,lbtd->btd", self.layer_weights(task), hidden_states)
        return self.projection(self.layer_norm(mixed))


class MeritLayerConcat(nn.Module):
    """The authors' integration: each backbone layer LayerNorm-ed on its own, then all layers
    concatenated per frame, the same features for every task.

    Nothing is mixed away before the experts, at the price of a frame ``layers`` times wider
    (25 x 1024 for WavLM-Large) in the gates and the experts' first layer.
    """

    def __init__(self, config: MeritConfig):
        super().__init__()
        self.layer_norms = nn.ModuleList(
            nn.LayerNorm(config.backbone_hidden_size) for _ in range(config.num_backbone_layers)
        )

    def layer_weights(self, task: str) -> None:
        """No learned weighting: every layer enters whole."""
        return None

    def forward(self, hidden_states: torch.Tensor, task: str) -> torch.Tensor:
        """``(layers, batch, frames, size)`` -> ``(batch, frames, layers * size)``."""
        normed = [norm(layer) for norm, layer in zip(self.layer_norms, hidden_states, strict=True)]
        return torch.cat(normed, dim=-1)


INTEGRATIONS: dict[str, type[nn.Module]] = {
    "weighted_sum": MeritWeightedLayerSum,
    "concat": MeritLayerConcat,
}


def build_integration(config: MeritConfig) -> nn.Module:
    return INTEGRATIONS[config.integration](config)


class WAPTransformerAdapter(nn.Module):
    """Light transformer on the weighted-average-pooled (WAP) backbone layers.

    From "An Efficient Transfer Learning Method Based on Adapter with Local Attributes for
    SER": a frozen encoder stays shared, and this small transformer enriches the frame-level
    representation for the downstream task at a fraction of the cost of fine-tuning the
    encoder. Padded frames are excluded from attention.
    """

    def __init__(self, config: MeritConfig):
        super().__init__()
        layer = nn.TransformerEncoderLayer(
            d_model=config.hidden_size,
            nhead=config.adapter_heads,
            dim_feedforward=config.adapter_ffn_size,
            dropout=config.expert_dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.layers = nn.TransformerEncoder(
            layer, num_layers=config.adapter_layers, enable_nested_tensor=False
        )
        self.mask_embedding = nn.Parameter(torch.zeros(config.hidden_size))

    def forward(
        self,
        hidden: torch.Tensor,
        frame_mask: torch.Tensor,
        masked_frames: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``masked_frames`` (bool, B x T) are replaced by the learned mask embedding: the
        student branch of the adapter's mask-prediction pre-training."""
        if masked_frames is not None:
            hidden = torch.where(
                masked_frames[..., None], self.mask_embedding.to(hidden.dtype), hidden
            )
        output = self.layers(hidden, src_key_padding_mask=~frame_mask)
        return output * frame_mask[..., None].to(output.dtype)
