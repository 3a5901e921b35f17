"""PEFT fixtures: the small every-layer-kind config of tests/unit/model (conftests do not import)."""

from __future__ import annotations

import dataclasses

import pytest

from nemotron_core.config.model import ModelConfig


def small_config(**overrides) -> ModelConfig:
    """Pattern MEM*EM- (Mamba, MoE, Mamba, attention, MoE, Mamba, dense MLP), as tests/unit/model."""
    cfg = ModelConfig(
        name="test_small",
        hybrid_override_pattern="MEM*EM-",
        hidden_size=32,
        vocab_size=64,
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
        time_step_min=0.01,
        time_step_max=0.2,
    )
    return dataclasses.replace(cfg, **overrides)


@pytest.fixture
def small_cfg() -> ModelConfig:
    return small_config()
