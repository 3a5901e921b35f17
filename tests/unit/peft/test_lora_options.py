"""LoRA options users bring from NeMo RL, AutoModel and Megatron-Bridge (nemotron_core/peft/lora.py):
exact adapted module sets per pattern set, conflicts, dropout position and lora_A inits."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from nemotron_core.config import load_model_preset
from nemotron_core.config.peft import DEFAULT_TARGET_MODULES, PeftConfig
from nemotron_core.lineage import Lineage
from nemotron_core.model import build_nano3
from nemotron_core.peft import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    LoRALinear,
    apply_lora,
    check_hf_exportable,
    init_lora_weights,
    lora_modules,
    save_adapter,
    select_lora_targets,
)
from nemotron_core.peft.lora import MODULE_ALIASES


def _lora(**kw) -> PeftConfig:
    return PeftConfig(name="lora", **kw)


MAMBA_IN = ["z_proj", "x_proj", "B_proj", "C_proj", "dt_proj"]
# every nn.Linear of the small model (pattern MEM*EM-), in model order
ALL_LINEAR = (
    [f"layers.0.mixer.{m}" for m in MAMBA_IN + ["out_proj"]]
    + ["layers.1.mixer.shared_experts.up_proj", "layers.1.mixer.shared_experts.down_proj"]
    + [f"layers.2.mixer.{m}" for m in MAMBA_IN + ["out_proj"]]
    + [f"layers.3.mixer.{m}" for m in ("q_proj", "k_proj", "v_proj", "o_proj")]
    + ["layers.4.mixer.shared_experts.up_proj", "layers.4.mixer.shared_experts.down_proj"]
    + [f"layers.5.mixer.{m}" for m in MAMBA_IN + ["out_proj"]]
    + ["layers.6.mixer.up_proj", "layers.6.mixer.down_proj", "lm_head"]
)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        # bare names match the last component (Hugging Face peft / NeMo RL style lists)
        ({"target_modules": ["q_proj", "o_proj"]}, ["layers.3.mixer.q_proj", "layers.3.mixer.o_proj"]),
        ({"target_modules": ["up_proj"]}, ["layers.1.mixer.shared_experts.up_proj", "layers.4.mixer.shared_experts.up_proj",
                                           "layers.6.mixer.up_proj"]),
        # fused Hugging Face NemotronH name -> our split Mamba projections
        ({"target_modules": ["in_proj"]}, [f"layers.{i}.mixer.{m}" for i in (0, 2, 5) for m in MAMBA_IN]),
        ({"target_modules": ["layers.2.mixer.in_proj"]}, [f"layers.2.mixer.{m}" for m in MAMBA_IN]),
        # Megatron-Bridge names
        ({"target_modules": ["linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"]},
         ["layers.1.mixer.shared_experts.up_proj", "layers.1.mixer.shared_experts.down_proj",
          "layers.3.mixer.q_proj", "layers.3.mixer.k_proj", "layers.3.mixer.v_proj", "layers.3.mixer.o_proj",
          "layers.4.mixer.shared_experts.up_proj", "layers.4.mixer.shared_experts.down_proj",
          "layers.6.mixer.up_proj", "layers.6.mixer.down_proj"]),
        # wildcards: character classes and single-character ?
        ({"target_modules": ["layers.[3-6].*_proj"], "exclude_modules": ["*.shared_experts.*"]},
         ["layers.3.mixer.q_proj", "layers.3.mixer.k_proj", "layers.3.mixer.v_proj", "layers.3.mixer.o_proj"]
         + [f"layers.5.mixer.{m}" for m in MAMBA_IN + ["out_proj"]] + ["layers.6.mixer.up_proj", "layers.6.mixer.down_proj"]),
        ({"target_modules": ["*.mixer.?_proj"]},
         [f"layers.{i}.mixer.{m}" for i in (0, 2) for m in ("z_proj", "x_proj", "B_proj", "C_proj")]
         + [f"layers.3.mixer.{m}" for m in ("q_proj", "k_proj", "v_proj", "o_proj")]
         + [f"layers.5.mixer.{m}" for m in ("z_proj", "x_proj", "B_proj", "C_proj")]),
        # match_all_linear: every nn.Linear, lm_head and Mamba out_proj included, minus exclusions
        ({"match_all_linear": True}, ALL_LINEAR),
        ({"match_all_linear": True, "exclude_modules": ["out_proj", "lm_head"]},
         [n for n in ALL_LINEAR if not n.endswith("out_proj") and n != "lm_head"]),
        # the default set minus a layer
        ({"exclude_modules": ["layers.0.*", "layers.[45].*"]},
         ["layers.1.mixer.shared_experts.up_proj", "layers.1.mixer.shared_experts.down_proj",
          "layers.2.mixer.z_proj", "layers.2.mixer.x_proj",
          "layers.3.mixer.q_proj", "layers.3.mixer.k_proj", "layers.3.mixer.v_proj", "layers.3.mixer.o_proj"]),
    ],
)  # fmt: skip
def test_adapted_module_names_are_exactly(small_cfg, options, expected):
    model = build_nano3(small_cfg, seed=0)
    assert select_lora_targets(model, _lora(**options)) == expected
    assert not lora_modules(model)  # selecting changes nothing
    assert apply_lora(model, _lora(**options)) == expected == list(lora_modules(model))


def test_all_linear_is_every_linear(small_cfg):
    model = build_nano3(small_cfg, seed=0)
    assert ALL_LINEAR == [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert set(MODULE_ALIASES) == {"in_proj", "linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"}


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"match_all_linear": True, "target_modules": ["*.q_proj"]},
         r"peft\.match_all_linear=true adapts every nn\.Linear, which conflicts with peft\.target_modules=\['\*\.q_proj'\]"),
        ({"target_modules": ["*.q_proj", "*.k_proj"], "exclude_modules": ["*.q_proj"]},
         r"peft\.exclude_modules removes every module matched by peft\.target_modules pattern '\*\.q_proj' "
         r"\(\['layers\.3\.mixer\.q_proj'\]\): the two lists conflict"),
        ({"match_all_linear": True, "exclude_modules": ["*"]}, r"removes every module matched by peft\.match_all_linear"),
        ({"target_modules": ["in_proj"], "exclude_modules": ["layers.*.mixer.*"]}, r"pattern 'in_proj' \(= z_proj, x_proj, B_proj, C_proj, dt_proj\)"),
        ({"target_modules": ["k_projj"]}, r"peft\.target_modules pattern 'k_projj' matches no module"),
        ({"exclude_modules": ["linear_qkvv"]}, r"peft\.exclude_modules pattern 'linear_qkvv' matches no module"),
        ({"dropout_position": "middle"}, r"peft\.dropout_position must be one of \['pre', 'post'\], got 'middle'"),
        ({"lora_A_init": "gaussian"}, r"peft\.lora_A_init must be one of \['uniform', 'xavier'\], got 'gaussian'"),
    ],
)  # fmt: skip
def test_conflicts_and_unmatched_patterns_fail_naming_the_key(small_cfg, options, match):
    model = build_nano3(small_cfg, seed=0)
    with pytest.raises(ValueError, match=match):
        apply_lora(model, _lora(**options))
    assert not lora_modules(model) and all(p.requires_grad for p in model.parameters())


def test_aliases_on_a_model_without_the_layer_kind(make_cfg):
    dense = build_nano3(make_cfg(hybrid_override_pattern="*-"), seed=0)
    with pytest.raises(ValueError, match=r"pattern 'in_proj' \(= z_proj, x_proj, B_proj, C_proj, dt_proj\) matches no module"):
        apply_lora(dense, _lora(target_modules=["in_proj"]))
    # the default set need not match every kind: an attention + MLP model gets q/k/v/o
    assert select_lora_targets(dense, _lora()) == [f"layers.0.mixer.{m}" for m in ("q_proj", "k_proj", "v_proj", "o_proj")]
    mlp_only = build_nano3(make_cfg(hybrid_override_pattern="-"), seed=0)
    with pytest.raises(ValueError, match=r"the default peft\.target_modules .* match no module"):
        select_lora_targets(mlp_only, _lora())


# --------------------------------------------------------------------------- dropout position
def _layer(position: str, p: float = 0.5) -> LoRALinear:
    torch.manual_seed(0)
    mod = LoRALinear(nn.Linear(6, 5), rank=3, alpha=6.0, dropout=p, dropout_position=position)
    with torch.no_grad():
        mod.lora_B.weight.copy_(torch.randn(5, 3))
    return mod.train()


@pytest.mark.parametrize("position", ["pre", "post"])
def test_dropout_position(position):
    mod = _layer(position)
    x = torch.randn(4, 6)
    torch.manual_seed(123)
    got = mod(x)
    torch.manual_seed(123)  # the same draw, on the tensor dropout sees: the input [4, 6] or the update [4, 5]
    keep = nn.functional.dropout(torch.ones(4, 6 if position == "pre" else 5), p=0.5, training=True)
    base = mod.base_layer(x)
    if position == "pre":
        want = base + mod.lora_B(mod.lora_A(x * keep)) * 2.0
    else:
        want = base + (mod.lora_B(mod.lora_A(x)) * 2.0) * keep
    assert torch.equal(got, want)
    # post: a dropped output entry is exactly the base output; pre never zeroes whole outputs here
    dropped = keep == 0
    assert dropped.any()
    if position == "post":
        assert torch.equal(got[dropped], base[dropped])
    else:
        assert not torch.equal(got, base + mod.lora_B(mod.lora_A(x)) * 2.0)
    # eval: no dropout either way
    mod.eval()
    assert torch.equal(mod(x), base + mod.lora_B(mod.lora_A(x)) * 2.0)


def test_dropout_position_from_the_config(small_cfg):
    model = build_nano3(small_cfg, seed=0)
    apply_lora(model, _lora(target_modules=["q_proj"], dropout=0.1, dropout_position="post"))
    mod = model.get_submodule("layers.3.mixer.q_proj")
    assert mod.dropout_position == "post" and mod.lora_dropout.p == 0.1
    assert "dropout_position=post" in repr(mod)


# --------------------------------------------------------------------------- inits
@pytest.mark.parametrize("init", ["uniform", "xavier"])
def test_lora_A_init_and_zero_B(init):
    base = nn.Linear(512, 64)
    mod = LoRALinear(base, rank=16, alpha=32.0, lora_A_init=init)
    mod.reset_lora_parameters(torch.Generator().manual_seed(5))
    ref = torch.empty(16, 512)
    if init == "xavier":
        nn.init.xavier_normal_(ref, generator=torch.Generator().manual_seed(5))
    else:
        nn.init.kaiming_uniform_(ref, a=math.sqrt(5), generator=torch.Generator().manual_seed(5))
    assert torch.equal(mod.lora_A.weight, ref)
    assert torch.count_nonzero(mod.lora_B.weight) == 0
    a = mod.lora_A.weight
    if init == "xavier":  # normal, std sqrt(2 / (fan_in + fan_out)) = sqrt(2 / 528)
        assert abs(a.std().item() / math.sqrt(2 / 528) - 1) < 0.03 and a.abs().max() > 1 / math.sqrt(512)
    else:  # uniform on +-1/sqrt(fan_in)
        assert a.abs().max() <= 1 / math.sqrt(512) and abs(a.std().item() / (1 / math.sqrt(3 * 512)) - 1) < 0.03


def test_init_option_reaches_every_module_and_survives_meta_init(small_cfg):
    peft = _lora(target_modules=["in_proj", "q_proj"], lora_A_init="xavier")
    eager = build_nano3(small_cfg, seed=0)
    adapted = apply_lora(eager, peft, generator=torch.Generator().manual_seed(7))
    assert all(m.lora_A_init == "xavier" for m in lora_modules(eager).values())
    meta = build_nano3(small_cfg, device="meta")
    assert apply_lora(meta, peft) == adapted
    meta = meta.to_empty(device="cpu")
    init_lora_weights(meta, generator=torch.Generator().manual_seed(7))
    for name in adapted:
        assert torch.equal(meta.get_submodule(name).lora_A.weight, eager.get_submodule(name).lora_A.weight)
        assert torch.count_nonzero(meta.get_submodule(name).lora_B.weight) == 0


# --------------------------------------------------------------------------- shipped options, export
def test_shipped_all_linear_option_is_exportable():
    from omegaconf import OmegaConf

    from nemotron_core.paths import CONF_DIR

    values = OmegaConf.load(CONF_DIR / "peft" / "lora_all_linear.yaml")
    values.pop("defaults")
    peft = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(PeftConfig), values))
    cfg = load_model_preset("nano3_tiny")
    model = build_nano3(cfg, device="meta")
    adapted = select_lora_targets(model, peft)
    linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert adapted == [n for n in linear if not n.endswith(".mixer.out_proj")] and "lm_head" in adapted
    check_hf_exportable(adapted, model_cfg=cfg)
    assert peft.target_modules is None and len(DEFAULT_TARGET_MODULES) == 8


def test_adapter_carries_lineage_and_keeps_the_peft_files(small_cfg, tmp_path):
    model = build_nano3(small_cfg, seed=0)
    peft = _lora(rank=4, alpha=8.0)
    apply_lora(model, peft, generator=torch.Generator().manual_seed(1))
    plain = save_adapter(tmp_path / "plain", model, peft, model_cfg=small_cfg)
    lineage = Lineage(stage="stage1_sft/train", config={"peft": {"rank": 4}}, inputs=[{"path": "a.jsonl", "sha256": "f" * 64}])
    traced = save_adapter(tmp_path / "traced", model, peft, model_cfg=small_cfg, lineage=lineage)
    assert sorted(p.name for p in plain.iterdir()) == [ADAPTER_CONFIG, ADAPTER_WEIGHTS]
    assert sorted(p.name for p in traced.iterdir()) == [ADAPTER_CONFIG, ADAPTER_WEIGHTS, "lineage.json", "metadata.json"]
    for f in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):  # the peft layout is unchanged
        assert (plain / f).read_bytes() == (traced / f).read_bytes()
    got = json.loads((traced / "lineage.json").read_text())
    assert got["inputs"] == [{"path": "a.jsonl", "sha256": "f" * 64}] and got["stage"] == "stage1_sft/train"
    meta = json.loads((traced / "metadata.json").read_text())
    assert meta["kind"] == "lora_adapter" and meta["r"] == 4 and meta["model"] == small_cfg.name
