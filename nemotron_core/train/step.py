"""One optimizer step over the micro-batches of a step, whatever the parallel layout.

Loss contract (defined here once; every stage's train.py calls `train_step`):

    token:     L = sum of token CE over the step / N,   N = trainable tokens of the WHOLE step
                   (all micro-batches, all data-parallel ranks)
    sequence:  L = (sum over documents d of the step with n_d >= 1 of CE_d / n_d) / D,
                   D = those documents, over the whole step
    MoE aux:   + coeff x (sum over MoE layers and over the step's segments of the per-segment
                   balance loss) / S,  S = segments of the whole step (documents; see below)

N, D and S are known from the batches before the first backward, so they are all-reduced once per
step over `dp_group`. Each micro-batch then backpropagates its own share of L (its CE sum / N,
...), so the accumulated gradient is exactly dL/dθ and neither the loss nor the gradient depends
on micro-batch size, accumulation steps or dp degree (tests/unit/train/test_step.py: 1x8, 2x4,
8x1 and dp2 x 4 give the same parameters after one AdamW step to 1e-6 in fp32).

Gradients across data-parallel ranks: each rank's local gradient is its share of dL/dθ, so the
right global gradient is the SUM over ranks. `grad_reduction` says who makes it:
    "sum"        (default) the wrapper sums: FSDP2 with `set_gradient_divide_factor(1.0)` (what
                 `nemotron_core/parallel` should set), or no data parallelism at all;
    "mean"       the wrapper averages (DDP, FSDP2 defaults): the local loss is multiplied by the
                 dp size so the average is the sum;
    "all_reduce" nothing wraps the model (replicas, e.g. gloo tests): `train_step` sum-all-reduces
                 every gradient over `dp_group` after the last backward.
With DDP, all micro-batches but the last run under `no_sync()`; with FSDP2,
`set_requires_gradient_sync(False)` likewise.

MoE aux loss segments: the model averages the per-segment loss over the segments of its
`cu_seqlens`; a padding segment of a padded row (`pad_to`) is a segment there too, so with
padding the aux loss also averages over padding segments (without padding, segments = documents).
The logged `loss` is the optimised L (CE term + aux term), identical across layouts.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from nemotron_core.constants import IGNORE_INDEX
from nemotron_core.data.packed import PackedBatch
from nemotron_core.model.moe import Router, expert_bias_update
from nemotron_core.parallel.grads import clip_grad_norm_
from nemotron_core.parallel.mesh import ParallelState
from nemotron_core.train.loss import cross_entropy_sum, sequence_losses, sequence_mean_sum

NORMALIZATIONS = ("token", "sequence")
GRAD_REDUCTIONS = ("sum", "mean", "all_reduce")


# ---------------------------------------------------------------------------------------------
# Data-parallel helpers
# ---------------------------------------------------------------------------------------------


def _dp_active(group) -> bool:
    return group is not None and dist.is_available() and dist.is_initialized()


def dp_world_size(group) -> int:
    """Size of `group`, or 1 when there is no group / no initialised process group."""
    return dist.get_world_size(group) if _dp_active(group) else 1


def all_reduce_sum(t: torch.Tensor, group) -> torch.Tensor:
    """In-place SUM over `group` when distributed is initialised and a group is given; else `t`."""
    if _dp_active(group):
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return t


def grad_accumulation_steps(global_batch_size: int, micro_batch_size: int, dp_size: int) -> int:
    """Micro-batches per rank per optimizer step: global_batch_size / (micro_batch_size x dp_size).

    Raises:
        ValueError: naming `train.global_batch_size`, `train.micro_batch_size` and the dp degree
            when a value is not a positive integer or the product does not divide.
    """
    for name, v in (
        ("train.global_batch_size", global_batch_size),
        ("train.micro_batch_size", micro_batch_size),
        ("data-parallel degree dp", dp_size),
    ):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    per = micro_batch_size * dp_size
    if global_batch_size % per:
        raise ValueError(
            f"train.global_batch_size={global_batch_size} must be divisible by train.micro_batch_size="
            f"{micro_batch_size} x data-parallel degree dp={dp_size} (= {per}); "
            f"e.g. train.global_batch_size={max(1, global_batch_size // per) * per}"
        )
    return global_batch_size // per


def _grad_sync_context(model: nn.Module, sync: bool):
    """Skip the wrapper's gradient reduction for all but the last micro-batch."""
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2 (fully_shard)
        model.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()
    if not sync and hasattr(model, "no_sync"):  # DDP
        return model.no_sync()
    return contextlib.nullcontext()


def _local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (an alias: in-place writes reach the DTensor), else `t`."""
    return t._local_tensor if isinstance(t, DTensor) else t


def _is_expert_sharded(p: torch.Tensor) -> bool:
    """Routed-expert parameters under expert parallelism live on the `ep` mesh (`ParallelState.ep_mesh`)."""
    return isinstance(p, DTensor) and "ep" in (p.device_mesh.mesh_dim_names or ())


def _all_reduce_grads(params: Sequence[torch.Tensor], group, expert_group=None) -> None:
    """SUM every gradient over `group` (expert-parallel ones over `expert_group`, the ranks holding
    the same experts), one coalesced buffer each (missing grads count as 0)."""
    for grp, members in ((group, [p for p in params if not _is_expert_sharded(p)]),
                         (expert_group, [p for p in params if _is_expert_sharded(p)])):
        if not _dp_active(grp) or not members:
            continue
        for p in members:
            if p.grad is None:  # keep the buffer layout the same on every rank
                p.grad = torch.zeros_like(p)
        grads = [_local(p.grad) for p in members]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=grp)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _forward(model: nn.Module, batch: PackedBatch):
    return model(
        batch.input_ids[None],
        cu_seqlens=batch.cu_seqlens,
        max_seqlen=batch.max_seqlen,
        position_ids=batch.position_ids[None],
    )


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _local_counts(batch: PackedBatch) -> list[int]:
    """[trainable tokens, documents with >= 1 trainable token, segments, real tokens, real documents]."""
    trainable = batch.labels != IGNORE_INDEX
    segments = batch.cu_seqlens.numel() - 1
    per_doc = torch.bincount(batch.doc_ids.long()[trainable], minlength=segments)
    return [
        int(trainable.sum()),
        int((per_doc > 0).sum()),
        segments,
        batch.input_ids.numel() - batch.num_padding_tokens,
        batch.num_documents,
    ]


# ---------------------------------------------------------------------------------------------
# Step
# ---------------------------------------------------------------------------------------------


def micro_batch_loss(
    logits: torch.Tensor, batch: PackedBatch, *, normalization: str, n_tokens: int, n_docs_trainable: int
) -> torch.Tensor:
    """This micro-batch's share of the step's CE term: its CE sum / N (token) or its documents'
    mean CEs / D (sequence). logits: [T, V]."""
    if normalization == "token":
        loss_sum, _ = cross_entropy_sum(logits, batch.labels)
        return loss_sum / n_tokens
    doc_sum, doc_count = sequence_losses(logits, batch.labels, batch.doc_ids, num_docs=batch.cu_seqlens.numel() - 1)
    return sequence_mean_sum(doc_sum, doc_count) / n_docs_trainable


def _forward_backward(
    model, micro_batches, *, device, normalization, n_tokens, n_docs_trainable, moe_aux_loss_coeff, n_segments,
    scale, autocast_dtype,
):
    """Forward/backward each micro-batch in turn; returns (CE term, aux term, expert load) of this rank."""
    lm_local = torch.zeros((), dtype=torch.float64, device=device)
    aux_local = torch.zeros((), dtype=torch.float64, device=device)
    load = None
    for i, batch in enumerate(micro_batches):
        batch = batch.to(device, non_blocking=True)
        sync = i == len(micro_batches) - 1
        with _grad_sync_context(model, sync):
            with _autocast(device, autocast_dtype):
                out = _forward(model, batch)
            logits = out.logits.reshape(-1, out.logits.shape[-1])  # [T, V]
            lm = micro_batch_loss(logits, batch, normalization=normalization, n_tokens=n_tokens,
                                  n_docs_trainable=n_docs_trainable)
            loss = lm
            if moe_aux_loss_coeff > 0 and out.moe_aux_loss is not None:
                # The model returns the mean over this micro-batch's segments; x segments = the sum.
                segments = batch.cu_seqlens.numel() - 1
                aux = moe_aux_loss_coeff * out.moe_aux_loss.float().sum() * (segments / n_segments)
                loss = loss + aux
                aux_local += aux.detach().double()
            (loss * scale).backward()  # x 1.0 is exact
        lm_local += lm.detach().double()
        if out.moe_load is not None:
            mb_load = out.moe_load.detach().double()
            load = mb_load if load is None else load + mb_load
    return lm_local, aux_local, load



def moe_load_imbalance(load: torch.Tensor) -> float:
    """max / mean expert load, worst MoE layer: 1.0 = perfectly balanced. load: [n_layers, E]."""
    load = load.double()
    mean = load.mean(dim=-1).clamp(min=1e-12)
    return float((load.max(dim=-1).values / mean).max())


@dataclass
class StepResult:
    """What one optimizer step did, already reduced over data parallel (same on every rank)."""

    loss: float  # optimised loss: lm_loss + moe_aux_loss
    lm_loss: float  # token- or sequence-normalised CE of the step
    moe_aux_loss: float  # coefficient-weighted balance term (0 without MoE or coefficient)
    grad_norm: float  # global norm before clipping
    lr: float  # learning rate of this update (first group)
    num_trainable_tokens: int  # labels != IGNORE_INDEX, whole step
    num_documents: int  # real documents, whole step
    num_tokens: int  # input tokens excluding padding, whole step
    moe_load: torch.Tensor | None  # [n_moe_layers, E] float64 CPU, tokens per expert, whole step
    time_s: float  # wall time of train_step

    @property
    def tokens_per_s(self) -> float:
        return self.num_tokens / self.time_s if self.time_s > 0 else float("nan")

    def metrics(self) -> dict[str, float]:
        """The metric names every stage logs (`nemotron_core/train/metrics.py`)."""
        out = {
            "loss": self.loss,
            "lm_loss": self.lm_loss,
            "moe_aux_loss": self.moe_aux_loss,
            "lr": self.lr,
            "grad_norm": self.grad_norm,
            "tokens_per_s": self.tokens_per_s,
            "trainable_tokens": self.num_trainable_tokens,
            "tokens": self.num_tokens,
            "documents": self.num_documents,
        }
        if self.moe_load is not None:
            out["moe_load_imbalance"] = moe_load_imbalance(self.moe_load)
        return out


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: Sequence[PackedBatch],
    *,
    normalization: str = "token",
    moe_aux_loss_coeff: float = 0.0,
    moe_expert_bias_update_rate: float = 0.0,
    grad_clip: float = 0.0,
    scheduler=None,
    dp_group=None,
    grad_reduction: str = "sum",
    autocast_dtype: torch.dtype | None = None,
    parallel: ParallelState | None = None,
    pipeline=None,
) -> StepResult:
    """Forward/backward every micro-batch, then clip, optimizer.step, scheduler.step, zero_grad.

    Order: count (N, D, S, tokens) -> one all-reduce -> per micro-batch: forward, its share of L
    (module docstring), backward -> gradient reduction per `grad_reduction` -> one all-reduce of
    (loss terms, MoE load) -> clip to `grad_clip` (<= 0: measure only) -> optimizer.step ->
    scheduler.step -> zero_grad -> expert-bias update with the step's global load (every router
    `e_score_correction_bias += rate x sign(mean(load) - load)`, when rate > 0).

    Args:
        model: called as `model(input_ids [1, T], cu_seqlens=, max_seqlen=, position_ids=)` and
            returning `.logits` [1, T, V], `.moe_aux_loss` [n_moe] and `.moe_load` [n_moe, E]
            (None without MoE), i.e. a `Nano3Model`, possibly wrapped.
        micro_batches: this rank's micro-batches of the step (moved to the model's device here).
        normalization: "token" or "sequence" (`train.loss_normalization`).
        dp_group: the data-parallel process group; None (or no initialised process group) = local.
        grad_reduction: "sum", "mean" or "all_reduce" (module docstring).
        autocast_dtype: e.g. torch.bfloat16 for autocast; None = the parameters' dtype.
        parallel: the layout (`nemotron_core.parallel.mesh.ParallelState`): the gradient norm is
            global over tp / ep / FSDP shards and pipeline stages, expert gradients are summed over
            the ranks holding the same experts; None = one process (or plain dp replicas).
        pipeline: a `nemotron_core.parallel.pipeline.Pipeline` under pp > 1: it runs the
            micro-batches through the schedule (same loss terms, computed on the last stage).

    Raises:
        ValueError: for an unknown normalization or grad_reduction, no micro-batches, or a step with
            no trainable token on any rank (the loss would be 0/0).
    """
    t0 = time.perf_counter()
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"train.loss_normalization={normalization!r} is not one of {list(NORMALIZATIONS)}")
    if grad_reduction not in GRAD_REDUCTIONS:
        raise ValueError(f"grad_reduction={grad_reduction!r} is not one of {list(GRAD_REDUCTIONS)}")
    if not micro_batches:
        raise ValueError("train_step needs at least one micro-batch")
    device = _model_device(model)
    dp_size = dp_world_size(dp_group)

    # Count before the first backward, reduce once (N, D, S, real tokens, real documents).
    counts = torch.tensor([_local_counts(b) for b in micro_batches], dtype=torch.int64).sum(dim=0)
    counts = all_reduce_sum(counts.to(device), dp_group).cpu()
    n_tokens, n_docs_trainable, n_segments, n_real, n_docs = (int(c) for c in counts)
    if n_tokens == 0:
        raise ValueError(
            "no trainable token in this optimizer step on any rank (every label is IGNORE_INDEX): "
            "check the data's loss_mask"
        )
    scale = float(dp_size) if grad_reduction == "mean" else 1.0

    if pipeline is not None:
        lm_local, aux_local, load = pipeline.forward_backward(
            micro_batches, normalization=normalization, n_tokens=n_tokens, n_docs_trainable=n_docs_trainable,
            moe_aux_loss_coeff=moe_aux_loss_coeff, n_segments=n_segments, scale=scale,
        )
    else:
        lm_local, aux_local, load = _forward_backward(
            model, micro_batches, device=device, normalization=normalization, n_tokens=n_tokens,
            n_docs_trainable=n_docs_trainable, moe_aux_loss_coeff=moe_aux_loss_coeff, n_segments=n_segments,
            scale=scale, autocast_dtype=autocast_dtype,
        )

    params = [p for group in optimizer.param_groups for p in group["params"]]
    if grad_reduction == "all_reduce":
        _all_reduce_grads(params, dp_group, parallel.edp_group if parallel is not None and parallel.ep > 1 else dp_group)

    # One reduction of what was computed: loss terms and expert load.
    stats = [lm_local.reshape(1), aux_local.reshape(1)]
    if load is not None:
        stats.append(load.reshape(-1))
    stats = all_reduce_sum(torch.cat(stats), dp_group)
    pp_group = parallel.pp_group if parallel is not None else None
    if pp_group is not None:  # loss terms live on (the last / every) stage: sum over stages
        terms = all_reduce_sum(stats[:2].clone(), pp_group)
        stats = torch.cat([terms, stats[2:]])
    stats = stats.cpu()
    lm_loss, aux_loss = float(stats[0]), float(stats[1])
    global_load = stats[2:].reshape(load.shape) if load is not None else None

    grad_norm = float(clip_grad_norm_(params, grad_clip, pp_group=pp_group))
    lr = float(optimizer.param_groups[0]["lr"])
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)

    if moe_expert_bias_update_rate > 0 and global_load is not None:
        routers = [m for m in model.modules() if isinstance(m, Router)]
        if len(routers) != global_load.shape[0]:
            raise ValueError(
                f"found {len(routers)} MoE routers but the model reported load for {global_load.shape[0]} layers"
            )
        for router, layer_load in zip(routers, global_load):
            bias = router.e_score_correction_bias
            expert_bias_update(bias, layer_load.to(bias.device), moe_expert_bias_update_rate)

    return StepResult(
        loss=lm_loss + aux_loss,
        lm_loss=lm_loss,
        moe_aux_loss=aux_loss,
        grad_norm=grad_norm,
        lr=lr,
        num_trainable_tokens=n_tokens,
        num_documents=n_docs,
        num_tokens=n_real,
        moe_load=global_load,
        time_s=time.perf_counter() - t0,
    )


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[PackedBatch],
    *,
    dp_group=None,
    autocast_dtype: torch.dtype | None = None,
    parallel: ParallelState | None = None,
    pipeline=None,
) -> float:
    """Mean token CE over all trainable tokens of `batches` (and of all dp ranks' batches).

    = sum of token CE / trainable tokens, the `token` normalisation without the aux loss; the model
    is put in eval mode and restored. Ranks may hold different numbers of batches (one all-reduce
    at the end).

    Raises:
        ValueError: when there is no trainable token in any batch of any rank.
    """
    device = _model_device(model)
    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)
    try:
        if pipeline is not None:  # the last stage computes, pp-summed (parallel.pp_group)
            total += pipeline.evaluate(list(batches)).to(device)
            batches = ()
        for batch in batches:
            batch = batch.to(device, non_blocking=True)
            with _autocast(device, autocast_dtype):
                out = _forward(model, batch)
            loss_sum, n = cross_entropy_sum(out.logits.reshape(-1, out.logits.shape[-1]), batch.labels)
            total += torch.stack([loss_sum.double(), n.double()])
    finally:
        model.train(was_training)
    total = all_reduce_sum(total, dp_group).cpu()
    if total[1] == 0:
        raise ValueError("evaluate: no trainable token in the validation batches")
    return float(total[0] / total[1])


__all__ = [
    "StepResult",
    "all_reduce_sum",
    "dp_world_size",
    "evaluate",
    "grad_accumulation_steps",
    "moe_load_imbalance",
    "train_step",
]
