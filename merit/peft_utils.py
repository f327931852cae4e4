"""LoRA fine-tuning of the backbone with PEFT, the MERIT layers trained in full.

The backbone is the expensive part to adapt; LoRA on its attention projections keeps the
trainable share small, while the integration, adapter, experts, gates and heads are new and
need full training (``modules_to_save``), and are saved with the adapter.
"""

from __future__ import annotations

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from modeling_merit import MeritModel


def apply_lora(
    model: MeritModel,
    *,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.0,
    projections: tuple[str, ...] = ("q_proj", "v_proj"),
) -> PeftModel:
    """Wrap a MERIT model with LoRA adapters on the backbone's attention projections.

    The target modules come from the model's backbone family (WavLM-style ``attention.q_proj``
    or Whisper's ``self_attn.q_proj``), and everything that is not backbone from
    :meth:`MeritModel.merit_module_names`, so a part added to the model is never frozen by
    mistake.
    """
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=model.backbone_family.lora_target_regex(projections),
        modules_to_save=model.merit_module_names(),
    )
    return get_peft_model(model, config)


def trainable_parameter_names(model: nn.Module) -> list[str]:
    return [name for name, param in model.named_parameters() if param.requires_grad]
