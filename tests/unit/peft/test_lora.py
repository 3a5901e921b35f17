"""LoRA wrapping, freezing, training and merging on our own module names (nemotron_core/peft/lora.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nemotron_core.config.peft import PeftConfig
from nemotron_core.model import build_nano3, init_weights
from nemotron_core.peft import (
    LoRALinear,
    apply_lora,
    init_lora_weights,
    lora_modules,
    lora_state_dict,
    merge_lora,
)


def _lora(**kw) -> PeftConfig:
    return PeftConfig(name="lora", **kw)


def _ids(cfg, n=19, seed=0):
    return torch.randint(0, cfg.vocab_size, (2, n), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _randomize_adapters(model, seed=1, std=0.2):
    g = torch.Generator().manual_seed(seed)
    for mod in lora_modules(model).values():
        mod.lora_B.weight.copy_(torch.randn(mod.lora_B.weight.shape, generator=g) * std)


DEFAULT_ADAPTED = [
    "layers.0.mixer.z_proj", "layers.0.mixer.x_proj",
    "layers.1.mixer.shared_experts.up_proj", "layers.1.mixer.shared_experts.down_proj",
    "layers.2.mixer.z_proj", "layers.2.mixer.x_proj",
    "layers.3.mixer.q_proj", "layers.3.mixer.k_proj", "layers.3.mixer.v_proj", "layers.3.mixer.o_proj",
    "layers.4.mixer.shared_experts.up_proj", "layers.4.mixer.shared_experts.down_proj",
    "layers.5.mixer.z_proj", "layers.5.mixer.x_proj",
]  # fmt: skip


@pytest.mark.parametrize(
    ("targets", "exclude", "expected"),
    [
        (None, [], DEFAULT_ADAPTED),  # the schema's default targets (pattern MEM*EM-): no Mamba out_proj
        (["layers.3.mixer.*"], [], ["layers.3.mixer.q_proj", "layers.3.mixer.k_proj", "layers.3.mixer.v_proj",
                              "layers.3.mixer.o_proj"]),
        (
            ["*.mixer.*_proj"],
            ["layers.[0-2].*", "*.out_proj", "*.shared_experts.*"],
            ["layers.3.mixer.q_proj", "layers.3.mixer.k_proj", "layers.3.mixer.v_proj", "layers.3.mixer.o_proj",
             "layers.5.mixer.z_proj", "layers.5.mixer.x_proj", "layers.5.mixer.B_proj", "layers.5.mixer.C_proj",
             "layers.5.mixer.dt_proj", "layers.6.mixer.up_proj", "layers.6.mixer.down_proj"],
        ),
        (["lm_head", "*.dt_proj", "*.q_proj"], [],  # overlapping patterns: each module once, model order
         ["layers.0.mixer.dt_proj", "layers.2.mixer.dt_proj", "layers.3.mixer.q_proj", "layers.5.mixer.dt_proj",
          "lm_head"]),
    ],
)  # fmt: skip
def test_adapted_names_exact(small_cfg, targets, exclude, expected):
    model = build_nano3(small_cfg, seed=0)
    peft = (
        _lora(exclude_modules=exclude)
        if targets is None
        else _lora(target_modules=targets, exclude_modules=exclude)
    )
    adapted = apply_lora(model, peft)
    assert adapted == expected
    assert list(lora_modules(model)) == expected
    for name in expected:
        mod = model.get_submodule(name)
        assert isinstance(mod, LoRALinear) and type(mod.base_layer) is nn.Linear
        assert mod.lora_A.weight.shape == (16, mod.in_features)
        assert mod.lora_B.weight.shape == (mod.out_features, 16)
        assert mod.scaling == 2.0 and mod.weight is mod.base_layer.weight


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"target_modules": ["*.q_proj", "*.nonexistent"]}, r"peft\.target_modules pattern '\*\.nonexistent' matches no"),
        ({"target_modules": ["*.router"]}, r"peft\.target_modules matched modules that are not nn\.Linear: "
                                           r"\['layers\.1\.mixer\.router \(Router\)'"),
        ({"target_modules": ["*.mixer.experts"]}, r"not nn\.Linear.*GroupedExperts.*routed experts are 3-D"),
        ({"target_modules": ["layers.0.mixer"]}, r"not nn\.Linear: \['layers\.0\.mixer \(Mamba2Mixer\)'\]"),
        ({"exclude_modules": ["*.nope"]}, r"peft\.exclude_modules pattern '\*\.nope' matches no module"),
        ({"target_modules": ["*.q_proj"], "exclude_modules": ["layers.3.*"]}, r"removes every module"),
        ({"rank": 0}, r"peft\.rank must be >= 1"),
        ({"dropout": 1.0}, r"peft\.dropout must be in \[0, 1\)"),
        ({"target_modules": []}, r"peft\.target_modules is empty"),
    ],
)  # fmt: skip
def test_errors_name_the_config_key_and_leave_the_model_untouched(small_cfg, kw, match):
    model = build_nano3(small_cfg, seed=0)
    with pytest.raises(ValueError, match=match):
        apply_lora(model, _lora(**kw))
    assert not lora_modules(model)
    assert all(p.requires_grad for p in model.parameters())


def test_name_none_and_double_apply_raise(small_cfg):
    model = build_nano3(small_cfg, seed=0)
    with pytest.raises(ValueError, match="peft.name='lora'"):
        apply_lora(model, PeftConfig(name="none"))
    apply_lora(model, _lora(target_modules=["*.q_proj"]))
    with pytest.raises(ValueError, match="already has LoRA layers"):
        apply_lora(model, _lora(target_modules=["*.k_proj"]))


def test_zero_init_adapter_equals_base_bitwise(small_cfg):
    model = build_nano3(small_cfg, seed=0).eval()
    ids = _ids(small_cfg)
    with torch.no_grad():
        base = model(ids).logits
    apply_lora(model, _lora())
    for mod in lora_modules(model).values():
        assert torch.count_nonzero(mod.lora_B.weight) == 0
        assert mod.lora_A.weight.abs().max() > 0  # A random, so B alone keeps the update at zero
    with torch.no_grad():
        assert torch.equal(model(ids).logits, base)


def test_only_adapters_get_gradients_and_change(small_cfg):
    model = build_nano3(small_cfg, seed=0)
    with torch.no_grad():  # a non-zero routing bias, to see that it is left alone
        for block in model.layers:
            if block.kind == "moe":
                block.mixer.router.e_score_correction_bias.copy_(torch.randn(4) * 0.05)
    adapted = apply_lora(model, _lora(dropout=0.1))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{m}.lora_{ab}.weight" for m in adapted for ab in "AB"}
    assert trainable == set(lora_state_dict(model))
    assert not model.layers[1].mixer.router.weight.requires_grad
    assert not model.layers[1].mixer.experts.up_proj.requires_grad
    before = {k: v.clone() for k, v in model.state_dict().items()}

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    model.train()
    ids = _ids(small_cfg)
    for _ in range(2):  # step 1 moves B only (grad A = 0 while B = 0); step 2 moves A too
        model(ids[:, :-1], labels=ids[:, 1:]).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == trainable  # every adapter tensor moved; every base tensor and buffer bitwise equal
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


def test_dropout_acts_on_the_adapter_input_only(small_cfg):
    model = build_nano3(small_cfg, seed=0)
    ids = _ids(small_cfg)
    with torch.no_grad():
        base = model.eval()(ids).logits
    apply_lora(model, _lora(dropout=0.5))
    model.train()
    with torch.no_grad():  # B = 0: dropout on the adapter path cannot change the output
        assert torch.equal(model(ids).logits, base)
    _randomize_adapters(model)
    with torch.no_grad():
        t1, t2 = model(ids).logits, model(ids).logits
        e1, e2 = model.eval()(ids).logits, model(ids).logits
    assert not torch.equal(t1, t2) and torch.equal(e1, e2)


def test_merge_equals_adapted_forward_and_restores_plain_linears(small_cfg):
    model = build_nano3(small_cfg, seed=0).eval()
    base_keys = set(model.state_dict())
    ids = _ids(small_cfg)
    with torch.no_grad():
        base = model(ids).logits
    adapted = apply_lora(model, _lora(target_modules=["*_proj", "lm_head"]))
    _randomize_adapters(model)
    with torch.no_grad():
        ours = model(ids).logits
    assert (ours - base).abs().max() > 0.1  # the adapters matter: the check below is not vacuous
    assert merge_lora(model) == adapted
    assert not lora_modules(model) and set(model.state_dict()) == base_keys
    assert all(type(model.get_submodule(n)) is nn.Linear for n in adapted)
    with torch.no_grad():
        merged = model(ids).logits
    assert (merged - ours).abs().max() <= 1e-5


def test_meta_build_then_materialise_matches_eager(small_cfg):
    """Build and adapt on meta (the FSDP2 path), materialise, init: same model as built eagerly."""
    eager = build_nano3(small_cfg, seed=0)
    apply_lora(eager, _lora(), generator=torch.Generator().manual_seed(7))
    meta = build_nano3(small_cfg, device="meta")
    assert apply_lora(meta, _lora()) == list(lora_modules(eager))
    meta = meta.to_empty(device="cpu")
    init_weights(meta, generator=torch.Generator().manual_seed(0))
    init_lora_weights(meta, generator=torch.Generator().manual_seed(7))
    ref = eager.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in meta.state_dict().items())
    assert not any(p.requires_grad for n, p in meta.named_parameters() if ".lora_" not in n)


def test_fsdp2_sharded_adapters_train_like_unsharded(small_cfg, tmp_path):
    """fully_shard per block + root (1-process gloo): mixed frozen/trainable params, same 2 steps."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if dist.is_initialized():
        pytest.skip("a process group already exists in this process")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        peft = _lora(target_modules=["*.q_proj", "*.z_proj", "*.shared_experts.up_proj"])
        models = []
        for shard in (True, False):
            model = build_nano3(small_cfg, seed=0)
            apply_lora(model, peft, generator=torch.Generator().manual_seed(1))
            if shard:
                mesh = init_device_mesh("cpu", (1,))
                for block in model.layers:
                    fully_shard(block, mesh=mesh)
                fully_shard(model, mesh=mesh)
            opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
            ids = _ids(small_cfg)
            for _ in range(2):
                model(ids[:, :-1], labels=ids[:, 1:]).loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            models.append(model)
        sharded, plain = models
        assert type(sharded.layers[3].mixer.q_proj.lora_A.weight).__name__ == "DTensor"
        full = {k: v.full_tensor() for k, v in lora_state_dict(sharded).items()}
        ref = lora_state_dict(plain)
        assert set(full) == set(ref) and all(torch.equal(full[k], ref[k]) for k in ref)
    finally:
        dist.destroy_process_group()
