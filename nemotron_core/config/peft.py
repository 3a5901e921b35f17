"""Parameter-efficient fine-tuning schema (`conf/peft/`): none or LoRA.

Option names follow NeMo RL / NeMo AutoModel where they mean the same (`target_modules`,
`exclude_modules`, `match_all_linear`, `alpha`, `dropout`, `dropout_position`, `lora_A_init`);
their `dim` is our `rank`. Which modules get an adapter (nemotron_core/peft/lora.py):

    match_all_linear: true   every nn.Linear (lm_head included) minus `exclude_modules`
    target_modules: [...]    the modules the patterns match, minus `exclude_modules`
    neither                  DEFAULT_TARGET_MODULES minus `exclude_modules`

Setting both `match_all_linear` and `target_modules` is an error, as is a pattern that matches no
module or a target pattern whose modules are all excluded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING

# Attention, Mamba z/x and shared-expert projections. Mamba's out_proj is left out: peft refuses
# LoRA on NemotronH `out_proj`, so an adapter there could not be saved in the PEFT layout (it still
# trains and merges).
DEFAULT_TARGET_MODULES = (
    "*.q_proj", "*.k_proj", "*.v_proj", "*.o_proj", "*.z_proj", "*.x_proj",
    "*.shared_experts.up_proj", "*.shared_experts.down_proj",
)  # fmt: skip


@dataclass
class PeftConfig:
    name: str = MISSING  # none | lora
    rank: int = 16  # NeMo RL / AutoModel `dim`
    alpha: float = 32.0  # scaling = alpha / rank
    dropout: float = 0.0
    # pre: dropout on the adapter's input (Hugging Face peft, Megatron-Bridge); post: on the
    # adapter's output (NeMo RL / AutoModel's default). The base path never sees dropout.
    dropout_position: str = "pre"
    # lora_A init: uniform = kaiming-uniform(a=sqrt(5)) (nn.Linear's, Hugging Face peft's);
    # xavier = xavier-normal (NeMo RL / AutoModel / Megatron-Bridge's default). lora_B is always 0.
    lora_A_init: str = "uniform"
    # Patterns over our module names: fnmatch over full names ("*.q_proj", "layers.[0-3].*"), or a
    # bare name matching the last component ("q_proj"); the fused names "in_proj", "linear_qkv",
    # "linear_proj", "linear_fc1", "linear_fc2" stand for our split modules (peft/lora.py).
    # null: DEFAULT_TARGET_MODULES (unless match_all_linear).
    target_modules: list[str] | None = None
    exclude_modules: list[str] = field(default_factory=list)
    match_all_linear: bool = False  # adapt every nn.Linear (then leave target_modules unset)
