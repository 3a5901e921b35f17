"""Shared by the train tests and the data-parallel worker processes (importable by name)."""

from __future__ import annotations

import numpy as np
import torch

from nemotron_core.config.model import ModelConfig
from nemotron_core.config.optim import OptimizerConfig, SchedulerConfig
from nemotron_core.data.packed import collate_packed
from nemotron_core.model.nano3 import build_nano3
from nemotron_core.train.optim import build_optimizer
from nemotron_core.train.schedule import build_scheduler
from nemotron_core.train.step import train_step

VOCAB = 256


def tiny_config() -> ModelConfig:
    """Every layer kind (pattern MEM*E-), hidden 64, vocab 256, 4 experts top-2, chunk 8."""
    return ModelConfig(
        name="train_test",
        hybrid_override_pattern="MEM*E-",
        hidden_size=64,
        vocab_size=VOCAB,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        mamba_num_heads=4,
        mamba_head_dim=16,
        ssm_state_size=8,
        n_groups=2,
        chunk_size=8,
        n_routed_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        moe_shared_expert_intermediate_size=48,
        routed_scaling_factor=2.5,
        intermediate_size=96,
        init_std=0.05,
    )


def random_rows(n: int = 8, *, seed: int = 0) -> list[dict]:
    """`n` packed rows of 1-3 random documents (3-17 tokens); aligned masks (last token 0), some
    tokens masked out, and row 2's first document has no trainable token at all."""
    rng = np.random.default_rng(seed)
    rows = []
    for r in range(n):
        ids, mask, starts = [], [], []
        for d in range(int(rng.integers(1, 4))):
            length = int(rng.integers(3, 18))
            starts.append(len(ids))
            ids += rng.integers(3, VOCAB, size=length).tolist()
            m = (rng.random(length) < 0.7).astype(int)
            m[-1] = 0
            if r == 2 and d == 0:
                m[:] = 0
            mask += m.tolist()
        rows.append({"input_ids": ids, "loss_mask": mask, "seq_start_id": starts})
    return rows


def micro_batches(rows: list[dict], micro_batch_size: int):
    return [collate_packed(rows[k : k + micro_batch_size]) for k in range(0, len(rows), micro_batch_size)]


def optimizer_config(**kw) -> OptimizerConfig:
    values = dict(name="adamw", lr=1e-3, weight_decay=0.1, grad_clip=1.0, implementation="foreach")
    values.update(kw)
    return OptimizerConfig(**values)


def one_step(
    batches,
    *,
    normalization: str = "token",
    model=None,
    dp_group=None,
    grad_reduction: str = "sum",
    seed: int = 0,
    optimizer: str = "adamw",
):
    """Fresh seeded model, optimizer + scheduler, one train_step -> (model, StepResult).

    optimizer="adamw": `build_optimizer` with eps 1e-5 (why: the first Adam update is
    g / (|g| + eps), about sign(g); with eps 1e-8 fp32 summation-order noise (1e-7 relative) in a
    gradient near 1e-9 moves a parameter by up to 5e-6, which says nothing about the loss.)
    optimizer="sgd": SGD with lr 1 and no clipping, so the parameter change IS the gradient
    (AdamW and clipping both hide a wrong overall gradient scale; this does not).
    """
    torch.manual_seed(seed)
    if model is None:
        model = build_nano3(tiny_config(), seed=seed)
    opt_cfg = optimizer_config(eps=1e-5)
    if optimizer == "sgd":
        opt_cfg = optimizer_config(lr=1.0, grad_clip=0.0)
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    else:
        optimizer = build_optimizer(model, opt_cfg, device_type="cpu")
    scheduler = build_scheduler(
        optimizer, sched=SchedulerConfig(name="constant"), peak_lr=opt_cfg.lr, min_lr=0.0, total_steps=10
    )
    result = train_step(
        model,
        optimizer,
        batches,
        normalization=normalization,
        moe_aux_loss_coeff=1e-2,
        moe_expert_bias_update_rate=1e-3,
        grad_clip=opt_cfg.grad_clip,
        scheduler=scheduler,
        dp_group=dp_group,
        grad_reduction=grad_reduction,
    )
    return model, result


def state(model) -> dict[str, torch.Tensor]:
    """Parameters and buffers, detached copies (unwrapping a DDP `module.` prefix)."""
    return {k.removeprefix("module."): v.detach().clone() for k, v in model.state_dict().items()}


def dp_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    """One rank of the dp2 test: half the global batch (2 micro-batches of 2 rows), one step
    with an unwrapped replica (grad_reduction="all_reduce") and with DDP (grad_reduction="mean")."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        rows = random_rows()
        share = len(rows) // world_size
        batches = micro_batches(rows[rank * share : (rank + 1) * share], 2)
        out = {}
        group = dist.group.WORLD
        for norm in ("token", "sequence"):
            model, r = one_step(batches, normalization=norm, dp_group=group, grad_reduction="all_reduce")
            out["all_reduce", norm, "adamw"] = (state(model), r)
        model, r = one_step(batches, dp_group=group, grad_reduction="all_reduce", optimizer="sgd")
        out["all_reduce", "token", "sgd"] = (state(model), r)
        for opt in ("adamw", "sgd"):
            ddp = DDP(build_nano3(tiny_config(), seed=0))
            model, r = one_step(batches, model=ddp, dp_group=group, grad_reduction="mean", optimizer=opt)
            out["ddp_mean", "token", opt] = (state(model), r)
        torch.save(out, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()
