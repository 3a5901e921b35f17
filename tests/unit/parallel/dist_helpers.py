"""Shared by the expert-parallel / FSDP tests and their gloo worker processes (importable by name).

`spawn(worker, world, out_dir, *args)` starts `world` CPU processes with one gloo process group
(file:// init) and runs `worker(rank, world, out_dir, *args)` in each; workers save what they
computed under `out_dir` and the test compares it with the single-process step it runs itself.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
from torch.distributed.tensor import DTensor

from nemotron_core.config.model import ModelConfig
from nemotron_core.config.optim import OptimizerConfig, SchedulerConfig
from nemotron_core.data.packed import collate_packed
from nemotron_core.model.nano3 import build_nano3
from nemotron_core.train.optim import build_optimizer
from nemotron_core.train.schedule import build_scheduler
from nemotron_core.train.step import train_step

VOCAB = 128
GLOBAL_ROWS = 8
MICRO_BATCH = 2


def moe_config(**overrides) -> ModelConfig:
    """Pattern ME*E (two MoE layers), hidden 32, 4 experts top-2: experts divide ep 2 and 4."""
    cfg = ModelConfig(
        name="parallel_test",
        hybrid_override_pattern="ME*E",
        hidden_size=32,
        vocab_size=VOCAB,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        mamba_num_heads=4,
        mamba_head_dim=8,
        ssm_state_size=8,
        n_groups=2,
        chunk_size=8,
        n_routed_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=16,
        moe_shared_expert_intermediate_size=24,
        routed_scaling_factor=2.5,
        intermediate_size=40,
        init_std=0.1,
    )
    return dataclasses.replace(cfg, **overrides)


def random_rows(n: int = GLOBAL_ROWS, *, seed: int = 0) -> list[dict]:
    """`n` packed rows of 1-3 random documents (3-17 tokens), about 70% of labels trained."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        ids, mask, starts = [], [], []
        for _ in range(int(rng.integers(1, 4))):
            length = int(rng.integers(3, 18))
            starts.append(len(ids))
            ids += rng.integers(3, VOCAB, size=length).tolist()
            m = (rng.random(length) < 0.7).astype(int)
            m[-1] = 0
            mask += m.tolist()
        rows.append({"input_ids": ids, "loss_mask": mask, "seq_start_id": starts})
    return rows


def rank_batches(dp_rank: int, dp: int):
    """This dp rank's contiguous share of the global batch, in micro-batches (as `iterate_batches`)."""
    rows = random_rows()
    share = len(rows) // dp
    mine = rows[dp_rank * share : (dp_rank + 1) * share]
    return [collate_packed(mine[k : k + MICRO_BATCH]) for k in range(0, len(mine), MICRO_BATCH)]


def build_model(seed: int = 0, **overrides):
    return build_nano3(moe_config(**overrides), seed=seed)


OPT = OptimizerConfig(name="adamw", lr=1e-3, weight_decay=0.1, grad_clip=1.0, eps=1e-5, implementation="auto")


def build_optimizer_and_scheduler(model):
    """AdamW (eps 1e-5: see tests/unit/train/train_helpers.py) and a constant schedule."""
    optimizer = build_optimizer(model, OPT, device_type="cpu")
    scheduler = build_scheduler(optimizer, sched=SchedulerConfig(name="constant"), peak_lr=OPT.lr, min_lr=0.0,
                                total_steps=10)
    return optimizer, scheduler


def one_step(model, batches, *, dp_group=None, grad_reduction: str = "sum", parallel=None):
    """One `train_step` with clipping 1.0, aux loss and expert-bias update on ->
    (optimizer, scheduler, StepResult)."""
    optimizer, scheduler = build_optimizer_and_scheduler(model)
    result = train_step(
        model, optimizer, batches, moe_aux_loss_coeff=1e-2, moe_expert_bias_update_rate=1e-3,
        grad_clip=OPT.grad_clip, scheduler=scheduler, dp_group=dp_group, grad_reduction=grad_reduction,
        parallel=parallel,
    )
    return optimizer, scheduler, result


@functools.cache
def reference_step(**overrides):
    """The single-process step on the whole global batch -> (full state, StepResult); cached."""
    torch.manual_seed(0)
    model = build_model(**overrides)
    _, _, result = one_step(model, rank_batches(0, 1))
    return full_state(model), result


def full_state(model) -> dict[str, torch.Tensor]:
    """Parameters and buffers, DTensors gathered (a collective: every rank calls it)."""
    out = {}
    for k, v in model.state_dict().items():
        v = v.full_tensor() if isinstance(v, DTensor) else v
        out[k] = v.detach().clone()
    return out


def moments(model, optimizer) -> dict[str, torch.Tensor]:
    """Adam's exp_avg / exp_avg_sq of every parameter by name, gathered (a collective)."""
    sd = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(flatten_optimizer_state_dict=True))
    return {k: (v.full_tensor() if isinstance(v, DTensor) else v).clone() for k, v in sd.items() if "exp_avg" in k}


def probe_input():
    """A fixed packed input for logits comparisons: (input_ids [1, T], cu_seqlens)."""
    b = collate_packed(random_rows(3, seed=7))
    return b.input_ids[None], b.cu_seqlens


def result_dict(r) -> dict:
    return {"loss": r.loss, "lm_loss": r.lm_loss, "moe_aux_loss": r.moe_aux_loss, "grad_norm": r.grad_norm,
            "moe_load": r.moe_load}


def compare(got: dict, want_state: dict, want_result, *, atol: float = 1e-5) -> dict[str, float]:
    """Assert a rank's step equals the reference; return the largest differences seen."""
    r = got["result"]
    loss_diff = max(abs(r[k] - getattr(want_result, k)) for k in ("loss", "lm_loss", "moe_aux_loss"))
    assert loss_diff <= atol, (r, want_result)
    assert abs(r["grad_norm"] - want_result.grad_norm) <= 1e-4 * want_result.grad_norm
    assert torch.equal(r["moe_load"], want_result.moe_load)
    state = got["state"]
    assert state.keys() == want_state.keys()
    param_diff = max(float((state[k] - want_state[k]).abs().max()) for k in want_state)
    assert param_diff <= atol, param_diff
    biases = [k for k in want_state if k.endswith("e_score_correction_bias")]
    assert biases and all(bool(want_state[k].abs().sum() > 0) for k in biases)  # the update ran
    assert all(torch.equal(state[k], want_state[k]) for k in biases)
    return {"loss": loss_diff, "params": param_diff}


# --------------------------------------------------------------------------- process launch
def _entry(rank: int, world: int, init_file: str, worker, out_dir: str, args: tuple) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=120))  # a mismatched collective fails, never hangs
    try:
        worker(rank, world, out_dir, *args)
    finally:
        dist.destroy_process_group()


def spawn(worker, world: int, out_dir, *args) -> None:
    """Run `worker(rank, world, out_dir, *args)` in `world` gloo processes (one process group)."""
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    init_file = os.path.join(out_dir, "dist_init")
    mp.spawn(_entry, args=(world, init_file, worker, out_dir, args), nprocs=world, join=True)


def load_rank(out_dir, rank: int) -> dict:
    return torch.load(os.path.join(os.fspath(out_dir), f"rank{rank}.pt"), weights_only=False)


def save_rank(out_dir: str, rank: int, obj) -> None:
    torch.save(obj, os.path.join(out_dir, f"rank{rank}.pt"))
