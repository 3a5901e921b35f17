"""Benchmark attention on a packed row: per-document SDPA vs a dense mask, and the backends.

    python bench/attention.py                                   # CPU: 4096 tokens of realistic documents
    python bench/attention.py --tokens 8192 --docs 8 --dtype bf16   # GPU: flash / varlen / sdpa

Shape: one packed row of `--tokens` tokens (documents with the shipped chat data's lengths, or
`--docs` equal ones), 32 query heads, 2 KV heads, head dim 128 (Nano3). Prints per-document SDPA
vs one SDPA with a dense block-diagonal causal mask (goal >= 5x faster, outputs equal), then each
backend's time and its max abs difference from the per-document SDPA reference. Printing only; correctness is asserted in tests/unit/model/test_attention.py
and tests/parity/test_kernels_gpu.py.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout

from nemotron_core.model.attention import select_backend, varlen_attention  # noqa: E402


def timed(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def document_bounds(tokens: int, docs: int) -> torch.Tensor:
    """cu_seqlens of one row: `docs` equal documents, or (docs=0) lengths drawn from the shipped
    chat data's training sequences (median ~150 tokens, long tail), packed until the row is full."""
    if docs:
        return torch.linspace(0, tokens, docs + 1).round().to(torch.int32)
    import random

    from nemotron_core.data.records import read_records, resolve_inputs
    from nemotron_core.paths import asset_path

    records, _ = read_records(resolve_inputs(str(asset_path("data/tiny_chat.jsonl"))), sample=400)
    # characters / 3.5 ~ tokens of the tiny tokenizer; enough for realistic lengths
    lengths = [max(16, int(sum(len(m.get("content") or "") + len(m.get("reasoning_content") or "") for m in r.messages) / 3.5) + 40)
               for r in records]
    random.Random(0).shuffle(lengths)
    cu, total = [0], 0
    for n in lengths:
        n = min(n, tokens - total)
        if n <= 0:
            break
        total += n
        cu.append(total)
    if total < tokens:
        cu.append(tokens)
    return torch.tensor(cu, dtype=torch.int32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--docs", type=int, default=0, help="0: realistic lengths from the shipped chat data")
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    t, d = args.tokens, args.head_dim
    q = torch.randn(t, args.heads, d, device=device, dtype=dtype, requires_grad=True)
    k = torch.randn(t, args.kv_heads, d, device=device, dtype=dtype, requires_grad=True)
    v = torch.randn(t, args.kv_heads, d, device=device, dtype=dtype, requires_grad=True)
    bounds = document_bounds(t, args.docs).to(device)
    scale = 1 / math.sqrt(d)
    ref = varlen_attention(q, k, v, bounds, None, scale=scale, backend="sdpa").detach().float()
    n_docs = len(bounds) - 1
    print(f"device={device} dtype={args.dtype} tokens={t} docs={n_docs} auto={select_backend('auto', q)}")

    # per-document SDPA vs one SDPA over the whole row with a dense block-diagonal causal mask
    doc = torch.repeat_interleave(torch.arange(n_docs, device=device), (bounds[1:] - bounds[:-1]).long())
    pos = torch.arange(t, device=device)
    mask = (doc[:, None] == doc[None, :]) & (pos[:, None] >= pos[None, :])  # [T, T] allowed

    def dense():
        rep = args.heads // args.kv_heads
        o = F.scaled_dot_product_attention(
            q.transpose(0, 1), k.repeat_interleave(rep, 1).transpose(0, 1), v.repeat_interleave(rep, 1).transpose(0, 1),
            attn_mask=mask, scale=scale,
        )
        return o.transpose(0, 1)

    diff = (dense().detach().float() - ref).abs().max().item()
    t_doc = timed(lambda: varlen_attention(q, k, v, bounds, None, scale=scale, backend="sdpa").float().sum().backward(), args.repeats)
    t_dense = timed(lambda: dense().float().sum().backward(), args.repeats)
    print(f"per-document SDPA: {t_doc * 1e3:8.2f} ms fwd+bwd; dense block-diagonal mask: {t_dense * 1e3:8.2f} ms; "
          f"speed-up {t_dense / t_doc:.1f}x (goal >= 5x); max|diff| {diff:.2e}")
    for backend in ("sdpa", "varlen", "flash"):
        try:
            out = varlen_attention(q, k, v, bounds, None, scale=scale, backend=backend)
        except Exception as exc:  # backend not available here
            print(f"{backend:>7}: unavailable ({type(exc).__name__}: {str(exc)[:60]})")
            continue

        def step(backend=backend):
            varlen_attention(q, k, v, bounds, None, scale=scale, backend=backend).float().sum().backward()

        secs = timed(step, args.repeats)
        print(
            f"{backend:>7}: {secs * 1e3:8.2f} ms fwd+bwd   max|diff| vs sdpa {(out.float() - ref).abs().max().item():.2e}"
        )


if __name__ == "__main__":
    main()
