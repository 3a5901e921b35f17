"""Parameter-efficient fine-tuning schema (`conf/peft/`): none or LoRA."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING


@dataclass
class PeftConfig:
    name: str = MISSING  # none | lora
    rank: int = 16
    alpha: float = 32.0  # scaling = alpha / rank
    dropout: float = 0.0
    # Patterns (fnmatch) over our module names, e.g. "*.q_proj"; the base model stays frozen.
    # Mamba's out_proj is left out by default: peft refuses LoRA on NemotronH `out_proj`, so an
    # adapter there could not be saved in the PEFT layout (it still trains and merges).
    target_modules: list[str] = field(
        default_factory=lambda: ["*.q_proj", "*.k_proj", "*.v_proj", "*.o_proj", "*.z_proj", "*.x_proj",
                                 "*.shared_experts.up_proj", "*.shared_experts.down_proj"]
    )
    exclude_modules: list[str] = field(default_factory=list)
