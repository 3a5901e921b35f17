"""Building the model: meta-device 30B size and speed, init, structure, no parallelism imports."""

from __future__ import annotations

import ast
import importlib
import math
import pkgutil
import re
import time
from pathlib import Path

import torch
from torch.utils.checkpoint import checkpoint

import nemotron_core.model as model_pkg
from nemotron_core.model import Block, build_nano3, count_model_parameters


def test_meta_30b_builds_fast_with_exact_parameter_counts(preset, repo_root):
    cfg = preset(repo_root / "conf/model/nano3_30b_a3b.yaml")
    build_nano3(
        preset(repo_root / "conf/model/nano3_tiny.yaml"), device="meta"
    )  # one-off meta-kernel warm-up
    start = time.perf_counter()
    model = build_nano3(cfg, device="meta")
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"meta build took {elapsed:.2f}s"
    assert all(p.is_meta for p in model.parameters())
    total, active = count_model_parameters(model)
    assert total == 31_577_940_288
    assert active == 3_227_754_816
    kinds = [b.kind for b in model.layers]
    assert (kinds.count("mamba"), kinds.count("moe"), kinds.count("attention")) == (23, 23, 6)
    assert [i for i, k in enumerate(kinds) if k == "attention"] == [5, 12, 19, 26, 33, 42]
    mamba = model.layers[0].mixer
    in_proj_rows = sum(getattr(mamba, f"{p}_proj").weight.shape[0] for p in ("z", "x", "B", "C", "dt"))
    assert in_proj_rows == 10304


def test_tiny_preset_builds_and_runs(preset, repo_root):
    cfg = preset(repo_root / "conf/model/nano3_tiny.yaml")
    model = build_nano3(cfg, seed=0)
    out = model(
        torch.randint(0, cfg.vocab_size, (1, 70)), cu_seqlens=torch.tensor([0, 33, 70], dtype=torch.int32)
    )
    assert out.logits.shape == (1, 70, cfg.vocab_size)
    assert torch.isfinite(out.logits).all()
    assert out.moe_load.shape == (cfg.hybrid_override_pattern.count("E"), cfg.n_routed_experts)


def test_init_follows_reference(make_cfg):
    cfg = make_cfg(hidden_size=256, init_std=0.02, mamba_num_heads=16, n_groups=4)
    model = build_nano3(cfg, seed=0)
    out_std = 0.02 / math.sqrt(2 * cfg.num_layers)
    assert abs(model.embeddings.weight.std().item() - 0.02) < 1e-3
    assert abs(model.layers[0].mixer.x_proj.weight.std().item() - 0.02) < 1e-3
    assert abs(model.layers[0].mixer.out_proj.weight.std().item() - out_std) < 5e-4
    assert abs(model.layers[1].mixer.experts.up_proj.std().item() - 0.02) < 1e-3
    assert torch.equal(model.layers[0].norm.weight, torch.ones(256))
    assert torch.equal(model.layers[0].mixer.norm.weight, torch.ones(cfg.mamba_d_inner))
    assert torch.equal(
        model.layers[1].mixer.router.e_score_correction_bias, torch.zeros(cfg.n_routed_experts)
    )
    # Same seed -> same weights; different seed -> different.
    again = build_nano3(cfg, seed=0).state_dict()
    other = build_nano3(cfg, seed=1).state_dict()
    sd = model.state_dict()
    assert all(torch.equal(sd[k], again[k]) for k in sd)
    assert not torch.equal(sd["lm_head.weight"], other["lm_head.weight"])


def _parse_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_model_package_imports_no_parallelism():
    files = sorted(Path(model_pkg.__file__).parent.rglob("*.py"))
    assert len(files) >= 6
    forbidden = ("torch.distributed", "DTensor", "DeviceMesh", "nemotron_core.parallel")
    for f in files:
        for name in _parse_imports(f):
            assert not any(bad in name for bad in forbidden), f"{f.name} imports {name}"
        assert "torch.distributed" not in f.read_text(), f.name
    for mod in pkgutil.iter_modules(model_pkg.__path__):
        importlib.import_module(f"nemotron_core.model.{mod.name}")


class _Checkpointed(torch.nn.Module):
    """What an activation-checkpointing pass does to each block of `model.layers`."""

    def __init__(self, block: Block):
        super().__init__()
        self.block = block

    def forward(self, h, info, *state):
        return checkpoint(self.block, h, info, *state, use_reentrant=False)


def test_per_block_activation_checkpointing_gives_same_loss_and_grads(small_cfg):
    model = build_nano3(small_cfg, seed=0)
    ids = torch.randint(0, small_cfg.vocab_size, (1, 24))
    labels = torch.randint(0, small_cfg.vocab_size, (1, 24))
    cu = torch.tensor([0, 10, 24], dtype=torch.int32)

    def run():
        model.zero_grad()
        out = model(ids, cu_seqlens=cu, labels=labels)
        (out.loss + 1e-2 * out.moe_aux_loss.sum()).backward()
        return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    loss_a, grads_a = run()
    assert isinstance(model.layers, torch.nn.ModuleList)
    for i, block in enumerate(model.layers):
        model.layers[i] = _Checkpointed(block)
    loss_b, grads_b = run()
    assert torch.equal(loss_a, loss_b)
    for name, g in grads_a.items():
        other = grads_b[re.sub(r"^layers\.(\d+)\.", r"layers.\1.block.", name)]
        assert (g - other).abs().max() <= 1e-6, name


def test_module_counts_equal_sizing_arithmetic(preset, repo_root, make_cfg):
    from nemotron_core.model.sizing import count_parameters

    cfgs = [
        preset(repo_root / "conf/model/nano3_30b_a3b.yaml"),
        preset(repo_root / "conf/model/nano3_tiny.yaml"),
        make_cfg(),
        make_cfg(mamba_proj_bias=True, attention_bias=True, use_conv_bias=False, mlp_bias=True),
    ]
    for cfg in cfgs:
        arithmetic = count_parameters(cfg)
        assert count_model_parameters(build_nano3(cfg, device="meta")) == (
            arithmetic.total,
            arithmetic.active,
        )
