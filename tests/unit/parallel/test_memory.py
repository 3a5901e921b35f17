"""Per-rank parameter counts and memory of parallel layouts (nemotron_core/parallel/memory.py)."""

from __future__ import annotations

import dataclasses

import pytest
from omegaconf import OmegaConf

from nemotron_core.config.model import ModelConfig
from nemotron_core.config.parallel import ParallelConfig
from nemotron_core.model.sizing import count_parameters
from nemotron_core.parallel.memory import (
    estimate_memory,
    min_world_size,
    params_per_rank,
    pipeline_stage_layers,
    resolve_dp,
    validate_layout,
)
from nemotron_core.paths import CONF_DIR


def load(group: str, name: str, schema):
    node = OmegaConf.load(CONF_DIR / group / f"{name}.yaml")
    node.pop("defaults")
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), node))


@pytest.fixture(scope="module")
def tiny() -> ModelConfig:
    return load("model", "nano3_tiny", ModelConfig)


@pytest.fixture(scope="module")
def big() -> ModelConfig:
    return load("model", "nano3_30b_a3b", ModelConfig)


def layout(name: str, **changes) -> ParallelConfig:
    return dataclasses.replace(load("parallel", name, ParallelConfig), **changes)


# Tiny layer sizes (tests/unit/model/test_sizing.py derives them): Mamba 68,120 = pre-norm 128 +
# 67,992 split over tp; attention 49,280; MoE 165,000 = 128 pre-norm + router 1,024 + bias 8 +
# 8 experts x 16,384 + shared 32,768; MLP 65,664; embedding = lm_head = 524,288; final norm 128.


def test_single_holds_everything(tiny):
    (stage,) = params_per_rank(tiny, layout("single"))
    assert stage.params == count_parameters(tiny).total == 2_213_528
    assert stage.layers == range(0, 12)


def test_tp2_per_rank_params(tiny):
    mamba = 128 + 67_992 // 2  # 34,124
    attention = 128 + 16_384 // 2 + 2 * 128 * 32 + 16_384 // 2  # one KV head per rank: 24,704
    moe = 128 + 1_024 + 8 + 32_768 // 2 + 8 * 16_384 // 2  # 83,080
    mlp = 128 + 65_536 // 2  # 32,896
    expected = 5 * mamba + 2 * attention + 4 * moe + mlp + 2 * 524_288 // 2 + 128
    (stage,) = params_per_rank(tiny, layout("tp2"))
    assert stage.params == expected == 1_109_660


def test_tp4pp2_per_rank_params(tiny):
    # tp4: attention has 4 query heads (1 per rank) and 2 KV heads (each rank keeps one of them)
    mamba = 128 + 67_992 // 4  # 17,126
    attention = 128 + 16_384 // 4 + 2 * 128 * 32 + 16_384 // 4  # 16,512
    moe = 128 + 1_032 + 32_768 // 4 + 8 * 16_384 // 4  # 42,120
    mlp = 128 + 65_536 // 4  # 16,512
    # pp2 balances full stage sizes: MEM*EM + embedding (1,107,928) vs -MEM*E + lm_head + norm (1,105,600)
    assert pipeline_stage_layers(tiny, 2) == [range(0, 6), range(6, 12)]
    first, last = params_per_rank(tiny, layout("tp4pp2"))
    assert first.params == 524_288 // 4 + 3 * mamba + 2 * moe + attention == 283_202
    assert last.params == mlp + 2 * mamba + 2 * moe + attention + 524_288 // 4 + 128 == 282_716
    assert (first.layers, last.layers) == (range(0, 6), range(6, 12))


def test_ep2_per_rank_params(tiny):
    # each of the 2 ranks holds 4 of the 8 experts of every MoE layer; the rest is replicated
    (stage,) = params_per_rank(tiny, layout("ep2"))
    assert stage.params == 2_213_528 - 4 * 4 * 16_384 == 1_951_384


def test_fsdp2_per_rank_params(tiny):
    (stage,) = params_per_rank(tiny, layout("fsdp2"))
    assert stage.params == 2_213_528 // 2 == 1_106_764
    assert stage.unsharded == 2_213_528


def test_tp1ep8_per_rank_params(tiny):
    # dp=8 (the layout's minimum for ep8): one expert per MoE layer per rank, not FSDP-sharded
    # further (8 ranks / ep 8 = 1 holder each); everything else FSDP-sharded 8 ways.
    experts = 4 * 16_384
    non_expert = 2_213_528 - 4 * 8 * 16_384
    (stage,) = params_per_rank(tiny, layout("tp1ep8"))
    assert stage.params == non_expert // 8 + experts == 276_691


def test_30b_tp1ep8_and_tp4pp2(big):
    (stage,) = params_per_rank(big, layout("tp1ep8"))
    experts = 23 * 16 * 2 * 2688 * 1856
    non_expert = 31_577_940_288 - 23 * 128 * 2 * 2688 * 1856
    assert stage.params == non_expert // 8 + experts
    stages = params_per_rank(big, layout("tp4pp2"))
    assert [s.layers for s in stages] == [range(0, 27), range(27, 52)]
    assert sum(s.unsharded for s in stages) * 4 > 31_577_940_288  # norms/router replicated over tp


def test_pipeline_split_is_contiguous_and_balanced(big):
    full = count_parameters(big)
    for pp in (1, 2, 4, 8, 52):
        ranges = pipeline_stage_layers(big, pp)
        assert len(ranges) == pp and all(len(r) > 0 for r in ranges)
        assert [i for r in ranges for i in r] == list(range(52))
    # balanced: no pp4 stage exceeds a quarter of the model by more than one MoE layer
    sizes = [sum(full.per_layer[i] for i in r) for r in pipeline_stage_layers(big, 4)]
    sizes[0] += full.embedding
    sizes[-1] += full.lm_head + full.final_norm
    assert max(sizes) - full.total / 4 < full.per_kind["moe"]


@pytest.mark.parametrize(
    ("changes", "keys"),
    [
        ({"dp": 2, "ep": 4}, ["parallel.ep", "parallel.dp", "parallel.tp"]),
        ({"dp": 16, "ep": 16}, ["model.n_routed_experts", "parallel.ep"]),
        ({"tp": 8, "dp": 1}, ["model.num_attention_heads", "parallel.tp"]),
        ({"pp": 13}, ["parallel.pp", "model.hybrid_override_pattern"]),
    ],
)
def test_impossible_layouts_name_keys(tiny, changes, keys):
    with pytest.raises(ValueError) as err:
        validate_layout(tiny, layout("single", **changes))
    for key in keys:
        assert key in str(err.value)


def test_world_size_and_derived_dp():
    ep8 = layout("tp1ep8", dp=-1)
    assert min_world_size(ep8) == 8
    assert resolve_dp(ep8, 64) == 64
    assert min_world_size(layout("tp2", dp=-1, ep=8)) == 8  # ep8 over dp4 x tp2
    with pytest.raises(ValueError, match="parallel.pp x parallel.tp"):
        resolve_dp(layout("tp4pp2", dp=-1), 12)
    with pytest.raises(ValueError, match="parallel.dp"):
        resolve_dp(layout("tp4pp2"), 16)  # dp=1 written: world size must be 8


def test_memory_bytes_by_hand(tiny):
    # per token, elements kept per layer (2h common = 256):
    #   mamba 256 + 392 + 256 + 8 + 3*128 + 128*16/64 = 1,328; moe 256 + 8 + 2*(2*128 + 2*64) + 2*128 = 1,288
    #   attention 256 + 2*4*32 + 2*2*32 + 4 = 644; mlp 256 + 2*256 = 768
    per_token = 5 * 1_328 + 4 * 1_288 + 2 * 644 + 768  # 13,848
    logits = 8 * 4096  # fp32 logits + grad
    tokens = 2 * 16
    est = estimate_memory(tiny, layout("single"), micro_batch_size=2, seq_len=16, dtype="bf16")
    stage = est.worst
    assert stage.param_bytes == 4 * 2_213_528 and stage.grad_bytes == 4 * 2_213_528
    assert stage.optimizer_bytes == 8 * 2_213_528
    assert stage.activation_bytes == tokens * (2 * per_token + logits) == 1_934_848
    assert stage.fsdp_buffer_bytes == 0
    assert stage.total_bytes == 16 * 2_213_528 + 1_934_848

    ac = estimate_memory(
        tiny, layout("single"), micro_batch_size=2, seq_len=16, dtype="bf16", activation_checkpointing=True
    ).worst
    assert ac.activation_bytes == tokens * (2 * (12 * 128 + 1_328) + logits)
    fp32 = estimate_memory(tiny, layout("single"), micro_batch_size=2, seq_len=16, dtype="fp32").worst
    assert fp32.activation_bytes == tokens * (4 * per_token + logits)


def test_pipeline_in_flight_and_tp_division(tiny):
    est = estimate_memory(tiny, layout("tp4pp2"), micro_batch_size=1, seq_len=64, num_microbatches=8)
    assert [s.in_flight_microbatches for s in est.stages] == [2, 1]
    assert est.world_size == 8 and est.dp == 1
    fsdp = estimate_memory(tiny, layout("fsdp2"), micro_batch_size=1, seq_len=64).worst
    assert fsdp.fsdp_buffer_bytes == 2 * 2 * 524_288  # embedding all-gathered + prefetch, bf16
    with pytest.raises(ValueError, match="train.dtype"):
        estimate_memory(tiny, layout("single"), micro_batch_size=1, seq_len=8, dtype="fp16")
