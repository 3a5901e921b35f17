"""FSDP2: `fully_shard` every block of `model.layers`, then the root, over the data-parallel ranks.

Meshes (`ParallelState`):
    everything but routed experts   `mesh["dp"]`; parameters that TP already made DTensors on
                                    `mesh["tp"]` become 2-D (dp, tp) DTensors (same root mesh)
    routed experts under ep > 1     `ep_mesh["edp"]`, the ranks holding the same experts: the
                                    experts module is its own FSDP unit inside its block, and its
                                    (ep) DTensors become 2-D (edp, ep). With edp = 1 the unit
                                    shards nothing but still casts for mixed precision. Expert dim
                                    0 is sharded, or dim 1 when a rank holds fewer experts than edp
                                    (torchtitan's rule, so no rank gets an empty shard).

Gradients are reduce-scattered as SUMS (divide factor 1 on every unit): each rank's gradient is
its share of dL/dθ (`nemotron_core/train/step.py`), so call `train_step(grad_reduction="sum")`.
Expert gradients are thereby summed over edp, dense ones over dp; nothing else reduces them.
`mixed_precision`: bf16 parameters for compute, fp32 gradient reduction (fp32 master weights).
Under pp > 1 parameters stay gathered between micro-batches (`reshard_after_forward=False`).

Guarantees (tests/unit/parallel/test_fsdp.py, gloo, fp32): fsdp2, fsdp2 x ep2 (edp 1) and fsdp4
x ep2 (edp 2) give the single-process loss and parameters after one AdamW step to 1e-5; a
checkpoint saved under fsdp2 x ep2 loads into one process with the same logits.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import Shard

from nemotron_core.model.moe import MoE
from nemotron_core.parallel.mesh import ParallelState


def _blocks(model: nn.Module) -> list[nn.Module]:
    layers = model.layers
    return list(layers.values()) if isinstance(layers, nn.ModuleDict) else list(layers)


def _sum_gradients(module: FSDPModule) -> None:
    """Reduce gradients as a plain sum over the unit's ranks (torch 2.11 and 2.13).

    Divide factor 1 alone becomes NCCL's PREMUL_SUM(1.0), which gloo rejects; forcing SUM-type
    collectives makes it ReduceOp.SUM with no division on every backend."""
    set_factor = getattr(module, "set_gradient_divide_factor", None) or module.set_reduce_scatter_divide_factor
    set_factor(1.0)
    if hasattr(module, "set_force_sum_reduction_for_comms"):
        module.set_force_sum_reduction_for_comms(True)


def apply_fsdp(model: nn.Module, state: ParallelState, *, mixed_precision: bool) -> None:
    """Shard `model` (a Nano3Model or a pipeline stage module, after TP / EP) with FSDP2.

    Args:
        model: its `layers` (ModuleList or ModuleDict) are the FSDP units, then the root.
        state: the layout; `state.mesh` (and `state.ep_mesh` when ep > 1) must exist.
        mixed_precision: bf16 parameters in forward/backward, fp32 reduction (GPU runs).
    """
    if state.mesh is None:
        raise ValueError("apply_fsdp needs an initialised process group (ParallelState.mesh is None)")
    mp_policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if mixed_precision
        else MixedPrecisionPolicy()
    )
    reshard = state.pp == 1  # under pp the micro-batches would re-gather every block
    dp_mesh = state.mesh["dp"]
    for block in _blocks(model):
        mixer = getattr(block, "mixer", None)
        if state.ep > 1 and isinstance(mixer, MoE):
            experts = mixer.experts
            edp = state.edp
            local_experts = experts.up_proj.to_local().shape[0]
            placement = (lambda p: Shard(1)) if local_experts < edp else None
            fully_shard(experts, mesh=state.ep_mesh["edp"], mp_policy=mp_policy, reshard_after_forward=reshard,
                        shard_placement_fn=placement)
        fully_shard(block, mesh=dp_mesh, mp_policy=mp_policy, reshard_after_forward=reshard)
    fully_shard(model, mesh=dp_mesh, mp_policy=mp_policy, reshard_after_forward=reshard)
    for m in model.modules():
        if isinstance(m, FSDPModule):
            _sum_gradients(m)


__all__ = ["apply_fsdp"]
