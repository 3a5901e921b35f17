"""HF safetensors export/import round trips with transformers' NemotronHForCausalLM."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from nemotron_core.checkpoint.hf import (  # noqa: E402
    SAFE_INDEX,
    from_hf_state_dict,
    load_hf_checkpoint,
    model_config_from_hf,
    read_hf_tensors,
    save_hf_checkpoint,
    to_hf_state_dict,
)
from nemotron_core.model import build_nano3  # noqa: E402


def _model(cfg):
    model = build_nano3(cfg, seed=0).eval()
    with torch.no_grad():
        for block in model.layers:
            if block.kind == "moe":
                block.mixer.router.e_score_correction_bias.copy_(torch.randn(cfg.n_routed_experts) * 0.05)
    return model


def _ids(cfg, n=21, seed=0):
    return torch.randint(0, cfg.vocab_size, (1, n), generator=torch.Generator().manual_seed(seed))


def _from_pretrained(path):
    hf, info = transformers.NemotronHForCausalLM.from_pretrained(
        path, output_loading_info=True, attn_implementation="eager"
    )
    assert not info["missing_keys"], info["missing_keys"]
    assert not info["unexpected_keys"], info["unexpected_keys"]
    assert not info["mismatched_keys"], info["mismatched_keys"]
    return hf.eval()


@pytest.mark.parametrize("sharded", [False, True])
def test_export_loads_in_transformers_with_same_logits(make_cfg, tmp_path, sharded):
    # transformers clamps the run-time dt at config.time_step_min (we do not): a tiny value keeps the
    # clamp inactive (our dt init is floored at time_step_floor = 1e-4).
    cfg = make_cfg(time_step_min=1e-9)
    model = _model(cfg)
    out = save_hf_checkpoint(model, tmp_path / "export", max_shard_bytes=20_000 if sharded else 5 * 1024**3)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "nemotron_h"
    assert config["architectures"] == ["NemotronHForCausalLM"]
    assert config["hybrid_override_pattern"] == "MEM*EM-" and config["num_hidden_layers"] == 7
    if sharded:
        index = json.loads((out / SAFE_INDEX).read_text())
        assert len(set(index["weight_map"].values())) > 1
    else:
        assert (out / "model.safetensors").exists() and not (out / SAFE_INDEX).exists()
    on_disk = read_hf_tensors(out)
    assert "backbone.layers.1.mixer.experts.3.up_proj.weight" in on_disk
    assert on_disk["backbone.layers.0.mixer.in_proj.weight"].shape == (2 * 32 + 2 * 16 + 4, 32)
    assert on_disk["backbone.layers.1.mixer.gate.e_score_correction_bias"].dtype == torch.float32

    hf = _from_pretrained(out)
    assert hf.config.hybrid_override_pattern == cfg.hybrid_override_pattern
    ids = _ids(cfg)
    with torch.no_grad():
        ours = model(ids).logits
        theirs = hf(input_ids=ids, use_cache=False).logits
    assert (ours - theirs).abs().max() <= 1e-5
    # And back: our loader reads our own export.
    again = load_hf_checkpoint(out)
    with torch.no_grad():
        assert (again(ids).logits - ours).abs().max() == 0


def test_transformers_save_pretrained_loads_into_ours(make_cfg, tmp_path):
    cfg = make_cfg(time_step_min=1e-9)
    hf = _from_pretrained(save_hf_checkpoint(_model(cfg), tmp_path / "ours"))
    with torch.no_grad():  # make the HF weights differ from ours before saving them
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 1e-2)
    hf.save_pretrained(tmp_path / "hf")
    saved = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert "layers_block_type" in saved  # transformers' own layout, not the released pattern form
    model = load_hf_checkpoint(tmp_path / "hf")
    assert model.cfg.hybrid_override_pattern == cfg.hybrid_override_pattern
    ids = _ids(cfg, seed=1)
    with torch.no_grad():
        assert (model(ids).logits - hf(input_ids=ids, use_cache=False).logits).abs().max() <= 1e-5


def test_mapping_round_trip_both_layouts_and_config(make_cfg):
    cfg = make_cfg()
    sd = _model(cfg).state_dict()
    for layout in ("disk", "memory"):
        back = from_hf_state_dict(to_hf_state_dict(sd, cfg, layout=layout), cfg)
        assert set(back) == set(sd)
        assert all(torch.equal(back[k], sd[k]) for k in sd)
    bad = to_hf_state_dict(sd, cfg)
    bad["backbone.layers.0.mixer.unknown.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="not used"):
        from_hf_state_dict(bad, cfg)
    del bad["backbone.layers.0.mixer.unknown.weight"], bad["backbone.layers.0.mixer.A_log"]
    with pytest.raises(KeyError, match="A_log"):
        from_hf_state_dict(bad, cfg)
    from nemotron_core.checkpoint.hf import hf_config_dict

    assert model_config_from_hf(hf_config_dict(cfg), name=cfg.name) == cfg
