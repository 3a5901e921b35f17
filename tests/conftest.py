"""Test-suite wide settings (no torch.compile, `gpu` tests skipped without CUDA) and the shared
model fixtures: a small config with every layer kind (`small_cfg`, `make_cfg`) and the YAML presets."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from nemotron_core.config import load_model_preset
from nemotron_core.config.model import ModelConfig

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # torch.compile stays off in tests
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (gpu marker)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT

def small_config(**overrides) -> ModelConfig:
    """Every layer kind (pattern MEM*EM-), chunk 8 so short documents cross chunk edges."""
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


@pytest.fixture
def make_cfg():
    """`make_cfg(**overrides)` -> small ModelConfig (conftest modules are not importable by name)."""
    return small_config


@pytest.fixture
def preset():
    """`preset(path)` -> ModelConfig from a conf/model YAML."""
    return load_model_preset
