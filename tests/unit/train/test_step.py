"""Unit tests for nemotron_core/train/step.py: the loss contract on the real tiny Nano3 model.

Guarantee under test: one optimizer step on the same global batch gives the same parameters
(max abs diff <= 1e-6, fp32) for micro-batch x accumulation 1x8, 2x4, 8x1 and for 2 data-parallel
ranks x (2 x 2), in token and sequence normalisation, with the MoE aux loss and the expert-bias
update on.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.multiprocessing as mp
from train_helpers import micro_batches, one_step, random_rows, state, tiny_config

from nemotron_core.data.packed import collate_packed
from nemotron_core.model.nano3 import build_nano3
from nemotron_core.train.step import evaluate, grad_accumulation_steps, train_step

TOL = 1e-6


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def rows():
    return random_rows()


@pytest.fixture(scope="module")
def initial():
    return state(build_nano3(tiny_config(), seed=0))


@pytest.fixture(scope="module")
def single(rows):
    """(normalization, optimizer, micro_batch_size) -> (state after one step, StepResult)."""
    out = {}
    for norm in ("token", "sequence"):
        for mbs in (8, 2, 1):
            model, r = one_step(micro_batches(rows, mbs), normalization=norm)
            out[norm, "adamw", mbs] = (state(model), r)
    for mbs in (8, 2, 1):
        model, r = one_step(micro_batches(rows, mbs), optimizer="sgd")
        out["token", "sgd", mbs] = (state(model), r)
    return out


@pytest.mark.parametrize("norm", ["token", "sequence"])
def test_accumulation_layouts_give_the_same_step(single, initial, norm):
    ref_state, ref = single[norm, "adamw", 8]
    # Non-vacuous: the step moved the parameters by about lr (1e-3), the bias moved by the rate.
    assert max_diff(ref_state, initial) > 5e-4
    bias = "layers.1.mixer.router.e_score_correction_bias"
    assert ref_state[bias].abs().max().item() == pytest.approx(1e-3)
    assert ref.moe_aux_loss > 0 and ref.num_trainable_tokens > 50 and ref.num_documents > 8
    for mbs in (2, 1):
        st, r = single[norm, "adamw", mbs]
        assert max_diff(st, ref_state) <= TOL, (norm, mbs)
        assert r.loss == pytest.approx(ref.loss, rel=1e-6)
        assert r.grad_norm == pytest.approx(ref.grad_norm, rel=1e-6)
        assert torch.equal(r.moe_load, ref.moe_load)
        assert (r.num_trainable_tokens, r.num_documents, r.num_tokens) == (
            ref.num_trainable_tokens,
            ref.num_documents,
            ref.num_tokens,
        )


def test_gradients_are_layout_independent(single, initial):
    # SGD with lr 1 and no clipping: the parameter change is the gradient itself (scale included).
    a, ra = single["token", "sgd", 8]
    assert max_diff(a, initial) > 1e-2 and ra.grad_norm > 1
    for mbs in (2, 1):
        b, rb = single["token", "sgd", mbs]
        assert max_diff(a, b) <= TOL
        assert rb.grad_norm == pytest.approx(ra.grad_norm, rel=1e-6)


def test_token_loss_equals_the_models_own_mean_ce(rows, single):
    model = build_nano3(tiny_config(), seed=0)
    batch = collate_packed(rows)
    with torch.no_grad():
        out = model(
            batch.input_ids[None],
            cu_seqlens=batch.cu_seqlens,
            max_seqlen=batch.max_seqlen,
            labels=batch.labels[None],
        )
    _, r = single["token", "adamw", 1]
    assert r.num_trainable_tokens == int(out.num_tokens) == batch.num_trainable_tokens
    assert r.lm_loss == pytest.approx(float(out.loss_sum / out.num_tokens), rel=1e-6)
    # The aux term: coeff 1e-2 x sum over the 2 MoE layers of the per-document loss (about 1 each).
    assert r.moe_aux_loss == pytest.approx(1e-2 * float(out.moe_aux_loss.sum()), rel=1e-6)
    assert r.loss == pytest.approx(r.lm_loss + r.moe_aux_loss)
    # Sequence normalisation differs here (row 2 has a document with no trainable token).
    assert single["sequence", "adamw", 1][1].lm_loss != pytest.approx(r.lm_loss, rel=1e-4)


def test_data_parallel_two_ranks_equals_single_process(tmp_path, single):
    from train_helpers import dp_worker

    mp.spawn(dp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    cases = [
        ("all_reduce", "token", "adamw"),
        ("all_reduce", "sequence", "adamw"),
        ("all_reduce", "token", "sgd"),  # gradient itself, scale included
        ("ddp_mean", "token", "adamw"),
        ("ddp_mean", "token", "sgd"),  # DDP averages: the x dp loss scale must be there
    ]
    for mode, norm, opt in cases:
        ref_state, ref = single[norm, opt, 2]
        for out in ranks:
            st, r = out[mode, norm, opt]
            assert max_diff(st, ref_state) <= TOL, (mode, norm, opt)
            assert r.loss == pytest.approx(ref.loss, rel=1e-6)  # every rank logs the global loss
            assert r.num_trainable_tokens == ref.num_trainable_tokens
            assert torch.equal(r.moe_load, ref.moe_load)


def test_evaluate_is_the_mean_token_ce(rows):
    model = build_nano3(tiny_config(), seed=0)
    model.train()
    batch = collate_packed(rows)
    with torch.no_grad():
        out = model(
            batch.input_ids[None],
            cu_seqlens=batch.cu_seqlens,
            max_seqlen=batch.max_seqlen,
            labels=batch.labels[None],
        )
    expected = float(out.loss_sum / out.num_tokens)
    assert evaluate(model, micro_batches(rows, 3)) == pytest.approx(expected, rel=1e-6)
    assert model.training  # restored
    assert 0.9 * math.log(256) < expected < 1.1 * math.log(256)  # near-uniform at init


def test_step_without_trainable_tokens_raises():
    row = {"input_ids": [5, 6, 7], "loss_mask": [0, 0, 0], "seq_start_id": [0]}
    model = build_nano3(tiny_config(), seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="no trainable token"):
        train_step(model, opt, [collate_packed([row])])
    with pytest.raises(ValueError, match="loss_normalization"):
        train_step(model, opt, [collate_packed([row])], normalization="mean")


def test_grad_accumulation_steps():
    assert grad_accumulation_steps(8, 2, 1) == 4
    assert grad_accumulation_steps(8, 2, 2) == 2
    assert grad_accumulation_steps(8, 8, 1) == 1
    with pytest.raises(ValueError) as e:
        grad_accumulation_steps(12, 4, 2)
    msg = str(e.value)
    assert "train.global_batch_size=12" in msg and "train.micro_batch_size=4" in msg and "dp=2" in msg
    assert "train.global_batch_size=8" in msg  # a suggestion that divides
    with pytest.raises(ValueError, match="train.micro_batch_size"):
        grad_accumulation_steps(8, 0, 1)
