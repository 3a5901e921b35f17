"""Attention: varlen (per-document) path vs a naive masked reference; backend selection."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from nemotron_core.model.attention import (
    Attention,
    KVState,
    select_backend,
    torch_varlen_kwargs,
    varlen_attention,
)


def naive_attention(q, k, v, seg):
    """q [T, H, D], k/v [T, Hkv, D], seg [T]: causal within equal segment ids, GQA by repeat."""
    t, h, d = q.shape
    rep = h // k.shape[1]
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    scores = torch.einsum("thd,shd->hts", q, k) / math.sqrt(d)
    allowed = torch.ones(t, t, dtype=torch.bool).tril() & (seg[:, None] == seg[None, :])
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.einsum("hts,shd->thd", scores.softmax(-1), v)


def test_varlen_sdpa_equals_naive_masked_attention():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (
        torch.randn(20, 4, 8, generator=gen),
        torch.randn(20, 2, 8, generator=gen),
        torch.randn(20, 2, 8, generator=gen),
    )
    cu = torch.tensor([0, 7, 8, 20], dtype=torch.int32)
    seg = torch.tensor([0] * 7 + [1] + [2] * 12)
    out = varlen_attention(q, k, v, cu, None, scale=1 / math.sqrt(8), backend="sdpa")
    assert (out - naive_attention(q, k, v, seg)).abs().max() <= 1e-5
    assert (out - naive_attention(q, k, v, torch.zeros(20))).abs().max() > 1e-2


def test_attention_module_packed_equals_segment_mask_path():
    torch.manual_seed(0)
    attn = Attention(hidden_size=16, num_heads=4, num_kv_heads=2, head_dim=8)
    x = torch.randn(1, 20, 16)
    cu = torch.tensor([0, 7, 8, 20], dtype=torch.int32)
    seq_idx = torch.tensor([[0] * 7 + [1] + [2] * 12])
    a = attn(x, cu_seqlens=cu)
    b = attn(x, seq_idx=seq_idx)
    assert (a - b).abs().max() <= 1e-5
    # KV-cache path: prefill 12 then 8 single steps equals the full causal pass.
    state = KVState.empty(attn, 1, 20, dtype=torch.float32, device="cpu")
    steps = [attn(x[:, :12], state=state)] + [attn(x[:, i : i + 1], state=state) for i in range(12, 20)]
    assert (torch.cat(steps, dim=1) - attn(x)).abs().max() <= 1e-5


def test_backend_selection_on_cpu_and_validation():
    q = torch.zeros(4, 2, 8)
    assert select_backend("auto", q) == "sdpa"
    with pytest.raises(ValueError, match="backend"):
        select_backend("nope", q)


def test_torch_varlen_signature_detection_for_both_torch_versions():
    def v211(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
        pass

    def v213(
        query,
        key,
        value,
        cu_seq_q,
        cu_seq_k,
        max_q,
        max_k,
        *,
        return_aux=None,
        scale=None,
        window_size=(-1, -1),
        enable_gqa=False,
    ):
        pass

    kw, gqa = torch_varlen_kwargs(inspect.signature(v211).parameters, scale=0.25)
    assert kw == {"is_causal": True} and not gqa
    kw, gqa = torch_varlen_kwargs(inspect.signature(v213).parameters, scale=0.25)
    assert kw == {"window_size": (-1, 0), "scale": 0.25, "enable_gqa": True} and gqa
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return
    kw, _ = torch_varlen_kwargs(inspect.signature(varlen_attn).parameters, scale=0.25)
    assert ("is_causal" in kw) != ("window_size" in kw)
