"""The shared pool of experts with one gate per task, and the ungated multi-task baseline.

Each block takes every task's integrated frames and returns, per task, a
:class:`MixtureOutput` with the task representation, the experts and weights every frame
used, the router probabilities and the block's own auxiliary loss, as transformers'
``MixtralSparseMoeBlock`` and ST-MoE's layer return theirs. How gate logits become expert
choices (top-k or a dense softmax) is a small routing object picked once from
:data:`ROUTINGS`.

Loaded by ``trust_remote_code``: imports only torch, transformers and sibling files.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from .configuration_merit import MeritConfig

__all__ = [
    "ROUTINGS",
    "PlainExpert",
    "build_expert",
    "FeedForward",
    "MeritGate",
    "MeritMixtureOfExperts",
    "MeritSharedFeedForward",
    "MixtureOutput",
    "SoftRouting",
    "TopKRouting",
    "build_mixture",
    "load_balancing_loss",
    "router_z_loss",
]


def load_balancing_loss(
    router_probs: torch.Tensor, expert_indices: torch.Tensor, num_experts: int
) -> torch.Tensor:
    """Switch-Transformer load-balancing loss ``E * sum_e f_e * P_e``.

    ``f_e`` is the fraction of (frame, slot) assignments that went to expert ``e`` and ``P_e`` the
    mean gate probability of ``e``; it is 1 for a perfectly uniform router and grows when a few
    experts take most frames, which is what starves the rest of gradient.

    Args:
        router_probs: ``(frames, num_experts)`` softmax over all experts, valid frames only.
        expert_indices: ``(frames, k)`` experts chosen per frame.
    """
    if router_probs.numel() == 0:
        return router_probs.sum() * 0.0
    counts = F.one_hot(expert_indices.reshape(-1), num_experts).to(router_probs.dtype).mean(0)
    return num_experts * torch.sum(counts * router_probs.mean(0))


def router_z_loss(router_logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE router z-loss: mean squared log-partition of the gate logits (keeps them small)."""
    if router_logits.numel() == 0:
        return router_logits.sum() * 0.0
    return torch.logsumexp(router_logits, dim=-1).pow(2).mean()


@dataclass
class MixtureOutput(ModelOutput):
    """What a mixture block returns for one task.

    Args:
        hidden: ``(batch, frames, hidden)`` task representation, zero on padded frames.
        expert_indices: ``(batch, frames, k)`` experts each frame used (``-1`` on padding);
            ``None`` for the ungated baseline.
        expert_weights: ``(batch, frames, k)`` their weights (``0`` on padding).
        router_probs: ``(batch, frames, num_experts)`` gate softmax (``0`` on padding).
        aux_loss: the block's weighted auxiliary routing losses (scalar), ``None`` if none.
    """

    hidden: torch.Tensor | None = None
    expert_indices: torch.Tensor | None = None
    expert_weights: torch.Tensor | None = None
    router_probs: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None


class FeedForward(nn.Module):
    """Two-layer GELU feed-forward network: one expert, or the baseline's shared layer."""

    def __init__(self, hidden_size: int, inner_size: int, dropout: float):
        super().__init__()
        self.fc_in = nn.Linear(hidden_size, inner_size)
        self.fc_out = nn.Linear(inner_size, hidden_size)
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.fc_out(self.dropout(F.gelu(self.fc_in(hidden))))


class PlainExpert(nn.Module):
    """The authors' expert: ``in -> inner -> ReLU -> out``, no residual, no norm (``in`` is the
    concatenated layers, ``out`` the heads' width)."""

    def __init__(self, input_size: int, inner_size: int, output_size: int):
        super().__init__()
        self.fc_in = nn.Linear(input_size, inner_size)
        self.fc_out = nn.Linear(inner_size, output_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.fc_out(F.relu(self.fc_in(hidden)))


def build_expert(config: MeritConfig, inner_size: int) -> nn.Module:
    """One expert (or the naive-MTL shared layer, ``inner_size`` wide) of ``config.expert_type``."""
    if config.expert_type == "plain":
        return PlainExpert(config.integrated_size, inner_size, config.hidden_size)
    return FeedForward(config.hidden_size, inner_size, config.expert_dropout)


class MeritGate(nn.Module):
    """Task-specific gating network with noisy top-k gating (Shazeer et al., 2017).

    The learned, input-dependent noise in training lets frames explore other experts, which
    together with the load-balancing loss keeps the pool from collapsing onto a few experts.
    """

    def __init__(self, hidden_size: int, num_experts: int, noise_std: float, bias: bool = False):
        super().__init__()
        self.router = nn.Linear(hidden_size, num_experts, bias=bias)
        self.noise = nn.Linear(hidden_size, num_experts, bias=False) if noise_std > 0 else None
        self.noise_std = noise_std

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.router(hidden)
        if self.training and self.noise is not None:
            noise_scale = F.softplus(self.noise(hidden)) * self.noise_std
            logits = logits + torch.randn_like(logits) * noise_scale
        return logits


#: ``(chosen logits, chosen indices, full softmax) -> weights`` of the chosen experts.
ROUTER_WEIGHTINGS = {
    "topk_softmax": lambda top, indices, probs: top.float().softmax(-1),
    "probability": lambda top, indices, probs: torch.gather(probs, -1, indices),
    "hard": lambda top, indices, probs: torch.ones_like(top),
}


class TopKRouting:
    """Sparse MERIT: each frame goes to its ``k`` highest-scoring experts; the Switch
    load-balancing loss keeps the pool in use.

    The chosen experts are weighted per ``config.router_weighting``: a softmax over the ``k``
    chosen logits (``"topk_softmax"``), their full-softmax probabilities (``"probability"``),
    or 1 (``"hard"``, the release's one-hot mask, with no auxiliary losses: ``auxiliary`` is
    false and the gate learns nothing).
    """

    def __init__(self, config: MeritConfig):
        self.k = config.router_top_k
        self.num_experts = config.num_experts
        self.balance_coef = config.load_balance_coef
        self.weigh = ROUTER_WEIGHTINGS[config.router_weighting]
        self.auxiliary = config.router_weighting != "hard"

    def __call__(
        self, logits: torch.Tensor, probs: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        top_logits, indices = logits.topk(self.k, dim=-1)
        weights = self.weigh(top_logits, indices, probs).to(logits.dtype)
        if not self.auxiliary:
            return indices, weights, probs.sum() * 0.0
        balance = self.balance_coef * load_balancing_loss(probs, indices, self.num_experts)
        return indices, weights, balance


class SoftRouting:
    """Dense MERIT: every expert on every frame, weighted by the gate softmax (no balancing
    term: no expert can starve)."""

    def __init__(self, config: MeritConfig):
        self.num_experts = config.num_experts
        self.auxiliary = True

    def __call__(
        self, logits: torch.Tensor, probs: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        indices = torch.arange(self.num_experts, device=logits.device).expand(logits.shape[0], -1)
        return indices, probs.to(logits.dtype), probs.sum() * 0.0


ROUTINGS: dict[str, type] = {"sparse": TopKRouting, "dense": SoftRouting}


class MeritMixtureOfExperts(nn.Module):
    """The shared expert pool, a gate per task, and the residual + LayerNorm after them.

    Only valid frames are routed, so padding cannot skew the load statistics. With
    ``dispatch`` (the default) each frame is computed only by the experts chosen for it
    (frames grouped per expert, computed, scattered back weighted): cost grows with ``k``, not
    the pool size, and unchosen experts get no gradient from that frame. ``dispatch=False``
    computes every expert on every frame and gathers the chosen ones: the same numbers with
    static shapes, which graph exporters (ONNX) need.
    """

    def __init__(self, config: MeritConfig):
        super().__init__()
        self.experts = nn.ModuleList(
            build_expert(config, config.expert_hidden_size) for _ in range(config.num_experts)
        )
        self.gates = nn.ModuleDict(
            {
                task: MeritGate(
                    config.integrated_size,
                    config.num_experts,
                    config.router_noise_std,
                    bias=config.router_bias,
                )
                for task in config.routed_tasks
            }
        )
        # Residual experts: the routed mix is added to the frame, then normalised.
        self.norm = nn.LayerNorm(config.hidden_size) if config.expert_type == "residual" else None
        self.output_size = config.hidden_size
        self.routing = ROUTINGS[config.routing](config)
        self.z_loss_coef = config.router_z_loss_coef
        self.dispatch = True

    def combine(
        self, tokens: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        """``tokens (N, d)``, ``indices``/``weights`` ``(N, k)`` -> weighted expert sum."""
        if not self.dispatch:
            every = torch.stack([expert(tokens) for expert in self.experts], dim=1)  # N, E, d
            chosen = torch.gather(every, 1, indices[..., None].expand(-1, -1, every.shape[-1]))
            return (chosen * weights[..., None]).sum(1)
        # Slot j of frame n is row n * k + j: each expert fills the rows routed to it, then
        # the k rows of a frame are summed. Plain row writes, no scatter-add (which is slow
        # on CPU and needs atomics on GPU).
        num_slots = indices.shape[1]
        flat_experts = indices.reshape(-1)
        flat_weights = weights.reshape(-1, 1)
        order = torch.argsort(flat_experts, stable=True)
        counts = torch.bincount(flat_experts, minlength=len(self.experts)).tolist()
        slot_outputs = tokens.new_zeros(flat_experts.shape[0], self.output_size)
        start = 0
        for expert, count in zip(self.experts, counts, strict=True):
            if count:
                slots = order[start : start + count]
                frames = torch.div(slots, num_slots, rounding_mode="floor")
                slot_outputs[slots] = (expert(tokens[frames]) * flat_weights[slots]).to(
                    slot_outputs.dtype
                )
            start += count
        return slot_outputs.view(tokens.shape[0], num_slots, -1).sum(1)

    def forward(
        self, hidden_by_task: Mapping[str, torch.Tensor], frame_mask: torch.Tensor
    ) -> dict[str, MixtureOutput]:
        """Each task's frames through its own gate, then all of them through the shared pool
        at once: an expert computes the frames every task sent it in one matrix product,
        where one pass per task would run each expert once per task on half the rows."""
        tokens = {task: hidden[frame_mask] for task, hidden in hidden_by_task.items()}  # N, d
        routed = {}
        for task, task_tokens in tokens.items():
            logits = self.gates[task](task_tokens)
            probs = logits.float().softmax(-1)
            indices, weights, aux_loss = self.routing(logits, probs)
            if self.routing.auxiliary:
                aux_loss = aux_loss + self.z_loss_coef * router_z_loss(logits.float())
            routed[task] = (indices, weights, probs, aux_loss)
        mixed = self.combine(
            torch.cat(list(tokens.values())),
            torch.cat([r[0] for r in routed.values()]),
            torch.cat([r[1] for r in routed.values()]),
        ).split([t.shape[0] for t in tokens.values()])
        return {
            task: self._scatter(tokens[task], task_mixed, *routed[task], frame_mask)
            for task, task_mixed in zip(tokens, mixed, strict=True)
        }

    def _scatter(
        self,
        tokens: torch.Tensor,
        mixed: torch.Tensor,
        indices: torch.Tensor,
        weights: torch.Tensor,
        probs: torch.Tensor,
        aux_loss: torch.Tensor,
        frame_mask: torch.Tensor,
    ) -> MixtureOutput:
        """One task's valid-frame results back onto the padded ``(batch, frames)`` grid."""
        batch, frames = frame_mask.shape
        output = tokens.new_zeros(batch, frames, self.output_size)
        output[frame_mask] = mixed if self.norm is None else self.norm(tokens + mixed)
        full_indices = indices.new_full((batch, frames, indices.shape[-1]), -1)
        full_weights = weights.new_zeros(batch, frames, indices.shape[-1])
        full_probs = probs.new_zeros(batch, frames, probs.shape[-1])
        full_indices[frame_mask] = indices
        full_weights[frame_mask] = weights
        full_probs[frame_mask] = probs
        return MixtureOutput(output, full_indices, full_weights, full_probs, aux_loss)


class MeritSharedFeedForward(nn.Module):
    """Naive multi-task learning: every task shares one feed-forward layer, no gates.

    Its inner width is ``k`` experts' worth, so it spends the compute one frame gets in Sparse
    MERIT; the comparison then isolates routing, not capacity per frame.
    """

    def __init__(self, config: MeritConfig):
        super().__init__()
        self.feed_forward = build_expert(config, config.expert_hidden_size * config.router_top_k)
        self.norm = nn.LayerNorm(config.hidden_size) if config.expert_type == "residual" else None
        self.dispatch = True  # nothing to dispatch; kept so exporters can treat blocks alike

    def forward(
        self, hidden_by_task: Mapping[str, torch.Tensor], frame_mask: torch.Tensor
    ) -> dict[str, MixtureOutput]:
        return {task: self.share(hidden, frame_mask) for task, hidden in hidden_by_task.items()}

    def share(self, hidden: torch.Tensor, frame_mask: torch.Tensor) -> MixtureOutput:
        shared = self.feed_forward(hidden)
        if self.norm is not None:
            shared = self.norm(hidden + shared)
        return MixtureOutput(hidden=shared * frame_mask[..., None].to(shared.dtype))


def build_mixture(config: MeritConfig) -> nn.Module:
    """The routed expert pool, or for ``routing="shared"`` the ungated baseline."""
    if config.routing == "shared":
        return MeritSharedFeedForward(config)
    return MeritMixtureOfExperts(config)
