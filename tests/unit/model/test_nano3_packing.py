"""Document isolation through the whole model: packed rows (cu_seqlens) and padded batches."""

from __future__ import annotations

import torch

from nemotron_core.model import build_nano3

LENGTHS = (11, 6, 14)  # A | B | C; chunk_size 8: boundaries at 11 and 17 sit inside chunks


def _capture_embeddings(model):
    """Hook that makes the embedding output a leaf-like tensor whose .grad we can read."""
    store = {}

    def hook(_mod, _inp, out):
        out.retain_grad()
        store["emb"] = out
        return out

    model.embeddings.register_forward_hook(hook)
    return store


def _docs(vocab, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=gen) for n in LENGTHS]


def test_packed_documents_equal_documents_alone_logits_and_input_grads(small_cfg):
    model = build_nano3(small_cfg, seed=0)
    model.embeddings.weight.requires_grad_(True)
    store = _capture_embeddings(model)
    docs = _docs(small_cfg.vocab_size)
    gen = torch.Generator().manual_seed(1)
    targets = [torch.randint(0, small_cfg.vocab_size, (len(d),), generator=gen) for d in docs]
    ce = torch.nn.functional.cross_entropy

    ids = torch.cat(docs)[None]
    cu = torch.tensor([0, *torch.tensor(LENGTHS).cumsum(0).tolist()], dtype=torch.int32)
    out = model(ids, cu_seqlens=cu)
    ce(out.logits[0], torch.cat(targets), reduction="sum").backward()
    packed_logits = out.logits[0].detach()
    packed_grad = store["emb"].grad[0]
    assert packed_grad.abs().sum() > 0

    s = 0
    for doc, target in zip(docs, targets):
        n = len(doc)
        alone = model(doc[None])
        ce(alone.logits[0], target, reduction="sum").backward()
        assert (packed_logits[s : s + n] - alone.logits[0].detach()).abs().max() <= 1e-5
        grad = store["emb"].grad[0]
        assert (packed_grad[s : s + n] - grad).abs().max() <= 1e-5 * max(1.0, grad.abs().max().item())
        s += n


def test_packed_without_cu_seqlens_leaks_so_the_isolation_test_can_fail(small_cfg):
    model = build_nano3(small_cfg, seed=0)
    docs = _docs(small_cfg.vocab_size)
    with torch.no_grad():
        joined = model(torch.cat(docs)[None]).logits[0]
        alone_b = model(docs[1][None]).logits[0]
    assert (joined[11:17] - alone_b).abs().max() > 1e-3


def test_perturbing_one_document_changes_nothing_in_the_others(small_cfg):
    model = build_nano3(small_cfg, seed=0)
    docs = _docs(small_cfg.vocab_size)
    cu = torch.tensor([0, 11, 17, 31], dtype=torch.int32)
    other = (docs[0] + 7) % small_cfg.vocab_size
    with torch.no_grad():
        a = model(torch.cat(docs)[None], cu_seqlens=cu).logits[0]
        b = model(torch.cat([other, docs[1], docs[2]])[None], cu_seqlens=cu).logits[0]
    assert (a[:11] - b[:11]).abs().max() > 1e-3  # A itself did change
    assert (a[11:] - b[11:]).abs().max() <= 1e-6


def test_trailing_padding_after_cu_seqlens_is_isolated(small_cfg):
    model = build_nano3(small_cfg, seed=0)
    docs = _docs(small_cfg.vocab_size)
    ids = torch.cat([docs[0], docs[1], torch.zeros(5, dtype=torch.long)])[None]
    with torch.no_grad():
        out = model(ids, cu_seqlens=torch.tensor([0, 11, 17], dtype=torch.int32))
        alone = model(docs[1][None]).logits[0]
    assert (out.logits[0, 11:17] - alone).abs().max() <= 1e-5
    assert out.moe_load.sum(-1).tolist() == [17 * 2, 17 * 2]


def test_padded_batch_left_and_right_padding_match_unpadded(small_cfg):
    model = build_nano3(small_cfg, seed=0)
    docs = _docs(small_cfg.vocab_size)
    t = 14
    a, b = docs[0], docs[1]  # 11 and 6 tokens
    right = torch.full((2, t), 3)
    mask_r = torch.zeros(2, t, dtype=torch.long)
    right[0, :11], mask_r[0, :11] = a, 1
    right[1, :6], mask_r[1, :6] = b, 1
    left = torch.full((2, t), 5)
    mask_l = torch.zeros(2, t, dtype=torch.long)
    left[0, t - 11 :], mask_l[0, t - 11 :] = a, 1
    left[1, t - 6 :], mask_l[1, t - 6 :] = b, 1
    with torch.no_grad():
        ra, rb = model(a[None]).logits[0], model(b[None]).logits[0]
        out_r = model(right, attention_mask=mask_r).logits
        out_l = model(left, attention_mask=mask_l).logits
        # Different pad token ids: real positions must not move.
        out_l2 = model(
            torch.where(mask_l.bool(), left, torch.full_like(left, 9)), attention_mask=mask_l
        ).logits
    assert (out_r[0, :11] - ra).abs().max() <= 1e-5
    assert (out_r[1, :6] - rb).abs().max() <= 1e-5
    assert (out_l[0, t - 11 :] - ra).abs().max() <= 1e-5
    assert (out_l[1, t - 6 :] - rb).abs().max() <= 1e-5
    assert (out_l2[1, t - 6 :] - out_l[1, t - 6 :]).abs().max() <= 1e-6
    assert torch.isfinite(out_l).all() and torch.isfinite(out_r).all()
    # Without the mask, left padding leaks into the real tokens.
    with torch.no_grad():
        leak = model(left).logits
    assert (leak[1, t - 6 :] - rb).abs().max() > 1e-3


def test_loss_equals_mean_token_cross_entropy(small_cfg):
    model = build_nano3(small_cfg, seed=0)
    ids = torch.randint(0, small_cfg.vocab_size, (2, 9))
    labels = torch.randint(0, small_cfg.vocab_size, (2, 9))
    labels[0, :3] = -100
    out = model(ids, labels=labels)
    ref = torch.nn.functional.cross_entropy(out.logits.reshape(-1, small_cfg.vocab_size), labels.reshape(-1))
    assert (out.loss - ref).abs() <= 1e-6
    assert out.num_tokens.item() == 15


def test_cu_seqlens_run_over_the_flattened_batch(small_cfg):
    model = build_nano3(small_cfg, seed=0)
    ids = torch.randint(0, small_cfg.vocab_size, (2, 16), generator=torch.Generator().manual_seed(4))
    cu = torch.tensor([0, 9, 20, 32], dtype=torch.int32)  # the middle document spans both rows
    with torch.no_grad():
        rows = model(ids, cu_seqlens=cu)
        flat = model(ids.reshape(1, 32), cu_seqlens=cu)
    assert rows.logits.shape == (2, 16, small_cfg.vocab_size)
    assert (rows.logits.reshape(1, 32, -1) - flat.logits).abs().max() <= 1e-6
