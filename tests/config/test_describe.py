"""scripts/describe.py: composed configs described without a GPU or weights."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from nemotron_core.paths import CONF_DIR

SCRIPT = CONF_DIR.parent / "scripts" / "describe.py"


@pytest.fixture(scope="module")
def describe_mod():
    spec = importlib.util.spec_from_file_location("describe_script", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_30b_tp1ep8(describe_mod):
    cfg = describe_mod.compose_stage("stage1_sft", ["model=nano3_30b_a3b", "parallel=tp1ep8"])
    text = describe_mod.describe(cfg)
    assert "31.58B total / 3.23B active per token" in text
    assert "31,577,940,288" in text and "3,227,754,816" in text
    assert "23 mamba + 23 moe + 6 attention" in text
    assert "tp=1 pp=1 dp=8 ep=8 fsdp=true -> world size 8" in text
    assert "stage 0: layers 0-51" in text
    # tiny SFT train/data defaults: global batch 4 x pack 2048
    assert "tokens/step  8,192 = train.global_batch_size 4 x data.pack_size 2048" in text


def test_30b_pretrain_experiment(describe_mod):
    cfg = describe_mod.compose_stage("stage0_pretrain", ["experiment=nano3_30b_a3b_pretrain"])
    assert OmegaConf.is_missing(cfg.tokenizer, "path")  # describe must not need it
    text = describe_mod.describe(cfg, world_size=16)
    assert "31.58B total / 3.23B active" in text
    assert "dp=16 ep=8 fsdp=true -> world size 16 (dp derived from the world size)" in text
    assert "8,388,608 = train.global_batch_size 1024 x data.seq_length 8192" in text
    assert "22.04 GFLOP per token at seq 8192" in text
    assert "activation checkpointing on" in text


def test_tp4pp2_stages(describe_mod):
    cfg = describe_mod.compose_stage("stage1_sft", ["model=nano3_30b_a3b", "parallel=tp4pp2"])
    text = describe_mod.describe(cfg)
    assert "stage 0: layers 0-26" in text and "stage 1: layers 27-51" in text
    assert "world size 8" in text


def test_bad_layout_names_keys(describe_mod):
    cfg = describe_mod.compose_stage("stage1_sft", ["parallel=ep2", "parallel.ep=4"])
    with pytest.raises(ValueError, match="parallel.ep"):
        describe_mod.describe(cfg)


def test_script_smoke():
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "model=nano3_30b_a3b", "parallel=tp1ep8"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert "31.58B total / 3.23B active per token" in out.stdout
    assert "memory/rank" in out.stdout and "GiB" in out.stdout
