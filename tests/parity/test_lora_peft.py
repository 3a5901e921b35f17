"""Our LoRA == Hugging Face peft's on transformers' NemotronHForCausalLM (fp32, CPU).

`save_adapter` output loads with `peft.PeftModel.from_pretrained` onto an HF model holding the same
base weights and gives our adapted logits to 1e-5; `scripts/merge_lora.py` turns base + adapter
into a plain HF checkpoint with the same logits. As in test_hf_parity.py, the HF config gets
time_step_min = 1e-9 (transformers clamps the run-time dt there; we do not).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from nemotron_core.checkpoint.hf import (  # noqa: E402
    hf_config_dict,
    load_hf_checkpoint,
    save_hf_checkpoint,
    to_hf_state_dict,
)
from nemotron_core.config.peft import PeftConfig  # noqa: E402
from nemotron_core.model import build_nano3  # noqa: E402
from nemotron_core.peft import apply_lora, lora_modules, save_adapter  # noqa: E402

# Attention q/k/v/o, Mamba in_proj parts (z, x, C, dt; B left at zero), MoE shared experts, dense MLP.
TARGETS = ["*.q_proj", "*.k_proj", "*.v_proj", "*.o_proj", "*.z_proj", "*.x_proj", "*.C_proj", "*.dt_proj",
           "*.shared_experts.up_proj", "*.shared_experts.down_proj", "layers.6.mixer.up_proj"]  # fmt: skip
LORA = PeftConfig(name="lora", rank=4, alpha=6.0, target_modules=TARGETS)


def _base(cfg):
    model = build_nano3(cfg, seed=0).eval()
    with torch.no_grad():  # a bias that changes expert choices, as in test_hf_parity.py
        for block in model.layers:
            if block.kind == "moe":
                block.mixer.router.e_score_correction_bias.copy_(torch.randn(cfg.n_routed_experts) * 0.05)
    return model


def _hf_model(cfg, base_sd):
    d = hf_config_dict(cfg)
    d["time_step_min"] = 1e-9
    hf_cfg = transformers.NemotronHConfig(
        **{k: v for k, v in d.items() if k not in ("architectures", "model_type")}
    )
    hf_cfg._attn_implementation = "eager"
    hf = transformers.NemotronHForCausalLM(hf_cfg).eval()
    missing, unexpected = hf.load_state_dict(to_hf_state_dict(base_sd, cfg, layout="memory"), strict=True)
    assert not missing and not unexpected
    return hf


def _adapt(model, peft_cfg=LORA):
    apply_lora(model, peft_cfg)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # non-zero B, so the adapters change the logits
        for mod in lora_modules(model).values():
            mod.lora_B.weight.copy_(torch.randn(mod.lora_B.weight.shape, generator=g) * 0.3)
    return model


def _merge_script(repo_root):
    spec = importlib.util.spec_from_file_location(
        "merge_lora_script", repo_root / "scripts" / "merge_lora.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def _ids(cfg, n=23, seed=0):
    return torch.randint(0, cfg.vocab_size, (1, n), generator=torch.Generator().manual_seed(seed))


def test_saved_adapter_loads_in_peft_with_same_logits(make_cfg, tmp_path):
    cfg = make_cfg()
    model = _base(cfg)
    base_sd = {k: v.clone() for k, v in model.state_dict().items()}
    ids = _ids(cfg)
    with torch.no_grad():
        base_logits = model(ids).logits
    _adapt(model)
    with torch.no_grad():
        ours = model(ids).logits
    assert (ours - base_logits).abs().max() > 0.1  # the adapters matter

    adapter_dir = save_adapter(tmp_path / "adapter", model, LORA, model_cfg=cfg)
    hf = _hf_model(cfg, base_sd)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        peft_model = peft.PeftModel.from_pretrained(hf, adapter_dir).eval()
    key_warnings = [str(w.message) for w in caught if "keys" in str(w.message).lower()]
    assert not key_warnings, key_warnings  # no missing / unexpected adapter keys

    # peft built exactly our modules, with the fused in_proj at rank 4 parts x 4 and our scaling.
    layers = {n.removeprefix("base_model.model.model."): m for n, m in peft_model.named_modules()
              if isinstance(m, peft.tuners.lora.LoraLayer)}  # fmt: skip
    assert sorted(layers) == sorted(
        json.loads((adapter_dir / "adapter_config.json").read_text())["target_modules"]
    )
    assert len(layers) == 12  # in_proj x3, q/k/v/o, shared up/down in 2 MoE layers, MLP up
    in_proj = layers["layers.0.mixer.in_proj"]
    assert in_proj.r["default"] == 16 and in_proj.scaling["default"] == 1.5
    assert (
        layers["layers.3.mixer.q_proj"].r["default"] == 4
        and layers["layers.3.mixer.q_proj"].scaling["default"] == 1.5
    )
    q = model.layers[3].mixer.q_proj
    assert torch.equal(layers["layers.3.mixer.q_proj"].lora_B["default"].weight, q.lora_B.weight)

    with torch.no_grad():
        theirs = peft_model(input_ids=ids, use_cache=False).logits
    diff = (ours - theirs).abs().max().item()
    assert diff <= 1e-5, diff


def test_peft_rejects_lora_on_mamba_out_proj(make_cfg, tmp_path):
    """Why `save_adapter` refuses Mamba out_proj: peft will not build LoRA there for nemotron_h."""
    cfg = make_cfg()
    hf = _hf_model(cfg, _base(cfg).state_dict())
    with pytest.raises(ValueError, match="out_proj.*incompatible with Mamba-based models"):
        peft.get_peft_model(hf, peft.LoraConfig(r=4, target_modules=["out_proj"], task_type="CAUSAL_LM"))
    model = _adapt(_base(cfg), PeftConfig(name="lora", rank=4, alpha=6.0, target_modules=["*.out_proj"]))
    with pytest.raises(ValueError, match="exclude_modules"):
        save_adapter(tmp_path / "adapter", model, LORA, model_cfg=cfg)


@pytest.mark.parametrize("base_kind", ["hf", "checkpoint"])
def test_merge_lora_script_round_trip(make_cfg, tmp_path, repo_root, base_kind):
    cfg = make_cfg(time_step_min=1e-9)  # the exported config.json is what transformers reads
    model = _base(cfg)
    if base_kind == "hf":
        base_dir = save_hf_checkpoint(model, tmp_path / "base")
    else:
        from nemotron_core.checkpoint import save_checkpoint

        base_dir = save_checkpoint(
            tmp_path / "run", step=3, model=model, optimizer=None, scheduler=None, consumed_rows=0,
            tokenizer_dir=None, tokenizer_fp=None, lineage=None, keep_last=0,
        )  # fmt: skip
    _adapt(model)
    adapter_dir = save_adapter(tmp_path / "adapter", model, LORA, model_cfg=cfg)
    ids = _ids(cfg, seed=2)
    with torch.no_grad():
        ours = model(ids).logits

    out = tmp_path / "merged"
    if base_kind == "hf":  # the command line, once
        cmd = [sys.executable, str(repo_root / "scripts" / "merge_lora.py"), "--base", str(base_dir),
               "--adapter", str(adapter_dir), "--out", str(out)]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        assert "merged 12 adapted modules" in proc.stdout
    else:
        _merge_script(repo_root).merge_lora_checkpoint(
            tmp_path / "run", adapter_dir, out
        )  # a run dir: its newest checkpoint

    hf, info = transformers.NemotronHForCausalLM.from_pretrained(
        out, output_loading_info=True, attn_implementation="eager"
    )
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    with torch.no_grad():
        theirs = hf.eval()(input_ids=ids, use_cache=False).logits
    diff = (ours - theirs).abs().max().item()
    assert diff <= 1e-5, diff


def test_merge_lora_script_reads_adapters_written_by_peft(make_cfg, tmp_path, repo_root):
    """An adapter saved by peft itself (transformers 5 `model.` names, one in_proj pair per layer,
    a rank_pattern) merges into the same logits as peft's model."""
    cfg = make_cfg(time_step_min=1e-9)
    base_dir = save_hf_checkpoint(_base(cfg), tmp_path / "base")
    hf = transformers.NemotronHForCausalLM.from_pretrained(base_dir, attn_implementation="eager").eval()
    config = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["in_proj", "q_proj", "up_proj"], rank_pattern={"q_proj": 2},
        task_type="CAUSAL_LM",
    )  # fmt: skip
    peft_model = peft.get_peft_model(hf, config).eval()
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    peft_model.save_pretrained(tmp_path / "peft_adapter")
    ids = _ids(cfg, seed=4)
    with torch.no_grad():
        theirs = peft_model(input_ids=ids, use_cache=False).logits

    out = _merge_script(repo_root).merge_lora_checkpoint(
        base_dir, tmp_path / "peft_adapter", tmp_path / "merged"
    )
    with torch.no_grad():
        ours = load_hf_checkpoint(out).eval()(ids).logits
    diff = (ours - theirs).abs().max().item()
    assert diff <= 1e-5, diff
