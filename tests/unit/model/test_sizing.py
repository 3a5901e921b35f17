"""Parameter counts and FLOPs from `ModelConfig` arithmetic (nemotron_core/model/sizing.py)."""

from __future__ import annotations

import dataclasses

import pytest

from nemotron_core.config import load_model_preset
from nemotron_core.config.model import ModelConfig
from nemotron_core.model.sizing import (
    count_parameters,
    format_count,
    layer_active_params,
    layer_params,
    training_flops_per_token,
)

load_model = load_model_preset


@pytest.fixture(scope="module")
def big() -> ModelConfig:
    return load_model("nano3_30b_a3b")


@pytest.fixture(scope="module")
def tiny() -> ModelConfig:
    return load_model("nano3_tiny")


def test_30b_counts_match_published(big):
    counts = count_parameters(big)
    assert counts.total == 31_577_940_288
    assert counts.active == 3_227_754_816
    assert counts.embedding == 131072 * 2688
    assert counts.active_with_embedding == 3_580_076_352  # nano3.md: 3.58B with the input embedding
    assert counts.layers_by_kind == {"mamba": 23, "moe": 23, "attention": 6}
    assert counts.router_bias == 23 * 128
    assert format_count(counts.total) == "31.58B" and format_count(counts.active) == "3.23B"


def test_30b_per_kind(big):
    h = 2688
    mamba = h + h * 10304 + (4096 + 2048) * 4 + (4096 + 2048) + 3 * 64 + 4096 + 4096 * h
    attention = h + h * 4096 + 2 * h * 256 + 4096 * h
    moe = h + 128 * h + 128 + 128 * 2 * h * 1856 + 2 * h * 3712
    assert layer_params(big, "mamba") == mamba == 38_744_896
    assert layer_params(big, "attention") == attention == 23_399_040
    assert layer_params(big, "moe") == moe == 1_297_468_160
    assert layer_active_params(big, "moe") == moe - 122 * 2 * h * 1856 == 80_169_728


def test_tiny_counts_by_hand(tiny):
    # conf/model/nano3_tiny.yaml: hidden 128, vocab 4096; attention 4 heads / 2 KV x 32;
    # Mamba 8 heads x 16 (d_inner 128), state 16, 4 groups, kernel 4 (conv bias);
    # 8 experts top-2 of width 64, shared 128; dense MLP 256; pattern MEM*EM-MEM*E.
    mamba = {
        "pre_norm": 128,
        "in_proj": 128 * (128 + 128 + 4 * 16 + 4 * 16 + 8),  # z, x, B, C, dt = 392 outputs
        "conv1d": (128 + 2 * 4 * 16) * 4 + (128 + 2 * 4 * 16),
        "dt_bias": 8,
        "A_log": 8,
        "D": 8,
        "norm": 128,
        "out_proj": 128 * 128,
    }
    attention = 128 + 128 * 128 + 128 * 64 + 128 * 64 + 128 * 128
    expert = 128 * 64 + 64 * 128
    moe = 128 + 8 * 128 + 8 + 8 * expert + (128 * 128 + 128 * 128)
    mlp = 128 + 128 * 256 + 256 * 128
    assert sum(mamba.values()) == 68_120
    assert (attention, moe, mlp, expert) == (49_280, 165_000, 65_664, 16_384)

    counts = count_parameters(tiny)
    assert counts.per_kind == {"mamba": 68_120, "moe": 165_000, "attention": 49_280, "mlp": 65_664}
    assert counts.layers_by_kind == {"mamba": 5, "moe": 4, "attention": 2, "mlp": 1}
    assert counts.per_kind_active["moe"] == moe - 6 * expert == 66_696
    assert counts.per_layer[:4] == (68_120, 165_000, 68_120, 49_280)
    total = 4096 * 128 * 2 + 128 + 5 * 68_120 + 4 * 165_000 + 2 * 49_280 + 65_664
    assert counts.total == total == 2_213_528
    assert counts.active == total - 4096 * 128 - 4 * 6 * expert == 1_296_024
    assert counts.non_embedding == total - 524_288


def test_biases_and_tying_change_counts(tiny):
    base = count_parameters(tiny)

    def delta(**changes) -> int:
        return count_parameters(dataclasses.replace(tiny, **changes)).total - base.total

    # q (128) + k (64) + v (64) + o (128) per attention layer
    assert delta(attention_bias=True) == 2 * (128 + 64 + 64 + 128)
    # in_proj 392 + out_proj 128 per Mamba layer
    assert delta(mamba_proj_bias=True) == 5 * (392 + 128)
    assert delta(use_conv_bias=False) == -5 * 256
    # experts: 8 x (64 + 128); shared (128 + 128); dense MLP (256 + 128)
    assert delta(mlp_bias=True) == 4 * (128 + 128) + (256 + 128)  # shared expert + dense MLP; routed experts have none
    tied = count_parameters(dataclasses.replace(tiny, tie_word_embeddings=True))
    assert tied.total == base.total - 4096 * 128 and tied.lm_head == 0
    assert tied.active == base.active  # the tied matrix is still the output projection


def test_unknown_layer_character_names_key(tiny):
    with pytest.raises(ValueError, match="model.hybrid_override_pattern"):
        count_parameters(dataclasses.replace(tiny, hybrid_override_pattern="MEX"))


def test_training_flops_per_token_30b(big):
    flops = training_flops_per_token(big, seq_len=8192)
    assert flops.dense == 6 * 3_227_754_816
    assert flops.attention == 12 * 6 * 32 * 128 * 8192
    assert flops.ssm == 21 * 23 * 4096 * 128
    assert flops.total == 22_035_679_104
    # nano3.md section 7: 328 model TFLOP/s at 14.7k tokens/s/GPU ("about 22 GFLOP per token")
    anchor = 328e12 / 14.7e3
    assert abs(flops.total / anchor - 1) < 0.02
