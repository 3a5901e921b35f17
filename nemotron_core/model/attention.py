"""Causal GQA attention without positional embedding (NoPE), with varlen backends.

Guarantee: with `cu_seqlens` (packed row) or `seq_idx` (padded batch), no query attends to a key
of another document / segment. Backend, chosen at run time per call ("auto"):
flash-attn `flash_attn_varlen_func` (if installed, CUDA, fp16/bf16) -> torch
`torch.nn.attention.varlen.varlen_attn` (CUDA, fp16/bf16; its signature changed across torch
releases, `is_causal=` then `window_size=`, detected with `inspect.signature`) -> SDPA, one call
per document (the CPU path and the reference). Scale is 1/sqrt(head_dim) in every backend.
"""

from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

ATTENTION_BACKENDS = ("auto", "flash", "varlen", "sdpa")


@dataclass
class KVState:
    """Inference KV cache of one attention layer.

    k, v: [B, H_kv, S_max, D]; valid: [B, S_max] bool (False for cached padding); length: filled.
    """

    k: torch.Tensor
    v: torch.Tensor
    valid: torch.Tensor
    length: int = 0

    @classmethod
    def empty(cls, attn: Attention, batch: int, max_len: int, *, dtype: torch.dtype, device) -> KVState:
        shape = (batch, attn.num_kv_heads, max_len, attn.head_dim)
        return cls(
            k=torch.zeros(shape, dtype=dtype, device=device),
            v=torch.zeros(shape, dtype=dtype, device=device),
            valid=torch.zeros(batch, max_len, dtype=torch.bool, device=device),
        )


@functools.cache
def _flash_varlen():
    try:  # pragma: no cover - needs flash-attn
        from flash_attn import flash_attn_varlen_func  # type: ignore

        return flash_attn_varlen_func
    except Exception:
        return None


@functools.cache
def _torch_varlen():
    """(varlen_attn, its signature parameters), or None when this torch has no varlen_attn."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except Exception:
        return None
    params = inspect.signature(varlen_attn).parameters
    return varlen_attn, params


def torch_varlen_kwargs(params, *, scale: float) -> tuple[dict, bool]:
    """Keyword arguments asking `varlen_attn` for causal attention with `scale`, for its signature.

    Older releases (torch 2.10): `varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, is_causal=False, ...)`;
    newer ones (2.13 here): causal is `window_size=(-1, 0)`, plus `scale=` and `enable_gqa=`.
    Each optional keyword is passed only when the signature has it (KV heads are repeated
    otherwise).
    Returns (kwargs, supports_gqa).
    """
    kwargs: dict = {}
    if "is_causal" in params:
        kwargs["is_causal"] = True
    elif "window_size" in params:
        kwargs["window_size"] = (-1, 0)
    else:
        raise RuntimeError("torch varlen_attn has neither is_causal nor window_size; unknown signature")
    if "scale" in params:
        kwargs["scale"] = scale
    gqa = "enable_gqa" in params
    if gqa:
        kwargs["enable_gqa"] = True
    return kwargs, gqa


def select_backend(requested: str, q: torch.Tensor) -> str:
    """The backend that will run: `requested` unless it is "auto" (first usable of flash, varlen, sdpa)."""
    if requested not in ATTENTION_BACKENDS:
        raise ValueError(f"attention backend {requested!r}; expected one of {ATTENTION_BACKENDS}")
    if requested != "auto":
        return requested
    half = q.dtype in (torch.float16, torch.bfloat16)
    if q.is_cuda and half and _flash_varlen() is not None:
        return "flash"
    if q.is_cuda and half and _torch_varlen() is not None:
        return "varlen"
    return "sdpa"


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int | None,
    *,
    scale: float,
    backend: str = "auto",
) -> torch.Tensor:
    """Causal attention within each document of a packed row.

    q: [T, H, D]; k, v: [T, H_kv, D]; cu_seqlens: [n+1] int covering all T tokens.
    Returns [T, H, D].
    """
    backend = select_backend(backend, q)
    if max_seqlen is None:
        max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
    if backend == "flash":  # pragma: no cover - GPU only
        cu = cu_seqlens.to(torch.int32)
        return _flash_varlen()(
            q, k, v, cu, cu, max_seqlen, max_seqlen, dropout_p=0.0, softmax_scale=scale, causal=True
        )
    if backend == "varlen":  # pragma: no cover - GPU only
        fn, params = _torch_varlen()
        kwargs, gqa = torch_varlen_kwargs(params, scale=scale)
        if not gqa and k.shape[1] != q.shape[1]:
            rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        cu = cu_seqlens.to(torch.int32)
        return fn(q, k, v, cu, cu, max_seqlen, max_seqlen, **kwargs)
    # SDPA, one call per document: the CPU path and the reference for the kernels.
    bounds = cu_seqlens.tolist()
    gqa = k.shape[1] != q.shape[1]
    outs = []
    for s, e in zip(bounds[:-1], bounds[1:]):
        if e <= s:
            continue
        o = F.scaled_dot_product_attention(
            q[s:e].transpose(0, 1),
            k[s:e].transpose(0, 1),
            v[s:e].transpose(0, 1),
            is_causal=True,
            scale=scale,
            enable_gqa=gqa,
        )
        outs.append(o.transpose(0, 1))
    return torch.cat(outs, dim=0)


class Attention(nn.Module):
    """GQA self-attention, causal, no positional embedding; q/k/v/o projections kept separate."""

    def __init__(
        self, *, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int, bias: bool = False
    ):
        super().__init__()
        if num_heads % num_kv_heads:
            raise ValueError(
                f"num_attention_heads {num_heads} not divisible by num_key_value_heads {num_kv_heads}"
            )
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.scale = 1.0 / math.sqrt(head_dim)
        self.q_proj = nn.Linear(hidden_size, num_heads * head_dim, bias=bias)
        self.k_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=bias)
        self.v_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=bias)
        self.o_proj = nn.Linear(num_heads * head_dim, hidden_size, bias=bias)
        self.backend = "auto"

    def forward(
        self,
        hidden: torch.Tensor,
        *,
        cu_seqlens: torch.Tensor | None = None,
        max_seqlen: int | None = None,
        seq_idx: torch.Tensor | None = None,
        state: KVState | None = None,
    ) -> torch.Tensor:
        """hidden [B, T, hidden] -> [B, T, hidden].

        cu_seqlens: packed row (B must be 1), boundaries over all T tokens.
        seq_idx: [B, T] segment index (padded batches); a query sees keys of its own segment only.
        state: KV cache; new keys are appended and queries attend to the cached valid keys too.
        """
        b, t, _ = hidden.shape
        q = self.q_proj(hidden).view(b, t, self.num_heads, self.head_dim)
        k = self.k_proj(hidden).view(b, t, self.num_kv_heads, self.head_dim)
        v = self.v_proj(hidden).view(b, t, self.num_kv_heads, self.head_dim)
        gqa = self.num_heads != self.num_kv_heads

        if state is not None:
            out = self._cached(q, k, v, seq_idx, state)
        elif cu_seqlens is not None:
            if b != 1:
                raise ValueError(f"cu_seqlens needs a single packed row, got batch {b}")
            out = varlen_attention(
                q[0], k[0], v[0], cu_seqlens, max_seqlen, scale=self.scale, backend=self.backend
            )
            out = out.unsqueeze(0)
        elif seq_idx is not None:
            causal = torch.ones(t, t, dtype=torch.bool, device=hidden.device).tril()
            mask = causal & (seq_idx[:, :, None] == seq_idx[:, None, :])  # [B, Tq, Tk]
            out = F.scaled_dot_product_attention(
                q.transpose(1, 2),
                k.transpose(1, 2),
                v.transpose(1, 2),
                attn_mask=mask[:, None],
                scale=self.scale,
                enable_gqa=gqa,
            ).transpose(1, 2)
        else:
            out = F.scaled_dot_product_attention(
                q.transpose(1, 2),
                k.transpose(1, 2),
                v.transpose(1, 2),
                is_causal=True,
                scale=self.scale,
                enable_gqa=gqa,
            ).transpose(1, 2)
        return self.o_proj(out.reshape(b, t, self.num_heads * self.head_dim))

    def _cached(self, q, k, v, seq_idx, state: KVState) -> torch.Tensor:
        b, t = q.shape[:2]
        start, end = state.length, state.length + t
        if end > state.k.shape[2]:
            raise ValueError(f"KV cache holds {state.k.shape[2]} positions; {end} needed")
        state.k[:, :, start:end] = k.transpose(1, 2).to(state.k.dtype)
        state.v[:, :, start:end] = v.transpose(1, 2).to(state.v.dtype)
        # New positions are valid keys for later steps if they belong to the row's last segment.
        if seq_idx is None:
            state.valid[:, start:end] = True
        else:
            state.valid[:, start:end] = seq_idx == seq_idx[:, -1:]
        state.length = end
        # Mask [B, t, end]: cached keys count if valid; new keys causally within the segment.
        past = state.valid[:, None, :start].expand(b, t, start)
        causal = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
        new = causal.expand(b, t, t)
        if seq_idx is not None:
            new = new & (seq_idx[:, :, None] == seq_idx[:, None, :])
            # Queries of an earlier segment (padding) must not see the cached valid keys.
            past = past & (seq_idx == seq_idx[:, -1:])[:, :, None]
        mask = torch.cat([past, new], dim=-1)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            state.k[:, :, :end].to(q.dtype),
            state.v[:, :, :end].to(q.dtype),
            attn_mask=mask[:, None],
            scale=self.scale,
            enable_gqa=self.num_heads != self.num_kv_heads,
        )
        return out.transpose(1, 2)
