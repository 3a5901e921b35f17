"""Tensor parallelism: DTensor plans, one per block kind, applied to the unchanged model.

Plans are data (`PLANS`): for each block kind, module path -> style. Styles:
    colwise      nn.Linear split on its output features (torch `ColwiseParallel`): heads / groups
    rowwise      nn.Linear split on its input features, output all-reduced (`RowwiseParallel`)
    shard0       every parameter of the module a DTensor Shard(0) (conv weights, per-head vectors,
                 the gated norm weight); the model computes on the local shard
                 (`nemotron_core.model.params.local`)
    experts_tp   routed experts split on the intermediate width (ep = 1 only): up Shard(1),
                 down Shard(2); input copied into the TP region, output all-reduced
    kv_replicated  k/v projections when tp > KV heads: each rank keeps the one KV head its query
                 heads use (DTensor [Shard(0), Replicate()] on a (kv, kvrep) view of the tp ranks);
                 ranks sharing a head sum their weight gradients
Replicated (no style): block norms, the final norm, the router and its `e_score_correction_bias`,
biases of rowwise layers. The embedding is split over the vocabulary (rowwise on nn.Embedding)
and lm_head over the vocabulary with the logits all-gathered (colwise, Replicate output).

What each kind splits (so a rank holds whole heads and groups; `validate_layout` checks that tp
divides them): attention q heads (and KV heads when tp divides them); Mamba heads (z, x, dt,
A_log, D, dt_bias, conv_x) and groups (B, C, conv_B, conv_C), the gated norm's groups; MLP and
shared-expert width; routed-expert width when ep = 1. Module head / group counts are set to the
local share. Guarantee: same loss and gradients as one process (tests/parallel, <= 1e-5 fp32).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import Replicate, Shard, distribute_tensor
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

from nemotron_core.model.params import local
from nemotron_core.parallel.mesh import ParallelState

PLANS: dict[str, dict[str, str]] = {
    "attention": {"mixer.q_proj": "colwise", "mixer.k_proj": "colwise_kv", "mixer.v_proj": "colwise_kv",
                  "mixer.o_proj": "rowwise"},
    "mamba": {"mixer.z_proj": "colwise", "mixer.x_proj": "colwise", "mixer.B_proj": "colwise",
              "mixer.C_proj": "colwise", "mixer.dt_proj": "colwise", "mixer.conv_x": "shard0",
              "mixer.conv_B": "shard0", "mixer.conv_C": "shard0", "mixer.norm": "shard0", "mixer.out_proj": "rowwise",
              "mixer": "shard0_vectors"},
    "mlp": {"mixer.up_proj": "colwise", "mixer.down_proj": "rowwise"},
    "moe": {"mixer.shared_experts.up_proj": "colwise", "mixer.shared_experts.down_proj": "rowwise",
            "mixer.experts": "experts_tp"},
}
ROOT_PLAN = {"embeddings": "vocab_rowwise", "lm_head": "vocab_colwise"}
_MAMBA_VECTORS = ("A_log", "D", "dt_bias")


# --------------------------------------------------------------------------- TP region boundaries
class _CopyToTP(torch.autograd.Function):
    """Identity forward; backward sums the gradient over the tp group (Megatron's f)."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _ReduceFromTP(torch.autograd.Function):
    """Forward sums partial results over the tp group; identity backward (Megatron's g)."""

    @staticmethod
    def forward(ctx, x, group):
        x = x.contiguous().clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def _shard_params(module: nn.Module, mesh, dim: int, names=None) -> None:
    for name, p in list(module.named_parameters(recurse=False)):
        if names is not None and name not in names:
            continue
        module.register_parameter(name, nn.Parameter(distribute_tensor(p.data, mesh, [Shard(dim)]), requires_grad=p.requires_grad))


def _sum_grad_over(p: nn.Parameter, group) -> None:
    """Sum `p`'s gradient over `group` as it is produced (DTensor grads: their local shard)."""

    def hook(grad):
        grad = grad.clone()
        dist.all_reduce(grad._local_tensor if hasattr(grad, "_local_tensor") else grad, group=group)
        return grad

    p.register_hook(hook)


def _kv_mesh(state: ParallelState, kv_heads: int):
    """The tp ranks as a (kv, kvrep) mesh: kv head = tp_rank // (tp / kv_heads). Built once per
    state (every rank calls apply_tensor_parallel equally often, so this collective is safe)."""
    mesh = getattr(state, "_kv_mesh", None)
    if mesh is None:
        from torch.distributed.device_mesh import init_device_mesh

        full = init_device_mesh(state.device.type, (state.pp, state.dp, kv_heads, state.tp // kv_heads),
                                mesh_dim_names=("pp", "dp", "kv", "kvrep"))
        mesh = state._kv_mesh = full["kv", "kvrep"]
    return mesh


def _kv_replicated(module: nn.Linear, state: ParallelState, *, kv_heads: int) -> None:
    """tp > KV heads: each rank keeps only the KV head its query heads use. The weight is a DTensor
    [Shard(0), Replicate()] on the (kv, kvrep) mesh; ranks sharing a head sum their weight
    gradients (each covers its own queries), and the input gradient is summed over tp."""
    mesh = _kv_mesh(state, kv_heads)
    rep_group = mesh.get_group("kvrep")
    for name, p in list(module.named_parameters(recurse=False)):
        dt = nn.Parameter(distribute_tensor(p.data, mesh, [Shard(0), Replicate()]), requires_grad=p.requires_grad)
        module.register_parameter(name, dt)
        _sum_grad_over(dt, rep_group)
    tp_group = state.tp_group

    def forward(x):
        bias = module.bias
        return F.linear(_CopyToTP.apply(x, tp_group), local(module.weight), None if bias is None else local(bias))

    module.forward = forward


def _experts_tp(module: nn.Module, state: ParallelState) -> None:
    mesh, group = state.tp_mesh, state.tp_group
    _shard_params(module, mesh, 1, names=("up_proj",))  # [E, I, H]: split I
    _shard_params(module, mesh, 2, names=("down_proj",))  # [E, H, I]: split I
    module.register_forward_pre_hook(lambda mod, args: (_CopyToTP.apply(args[0], group), *args[1:]))
    module.register_forward_hook(lambda mod, args, out: _ReduceFromTP.apply(out, group))


def apply_tensor_parallel(model: nn.Module, state: ParallelState) -> None:
    """Split `model` (a Nano3Model or a pipeline StageModule) over `state.tp` ranks per `PLANS`."""
    tp, mesh = state.tp, state.tp_mesh
    if tp == 1:
        return
    cfg = model.cfg
    if hasattr(model, "embeddings"):
        parallelize_module(model.embeddings, mesh, RowwiseParallel(input_layouts=Replicate()))
    if hasattr(model, "lm_head"):
        parallelize_module(model.lm_head, mesh, ColwiseParallel(output_layouts=Replicate()))
    layers = model.layers
    for block in layers.values() if isinstance(layers, nn.ModuleDict) else layers:
        plan = PLANS.get(block.kind, {})
        for path, style in plan.items():
            if block.kind == "moe" and style == "experts_tp" and state.ep > 1:
                continue  # routed experts are expert-parallel instead (nemotron_core/parallel/expert.py)
            module = block.get_submodule(path)
            if style == "colwise":
                parallelize_module(module, mesh, ColwiseParallel())
            elif style == "rowwise":
                parallelize_module(module, mesh, RowwiseParallel())
            elif style == "colwise_kv":
                kv = cfg.num_key_value_heads
                if kv % tp == 0:
                    parallelize_module(module, mesh, ColwiseParallel())
                else:
                    _kv_replicated(module, state, kv_heads=kv)
            elif style == "shard0":
                _shard_params(module, mesh, 0)
            elif style == "shard0_vectors":
                _shard_params(module, mesh, 0, names=_MAMBA_VECTORS)
            elif style == "experts_tp":
                _experts_tp(module, state)
            else:  # pragma: no cover - PLANS is data checked by tests
                raise ValueError(f"unknown TP style {style!r}")
        m = block.mixer
        if block.kind == "attention":
            m.num_heads //= tp
            m.num_kv_heads = m.num_kv_heads // tp if m.num_kv_heads % tp == 0 else 1
        elif block.kind == "mamba":
            m.num_heads //= tp
            m.n_groups //= tp
            m.d_inner //= tp


__all__ = ["PLANS", "ROOT_PLAN", "apply_tensor_parallel"]
