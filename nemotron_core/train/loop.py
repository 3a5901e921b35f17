"""The training loop every stage shares: one optimizer step per global batch, validation and
checkpoints on schedule, preemption-safe exit.

A stage's train.py builds a `Run` (model already parallelised, optimizer, data rows) and calls
`train_loop(run, ...)`. The data position is the global row counter `consumed_rows`, so a run
resumed under another data-parallel degree continues with the same rows (`iterate_batches`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nemotron_core.checkpoint import save_checkpoint
from nemotron_core.config.run import TrainConfig
from nemotron_core.data.packed import PackedBatch, collate_packed, iterate_batches
from nemotron_core.parallel.mesh import ParallelState
from nemotron_core.train.metrics import MetricsLogger
from nemotron_core.train.step import evaluate, train_step

log = logging.getLogger("nemotron_core.train")


@dataclass
class Run:
    """Everything the loop and the final save need, built once from the config by a train.py."""

    out_dir: Path
    train: TrainConfig
    model: torch.nn.Module  # this rank's (parallelised) model; a pipeline stage's part under pp
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_rows: Sequence  # row dicts (input_ids, loss_mask, seq_start_id), e.g. a PackedDataset
    val_batches: list[PackedBatch]  # this dp rank's validation micro-batches
    autocast_dtype: torch.dtype | None
    bias_rate: float  # MoE expert-bias update rate (0: frozen, e.g. LoRA)
    grad_clip: float
    checkpoint: dict  # save_checkpoint's fixed arguments
    checkpoint_every: int  # checkpoint.save_every (0: only at the end)
    state: ParallelState = field(default_factory=ParallelState)
    pipeline: Any = None  # nemotron_core.parallel.pipeline.Pipeline under pp > 1
    grad_reduction: str = "sum"  # see nemotron_core/train/step.py
    pad_to: int | None = None  # fixed row length (pipeline parallelism)
    step: int = 0
    consumed_rows: int = 0
    checkpoint_path: Path | None = None  # the last checkpoint saved or resumed from
    validate: bool | None = None  # evaluate on schedule; must agree on all ranks (a dp rank may hold no
    # validation batch and still joins the reduction). None: whether this rank has validation batches.


def validation_batches(
    rows: Sequence, *, micro_batch_size: int, max_batches: int, dp_rank: int = 0, dp_size: int = 1, pad_to: int | None = None
) -> list[PackedBatch]:
    """The first `micro_batch_size x max_batches` rows of `rows`, dealt to dp ranks micro-batch by
    micro-batch (batch i goes to rank i % dp_size), so the union over ranks is the same for any dp.

    Every rank gets the same NUMBER of micro-batches (short ranks get one-token batches whose label
    is ignored): FSDP all-gathers and expert all-to-alls run in the forward, so ranks that evaluate
    a different number of batches would wait on each other forever."""
    n = min(len(rows), micro_batch_size * max_batches)
    batches = [list(range(i, min(i + micro_batch_size, n))) for i in range(0, n, micro_batch_size)]
    if pad_to is not None:  # fixed shapes: only whole micro-batches
        batches = [b for b in batches if len(b) == micro_batch_size]
    mine = [collate_packed([rows[j] for j in b], pad_to=pad_to) for k, b in enumerate(batches) if k % dp_size == dp_rank]
    per_rank = -(-len(batches) // dp_size)
    return mine + [_ignored_token_batch()] * (per_rank - len(mine))


def _ignored_token_batch() -> PackedBatch:
    """One token (id 0) whose label is ignored: a forward that counts nothing."""
    return collate_packed([{"input_ids": np.zeros(1, dtype=np.int32), "loss_mask": np.zeros(1, dtype=np.uint8),
                            "seq_start_id": np.zeros(1, dtype=np.int32)}])


def train_loop(
    run: Run,
    *,
    data_seed: int,
    metrics: MetricsLogger,
    stop_requested: Callable[[], bool] | None = None,
    on_stop: Callable[[], None] | None = None,
) -> None:
    """Train from `run.step` to `train.steps` (or `train.stop_after_steps` more).

    After every step: validation every `train.eval_every` steps and at the last one, a checkpoint
    every `checkpoint.save_every` steps and at the end. When `stop_requested()` turns true (a
    preemption signal, agreed by all ranks), the loop saves a checkpoint at once and calls
    `on_stop()` (e.g. requeue and exit).
    """
    tc, st = run.train, run.state
    batches = iterate_batches(
        run.train_rows, micro_batch_size=tc.micro_batch_size, global_batch_size=tc.global_batch_size,
        dp_rank=st.dp_rank, dp_size=st.dp, seed=data_seed, start_row=run.consumed_rows, pad_to=run.pad_to,
    )
    end = tc.steps if tc.stop_after_steps is None else min(tc.steps, run.step + tc.stop_after_steps)
    while run.step < end:
        _, micro_batches = next(batches)
        result = train_step(
            run.model, run.optimizer, micro_batches, normalization=tc.loss_normalization,
            moe_aux_loss_coeff=tc.moe_aux_loss_coeff, moe_expert_bias_update_rate=run.bias_rate,
            grad_clip=run.grad_clip, scheduler=run.scheduler, autocast_dtype=run.autocast_dtype,
            dp_group=st.dp_group, grad_reduction=run.grad_reduction, parallel=st, pipeline=run.pipeline,
        )
        run.step, run.consumed_rows = run.step + 1, run.consumed_rows + tc.global_batch_size
        record = result.metrics()
        validate = bool(run.val_batches) if run.validate is None else run.validate
        if validate and ((tc.eval_every and run.step % tc.eval_every == 0) or run.step == tc.steps):
            record["val_loss"] = evaluate(run.model, run.val_batches, dp_group=st.dp_group, autocast_dtype=run.autocast_dtype,
                                          parallel=st, pipeline=run.pipeline)
        metrics.log(run.step, record)
        stop = stop_requested is not None and stop_requested()
        if stop or (run.checkpoint_every and run.step % run.checkpoint_every == 0) or run.step == end:
            run.checkpoint_path = save_checkpoint(step=run.step, consumed_rows=run.consumed_rows, **run.checkpoint)
        if stop:
            log.warning("stop requested (preemption): checkpoint saved at step %d", run.step)
            if on_stop is not None:
                on_stop()
            return


__all__ = ["Run", "train_loop", "validation_batches"]
