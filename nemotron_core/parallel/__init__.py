"""Parallelism applied from outside the unchanged single-device model (`nemotron_core/model/`).

One function, `parallelize`, applies a layout, always in this order:

    1. pipeline split   (`pipeline.py`)  keep this rank's stage(s): layer ranges balanced on
                                          parameter count, embeddings on the first stage,
                                          final norm + lm_head on the last; names unchanged
    2. tensor parallel  (`tensor.py`)    DTensor plans per block kind (heads / groups / vocab)
    3. expert parallel  (`expert.py`)    routed experts split over `ep`, tokens by all-to-all
    4. activation checkpointing (`activation.py`), per block
    5. torch.compile, per block (`train.compile`)
    6. FSDP2            (`fsdp.py`)      fully_shard per block, then the root

Why this order: TP and EP rewrite parameters into DTensors on their meshes, which FSDP2 then
shards over dp (2-D); checkpointing and compile wrap whole blocks, so they come after the
parameter rewrites and before FSDP's hooks (torchtitan's order). Parameter names never change,
so DCP checkpoints reshard between any two layouts (`nemotron_core/checkpoint/dcp.py`).
"""

from __future__ import annotations

from torch import nn

from nemotron_core.config.model import ModelConfig
from nemotron_core.parallel.activation import apply_activation_checkpointing
from nemotron_core.parallel.mesh import ParallelState, build_parallel_state


def check_run(
    model_cfg: ModelConfig, parallel, *, global_batch_size: int, micro_batch_size: int, world_size: int | None = None
) -> int:
    """Every layout check that needs no allocation, each error naming its config keys: world size
    vs pp x dp x tp, divisibility of heads / KV heads / Mamba heads and groups / experts / widths by
    tp and ep, layers vs pipeline stages, the batch split over dp and micro-batches vs pp. Returns dp."""
    from nemotron_core.parallel.memory import validate_layout
    from nemotron_core.parallel.pipeline import validate_pipeline
    from nemotron_core.train.step import grad_accumulation_steps

    dp = validate_layout(model_cfg, parallel, world_size=world_size)
    accum = grad_accumulation_steps(global_batch_size, micro_batch_size, dp)
    validate_pipeline(pp=parallel.pp, schedule=parallel.pp_schedule, virtual_stages=parallel.pp_virtual_stages,
                      n_microbatches=accum, num_layers=model_cfg.num_layers)
    return dp


def parallelize(
    model: nn.Module,
    state: ParallelState,
    *,
    model_cfg: ModelConfig,
    activation_checkpointing: bool = False,
    compile: bool = False,
    pp_schedule: str = "1F1B",
    pp_virtual_stages: int = 1,
    n_microbatches: int = 1,
    micro_batch_tokens: int = 0,
    mixed_precision: bool = False,
):
    """Apply `state`'s layout to `model` (built on this rank, full size) in the module-docstring
    order. Returns `(modules, pipeline)`: the modules this rank trains (one, or one per virtual
    stage under pp) and a `Pipeline` under pp > 1 (else None). Gradient reduction over dp: FSDP2
    sums (divide factor 1); plain replicas need `grad_reduction="all_reduce"` in `train_step`."""
    from nemotron_core.parallel.pipeline import build_pipeline, split_stages
    from nemotron_core.parallel.tensor import apply_tensor_parallel

    modules = split_stages(model, state, model_cfg=model_cfg, virtual_stages=pp_virtual_stages) if state.pp > 1 else [model]
    for m in modules:
        if state.tp > 1:
            apply_tensor_parallel(m, state)
        if state.ep > 1:
            from nemotron_core.parallel.expert import apply_expert_parallel

            apply_expert_parallel(m, state)
        if activation_checkpointing:
            apply_activation_checkpointing(m)
        if compile:
            for block in _blocks(m):
                block.compile()
        if state.fsdp and state.dp > 1:
            from nemotron_core.parallel.fsdp import apply_fsdp

            apply_fsdp(m, state, mixed_precision=mixed_precision)
    pipeline = None
    if state.pp > 1:
        pipeline = build_pipeline(modules, state, schedule=pp_schedule, n_microbatches=n_microbatches,
                                  micro_batch_tokens=micro_batch_tokens, virtual_stages=pp_virtual_stages)
    return modules, pipeline


def grad_reduction_for(state: ParallelState) -> str:
    """`train_step`'s grad_reduction for a layout parallelized by `parallelize`: FSDP2 (applied when
    fsdp and dp > 1) sums by itself; otherwise replicas are summed explicitly, dense gradients over
    dp and routed-expert ones over edp (which can exceed 1 with dp = 1 when ep < tp)."""
    if state.fsdp and state.dp > 1:
        return "sum"
    return "all_reduce" if state.dp > 1 or (state.ep > 1 and state.edp > 1) else "sum"


def _blocks(m: nn.Module):
    layers = getattr(m, "layers", None)
    if layers is None:
        return []
    return list(layers.values()) if isinstance(layers, nn.ModuleDict) else list(layers)


__all__ = ["ParallelState", "build_parallel_state", "check_run", "grad_reduction_for", "parallelize"]
