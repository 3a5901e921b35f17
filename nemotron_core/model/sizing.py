"""Parameter counts and training FLOPs of a NemotronH model, by arithmetic on its `ModelConfig`.

No torch: these functions read plain numbers, so `scripts/describe.py` and the memory estimate
(`nemotron_core/parallel/memory.py`) run without building a model. The torch model's
`sum(p.numel() for p in model.parameters())` must equal `count_parameters(cfg).total` (a test
checks it), with one convention to note: the router's `e_score_correction_bias` (n_routed_experts
per MoE layer) is counted, as in the published total (`ParamCounts.router_bias` says how many,
for a model that keeps it as a buffer).

Guarantees (tests pin them):
  nano3_30b_a3b: total 31,577,940,288; active per token 3,227,754,816 (3.58B with the input
  embedding): everything a token touches (its top-k routed experts, the shared expert, router,
  mixers, norms, lm_head) except the input embedding (Nano3 tech report / nano3.md section 6).

Layer anatomy (each layer: pre-RMSNorm weight [hidden] -> mixer -> residual add):
  mamba      in_proj hidden -> (z d_inner, x d_inner, B n_groups*state, C n_groups*state, dt heads);
             depthwise conv1d over x,B,C (kernel conv_kernel, bias if use_conv_bias);
             dt_bias, A_log, D [heads]; gated RMSNorm weight [d_inner]; out_proj d_inner -> hidden
  attention  q hidden -> heads*head_dim, k/v hidden -> kv_heads*head_dim, o heads*head_dim -> hidden
  moe        router [n_routed_experts, hidden] + e_score_correction_bias [n_routed_experts];
             routed experts up hidden -> moe_intermediate_size, down back (no gate);
             shared expert up/down of width moe_shared_expert_intermediate_size x n_shared_experts
  mlp        up hidden -> intermediate_size, down back (no gate)
Biases: mamba_proj_bias (in_proj, out_proj), use_conv_bias (conv1d), attention_bias (q, k, v, o),
mlp_bias (shared expert, dense MLP; routed experts never carry biases, as in HF's NemotronH). Plus embedding and lm_head [vocab, hidden]
(lm_head absent when tie_word_embeddings) and the final norm [hidden].
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nemotron_core.config.model import ModelConfig

KINDS = ("mamba", "moe", "attention", "mlp")


# ------------------------------------------------------------------------------------------------
# Per layer kind: named parameter groups of one layer (full, unsharded sizes)
# ------------------------------------------------------------------------------------------------


def mamba_in_proj_dim(cfg: ModelConfig) -> int:
    """Output width of the Mamba in_proj: z + x (d_inner each) + B + C (n_groups*state each) + dt (heads)."""
    return 2 * cfg.mamba_d_inner + 2 * cfg.n_groups * cfg.ssm_state_size + cfg.mamba_num_heads


def mamba_conv_dim(cfg: ModelConfig) -> int:
    """Channels of the depthwise conv1d: x, B and C."""
    return cfg.mamba_d_inner + 2 * cfg.n_groups * cfg.ssm_state_size


def mamba_layer_params(cfg: ModelConfig) -> dict[str, int]:
    """Parameters of one Mamba-2 layer, by group (pre-norm included)."""
    h, d_inner, heads = cfg.hidden_size, cfg.mamba_d_inner, cfg.mamba_num_heads
    proj, conv = mamba_in_proj_dim(cfg), mamba_conv_dim(cfg)
    return {
        "pre_norm": h,
        "in_proj": h * proj + (proj if cfg.mamba_proj_bias else 0),
        "conv1d": conv * cfg.conv_kernel + (conv if cfg.use_conv_bias else 0),
        "dt_bias": heads,
        "A_log": heads,
        "D": heads,
        "norm": d_inner,
        "out_proj": d_inner * h + (h if cfg.mamba_proj_bias else 0),
    }


def attention_layer_params(cfg: ModelConfig) -> dict[str, int]:
    """Parameters of one GQA attention layer, by group (pre-norm included)."""
    h = cfg.hidden_size
    q_dim = cfg.num_attention_heads * cfg.head_dim
    kv_dim = cfg.num_key_value_heads * cfg.head_dim
    b = cfg.attention_bias
    return {
        "pre_norm": h,
        "q_proj": h * q_dim + (q_dim if b else 0),
        "k_proj": h * kv_dim + (kv_dim if b else 0),
        "v_proj": h * kv_dim + (kv_dim if b else 0),
        "o_proj": q_dim * h + (h if b else 0),
    }


def expert_params(cfg: ModelConfig) -> int:
    """Parameters of one routed expert: up hidden -> moe_intermediate_size, down back (no biases)."""
    h, inter = cfg.hidden_size, cfg.moe_intermediate_size
    return 2 * h * inter


def shared_expert_params(cfg: ModelConfig) -> int:
    """Parameters of the shared expert MLP (width moe_shared_expert_intermediate_size x n_shared_experts)."""
    h, inter = cfg.hidden_size, cfg.moe_shared_expert_intermediate_size * cfg.n_shared_experts
    return 2 * h * inter + ((inter + h) if cfg.mlp_bias else 0)


def moe_layer_params(cfg: ModelConfig) -> dict[str, int]:
    """Parameters of one MoE layer, by group (all routed experts; pre-norm included)."""
    h, n = cfg.hidden_size, cfg.n_routed_experts
    return {
        "pre_norm": h,
        "router": n * h,
        "e_score_correction_bias": n,
        "routed_experts": n * expert_params(cfg),
        "shared_experts": shared_expert_params(cfg),
    }


def mlp_layer_params(cfg: ModelConfig) -> dict[str, int]:
    """Parameters of one dense squared-ReLU MLP layer, by group (pre-norm included)."""
    h, inter = cfg.hidden_size, cfg.intermediate_size
    return {
        "pre_norm": h,
        "up_proj": h * inter + (inter if cfg.mlp_bias else 0),
        "down_proj": inter * h + (h if cfg.mlp_bias else 0),
    }


_LAYER_PARAMS = {
    "mamba": mamba_layer_params,
    "moe": moe_layer_params,
    "attention": attention_layer_params,
    "mlp": mlp_layer_params,
}


def layer_params(cfg: ModelConfig, kind: str) -> int:
    """Total parameters of one layer of `kind` (mamba | moe | attention | mlp)."""
    return sum(_LAYER_PARAMS[kind](cfg).values())


def layer_active_params(cfg: ModelConfig, kind: str) -> int:
    """Parameters one token touches in a layer of `kind`: a MoE layer counts only its top-k experts."""
    if kind != "moe":
        return layer_params(cfg, kind)
    unused = (cfg.n_routed_experts - cfg.num_experts_per_tok) * expert_params(cfg)
    return layer_params(cfg, kind) - unused


# ------------------------------------------------------------------------------------------------
# Whole model
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts of a model. `active` excludes the input embedding (the Nano3 convention)."""

    total: int
    active: int  # per token: top-k experts, shared expert, router, mixers, norms, lm_head
    embedding: int  # input embedding (vocab x hidden)
    lm_head: int  # 0 when tied
    final_norm: int
    router_bias: int  # e_score_correction_bias entries summed over MoE layers (counted in total)
    layers_by_kind: dict[str, int] = field(default_factory=dict)  # kind -> number of layers
    per_kind: dict[str, int] = field(default_factory=dict)  # kind -> params of ONE layer of it
    per_kind_total: dict[str, int] = field(default_factory=dict)  # kind -> summed over its layers
    per_kind_active: dict[str, int] = field(default_factory=dict)  # kind -> active params of one layer
    per_layer: tuple[int, ...] = ()  # params of each layer, in order

    @property
    def non_embedding(self) -> int:
        """Total without the input embedding (lm_head kept)."""
        return self.total - self.embedding

    @property
    def active_with_embedding(self) -> int:
        return self.active + self.embedding


def count_parameters(model_cfg: ModelConfig) -> ParamCounts:
    """Count the parameters of the NemotronH model `model_cfg` describes, exactly.

    nano3_30b_a3b -> total 31,577,940,288, active 3,227,754,816 (tested). `active` is what one
    token touches (its `num_experts_per_tok` routed experts, the shared expert, router, mixers,
    norms, lm_head) and excludes the input embedding. Raises ValueError naming
    `model.hybrid_override_pattern` on an unknown layer character.
    """
    cfg = model_cfg
    kinds = cfg.layer_kinds()
    per_layer = tuple(layer_params(cfg, k) for k in kinds)
    layers_by_kind = {k: kinds.count(k) for k in KINDS if k in kinds}
    per_kind = {k: layer_params(cfg, k) for k in layers_by_kind}
    per_kind_active = {k: layer_active_params(cfg, k) for k in layers_by_kind}
    embedding = cfg.vocab_size * cfg.hidden_size
    lm_head = 0 if cfg.tie_word_embeddings else cfg.vocab_size * cfg.hidden_size
    final_norm = cfg.hidden_size
    head_and_norm = lm_head + final_norm
    active = sum(per_kind_active[k] for k in kinds) + head_and_norm
    if cfg.tie_word_embeddings:
        active += embedding  # the tied matrix is the output projection every token uses
    return ParamCounts(
        total=embedding + sum(per_layer) + head_and_norm,
        active=active,
        embedding=embedding,
        lm_head=lm_head,
        final_norm=final_norm,
        router_bias=layers_by_kind.get("moe", 0) * cfg.n_routed_experts,
        layers_by_kind=layers_by_kind,
        per_kind=per_kind,
        per_kind_total={k: n * per_kind[k] for k, n in layers_by_kind.items()},
        per_kind_active=per_kind_active,
        per_layer=per_layer,
    )


# ------------------------------------------------------------------------------------------------
# FLOPs
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlopsPerToken:
    """Training FLOPs per token (forward + backward = 3 x forward), split into its terms."""

    dense: int  # 6 x active params (matmuls with weights; lm_head included, input embedding not)
    attention: int  # 12 x attention layers x heads x head_dim x seq_len (scores and values)
    ssm: int  # 21 x Mamba layers x d_inner x state (the SSD scan, Megatron's 7 d_inner N forward)

    @property
    def total(self) -> int:
        return self.dense + self.attention + self.ssm


def training_flops_per_token(model_cfg: ModelConfig, *, seq_len: int) -> FlopsPerToken:
    """Estimate the training FLOPs per token of a `seq_len`-token sequence (fwd + bwd).

        F = 6 N_active + 12 L_attn n_heads head_dim s + 21 L_mamba d_inner N_state

    - 6 N_active: a weight matmul costs 2 FLOPs per parameter per token forward and 4 backward;
      N_active = `count_parameters(cfg).active` (the input embedding is a lookup, not a matmul).
    - attention: QK^T and AV cost 2 x 2 x s x n_heads x head_dim per token forward, x3 for
      training; the full s x s square is counted (no causal halving: PaLM / Chinchilla
      convention, and what the throughput anchor below implies).
    - SSD scan: Megatron's 7 x d_inner x state forward estimate, x3.
    Norms, activations, softmax and the router's top-k are not counted.

    nano3_30b_a3b at s = 8192: 19.37 + 2.42 + 0.25 = 22.04 GFLOP per token (tested), against
    nano3.md section 7's "about 22" (328 TFLOP/s / 14.7k tokens/s = 22.3, so -1.2%).
    """
    counts = count_parameters(model_cfg)
    n_attn = counts.layers_by_kind.get("attention", 0)
    n_mamba = counts.layers_by_kind.get("mamba", 0)
    cfg = model_cfg
    return FlopsPerToken(
        dense=6 * counts.active,
        attention=12 * n_attn * cfg.num_attention_heads * cfg.head_dim * seq_len,
        ssm=21 * n_mamba * cfg.mamba_d_inner * cfg.ssm_state_size,
    )


def format_count(n: int) -> str:
    """31577940288 -> '31.58B'; 3227754816 -> '3.23B'; 1234567 -> '1.23M'; 1234 -> '1.23K'."""
    for div, unit in ((10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "K")):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)
