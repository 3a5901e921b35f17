"""peft adapter files from our LoRA layers (nemotron_core/peft/hf_adapter.py), without transformers."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from nemotron_core.checkpoint.hf import to_hf_state_dict
from nemotron_core.config.peft import PeftConfig
from nemotron_core.model import build_nano3
from nemotron_core.peft import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    apply_lora,
    check_hf_exportable,
    lora_modules,
    merge_adapter_into_hf,
    merge_lora,
    read_adapter,
    save_adapter,
    to_hf_adapter,
)

# z, x, C, dt of the Mamba layers (B left out: a zero block row band), attention, shared experts, MLP.
TARGETS = ["*.z_proj", "*.x_proj", "*.C_proj", "*.dt_proj", "*.q_proj", "*.o_proj",
           "*.shared_experts.up_proj", "*.shared_experts.down_proj", "layers.6.mixer.down_proj"]  # fmt: skip


def _adapted(cfg, targets=TARGETS, rank=4, alpha=12.0):
    model = build_nano3(cfg, seed=0).eval()
    peft = PeftConfig(name="lora", rank=rank, alpha=alpha, target_modules=targets)
    apply_lora(model, peft)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for mod in lora_modules(model).values():
            mod.lora_B.weight.copy_(torch.randn(mod.lora_B.weight.shape, generator=g) * 0.2)
    return model, peft


def test_fused_in_proj_is_block_structured_and_exact(small_cfg):
    model, _ = _adapted(small_cfg)
    adapter = to_hf_adapter(model, model_cfg=small_cfg)
    lora = adapter["layers.0.mixer.in_proj"]
    d_inner, bc, heads = 32, 16, 4
    assert lora.A.shape == (16, 32) and lora.B.shape == (2 * d_inner + 2 * bc + heads, 16)  # R = 4 parts x 4
    assert lora.scaling == 3.0 and lora.alpha == 48.0  # alpha_pattern = scaling x R keeps alpha / r
    rows = {"z": (0, 32), "x": (32, 64), "B": (64, 80), "C": (80, 96), "dt": (96, 100)}
    delta = lora.B @ lora.A * lora.scaling
    mixer = model.layers[0].mixer
    for part, (lo, hi) in rows.items():
        if part == "B":
            assert torch.count_nonzero(delta[lo:hi]) == 0
            continue
        mod = getattr(mixer, f"{part}_proj")
        ours = mod.lora_B.weight @ mod.lora_A.weight * mod.scaling
        assert (delta[lo:hi] - ours).abs().max() <= 1e-6
    # Off-diagonal blocks of B are exact zeros: each part's rows read only its own rank columns.
    assert torch.count_nonzero(lora.B[0:32, 4:]) == 0 and torch.count_nonzero(lora.B[32:64, :4]) == 0
    assert list(adapter) == [
        "layers.0.mixer.in_proj", "layers.1.mixer.shared_experts.up_proj", "layers.1.mixer.shared_experts.down_proj",
        "layers.2.mixer.in_proj", "layers.3.mixer.q_proj", "layers.3.mixer.o_proj",
        "layers.4.mixer.shared_experts.up_proj", "layers.4.mixer.shared_experts.down_proj",
        "layers.5.mixer.in_proj", "layers.6.mixer.down_proj",
    ]  # fmt: skip


def test_save_adapter_files(small_cfg, tmp_path):
    model, peft = _adapted(small_cfg)
    out = save_adapter(
        tmp_path / "adapter", model, peft, model_cfg=small_cfg, base_model_name_or_path="base/dir"
    )
    config = json.loads((out / ADAPTER_CONFIG).read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (4, 12.0, 0.0)
    assert config["base_model_name_or_path"] == "base/dir"
    assert config["rank_pattern"] == {f"layers.{i}.mixer.in_proj": 16 for i in (0, 2, 5)}
    assert config["alpha_pattern"] == {f"layers.{i}.mixer.in_proj": 48.0 for i in (0, 2, 5)}
    assert "layers.3.mixer.q_proj" in config["target_modules"] and len(config["target_modules"]) == 10
    tensors = load_file(str(out / ADAPTER_WEIGHTS))
    assert len(tensors) == 20
    assert tensors["base_model.model.backbone.layers.3.mixer.q_proj.lora_A.weight"].shape == (4, 32)
    assert tensors["base_model.model.backbone.layers.0.mixer.in_proj.lora_B.weight"].shape == (100, 16)
    assert torch.equal(
        tensors["base_model.model.backbone.layers.4.mixer.shared_experts.down_proj.lora_B.weight"],
        model.layers[4].mixer.shared_experts.down_proj.lora_B.weight,
    )
    with pytest.raises(FileExistsError):
        save_adapter(out, model, peft, model_cfg=small_cfg)


def test_read_and_merge_in_hf_space_equals_merge_lora(small_cfg, tmp_path):
    model, peft = _adapted(small_cfg)
    out = save_adapter(tmp_path / "adapter", model, peft, model_cfg=small_cfg)
    adapter = read_adapter(out)
    assert adapter["backbone.layers.0.mixer.in_proj"].scaling == 3.0
    assert adapter["backbone.layers.3.mixer.q_proj"].scaling == 3.0
    base_hf = to_hf_state_dict({k.replace(".base_layer", ""): v.clone() for k, v in model.state_dict().items()
                                if ".lora_" not in k}, small_cfg)  # fmt: skip
    merged_hf = merge_adapter_into_hf(base_hf, adapter)
    merge_lora(model)
    expected = to_hf_state_dict(model.state_dict(), small_cfg)
    assert set(merged_hf) == set(expected)
    changed = [k for k in expected if not torch.equal(base_hf[k], expected[k])]
    assert len(changed) == 10
    for k in expected:
        assert (merged_hf[k] - expected[k]).abs().max() <= 1e-6, k


def test_mamba_out_proj_is_not_exportable(small_cfg, tmp_path):
    model, peft = _adapted(small_cfg, targets=["*.q_proj", "*.out_proj"])
    with pytest.raises(
        ValueError, match=r"Mamba out_proj \(\['layers.0.mixer.out_proj'.*peft refuses LoRA on `out_proj`"
    ):
        save_adapter(tmp_path / "adapter", model, peft, model_cfg=small_cfg)
    assert not (tmp_path / "adapter").exists()
    with pytest.raises(ValueError, match="exclude_modules"):
        check_hf_exportable(["layers.2.mixer.out_proj"], model_cfg=small_cfg)
    check_hf_exportable(["layers.3.mixer.o_proj", "layers.0.mixer.dt_proj", "lm_head"], model_cfg=small_cfg)


def test_save_adapter_checks_the_config_it_is_given(small_cfg, tmp_path):
    model, peft = _adapted(small_cfg, targets=["*.q_proj"])
    with pytest.raises(ValueError, match="peft.rank=8"):
        save_adapter(tmp_path / "a", model, PeftConfig(name="lora", rank=8, alpha=12.0), model_cfg=small_cfg)
    with pytest.raises(ValueError, match="no LoRA layers"):
        save_adapter(tmp_path / "b", build_nano3(small_cfg, seed=0), peft, model_cfg=small_cfg)
