"""Pipeline parallelism with `torch.distributed.pipelining`: stage split, schedule, loss contract.

Split: the layers are cut into pp x virtual_stages contiguous ranges balanced on parameter count
(`memory.pipeline_stage_layers`); stage s runs on pp rank s % pp (looped assignment, as the
interleaved schedules expect). A stage module keeps the blocks under their full-model names
(`layers.<i>`, `embeddings` on the first stage, `norm_f` + `lm_head` on the last), so DCP
checkpoints reshard between pipeline and non-pipeline layouts.

Micro-batches: every rank reads the step's micro-batches (the data is cheap; only the first stage
needs the tokens and only the last the labels). Each is padded at its END to the fixed length
`micro_batch_tokens` (= micro_batch_size x pack_size; P2P needs fixed shapes): the padding is
one trailing segment that `cu_seqlens` does not cover, with labels IGNORE_INDEX, so it is
excluded from the loss, the MoE aux loss and the expert load exactly as in the unpadded run.
Stages get their micro-batch's segment layout from the step's list (the k-th forward of a stage
in a step is micro-batch k in every schedule), so only hidden states cross the pipeline.

Loss contract (`nemotron_core/train/step.py`): the last stage's loss per micro-batch is its share
of the step's CE term (CE sum / N, or document means / D); the schedule does not rescale
(`scale_grads=False`). The MoE aux term of a layer is attached to that layer's output by an
identity autograd function whose backward adds d(aux)/d(parameters) (Megatron's aux-loss
scaler), so it needs no path to the last stage. Result: the same loss and gradients as one
process (tests/parallel: first-step loss <= 1e-5, 10 steps <= 1e-4).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn

from nemotron_core.config.model import ModelConfig
from nemotron_core.constants import IGNORE_INDEX
from nemotron_core.data.packed import PackedBatch
from nemotron_core.model.nano3 import build_sequence_info
from nemotron_core.parallel.memory import pipeline_stage_layers
from nemotron_core.parallel.mesh import ParallelState

SCHEDULES = ("GPipe", "1F1B", "Interleaved1F1B")


class _AttachAuxLoss(torch.autograd.Function):
    """Identity on `h`; in backward, gives `aux` the gradient `scale` (aux joins the loss)."""

    @staticmethod
    def forward(ctx, h, aux, scale: float):
        ctx.save_for_backward(aux)
        ctx.scale = scale
        return h.view_as(h)

    @staticmethod
    def backward(ctx, grad):
        (aux,) = ctx.saved_tensors
        return grad, torch.full_like(aux, ctx.scale), None


class StageModule(nn.Module):
    """Layers `layer_ids` of a Nano3Model (+ embeddings on the first stage, final norm and lm_head
    on the last), under their full-model names. forward(x) -> hidden [1, T, H], or fp32 logits
    [1, T, V] on the last stage; x is token ids [1, T] on the first stage."""

    def __init__(self, model: nn.Module, layer_ids: range, *, first: bool, last: bool):
        super().__init__()
        self.cfg = model.cfg
        self.first, self.last = first, last
        if first:
            self.embeddings = model.embeddings
        self.layers = nn.ModuleDict({str(i): model.layers[i] for i in layer_ids})
        if last:
            self.norm_f = model.norm_f
            self.lm_head = model.lm_head
        self._infos: list = []
        self._aux_scales: list[float] = []
        self._next = 0
        self.loads: list[torch.Tensor] = []  # per micro-batch [n_moe_here, E]
        self.aux: list[torch.Tensor] = []  # per micro-batch, the attached aux terms (detached)

    def begin(self, infos: list, aux_scales: list[float]) -> None:
        self._infos, self._aux_scales, self._next = infos, aux_scales, 0
        self.loads, self.aux = [], []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        info = self._infos[self._next]
        aux_scale = self._aux_scales[self._next]
        self._next += 1
        h = self.embeddings(x) if self.first else x
        loads, aux_total = [], torch.zeros((), dtype=torch.float64, device=h.device)
        for block in self.layers.values():
            h, stats = block(h, info)
            if stats is not None:
                loads.append(stats.load.detach())
                if aux_scale and torch.is_grad_enabled():
                    h = _AttachAuxLoss.apply(h, stats.aux_loss.float(), aux_scale)
                    aux_total += aux_scale * stats.aux_loss.detach().double()
        if loads:
            self.loads.append(torch.stack(loads))
        self.aux.append(aux_total)
        if self.last:
            return self.lm_head(self.norm_f(h)).float()
        return h


def split_stages(model: nn.Module, state: ParallelState, *, model_cfg: ModelConfig, virtual_stages: int = 1) -> list[StageModule]:
    """This pp rank's stage modules (one per virtual stage), sharing the model's modules."""
    n_stages = state.pp * virtual_stages
    ranges = pipeline_stage_layers(model_cfg, n_stages)
    ids = range(state.pp_rank, n_stages, state.pp)
    return [StageModule(model, ranges[s], first=s == 0, last=s == n_stages - 1) for s in ids]


class _Merged(nn.Module):
    """Several stage modules' parameters under their full-model names (optimizer, checkpoints)."""

    def __init__(self, stages: Sequence[StageModule]):
        super().__init__()
        self.cfg = stages[0].cfg
        layers = {k: v for s in stages for k, v in s.layers.items()}
        self.layers = nn.ModuleDict({k: layers[k] for k in sorted(layers, key=int)})
        for name in ("embeddings", "norm_f", "lm_head"):
            for s in stages:
                if hasattr(s, name):
                    setattr(self, name, getattr(s, name))


def merge_stages(stages: Sequence[nn.Module]) -> nn.Module:
    """One module holding this rank's parameters under full-model names (itself if only one)."""
    return stages[0] if len(stages) == 1 else _Merged(stages)


def _segment_info(batch: PackedBatch, total: int, device):
    return build_sequence_info(1, total, cu_seqlens=batch.cu_seqlens.to(device), attention_mask=None,
                               max_seqlen=batch.max_seqlen, device=device)


def _pad(t: torch.Tensor, total: int, value: int) -> torch.Tensor:
    if t.numel() > total:
        raise ValueError(f"micro-batch of {t.numel()} tokens exceeds the pipeline's fixed {total} tokens")
    return torch.cat([t, t.new_full((total - t.numel(),), value)])


class Pipeline:
    """This rank's stages and schedule; `forward_backward` is `train_step`'s micro-batch loop."""

    def __init__(self, stages: list[StageModule], schedule, state: ParallelState, *, micro_batch_tokens: int, n_microbatches: int):
        self.stages, self.schedule, self.state = stages, schedule, state
        self.total = micro_batch_tokens
        self.n_microbatches = n_microbatches
        self._batches: list[PackedBatch] = []
        self._loss_index = 0
        self._loss_kwargs: dict = {}
        self._lm: list[torch.Tensor] = []

    @property
    def has_first(self) -> bool:
        return any(s.first for s in self.stages)

    @property
    def has_last(self) -> bool:
        return any(s.last for s in self.stages)

    # the schedule calls loss_fn(output, target) in micro-batch order on the last stage
    def _loss_fn(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        from nemotron_core.train.step import micro_batch_loss

        batch = self._batches[self._loss_index]
        self._loss_index += 1
        n = batch.input_ids.numel()
        kw = self._loss_kwargs
        if kw.get("eval"):
            loss_sum = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1])[:n], batch.labels.to(logits.device),
                                                   ignore_index=IGNORE_INDEX, reduction="sum")
            self._lm.append(loss_sum.detach().double())
            return loss_sum
        lm = micro_batch_loss(logits.reshape(-1, logits.shape[-1])[:n], batch.to(logits.device), normalization=kw["normalization"],
                              n_tokens=kw["n_tokens"], n_docs_trainable=kw["n_docs_trainable"])
        self._lm.append(lm.detach().double())
        return lm * kw["scale"]

    def _run(self, micro_batches: Sequence[PackedBatch], *, aux_scales: list[float], train: bool):
        if len(micro_batches) != self.n_microbatches:
            raise ValueError(f"pipeline built for {self.n_microbatches} micro-batches per step, got {len(micro_batches)}")
        device = self.state.device
        self._batches, self._loss_index, self._lm = list(micro_batches), 0, []
        infos = [_segment_info(b, self.total, device) for b in micro_batches]
        for s in self.stages:
            s.begin(infos, aux_scales)
        args = ()
        if self.has_first:
            args = (torch.stack([_pad(b.input_ids, self.total, 0) for b in micro_batches]).to(device),)
        kwargs = {}
        if self.has_last:
            kwargs = dict(target=torch.stack([_pad(b.labels, self.total, IGNORE_INDEX) for b in micro_batches]).to(device), losses=[])
        if train:
            self.schedule.step(*args, **kwargs)
        else:
            with torch.no_grad():
                self.schedule.eval(*args, **kwargs)

    def forward_backward(self, micro_batches, *, normalization, n_tokens, n_docs_trainable, moe_aux_loss_coeff, n_segments, scale):
        """Run the step's micro-batches through the schedule (forward + backward). Returns this
        rank's (CE term, aux term, expert load [n_moe_layers_here, E] or None)."""
        self._loss_kwargs = dict(normalization=normalization, n_tokens=n_tokens, n_docs_trainable=n_docs_trainable, scale=scale)
        aux_scales = [
            moe_aux_loss_coeff * (b.cu_seqlens.numel() - 1) / n_segments * scale if moe_aux_loss_coeff > 0 else 0.0
            for b in micro_batches
        ]
        self._run(micro_batches, aux_scales=aux_scales, train=True)
        device = self.state.device
        lm = torch.stack(self._lm).sum() if self._lm else torch.zeros((), dtype=torch.float64, device=device)
        aux = sum((torch.stack(s.aux).sum() for s in self.stages), torch.zeros((), dtype=torch.float64, device=device))
        aux = aux / scale
        loads = [torch.stack(s.loads).sum(0).double() for s in self.stages if s.loads]
        load = torch.cat(loads) if loads else None
        return lm.to(device), aux.to(device), load

    @torch.no_grad()
    def evaluate(self, batches: Sequence[PackedBatch]) -> torch.Tensor:
        """[CE sum, trainable tokens] of `batches` (fp64), summed over stages (only the last has them).
        The schedule runs `n_microbatches` at a time; a short last chunk is filled with all-padding
        micro-batches (no token, nothing counted)."""
        self._loss_kwargs = {"eval": True}
        total = torch.zeros(2, dtype=torch.float64, device=self.state.device)
        for k in range(0, len(batches), self.n_microbatches):
            chunk = list(batches[k : k + self.n_microbatches])
            chunk += [_empty_batch()] * (self.n_microbatches - len(chunk))
            self._run(chunk, aux_scales=[0.0] * len(chunk), train=False)
            if self._lm:
                total[0] += torch.stack(self._lm).sum().to(total.device)
                total[1] += sum(int(b.num_trainable_tokens) for b in chunk)
        if self.state.pp_group is not None:
            dist.all_reduce(total, group=self.state.pp_group)
        return total


def _empty_batch() -> PackedBatch:
    """A micro-batch of no tokens: the pipeline pads it whole (one padding segment, labels ignored)."""
    empty = torch.zeros(0, dtype=torch.long)
    return PackedBatch(input_ids=empty, labels=empty.clone(), position_ids=empty.clone(),
                       cu_seqlens=torch.zeros(1, dtype=torch.int32), doc_ids=torch.zeros(0, dtype=torch.int32),
                       max_seqlen=0, num_trainable_tokens=0, num_documents=0)


def validate_pipeline(*, pp: int, schedule: str, virtual_stages: int, n_microbatches: int, num_layers: int) -> None:
    """Checks before anything is allocated, naming the config keys (ValueError)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"parallel.pp_schedule={schedule!r} is not one of {list(SCHEDULES)}")
    if pp == 1:
        return
    if (schedule == "Interleaved1F1B") != (virtual_stages > 1):
        raise ValueError(
            f"parallel.pp_schedule={schedule} with parallel.pp_virtual_stages={virtual_stages}: the interleaved "
            "schedule needs pp_virtual_stages >= 2, the others exactly 1"
        )
    if pp * virtual_stages > num_layers:
        raise ValueError(
            f"parallel.pp x parallel.pp_virtual_stages = {pp} x {virtual_stages} stages exceed the {num_layers} layers "
            "of model.hybrid_override_pattern"
        )
    if schedule != "GPipe" and (n_microbatches < pp or (virtual_stages > 1 and n_microbatches % pp)):
        raise ValueError(
            f"parallel.pp_schedule={schedule} with parallel.pp={pp} needs at least pp micro-batches per step"
            f"{' (a multiple of pp)' if virtual_stages > 1 else ''}, got {n_microbatches} = train.global_batch_size / "
            "(train.micro_batch_size x dp): raise train.global_batch_size or lower train.micro_batch_size"
        )


def build_pipeline(
    stages: list[StageModule],
    state: ParallelState,
    *,
    schedule: str,
    n_microbatches: int,
    micro_batch_tokens: int,
    virtual_stages: int = 1,
) -> Pipeline:
    """Wrap the stage modules in `PipelineStage`s and the schedule `parallel.pp_schedule`."""
    from torch.distributed.pipelining import (
        PipelineStage,
        Schedule1F1B,
        ScheduleGPipe,
        ScheduleInterleaved1F1B,
    )

    validate_pipeline(pp=state.pp, schedule=schedule, virtual_stages=virtual_stages, n_microbatches=n_microbatches,
                      num_layers=stages[0].cfg.num_layers)
    n_stages = state.pp * virtual_stages
    t, h, v = micro_batch_tokens, stages[0].cfg.hidden_size, stages[0].cfg.vocab_size

    def meta(*shape, dtype=torch.float32):  # hidden states carry gradients between stages
        return torch.empty(*shape, dtype=dtype, device="meta", requires_grad=dtype.is_floating_point)

    # Static shapes (fixed micro-batch length): no metadata inference run, which would call the
    # stage's forward outside the step's micro-batch order.
    pp_stages = [
        PipelineStage(m, stage_index=s, num_stages=n_stages, device=state.device, group=state.pp_group,
                      input_args=meta(1, t, dtype=torch.long) if m.first else meta(1, t, h),
                      output_args=meta(1, t, v) if m.last else meta(1, t, h))
        for m, s in zip(stages, range(state.pp_rank, n_stages, state.pp))
    ]
    pipe = Pipeline(stages, None, state, micro_batch_tokens=micro_batch_tokens, n_microbatches=n_microbatches)
    if schedule == "Interleaved1F1B":
        sched = ScheduleInterleaved1F1B(pp_stages, n_microbatches=n_microbatches, loss_fn=pipe._loss_fn, scale_grads=False)
    else:
        cls = Schedule1F1B if schedule == "1F1B" else ScheduleGPipe
        sched = cls(pp_stages[0], n_microbatches=n_microbatches, loss_fn=pipe._loss_fn, scale_grads=False)
    pipe.schedule = sched
    return pipe


__all__ = ["SCHEDULES", "Pipeline", "StageModule", "build_pipeline", "merge_stages", "split_stages", "validate_pipeline"]
