"""LoRA fine-tuning of the backbone with PEFT, the MERIT layers trained in full.

The backbone is the expensive part to adapt; LoRA on its attention projections keeps the
trainable share small, while the experts, gates and heads are new and need full training
(``modules_to_save``), and are saved with the adapter.
"""

from __future__ import annotations

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

# Top-level MERIT modules (new, randomly initialised): trained in full and saved with the adapter.
MERIT_MODULES = (
    "integration",
    "expert_pool",
    "gates",
    "shared_projection",
    "task_norm",
    "ser_head",
    "se_head",
)


def lora_target_regex(projections: tuple[str, ...] = ("q_proj", "v_proj")) -> str:
    """Regex matching the chosen attention projections of every backbone layer."""
    return rf".*backbone\.encoder\.layers\.\d+\.attention\.({'|'.join(projections)})"


def apply_lora(
    model: nn.Module,
    *,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.0,
    projections: tuple[str, ...] = ("q_proj", "v_proj"),
) -> PeftModel:
    """Wrap a MERIT model with LoRA adapters on the backbone attention projections."""
    present = []
    for name in MERIT_MODULES:
        module = getattr(model, name, None)
        if isinstance(module, (nn.ModuleDict, nn.ModuleList)):
            # PEFT cannot wrap containers; wrap each member (one gate per task) instead.
            present.extend(f"{name}.{child}" for child, _ in module.named_children())
        elif module is not None:
            present.append(name)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=lora_target_regex(projections),
        modules_to_save=present,
    )
    return get_peft_model(model, config)


def trainable_parameter_names(model: nn.Module) -> list[str]:
    return [name for name, param in model.named_parameters() if param.requires_grad]
