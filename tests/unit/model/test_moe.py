"""MoE routing, dispatch, balancing loss and expert-bias update on hand-computed examples."""

from __future__ import annotations

import math

import pytest
import torch

from nemotron_core.model.mlp import relu2
from nemotron_core.model.moe import MoE, Router, expert_bias_update, sequence_aux_loss


def sig(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def _router(bias=None) -> Router:
    r = Router(hidden_size=2, num_experts=4, top_k=2, routed_scaling_factor=2.5)
    with torch.no_grad():
        # x = [1, 0] gives logits [2, 1, 0, -1]; x = [0, 1] gives [-1, 0, 1, 3].
        r.weight.copy_(torch.tensor([[2.0, -1.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 3.0]]))
        if bias is not None:
            r.e_score_correction_bias.copy_(torch.tensor(bias))
    return r


def test_router_hand_computed_choice_and_weights():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    out = _router()(x)
    chosen = [sorted(row) for row in out.indices.tolist()]
    assert chosen == [[0, 1], [2, 3]]
    s0, s1 = sig(2.0), sig(1.0)
    w = dict(zip(out.indices[0].tolist(), out.weights[0].tolist()))
    assert w[0] == pytest.approx(2.5 * s0 / (s0 + s1), abs=1e-6)  # 1.366123
    assert w[1] == pytest.approx(2.5 * s1 / (s0 + s1), abs=1e-6)
    assert w[0] == pytest.approx(1.366123, abs=1e-5)
    assert out.weights.sum(-1).tolist() == pytest.approx([2.5, 2.5], abs=1e-6)


def test_router_bias_changes_selection_not_weights():
    # Bias +0.5 on expert 2: token 0 now picks {0, 2} (0.5 + 0.5 = 1.0 > sigmoid(1) = 0.731),
    # and the weights are the UNBIASED sigmoid scores of 0 and 2, renormalised, times 2.5.
    x = torch.tensor([[1.0, 0.0]])
    out = _router(bias=[0.0, 0.0, 0.5, 0.0])(x)
    assert sorted(out.indices[0].tolist()) == [0, 2]
    w = dict(zip(out.indices[0].tolist(), out.weights[0].tolist()))
    s0, s2 = sig(2.0), sig(0.0)
    assert w[0] == pytest.approx(2.5 * s0 / (s0 + s2), abs=1e-6)  # 1.594725
    assert w[2] == pytest.approx(2.5 * s2 / (s0 + s2), abs=1e-6)  # 0.905275
    assert w[0] == pytest.approx(1.594725, abs=1e-5)
    assert out.scores[0].tolist() == pytest.approx([sig(2.0), sig(1.0), 0.5, sig(-1.0)], abs=1e-6)
    # The bias never gets a gradient: it is a buffer.
    assert "e_score_correction_bias" not in dict(_router().named_parameters())


def _moe(seed=0) -> MoE:
    torch.manual_seed(seed)
    moe = MoE(
        hidden_size=8,
        num_experts=4,
        top_k=2,
        intermediate_size=6,
        shared_intermediate_size=5,
        routed_scaling_factor=2.5,
    )
    for p in moe.parameters():
        torch.nn.init.normal_(p, std=0.5)
    with torch.no_grad():
        moe.router.e_score_correction_bias.copy_(torch.tensor([0.0, 0.3, -0.2, 0.1]))
    return moe


def test_moe_forward_equals_per_token_reference_and_drops_nothing():
    moe = _moe()
    x = torch.randn(3, 7, 8)
    out, stats = moe(x)
    flat = x.reshape(-1, 8)
    routing = moe.router(flat)
    ref = []
    for t in range(flat.shape[0]):
        acc = torch.zeros(8)
        for e, w in zip(routing.indices[t].tolist(), routing.weights[t].tolist()):
            up, down = moe.experts.up_proj[e], moe.experts.down_proj[e]
            acc = acc + w * (down @ relu2(up @ flat[t]))
        ref.append(acc + moe.shared_experts(flat[t]))
    assert (out.reshape(-1, 8) - torch.stack(ref)).abs().max() <= 1e-5
    # Every token went to exactly k experts: the load counts all 21 * 2 assignments.
    assert stats.load.sum().item() == 21 * 2
    assert torch.equal(stats.load, torch.bincount(routing.indices.reshape(-1), minlength=4).float())


def _aux_by_hand(scores, indices, k):
    t, e = scores.shape
    total = 0.0
    for i in range(e):
        f = e / (k * t) * sum(int(i in indices[j].tolist()) for j in range(t))
        p = sum(float(scores[j, i] / scores[j].sum()) for j in range(t)) / t
        total += f * p
    return total


def test_sequence_aux_loss_is_per_document_mean():
    gen = torch.Generator().manual_seed(0)
    scores = torch.rand(9, 4, generator=gen)
    indices = torch.topk(scores, 2, dim=-1).indices
    seg = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1, -1])  # token 8 is padding: excluded
    got = sequence_aux_loss(scores, indices, top_k=2, segment_ids=seg, num_segments=2)
    want = 0.5 * (_aux_by_hand(scores[:3], indices[:3], 2) + _aux_by_hand(scores[3:8], indices[3:8], 2))
    assert got.item() == pytest.approx(want, abs=1e-6)
    whole = sequence_aux_loss(scores[:8], indices[:8], top_k=2)
    assert whole.item() == pytest.approx(_aux_by_hand(scores[:8], indices[:8], 2), abs=1e-6)
    assert abs(whole.item() - got.item()) > 1e-4  # per-document differs from one sequence
    # Uniform scores and perfectly balanced choices give exactly 1.
    uni = sequence_aux_loss(torch.ones(4, 4), torch.tensor([[0, 1], [2, 3], [0, 1], [2, 3]]), top_k=2)
    assert uni.item() == pytest.approx(1.0, abs=1e-6)


def test_moe_aux_loss_and_load_per_document_in_model(tmp_path):
    from nemotron_core.config.model import ModelConfig
    from nemotron_core.model import build_nano3

    cfg = ModelConfig(
        name="t",
        hybrid_override_pattern="E",
        hidden_size=8,
        vocab_size=32,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=4,
        mamba_num_heads=2,
        mamba_head_dim=4,
        ssm_state_size=4,
        n_groups=1,
        n_routed_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=6,
        moe_shared_expert_intermediate_size=5,
        intermediate_size=8,
        init_std=0.5,
    )
    model = build_nano3(cfg, seed=0)
    ids = torch.randint(0, 32, (1, 12), generator=torch.Generator().manual_seed(0))
    packed = model(ids, cu_seqlens=torch.tensor([0, 4, 10], dtype=torch.int32))  # 2 trailing pad tokens
    alone = [model(ids[:, s:e]) for s, e in ((0, 4), (4, 10))]
    want = 0.5 * (alone[0].moe_aux_loss + alone[1].moe_aux_loss)
    assert (packed.moe_aux_loss - want).abs().max() <= 1e-6
    assert torch.equal(packed.moe_load, alone[0].moe_load + alone[1].moe_load)
    assert packed.moe_load.sum().item() == 10 * 2  # padding tokens are not counted


def test_expert_bias_update_sign_rule():
    bias = torch.zeros(4)
    expert_bias_update(bias, torch.tensor([10.0, 2.0, 6.0, 6.0]), 0.01)
    # mean 6: over-loaded expert 0 goes down, under-loaded 1 goes up, balanced ones stay.
    assert bias.tolist() == pytest.approx([-0.01, 0.01, 0.0, 0.0])


def test_expert_bias_updates_balance_a_skewed_router():
    torch.manual_seed(0)
    router = Router(hidden_size=16, num_experts=8, top_k=2)
    with torch.no_grad():
        router.weight.normal_(std=0.3)
        router.weight[0] += 1.0  # expert 0 is favoured by every token with a positive mean input
    x = torch.randn(512, 16) * 0.5 + 0.5

    def load():
        return torch.bincount(router(x).indices.reshape(-1), minlength=8).float()

    before = load()
    for _ in range(100):
        expert_bias_update(router.e_score_correction_bias, load(), 0.01)
    after = load()
    assert before.max() / before.mean() > 2.0  # really skewed to start with
    assert after.max() / after.mean() < 1.3
    assert after.sum() == before.sum() == 512 * 2
