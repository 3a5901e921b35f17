"""Benchmark the attention backends on a packed row: seconds per forward+backward.

    python bench/attention.py                                   # CPU: sdpa only, small shape
    python bench/attention.py --tokens 8192 --docs 8 --dtype bf16   # GPU: flash / varlen / sdpa

Shape: one packed row of `--tokens` tokens split into `--docs` equal documents, 32 query heads,
2 KV heads, head dim 128 (Nano3). Prints each backend's time and its max abs difference from the
per-document SDPA reference. Printing only; correctness is asserted in tests/unit/model/test_attention.py
and tests/parity/test_kernels_gpu.py.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--docs", type=int, default=4)
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
    bounds = torch.linspace(0, t, args.docs + 1).round().to(torch.int32).to(device)
    scale = 1 / math.sqrt(d)
    ref = varlen_attention(q, k, v, bounds, None, scale=scale, backend="sdpa").detach().float()
    print(f"device={device} dtype={args.dtype} tokens={t} docs={args.docs} auto={select_backend('auto', q)}")
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
