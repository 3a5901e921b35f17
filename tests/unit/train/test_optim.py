"""Unit tests for nemotron_core/train/optim.py: weight-decay groups, implementation, clipping."""

from __future__ import annotations

import math

import pytest
import torch
from train_helpers import optimizer_config, tiny_config

from nemotron_core.model.nano3 import build_nano3
from nemotron_core.train.optim import build_optimizer, clip_grad_norm, param_groups


def test_weight_decay_on_matrices_only():
    model = build_nano3(tiny_config(), seed=0)
    decay, no_decay = param_groups(model, weight_decay=0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim < 2 for p in no_decay["params"])
    names_d, names_n = set(decay["names"]), set(no_decay["names"])
    for name in (
        "embeddings.weight",
        "lm_head.weight",
        "layers.1.mixer.experts.up_proj",
        "layers.1.mixer.router.weight",
        "layers.0.mixer.conv_x.weight",
        "layers.3.mixer.q_proj.weight",
    ):
        assert name in names_d, name
    for name in (
        "norm_f.weight",
        "layers.0.norm.weight",
        "layers.0.mixer.A_log",
        "layers.0.mixer.D",
        "layers.0.mixer.dt_bias",
        "layers.0.mixer.conv_x.bias",
    ):
        assert name in names_n, name
    # Every trainable parameter is in exactly one group; the router bias is a buffer, in neither.
    assert len(names_d) + len(names_n) == len(list(model.parameters()))
    assert not any("e_score_correction_bias" in n for n in names_d | names_n)


def test_frozen_parameters_are_left_out():
    model = build_nano3(tiny_config(), seed=0)
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("lm_head") or name == "norm_f.weight")
    opt = build_optimizer(model, optimizer_config(), device_type="cpu")
    groups = [(g["weight_decay"], len(g["params"])) for g in opt.param_groups]
    assert groups == [(0.1, 1), (0.0, 1)]
    assert "names" not in opt.param_groups[0]
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no parameter has requires_grad"):
        build_optimizer(model, optimizer_config(), device_type="cpu")


@pytest.mark.parametrize(
    "impl, device_type, foreach, fused",
    [("auto", "cpu", True, None), ("auto", "cuda", None, True), ("for_loop", "cpu", False, None)],
)
def test_implementation_choice(impl, device_type, foreach, fused):
    p = torch.nn.Parameter(torch.zeros(2, 2))
    # Only the choice is checked ("cuda" on CPU tensors: AdamW(fused=True) accepts them too).
    opt = build_optimizer([p], optimizer_config(implementation=impl), device_type=device_type)
    g = opt.param_groups[0]
    assert g["foreach"] == foreach and g["fused"] == fused
    assert g["betas"] == (0.9, 0.95) and g["eps"] == 1e-8 and g["lr"] == 1e-3


def test_bad_optimizer_config_names_the_key():
    p = torch.nn.Parameter(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="optimizer.implementation"):
        build_optimizer([p], optimizer_config(implementation="apex"), device_type="cpu")
    with pytest.raises(ValueError, match="optimizer.name"):
        build_optimizer([p], optimizer_config(name="sgd"), device_type="cpu")


def test_clip_grad_norm_returns_the_norm_before_clipping():
    a = torch.nn.Parameter(torch.zeros(2))
    b = torch.nn.Parameter(torch.zeros(1))
    c = torch.nn.Parameter(torch.zeros(3))  # no grad: skipped
    a.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([4.0])
    assert float(clip_grad_norm([a, b, c], 0.0)) == 5.0  # measure only
    assert a.grad.tolist() == [3.0, 0.0]
    assert float(clip_grad_norm([a, b, c], 1.0)) == pytest.approx(5.0)
    total = math.sqrt(a.grad.square().sum() + b.grad.square().sum())
    assert total == pytest.approx(1.0, rel=1e-5)
    assert a.grad.tolist() == pytest.approx([0.6, 0.0], rel=1e-5)
