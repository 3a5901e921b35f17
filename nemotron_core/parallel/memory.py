"""Analytic per-rank memory of a parallel layout: parameters, gradients, optimizer state, activations.

Pure arithmetic on `ModelConfig` + `ParallelConfig` (no torch, no GPU); `scripts/describe.py`
prints it. An estimate to choose layouts with, not a promise about the allocator: it ignores
CUDA context, allocator fragmentation, communication buffers other than FSDP's, and FSDP2's
per-tensor padding.

How parameters land on a rank (torchtitan-style plans):
- pipeline: contiguous layer ranges, balanced on full (unsharded) parameter counts with the input
  embedding on the first stage and lm_head + final norm on the last (`pipeline_stage_layers`);
  with tied embeddings and pp > 1 the last stage holds its own copy of the matrix.
- tensor parallel (tp): colwise q/k/v, Mamba in_proj (z, x, B, C, dt), conv1d, dt_bias, A_log, D
  and the gated norm (heads and groups split), MLP / shared-expert up; rowwise o_proj, out_proj,
  MLP / shared-expert down (their biases replicated); embedding and lm_head split over vocab;
  layer norms, the final norm, the router and `e_score_correction_bias` replicated. KV heads:
  split when tp divides them, else each rank keeps one (replicated tp / kv_heads times).
- expert parallel (ep): each rank holds n_routed_experts / ep experts; the experts are also split
  by tp only when ep == 1 (ep > 1 borrows the tp ranks, as torchtitan does with etp = 1).
- FSDP (`parallel.fsdp`): non-expert parameters sharded over dp; routed experts over the ranks
  that hold the same experts (dp when ep == 1, else dp x tp / ep).

Bytes per parameter (one choice for every `train.dtype`): fp32 parameters (the master copy; bf16
is a compute cast: autocast, or FSDP2's MixedPrecisionPolicy(param_dtype=bf16)), fp32 gradients,
AdamW's two fp32 moments: 4 + 4 + 8 = 16 bytes per parameter on its rank. `dtype` sets activation
bytes (bf16 2, fp32 4; auto = bf16, the GPU case) and FSDP's all-gather buffers.

Activations (elements per token of one micro-batch, divided by tp: sequence parallel shards the
hidden-size tensors and TP the inner ones):
  every layer  2h (layer input kept for the residual, norm output)
  attention    2 n_heads head_dim + 2 kv_heads head_dim + n_heads (q, k, v, output, logsumexp)
  mamba        in_proj_dim + conv_dim + heads + 3 d_inner + d_inner state / chunk_size
               (in_proj output, conv output, dt, scan output, gate product, out_proj input, chunk states)
  moe          n_experts + top_k (2h + 2 moe_inter) + 2 shared_inter
               (router logits; per chosen expert: dispatched input, up, activation, output; shared)
  mlp          2 intermediate
  logits       last stage: fp32 logits and their gradient, 8 bytes x vocab / tp per token
With activation checkpointing (full, per layer) only each layer's input (h) is kept, plus one
layer recomputed at a time (the largest). In flight on stage i with 1F1B: min(pp - i, n_micro)
micro-batches (GPipe: n_micro); n_micro defaults to pp.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from nemotron_core.config.model import ModelConfig
from nemotron_core.config.parallel import ParallelConfig
from nemotron_core.model import sizing

PARAM_BYTES = 4  # fp32 master parameters
GRAD_BYTES = 4  # fp32 gradients
OPTIMIZER_BYTES = 8  # AdamW exp_avg + exp_avg_sq, fp32
COMPUTE_BYTES = {"bf16": 2, "auto": 2, "fp32": 4}
LOGITS_BYTES = 8  # fp32 logits + their gradient, per vocab entry per token
GIB = 1024**3


# ------------------------------------------------------------------------------------------------
# Layout: world size, derived dp, validation
# ------------------------------------------------------------------------------------------------


def min_world_size(parallel: ParallelConfig) -> int:
    """Smallest world size of the layout: dp as written, or (dp = -1) the least dp with ep | dp x tp."""
    dp = parallel.dp if parallel.dp > 0 else parallel.ep // math.gcd(parallel.ep, parallel.tp)
    return parallel.pp * dp * parallel.tp


def resolve_dp(parallel: ParallelConfig, world_size: int | None = None) -> int:
    """The data-parallel degree: `parallel.dp`, or world_size / (pp x tp) when dp = -1."""
    pp, tp = parallel.pp, parallel.tp
    if parallel.dp > 0:
        if world_size is not None and world_size != pp * parallel.dp * tp:
            raise ValueError(
                f"world size {world_size} != parallel.pp x parallel.dp x parallel.tp = "
                f"{pp} x {parallel.dp} x {tp}; set parallel.dp=-1 to derive dp from the world size"
            )
        return parallel.dp
    if parallel.dp != -1:
        raise ValueError(f"parallel.dp={parallel.dp}: use a positive degree or -1 (derived)")
    if world_size is None:
        world_size = min_world_size(parallel)
    if world_size % (pp * tp):
        raise ValueError(
            f"world size {world_size} is not divisible by parallel.pp x parallel.tp = {pp} x {tp} "
            f"(parallel.dp=-1 derives dp = world_size / (pp x tp))"
        )
    return world_size // (pp * tp)


def validate_layout(model: ModelConfig, parallel: ParallelConfig, *, world_size: int | None = None) -> int:
    """Check that `parallel` can split `model`; return the data-parallel degree.

    Raises ValueError naming the config keys: degrees < 1, world size vs pp x dp x tp,
    `parallel.ep` not dividing dp x tp, `model.n_routed_experts` not divisible by ep, and tp not
    dividing the heads, groups, vocab or widths it splits; pp larger than the layer count.
    """
    for key in ("tp", "pp", "ep"):
        if getattr(parallel, key) < 1:
            raise ValueError(f"parallel.{key}={getattr(parallel, key)} must be >= 1")
    dp = resolve_dp(parallel, world_size)
    tp, pp, ep = parallel.tp, parallel.pp, parallel.ep
    kinds = set(model.layer_kinds())
    if pp > model.num_layers:
        raise ValueError(
            f"parallel.pp={pp} exceeds the {model.num_layers} layers of model.hybrid_override_pattern"
        )
    if (dp * tp) % ep:
        raise ValueError(
            f"parallel.ep={ep} must divide parallel.dp x parallel.tp = {dp} x {tp} = {dp * tp} "
            f"(expert parallelism reuses the dp x tp ranks)"
        )
    if "moe" in kinds and model.n_routed_experts % ep:
        raise ValueError(
            f"model.n_routed_experts={model.n_routed_experts} is not divisible by parallel.ep={ep}"
        )
    checks = [("model.vocab_size", model.vocab_size)]
    if "attention" in kinds:
        checks.append(("model.num_attention_heads", model.num_attention_heads))
        kv = model.num_key_value_heads
        if kv % tp and tp % kv:
            raise ValueError(
                f"model.num_key_value_heads={kv} and parallel.tp={tp}: one must divide the other "
                f"(KV heads are split over tp, or replicated when tp > kv heads)"
            )
    if "mamba" in kinds:
        checks += [("model.mamba_num_heads", model.mamba_num_heads), ("model.n_groups", model.n_groups)]
    if "moe" in kinds:
        checks.append(
            ("model.moe_shared_expert_intermediate_size", model.moe_shared_expert_intermediate_size)
        )
        if ep == 1:
            checks.append(("model.moe_intermediate_size", model.moe_intermediate_size))
    if "mlp" in kinds:
        checks.append(("model.intermediate_size", model.intermediate_size))
    for key, value in checks:
        if value % tp:
            raise ValueError(f"{key}={value} is not divisible by parallel.tp={tp}")
    return dp


# ------------------------------------------------------------------------------------------------
# Pipeline split
# ------------------------------------------------------------------------------------------------


def _stage_extras(model: ModelConfig, pp: int) -> tuple[int, int]:
    """Full parameters outside the layers on the first and on the last stage."""
    counts = sizing.count_parameters(model)
    head = counts.lm_head + counts.final_norm
    if model.tie_word_embeddings and pp > 1:
        head += counts.embedding  # the last stage needs its own copy of the tied matrix
    return counts.embedding, head


def pipeline_stage_layers(model: ModelConfig, pp: int) -> list[range]:
    """Split the layers into `pp` contiguous non-empty ranges, balanced on parameter count.

    Minimises the largest stage (full parameters; the embedding counts on the first stage,
    lm_head + final norm on the last), then, among those splits, the sum of squared stage sizes;
    ties go to the split that ends earlier stages first. Deterministic, so every rank agrees.
    """
    n = model.num_layers
    if not 1 <= pp <= n:
        raise ValueError(
            f"parallel.pp={pp} must be between 1 and the {n} layers of model.hybrid_override_pattern"
        )
    layer = sizing.count_parameters(model).per_layer
    prefix = [0]
    for p in layer:
        prefix.append(prefix[-1] + p)
    first, last = _stage_extras(model, pp)

    def cost(s: int, i: int, j: int) -> int:  # stage s holds layers [i, j)
        return prefix[j] - prefix[i] + (first if s == 0 else 0) + (last if s == pp - 1 else 0)

    inf = float("inf")
    # best[s][j]: smallest possible max stage cost with stages 0..s covering layers [0, j)
    best = [[inf] * (n + 1) for _ in range(pp)]
    for j in range(1, n + 1):
        best[0][j] = cost(0, 0, j)
    for s in range(1, pp):
        for j in range(s + 1, n + 1):
            best[s][j] = min(max(best[s - 1][i], cost(s, i, j)) for i in range(s, j))
    bound = best[pp - 1][n]

    # Among splits with max <= bound, minimise the sum of squares; keep back-pointers.
    sq = [[inf] * (n + 1) for _ in range(pp)]
    back = [[0] * (n + 1) for _ in range(pp)]
    for j in range(1, n + 1):
        if cost(0, 0, j) <= bound:
            sq[0][j] = cost(0, 0, j) ** 2
    for s in range(1, pp):
        for j in range(s + 1, n + 1):
            for i in range(s, j):
                c = cost(s, i, j)
                if c <= bound and sq[s - 1][i] + c * c < sq[s][j]:
                    sq[s][j], back[s][j] = sq[s - 1][i] + c * c, i
    ranges, j = [], n
    for s in range(pp - 1, -1, -1):
        i = back[s][j] if s > 0 else 0
        ranges.append(range(i, j))
        j = i
    return ranges[::-1]


# ------------------------------------------------------------------------------------------------
# Parameters per rank
# ------------------------------------------------------------------------------------------------


def _kv_heads_per_rank(model: ModelConfig, tp: int) -> int:
    kv = model.num_key_value_heads
    return kv // tp if kv % tp == 0 else 1


def layer_params_per_rank(model: ModelConfig, kind: str, *, tp: int, ep: int) -> tuple[int, int]:
    """(non-expert, routed-expert) parameters of one layer of `kind` on one rank, before FSDP."""
    m, h = model, model.hidden_size
    if kind == "mamba":
        full = sizing.mamba_layer_params(m)
        out_bias = h if m.mamba_proj_bias else 0  # rowwise: bias replicated
        sharded = sum(v for k, v in full.items() if k != "pre_norm") - out_bias
        return full["pre_norm"] + sharded // tp + out_bias, 0
    if kind == "attention":
        b = m.attention_bias
        q_dim = m.num_attention_heads * m.head_dim
        kv_dim = _kv_heads_per_rank(m, tp) * m.head_dim
        q = (h * q_dim + (q_dim if b else 0)) // tp
        kv = 2 * (h * kv_dim + (kv_dim if b else 0))
        o = q_dim * h // tp + (h if b else 0)
        return h + q + kv + o, 0
    if kind == "mlp":
        bias = h if m.mlp_bias else 0
        return h + (sizing.layer_params(m, "mlp") - h - bias) // tp + bias, 0
    if kind == "moe":
        bias = h if m.mlp_bias else 0
        shared = (sizing.shared_expert_params(m) - bias) // tp + bias
        router = m.n_routed_experts * h + m.n_routed_experts
        local_experts = m.n_routed_experts // ep
        if ep == 1:
            expert = (sizing.expert_params(m) - bias) // tp + bias
        else:
            expert = sizing.expert_params(m)
        return h + router + shared, local_experts * expert
    raise ValueError(f"unknown layer kind {kind!r}")


@dataclass(frozen=True)
class StageParams:
    """Parameters one rank of pipeline stage `stage` holds (after tp / ep / FSDP)."""

    stage: int
    layers: range
    params: int  # on this rank, after FSDP sharding
    unsharded: int  # on this rank before FSDP (tp / ep split only)
    largest_layer: int  # largest FSDP-gathered layer on this rank (for all-gather buffers)


def params_per_rank(
    model: ModelConfig, parallel: ParallelConfig, *, world_size: int | None = None
) -> list[StageParams]:
    """Parameters held by one rank of each pipeline stage (exact integers).

    FSDP shards are the ceiling of the division (the rank with the largest shard)."""
    dp = validate_layout(model, parallel, world_size=world_size)
    tp, pp, ep = parallel.tp, parallel.pp, parallel.ep
    dense_fsdp = dp if parallel.fsdp else 1
    expert_fsdp = (dp if ep == 1 else dp * tp // ep) if parallel.fsdp else 1
    kinds = model.layer_kinds()
    emb = model.vocab_size * model.hidden_size // tp
    head = 0 if model.tie_word_embeddings and pp == 1 else model.vocab_size * model.hidden_size // tp
    out = []
    for s, layers in enumerate(pipeline_stage_layers(model, pp)):
        dense = expert = largest = 0
        for i in layers:
            d, e = layer_params_per_rank(model, kinds[i], tp=tp, ep=ep)
            dense, expert = dense + d, expert + e
            largest = max(largest, (d if dense_fsdp > 1 else 0) + (e if expert_fsdp > 1 else 0))
        if s == 0:
            dense += emb
            largest = max(largest, emb if dense_fsdp > 1 else 0)
        if s == pp - 1:
            dense += head + model.hidden_size
            largest = max(largest, head if dense_fsdp > 1 else 0)
        out.append(
            StageParams(
                stage=s,
                layers=layers,
                params=-(-dense // dense_fsdp) + -(-expert // expert_fsdp),
                unsharded=dense + expert,
                largest_layer=largest,
            )
        )
    return out


# ------------------------------------------------------------------------------------------------
# Activations and the estimate
# ------------------------------------------------------------------------------------------------


def layer_activation_elements(model: ModelConfig, kind: str) -> int:
    """Activation elements one layer keeps for backward, per token (full, before tp; see module doc)."""
    m, h = model, model.hidden_size
    common = 2 * h
    if kind == "attention":
        hd = m.head_dim
        return (
            common + 2 * m.num_attention_heads * hd + 2 * m.num_key_value_heads * hd + m.num_attention_heads
        )
    if kind == "mamba":
        d = m.mamba_d_inner
        return (
            common
            + sizing.mamba_in_proj_dim(m)
            + sizing.mamba_conv_dim(m)
            + m.mamba_num_heads
            + 3 * d
            + d * m.ssm_state_size // m.chunk_size
        )
    if kind == "moe":
        k = m.num_experts_per_tok
        shared = m.moe_shared_expert_intermediate_size * m.n_shared_experts
        return common + m.n_routed_experts + k * (2 * h + 2 * m.moe_intermediate_size) + 2 * shared
    if kind == "mlp":
        return common + 2 * m.intermediate_size
    raise ValueError(f"unknown layer kind {kind!r}")


@dataclass(frozen=True)
class StageMemory:
    """Bytes on one rank of a pipeline stage."""

    stage: int
    layers: range
    params: int  # parameter count on this rank
    param_bytes: int
    grad_bytes: int
    optimizer_bytes: int
    activation_bytes: int
    fsdp_buffer_bytes: int  # all-gathered layer + prefetched next (compute dtype)
    in_flight_microbatches: int

    @property
    def total_bytes(self) -> int:
        return (
            self.param_bytes
            + self.grad_bytes
            + self.optimizer_bytes
            + self.activation_bytes
            + self.fsdp_buffer_bytes
        )


@dataclass(frozen=True)
class MemoryEstimate:
    """Per-rank memory of a layout: every pipeline stage, and the worst one."""

    world_size: int
    dp: int
    stages: tuple[StageMemory, ...]

    @property
    def worst(self) -> StageMemory:
        return max(self.stages, key=lambda s: (s.total_bytes, -s.stage))


def estimate_memory(
    model: ModelConfig,
    parallel: ParallelConfig,
    *,
    micro_batch_size: int,
    seq_len: int,
    dtype: str = "bf16",
    activation_checkpointing: bool = False,
    world_size: int | None = None,
    num_microbatches: int | None = None,
) -> MemoryEstimate:
    """Estimate the bytes one rank of each pipeline stage needs to train (see the module doc).

    Args:
        micro_batch_size, seq_len: rows and tokens per row of one forward/backward.
        dtype: `train.dtype` (bf16 | fp32 | auto = bf16): activation and FSDP-buffer bytes.
        world_size: needed when `parallel.dp` is -1 (default: the layout's minimum).
        num_microbatches: micro-batches per step per dp rank (pipeline in-flight count; default pp).
    Raises ValueError naming config keys when the layout cannot split the model.
    """
    if dtype not in COMPUTE_BYTES:
        raise ValueError(f"train.dtype={dtype!r}: expected one of {sorted(COMPUTE_BYTES)}")
    act_bytes = COMPUTE_BYTES[dtype]
    stage_params = params_per_rank(model, parallel, world_size=world_size)
    dp = resolve_dp(parallel, world_size)
    tp, pp = parallel.tp, parallel.pp
    n_micro = num_microbatches or pp
    kinds = model.layer_kinds()
    tokens = micro_batch_size * seq_len
    h = model.hidden_size
    stages = []
    for sp in stage_params:
        per_layer = [layer_activation_elements(model, kinds[i]) for i in sp.layers]
        if parallel.pp_schedule == "GPipe":
            in_flight = n_micro
        else:
            in_flight = min(pp - sp.stage, n_micro)
        if activation_checkpointing:
            kept = in_flight * len(per_layer) * h + max(per_layer)
        else:
            kept = in_flight * sum(per_layer)
        activations = kept * tokens * act_bytes // tp
        if sp.stage == pp - 1:
            activations += tokens * LOGITS_BYTES * model.vocab_size // tp
        stages.append(
            StageMemory(
                stage=sp.stage,
                layers=sp.layers,
                params=sp.params,
                param_bytes=sp.params * PARAM_BYTES,
                grad_bytes=sp.params * GRAD_BYTES,
                optimizer_bytes=sp.params * OPTIMIZER_BYTES,
                activation_bytes=activations,
                fsdp_buffer_bytes=2 * sp.largest_layer * act_bytes,
                in_flight_microbatches=in_flight,
            )
        )
    return MemoryEstimate(world_size=pp * dp * tp, dp=dp, stages=tuple(stages))
