"""Model schema: the NemotronH hyper-parameters, named as in Hugging Face's `NemotronHConfig`.

The tiny and the 30B-A3B models are two YAML files of this one schema (`conf/model/`); nothing in
code differs between them. Field names follow transformers' `NemotronHConfig` so export to
`config.json` is a rename-free copy (plus `hybrid_override_pattern`).
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

# One character per layer in `hybrid_override_pattern`.
LAYER_KINDS = {"M": "mamba", "E": "moe", "*": "attention", "-": "mlp"}


@dataclass
class ModelConfig:
    """Hyper-parameters of a NemotronH model (hybrid Mamba-2 / MoE / attention)."""

    name: str = MISSING
    # Layers: one mixer per character (M Mamba-2, E MoE, * attention, - dense MLP).
    hybrid_override_pattern: str = MISSING
    hidden_size: int = MISSING
    vocab_size: int = MISSING
    tie_word_embeddings: bool = False
    layer_norm_epsilon: float = 1e-5
    # Attention (GQA, no positional embedding).
    num_attention_heads: int = MISSING
    num_key_value_heads: int = MISSING
    head_dim: int = MISSING
    attention_bias: bool = False
    # Mamba-2: d_inner = mamba_num_heads * mamba_head_dim; in_proj = z, x, B, C (n_groups each), dt.
    mamba_num_heads: int = MISSING
    mamba_head_dim: int = MISSING
    ssm_state_size: int = MISSING
    n_groups: int = MISSING
    conv_kernel: int = 4
    chunk_size: int = 128
    use_conv_bias: bool = True
    mamba_proj_bias: bool = False
    mamba_hidden_act: str = "silu"
    # dt initialisation range and floor (init only: the scan does not clamp dt).
    time_step_min: float = 0.001
    time_step_max: float = 0.1
    time_step_floor: float = 1e-4
    # MoE: sigmoid router, top-k of n_routed_experts squared-ReLU experts, plus shared expert(s).
    n_routed_experts: int = MISSING
    num_experts_per_tok: int = MISSING
    moe_intermediate_size: int = MISSING
    moe_shared_expert_intermediate_size: int = MISSING
    n_shared_experts: int = 1
    routed_scaling_factor: float = 1.0
    norm_topk_prob: bool = True
    # Dense MLP ('-' layers): down(relu(up(x))**2).
    intermediate_size: int = MISSING
    mlp_hidden_act: str = "relu2"
    mlp_bias: bool = False
    # Init: std of normal init for linears/embeddings (Megatron 0.0173; HF's initializer_range 0.02).
    init_std: float = 0.0173
    # Special ids written to HF config.json (the tokenizer is the source of truth for the rest).
    pad_token_id: int = 0
    bos_token_id: int = 1
    eos_token_id: int = 2
    max_position_embeddings: int = 4096

    @property
    def num_layers(self) -> int:
        return len(self.hybrid_override_pattern)

    @property
    def mamba_d_inner(self) -> int:
        return self.mamba_num_heads * self.mamba_head_dim

    def layer_kinds(self) -> list[str]:
        """`["mamba", "moe", ...]`, one per layer; raises ValueError on an unknown character."""
        bad = sorted({c for c in self.hybrid_override_pattern if c not in LAYER_KINDS})
        if bad:
            raise ValueError(
                f"model.hybrid_override_pattern has unknown layer characters {bad}; "
                f"allowed: {sorted(LAYER_KINDS)}"
            )
        return [LAYER_KINDS[c] for c in self.hybrid_override_pattern]
