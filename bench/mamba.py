"""Benchmark the Mamba-2 mixer: torch chunked-SSD path vs mamba_ssm kernels, forward+backward.

    python bench/mamba.py                                   # CPU: torch path, small shape
    python bench/mamba.py --tokens 8192 --docs 8 --dtype bf16   # GPU: kernels if installed

Shape defaults to a Nano3 layer scaled down (--hidden 2688 --heads 64 --head-dim 64 --state 128
--groups 8 for the real one). Prints seconds per forward+backward and the max abs difference of
the kernel output from the torch path. Printing only; correctness is asserted in
tests/unit/model/test_mamba.py and tests/parity/test_kernels_gpu.py.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout

from nemotron_core.model.mamba import Mamba2Mixer, _mamba_kernels  # noqa: E402
from nemotron_core.model.nano3 import seq_idx_from_cu_seqlens  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--docs", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--state", type=int, default=64)
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--chunk", type=int, default=128)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    torch.manual_seed(0)
    m = Mamba2Mixer(
        hidden_size=args.hidden,
        num_heads=args.heads,
        head_dim=args.head_dim,
        state_size=args.state,
        n_groups=args.groups,
        chunk_size=args.chunk,
    )
    m.reset_mamba_parameters(time_step_min=0.001, time_step_max=0.1, time_step_floor=1e-4)
    m = m.to(device=device, dtype=dtype)
    x = torch.randn(1, args.tokens, args.hidden, device=device, dtype=dtype, requires_grad=True)
    cu = torch.linspace(0, args.tokens, args.docs + 1).round().long().to(device)
    seq_idx = seq_idx_from_cu_seqlens(cu, args.tokens)[None]
    print(
        f"device={device} dtype={args.dtype} tokens={args.tokens} docs={args.docs} kernels={bool(_mamba_kernels())}"
    )
    ref = None
    for backend in ("torch", "auto"):
        if backend == "auto" and not (_mamba_kernels() and device == "cuda"):
            print("   auto: kernels unavailable (needs CUDA + mamba_ssm + causal_conv1d)")
            continue
        m.backend = backend
        best = float("inf")
        for _ in range(args.repeats):
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            out = m(x, seq_idx=seq_idx)
            out.float().sum().backward()
            if device == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        diff = "" if ref is None else f"   max|diff| vs torch {(out.float() - ref).abs().max().item():.2e}"
        ref = out.detach().float() if ref is None else ref
        print(f"{backend:>7}: {best * 1e3:8.2f} ms fwd+bwd{diff}")


if __name__ == "__main__":
    main()
