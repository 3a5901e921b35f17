import torch

from nemotron_core.model.nano3 import build_nano3
from nemotron_core.parallel.activation import apply_activation_checkpointing


def _loss_and_grads(model, ids, cu):
    labels = torch.roll(ids, -1, dims=1)
    out = model(ids, cu_seqlens=cu, labels=labels)
    out.loss_sum.backward()
    return out.loss_sum.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_checkpointed_model_gives_identical_loss_and_grads(small_cfg):
    torch.manual_seed(0)
    ids = torch.randint(0, small_cfg.vocab_size, (1, 30))
    cu = torch.tensor([0, 11, 19, 30], dtype=torch.int32)
    plain = build_nano3(small_cfg, seed=3)
    ckpt = build_nano3(small_cfg, seed=3)
    names_before = list(ckpt.state_dict())
    assert apply_activation_checkpointing(ckpt) == len(ckpt.layers)
    assert apply_activation_checkpointing(ckpt) == 0  # idempotent
    assert list(ckpt.state_dict()) == names_before  # names unchanged
    loss_a, grads_a = _loss_and_grads(plain, ids, cu)
    loss_b, grads_b = _loss_and_grads(ckpt, ids, cu)
    assert torch.equal(loss_a, loss_b)
    for n in grads_a:
        torch.testing.assert_close(grads_b[n], grads_a[n], rtol=0, atol=1e-6)
    with torch.no_grad():  # inference path untouched
        torch.testing.assert_close(ckpt(ids, cu_seqlens=cu).logits, plain(ids, cu_seqlens=cu).logits, rtol=0, atol=0)
