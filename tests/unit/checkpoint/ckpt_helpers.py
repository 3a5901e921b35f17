"""Checkpoint test helpers: a tiny model with every layer kind, trained with AdamW and a scheduler
(a module of its own: conftest modules are not importable by name, and spawned workers need it)."""

from __future__ import annotations

import torch

from nemotron_core.config.model import ModelConfig
from nemotron_core.model.nano3 import build_nano3
from nemotron_core.paths import asset_path

TOKENIZER_DIR = asset_path("tokenizer")


def tiny_config(**overrides) -> ModelConfig:
    """Pattern MEM*E- (Mamba, MoE, attention, dense MLP); vocab = the tiny tokenizer's 4096."""
    values = dict(
        name="ckpt_tiny",
        hybrid_override_pattern="MEM*E-",
        hidden_size=64,
        vocab_size=4096,
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
    values.update(overrides)
    return ModelConfig(**values)


def make_batch(seed: int, cfg: ModelConfig, *, batch: int = 2, seqlen: int = 16):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.vocab_size, (batch, seqlen + 1), generator=g)
    return ids[:, :-1], ids[:, 1:]


def train_step(model, optimizer, scheduler, batch) -> None:
    ids, labels = batch
    model(ids, labels=labels, return_logits=False).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()


def build_training(cfg: ModelConfig, *, seed: int, steps: int):
    """Model (init `seed`), AdamW, linear-warmup scheduler, after `steps` optimizer steps."""
    model = build_nano3(cfg, seed=seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=10)
    for i in range(steps):
        train_step(model, optimizer, scheduler, make_batch(100 + i, cfg))
    return model, optimizer, scheduler
