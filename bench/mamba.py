"""Benchmark Mamba-2: chunked SSD vs sequential scan, document-reset cost, torch vs mamba_ssm kernels.

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

from nemotron_core.model.mamba import Mamba2Mixer, _mamba_kernels, ssd_scan  # noqa: E402
from nemotron_core.model.nano3 import seq_idx_from_cu_seqlens  # noqa: E402


def sequential_scan(x, dt, A, B, C, seq_idx):
    """The recurrence one token at a time (the baseline the chunked scan replaces)."""
    b, t, h, p = x.shape
    rep = h // B.shape[2]
    Bh, Ch = B.repeat_interleave(rep, 2), C.repeat_interleave(rep, 2)
    state = x.new_zeros(b, h, p, B.shape[-1])
    ys = []
    for i in range(t):
        if i and seq_idx is not None:
            state = state * (seq_idx[:, i] == seq_idx[:, i - 1]).float()[:, None, None, None]
        decay = torch.exp(dt[:, i] * A)[..., None, None]
        state = state * decay + (dt[:, i, :, None] * x[:, i])[..., None] * Bh[:, i, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", state, Ch[:, i]))
    return torch.stack(ys, 1)


def scan_comparison(args, device) -> None:
    """Chunked SSD vs the sequential recurrence (goal >= 10x), and what document resets cost
    (the same scan with seq_idx vs without; goal <= 10%)."""
    g = torch.Generator().manual_seed(0)
    b, t, h, p, n, gr = 1, args.tokens, args.heads, args.head_dim, args.state, args.groups
    x = torch.randn(b, t, h, p, generator=g).to(device)
    dt = (torch.rand(b, t, h, generator=g) * 0.1 + 1e-3).to(device)
    A = -torch.rand(h, generator=g).to(device) - 0.5
    B = torch.randn(b, t, gr, n, generator=g).to(device)
    C = torch.randn(b, t, gr, n, generator=g).to(device)
    cu = torch.linspace(0, t, args.docs + 1).round().long().to(device)
    seq_idx = seq_idx_from_cu_seqlens(cu, t)[None]

    def best(fn):
        out, secs = None, float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            out = fn()
            secs = min(secs, time.perf_counter() - start)
        return out, secs

    with torch.no_grad():
        y_seq, t_seq = best(lambda: sequential_scan(x, dt, A, B, C, seq_idx))
        y_chunk, t_chunk = best(lambda: ssd_scan(x, dt, A, B, C, chunk_size=args.chunk, seq_idx=seq_idx))
        _, t_plain = best(lambda: ssd_scan(x, dt, A, B, C, chunk_size=args.chunk))
    print(f"scan forward, {t} tokens, {args.docs} documents: sequential {t_seq * 1e3:8.2f} ms, chunked SSD "
          f"{t_chunk * 1e3:8.2f} ms -> {t_seq / t_chunk:.1f}x (goal >= 10x), max|diff| {(y_seq - y_chunk).abs().max().item():.2e}")
    print(f"document resets: chunked SSD with seq_idx {t_chunk * 1e3:8.2f} ms vs without {t_plain * 1e3:8.2f} ms "
          f"-> {100 * (t_chunk / t_plain - 1):+.1f}% (goal <= 10%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--docs", type=int, default=16)
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
    scan_comparison(args, device)
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
