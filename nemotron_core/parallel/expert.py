"""Expert parallelism: routed experts split over `ep` ranks, tokens exchanged by all-to-all.

Applied from outside the unchanged model (torchtitan's ExpertParallel pattern): for every MoE
block, `mixer.experts` (a `GroupedExperts`, 3-D parameters [E, ...]) keeps experts
[r x E/ep, (r+1) x E/ep) on ep rank r, as DTensors `Shard(0)` on the 1-D mesh `ep_mesh["ep"]`
(DCP reshards them; `train_step` sums their gradients over `edp_group`), and gets two hooks:

    input hook   (x_sorted [M, H] grouped by global expert, counts [E])
                 -> under tp > 1 keep this tp rank's 1/tp share of the rows (tp ranks hold
                    identical tokens: each row is computed once per replica)
                 -> exchange per-expert counts, all-to-all the rows to the ranks owning their
                    experts, regroup by local expert -> (x_local [R, H], local counts [E/ep])
    output hook  y_local [R, H] -> back to source order -> reverse all-to-all -> under tp > 1
                 all-gather the shares over tp -> [M, H] in the order of x_sorted

The router (and its `e_score_correction_bias`), the shared expert and the combine stay in the
model, replicated over ep. Every all-to-all is differentiable (backward is the reverse exchange);
the tp share split's backward all-gathers the input gradient over tp (every tp rank gets the full
gradient of x), the tp all-gather's backward keeps this rank's rows (the gradient arriving from
the replicated rest of the model is identical on the tp ranks, Megatron's split/gather pair).

Guarantees (tests/unit/parallel/test_expert.py, gloo, fp32): ep2 (dp2 replicas) and tp2 x ep2
give the single-process loss, MoE load and, after one AdamW step, parameters and expert bias to
1e-5; a checkpoint saved under ep2 loads into one process with the same logits. A rank that
receives no token for its experts still joins every collective and gives its experts zero
gradients (FSDP then reduce-scatters the same buffers on every rank).

The expert-bias update needs no change: each rank's MoE load is counted from its own tokens over
all E experts before dispatch, so `train_step`'s dp all-reduce of it is the global load (tp ranks
are not summed: they hold the same tokens).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor, Shard, distribute_tensor

from nemotron_core.model.moe import MoE
from nemotron_core.model.params import local
from nemotron_core.parallel.mesh import ParallelState


# --------------------------------------------------------------------------- differentiable collectives
class _AllToAll(torch.autograd.Function):
    """Rows of `x` split by `input_splits` go to the ranks of `group`; backward is the reverse."""

    @staticmethod
    def forward(ctx, x, output_splits: list[int], input_splits: list[int], group):
        ctx.group, ctx.output_splits, ctx.input_splits = group, output_splits, input_splits
        return _all_to_all(x, output_splits, input_splits, group)

    @staticmethod
    def backward(ctx, grad):
        return _all_to_all(grad, ctx.input_splits, ctx.output_splits, ctx.group), None, None, None


def _all_to_all(x: torch.Tensor, output_splits: list[int], input_splits: list[int], group) -> torch.Tensor:
    out = x.new_empty((sum(output_splits), *x.shape[1:]))
    dist.all_to_all_single(out, x.contiguous(), output_split_sizes=output_splits,
                           input_split_sizes=input_splits, group=group)
    return out


def _all_gather_rows(x: torch.Tensor, bounds: list[int], group) -> torch.Tensor:
    """Concatenate each tp rank's rows [bounds[r], bounds[r+1]) (uneven: padded to the largest)."""
    n = len(bounds) - 1
    width = max(bounds[r + 1] - bounds[r] for r in range(n))
    padded = x.new_zeros((width, *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(n)]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([parts[r][: bounds[r + 1] - bounds[r]] for r in range(n)])


class _SplitToTP(torch.autograd.Function):
    """Forward: this tp rank's rows of a tensor replicated over tp; backward: all-gather the rows'
    gradients, so every tp rank holds the full (identical) gradient of the replicated input."""

    @staticmethod
    def forward(ctx, x, bounds: list[int], rank: int, group):
        ctx.bounds, ctx.group = bounds, group
        return x[bounds[rank] : bounds[rank + 1]]

    @staticmethod
    def backward(ctx, grad):
        return _all_gather_rows(grad.contiguous(), ctx.bounds, ctx.group), None, None, None


class _GatherFromTP(torch.autograd.Function):
    """Forward: all-gather the tp ranks' rows; backward: keep this rank's rows (the gradient
    coming from the replicated rest of the model is the same on every tp rank)."""

    @staticmethod
    def forward(ctx, x, bounds: list[int], rank: int, group):
        ctx.bounds, ctx.rank = bounds, rank
        return _all_gather_rows(x, bounds, group)

    @staticmethod
    def backward(ctx, grad):
        b, r = ctx.bounds, ctx.rank
        return grad[b[r] : b[r + 1]], None, None, None


# --------------------------------------------------------------------------- dispatch / combine
def _exclusive_cumsum(t: torch.Tensor) -> torch.Tensor:
    return torch.cumsum(t, 0) - t


class ExpertParallel:
    """Token dispatch / combine hooks of one `GroupedExperts` with `num_experts` global experts."""

    def __init__(self, state: ParallelState, num_experts: int):
        self.ep, self.ep_group = state.ep, state.ep_group
        self.tp, self.tp_rank, self.tp_group = state.tp, state.tp_rank, state.tp_group
        self.num_experts = num_experts
        self.local_experts = num_experts // state.ep
        # (tp bounds, input splits, output splits, order, x_local) of the forward in progress: one
        # slot, not a stack, so a forward cut short (checkpoint recompute stopping early) leaks nothing
        self._pending: tuple | None = None

    def dispatch(self, module: nn.Module, args):
        x, counts = args[0], [int(c) for c in args[1]]
        bounds = None
        if self.tp > 1:  # keep this tp rank's share of the rows (contiguous, balanced)
            m = x.shape[0]
            bounds = [r * m // self.tp for r in range(self.tp + 1)]
            x = _SplitToTP.apply(x, bounds, self.tp_rank, self.tp_group)
            lo, hi, start, share = bounds[self.tp_rank], bounds[self.tp_rank + 1], 0, []
            for c in counts:
                share.append(max(0, min(start + c, hi) - max(start, lo)))
                start += c
            counts = share
        ep, el = self.ep, self.local_experts
        send = torch.tensor(counts, dtype=torch.int64, device=x.device)  # [ep x El], by destination
        recv = torch.empty_like(send)  # [ep x El]: per source rank, rows for each of my experts
        dist.all_to_all_single(recv, send, group=self.ep_group)
        input_splits = send.view(ep, el).sum(1).tolist()
        output_splits = recv.view(ep, el).sum(1).tolist()
        x = _AllToAll.apply(x, output_splits, input_splits, self.ep_group)  # rows (source, expert)
        # Regroup (source, expert) -> (expert, source): the experts' contiguous slices.
        recv_se = recv.view(ep, el)
        starts = _exclusive_cumsum(recv_se.reshape(-1)).view(ep, el).t().reshape(-1)
        lens = recv_se.t().reshape(-1)
        order = torch.arange(x.shape[0], device=x.device) + torch.repeat_interleave(
            starts - _exclusive_cumsum(lens), lens, output_size=x.shape[0]
        )
        x = x[order]
        self._pending = (bounds, input_splits, output_splits, order, x)
        return (x, recv_se.sum(0).tolist(), *args[2:])

    def combine(self, module: nn.Module, args, y: torch.Tensor) -> torch.Tensor:
        bounds, input_splits, output_splits, order, x = self._pending
        self._pending = None
        if torch.is_grad_enabled() and x.requires_grad and not y.requires_grad:
            # No token reached this rank's experts: keep both all-to-alls and the experts in the
            # graph anyway, so every rank runs the same backward collectives and the experts get
            # zero gradients (FSDP reduce-scatters only parameters that have one).
            y = y + 0.0 * x.sum()
            for p in module.parameters(recurse=False):
                if p.requires_grad:
                    y = y + 0.0 * local(p).sum()
        back = torch.empty_like(order)
        back[order] = torch.arange(order.numel(), device=order.device)
        y = _AllToAll.apply(y[back], input_splits, output_splits, self.ep_group)
        if bounds is not None:
            y = _GatherFromTP.apply(y, bounds, self.tp_rank, self.tp_group)
        return y


def _moe_blocks(model: nn.Module) -> list[nn.Module]:
    layers = model.layers
    blocks = layers.values() if isinstance(layers, nn.ModuleDict) else layers
    return [b.mixer for b in blocks if isinstance(getattr(b, "mixer", None), MoE)]


def apply_expert_parallel(model: nn.Module, state: ParallelState) -> None:
    """Split the routed experts of every MoE block of `model.layers` over `state.ep` ranks.

    `model` is a Nano3Model or a pipeline stage module (layers a ModuleList or ModuleDict), built
    full size on this rank (the same weights on every rank; rank 0 of each ep group is the source).
    Parameter names and global shapes do not change. No-op for ep == 1.

    Raises:
        ValueError: when the experts of a layer are not divisible by `parallel.ep`, or the block
            was already expert-parallel.
    """
    if state.ep == 1:
        return
    mesh = state.ep_mesh["ep"]
    for moe in _moe_blocks(model):
        experts = moe.experts
        num_experts = experts.up_proj.shape[0]
        if isinstance(experts.up_proj, DTensor):
            raise ValueError("apply_expert_parallel: routed experts are already DTensors (applied twice, "
                             "or tensor-parallel experts with parallel.ep > 1)")
        if num_experts % state.ep:
            raise ValueError(f"model.n_routed_experts={num_experts} is not divisible by parallel.ep={state.ep}")
        for name, p in list(experts.named_parameters(recurse=False)):
            experts.register_parameter(
                name, nn.Parameter(distribute_tensor(p.data, mesh, [Shard(0)]), requires_grad=p.requires_grad)
            )
        style = ExpertParallel(state, num_experts)
        experts.register_forward_pre_hook(style.dispatch)
        experts.register_forward_hook(style.combine)
        experts.num_experts = num_experts // state.ep  # this rank's experts, as TP sets local head counts
        experts._expert_parallel = style


__all__ = ["ExpertParallel", "apply_expert_parallel"]
