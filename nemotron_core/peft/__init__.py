"""LoRA (`lora.py`) and its Hugging Face peft adapter files (`hf_adapter.py`); no `peft` import."""

from nemotron_core.peft.hf_adapter import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    HFLoRA,
    check_hf_exportable,
    merge_adapter_into_hf,
    read_adapter,
    save_adapter,
    to_hf_adapter,
)
from nemotron_core.peft.lora import (
    LoRALinear,
    apply_lora,
    init_lora_weights,
    lora_modules,
    lora_state_dict,
    merge_lora,
    select_lora_targets,
)

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "HFLoRA",
    "LoRALinear",
    "apply_lora",
    "check_hf_exportable",
    "init_lora_weights",
    "lora_modules",
    "lora_state_dict",
    "merge_adapter_into_hf",
    "merge_lora",
    "read_adapter",
    "save_adapter",
    "select_lora_targets",
    "to_hf_adapter",
]
