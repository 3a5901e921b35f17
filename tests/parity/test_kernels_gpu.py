"""Fast kernels == the plain-torch reference paths (CUDA only; skipped without a GPU)."""

from __future__ import annotations

import math

import pytest
import torch

from nemotron_core.model.attention import select_backend, varlen_attention
from nemotron_core.model.mamba import Mamba2Mixer, _mamba_kernels

pytestmark = pytest.mark.gpu


def _packed_qkv(dtype=torch.bfloat16):
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(300, 8, 64, device="cuda", dtype=dtype, generator=gen)
    k = torch.randn(300, 2, 64, device="cuda", dtype=dtype, generator=gen)
    v = torch.randn(300, 2, 64, device="cuda", dtype=dtype, generator=gen)
    cu = torch.tensor([0, 37, 38, 200, 300], dtype=torch.int32, device="cuda")
    return q, k, v, cu


@pytest.mark.parametrize("backend", ["flash", "varlen"])
def test_varlen_backends_match_per_document_sdpa(backend):
    q, k, v, cu = _packed_qkv()
    if backend == "flash" and select_backend("auto", q) != "flash":
        pytest.skip("flash-attn not installed")
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        if backend == "varlen":
            pytest.skip("torch has no varlen_attn")
    scale = 1 / math.sqrt(64)
    ref = varlen_attention(q.float(), k.float(), v.float(), cu, None, scale=scale, backend="sdpa")
    out = varlen_attention(q, k, v, cu, 200 - 38, scale=scale, backend=backend)
    assert (out.float() - ref).abs().max() <= 2e-2


def test_mamba_kernels_match_torch_path_with_segments():
    if not _mamba_kernels():
        pytest.skip("mamba_ssm / causal_conv1d not installed")
    torch.manual_seed(0)
    m = Mamba2Mixer(
        hidden_size=256, num_heads=8, head_dim=64, state_size=64, n_groups=2, chunk_size=64
    ).cuda()
    for lin in (m.z_proj, m.x_proj, m.B_proj, m.C_proj, m.dt_proj, m.out_proj):
        torch.nn.init.normal_(lin.weight, std=0.05)
    m.reset_mamba_parameters(time_step_min=0.001, time_step_max=0.1, time_step_floor=1e-4)
    x = torch.randn(1, 300, 256, device="cuda")
    seq_idx = torch.tensor([[0] * 37 + [1] * 163 + [2] * 100], device="cuda")
    m.backend = "torch"
    ref = m(x, seq_idx=seq_idx)
    m.backend = "auto"
    out = m(x, seq_idx=seq_idx)
    assert (out - ref).abs().max() <= 1e-3 * max(1.0, ref.abs().max().item())
