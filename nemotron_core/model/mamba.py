"""Mamba-2 mixer with document isolation in packed rows.

Guarantee: with a per-token segment index `seq_idx` (built from `cu_seqlens` or a padding mask by
`nano3.py`), no token's output depends on a token of another segment: the causal conv1d window and
the SSM state both restart at every segment start, in the torch path and in the optional
mamba_ssm / causal_conv1d kernels (which take the same `seq_idx`). The chunked SSD scan equals
the sequential recurrence to 1e-5 in fp32 with chunk and segment boundaries anywhere
(`tests/unit/model/test_mamba.py`).

Parameters are stored so heads and groups can be sharded by tensor parallelism: the HF fused
`in_proj` is five linears (`z_proj`, `x_proj`, `B_proj`, `C_proj`, `dt_proj`) and the HF fused
depthwise `conv1d` over (x, B, C) is three depthwise convs (`conv_x`, `conv_B`, `conv_C`);
`nemotron_core/checkpoint/hf.py` concatenates them back to the HF layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nemotron_core.model.norms import GatedRMSNorm
from nemotron_core.model.params import local

# "auto": mamba_ssm / causal_conv1d kernels when importable and the input is on CUDA, else torch.
# "torch": always the plain-torch path (the reference for tests).
MAMBA_BACKENDS = ("auto", "torch")


@dataclass
class MambaState:
    """Inference state of one Mamba-2 layer for a batch of rows.

    conv: the last `conv_kernel - 1` conv inputs (x, B, C channels concatenated) [B, K-1, conv_dim]
    ssm: the SSM state in fp32 [B, H, P, N]
    """

    conv: torch.Tensor
    ssm: torch.Tensor
    filled: bool = False  # set by the mixer once a forward wrote the state

    @classmethod
    def empty(cls, mixer: Mamba2Mixer, batch: int, *, dtype: torch.dtype, device) -> MambaState:
        conv = torch.zeros(batch, mixer.conv_kernel - 1, mixer.conv_dim, dtype=dtype, device=device)
        ssm = torch.zeros(
            batch, mixer.num_heads, mixer.head_dim, mixer.state_size, dtype=torch.float32, device=device
        )
        return cls(conv=conv, ssm=ssm)


_KERNELS: dict | None = None


def _mamba_kernels() -> dict:
    """Lazily import the optional CUDA kernels; an empty dict when they are not installed."""
    global _KERNELS
    if _KERNELS is None:
        _KERNELS = {}
        try:  # pragma: no cover - needs mamba_ssm on a GPU machine
            from causal_conv1d import causal_conv1d_fn  # type: ignore
            from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined  # type: ignore

            _KERNELS = {"conv": causal_conv1d_fn, "scan": mamba_chunk_scan_combined}
        except Exception:  # ImportError, or a broken CUDA build
            _KERNELS = {}
    return _KERNELS


# ---------------------------------------------------------------------------------------------
# Causal depthwise conv1d with segment restarts
# ---------------------------------------------------------------------------------------------


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    seq_idx: torch.Tensor | None = None,
    initial: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal depthwise conv (no activation): out[t] = bias + sum_k w[:, k] * x[t - (K-1) + k].

    Inputs from another segment (`seq_idx[t'] != seq_idx[t]`) count as zero, so the window
    restarts at each segment start. `initial` [B, K-1, C] are inputs before position 0 (they
    belong to the first segment of each row), used to continue from an inference state.

    Args:
        x: [B, T, C]; weight: [C, K]; bias: [C] or None; seq_idx: [B, T] int, non-decreasing.
    Returns: [B, T, C].
    """
    b, t, c = x.shape
    k = weight.shape[1]
    if seq_idx is None and initial is None:
        out = F.conv1d(x.transpose(1, 2), weight.unsqueeze(1), bias, padding=k - 1, groups=c)
        return out[..., :t].transpose(1, 2)
    if initial is None:
        initial = x.new_zeros(b, k - 1, c)
    xp = torch.cat([initial.to(x.dtype), x], dim=1)  # [B, T+K-1, C]
    if seq_idx is not None:
        segp = torch.cat([seq_idx[:, :1].expand(b, k - 1), seq_idx], dim=1)
    out = None
    for j in range(k):
        term = xp[:, j : j + t] * weight[:, j]
        if seq_idx is not None and j < k - 1:
            term = term * (segp[:, j : j + t] == seq_idx).unsqueeze(-1).to(term.dtype)
        out = term if out is None else out + term
    if bias is not None:
        out = out + bias
    return out


# ---------------------------------------------------------------------------------------------
# Chunked SSD scan (plain torch) with segment restarts
# ---------------------------------------------------------------------------------------------


def _segsum(a: torch.Tensor) -> torch.Tensor:
    """[..., L] -> [..., L, L] with out[..., i, j] = sum(a[..., j+1 : i+1]) for j <= i, -inf above.

    Masked cumsum (no differences of cumsums), so it stays exact for long chunks; same as HF.
    """
    n = a.size(-1)
    a = a[..., None].expand(*a.shape, n)
    lower = torch.tril(torch.ones(n, n, dtype=torch.bool, device=a.device), diagonal=-1)
    a = a.masked_fill(~lower, 0)
    s = torch.cumsum(a, dim=-2)
    keep = torch.tril(torch.ones(n, n, dtype=torch.bool, device=a.device), diagonal=0)
    return s.masked_fill(~keep, -torch.inf)


def ssd_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    *,
    chunk_size: int,
    seq_idx: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
):
    """Chunked SSD (Mamba-2) scan in fp32 plain torch, without the D skip.

    Computes, per head h and segment, the recurrence
        state_t = exp(dt_t * A_h) * state_{t-1} + dt_t * x_t (outer) B_t,   y_t = state_t @ C_t,
    with state reset to zero at every segment start (`seq_idx` changes) and `initial_state`
    used as the state before position 0 (it belongs to each row's first segment).

    Args:
        x: [b, T, H, P]; dt: [b, T, H] (already softplus'ed, > 0); A: [H] (negative);
        B, C: [b, T, G, N] with H divisible by G (head h reads group h // (H/G));
        seq_idx: [b, T] int, non-decreasing per row; initial_state: [b, H, P, N].
    Returns: y [b, T, H, P] fp32, and the final state [b, H, P, N] if `return_final_state`.
    """
    b, t, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    x, dt, A = x.float(), dt.float(), A.float()
    B = B.float().repeat_interleave(h // g, dim=2)
    C = C.float().repeat_interleave(h // g, dim=2)
    q = chunk_size
    pad = (q - t % q) % q
    if pad:
        x = F.pad(x, (0, 0, 0, 0, 0, pad))
        dt = F.pad(dt, (0, 0, 0, pad))  # dt = 0: padded steps neither decay nor write the state
        B = F.pad(B, (0, 0, 0, 0, 0, pad))
        C = F.pad(C, (0, 0, 0, 0, 0, pad))
        if seq_idx is not None:
            seq_idx = torch.cat([seq_idx, seq_idx[:, -1:].expand(b, pad)], dim=1)
    nc = (t + pad) // q
    xdt = (x * dt[..., None]).reshape(b, nc, q, h, p)
    B = B.reshape(b, nc, q, h, n)
    C = C.reshape(b, nc, q, h, n)
    a = (dt * A).reshape(b, nc, q, h).permute(0, 3, 1, 2)  # [b, h, c, l]
    a_cum = torch.cumsum(a, dim=-1)

    if seq_idx is not None:
        seg = seq_idx.reshape(b, nc, q)  # [b, c, l]
        seg_last = seg[:, :, -1]  # segment at the end of each chunk [b, c]
        # seg_end[k]: segment owning the state entering chunk k (k = 0: the initial state).
        seg_end = torch.cat([seg[:, :1, 0], seg_last], dim=1)  # [b, c+1]

    # 1. Intra-chunk (diagonal blocks): y[l] = sum_{s<=l} C_l.B_s exp(a_cum[l]-a_cum[s]) xdt_s
    seg_a = _segsum(a)  # [b, h, c, l, s]
    if seq_idx is not None:
        same = seg[:, :, :, None] == seg[:, :, None, :]  # [b, c, l, s]
        seg_a = seg_a.masked_fill(~same[:, None], -torch.inf)
    L = torch.exp(seg_a)
    G_ = torch.einsum("bclhn,bcshn->bclsh", C, B)
    M = G_ * L.permute(0, 2, 3, 4, 1)
    y_diag = torch.einsum("bclsh,bcshp->bclhp", M, xdt)

    # 2. State at the end of each chunk from its own tokens (only the chunk's last segment).
    decay_states = torch.exp(a_cum[..., -1:] - a_cum)  # [b, h, c, l]
    if seq_idx is not None:
        in_last = (seg == seg_last[..., None])[:, None]  # [b, 1, c, l]
        decay_states = torch.where(in_last, decay_states, torch.zeros_like(decay_states))
    B_decay = B * decay_states.permute(0, 2, 3, 1)[..., None]
    states = torch.einsum("bclhn,bclhp->bchpn", B_decay, xdt)  # [b, c, h, p, n]

    # 3. Inter-chunk recurrence: the state entering every chunk (and the final state).
    if initial_state is None:
        init = torch.zeros_like(states[:, :1])
    else:
        init = initial_state[:, None].to(states.dtype)
    states = torch.cat([init, states], dim=1)  # [b, c+1, h, p, n]
    seg_chunk = _segsum(F.pad(a_cum[..., -1], (1, 0)))  # [b, h, c+1 (target), c+1 (source)]
    if seq_idx is not None:
        same_end = seg_end[:, :, None] == seg_end[:, None, :]  # [b, tgt, src]
        seg_chunk = seg_chunk.masked_fill(~same_end[:, None], -torch.inf)
    new_states = torch.einsum("bhts,bshpn->bthpn", torch.exp(seg_chunk), states)
    states_in, final_state = new_states[:, :-1], new_states[:, -1]

    # 4. Contribution of the entering state to each position (off-diagonal blocks).
    decay_out = torch.exp(a_cum)  # [b, h, c, l]
    if seq_idx is not None:
        from_prev = (seg == seg_end[:, :-1, None])[:, None]  # [b, 1, c, l]
        decay_out = torch.where(from_prev, decay_out, torch.zeros_like(decay_out))
    y_off = torch.einsum("bclhn,bchpn->bclhp", C, states_in) * decay_out.permute(0, 2, 3, 1)[..., None]

    y = (y_diag + y_off).reshape(b, nc * q, h, p)[:, :t]
    if return_final_state:
        return y, final_state
    return y


def ssd_step(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
) -> torch.Tensor:
    """One recurrence step in fp32; updates `state` [b, H, P, N] in place and returns y [b, H, P].

    x: [b, H, P]; dt: [b, H] (softplus'ed); A: [H]; B, C: [b, G, N].
    """
    h, g = x.shape[1], B.shape[1]
    B = B.float().repeat_interleave(h // g, dim=1)  # [b, H, N]
    C = C.float().repeat_interleave(h // g, dim=1)
    dt = dt.float()
    dA = torch.exp(dt * A.float())  # [b, H]
    new = state * dA[..., None, None] + (dt[..., None] * x.float())[..., None] * B[:, :, None, :]
    state.copy_(new)
    return torch.einsum("bhpn,bhn->bhp", new, C)


# ---------------------------------------------------------------------------------------------
# The mixer
# ---------------------------------------------------------------------------------------------


class Mamba2Mixer(nn.Module):
    """Mamba-2 mixer of NemotronH (numerically the same as transformers' `NemotronHMamba2Mixer`).

    z, x, B, C, dt = projections of the input; (x, B, C) = silu(causal_conv(x, B, C));
    dt = softplus(dt + dt_bias) (no clamp); y = SSD(x, dt, A=-exp(A_log), B, C) + D * x;
    out = out_proj(GatedRMSNorm(y, z)).
    """

    def __init__(
        self,
        *,
        hidden_size: int,
        num_heads: int,
        head_dim: int,
        state_size: int,
        n_groups: int,
        conv_kernel: int = 4,
        chunk_size: int = 128,
        conv_bias: bool = True,
        proj_bias: bool = False,
        eps: float = 1e-5,
    ):
        super().__init__()
        if num_heads % n_groups:
            raise ValueError(f"mamba_num_heads {num_heads} must be divisible by n_groups {n_groups}")
        self.num_heads, self.head_dim, self.state_size, self.n_groups = (
            num_heads,
            head_dim,
            state_size,
            n_groups,
        )
        self.conv_kernel, self.chunk_size = conv_kernel, chunk_size
        self.d_inner = num_heads * head_dim
        bc = n_groups * state_size
        self.z_proj = nn.Linear(hidden_size, self.d_inner, bias=proj_bias)
        self.x_proj = nn.Linear(hidden_size, self.d_inner, bias=proj_bias)
        self.B_proj = nn.Linear(hidden_size, bc, bias=proj_bias)
        self.C_proj = nn.Linear(hidden_size, bc, bias=proj_bias)
        self.dt_proj = nn.Linear(hidden_size, num_heads, bias=proj_bias)
        # Depthwise convs (weight [C, 1, K], HF layout per channel), applied functionally below.
        self.conv_x = nn.Conv1d(self.d_inner, self.d_inner, conv_kernel, groups=self.d_inner, bias=conv_bias)
        self.conv_B = nn.Conv1d(bc, bc, conv_kernel, groups=bc, bias=conv_bias)
        self.conv_C = nn.Conv1d(bc, bc, conv_kernel, groups=bc, bias=conv_bias)
        self.dt_bias = nn.Parameter(torch.empty(num_heads))
        self.A_log = nn.Parameter(torch.empty(num_heads))
        self.D = nn.Parameter(torch.empty(num_heads))
        self.norm = GatedRMSNorm(self.d_inner, group_size=self.d_inner // n_groups, eps=eps)
        self.out_proj = nn.Linear(self.d_inner, hidden_size, bias=proj_bias)
        self.backend = "auto"

    @property
    def conv_dim(self) -> int:
        return self.d_inner + 2 * self.n_groups * self.state_size

    def _conv_params(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        convs = (self.conv_x, self.conv_B, self.conv_C)
        w = torch.cat([local(c.weight) for c in convs], dim=0).squeeze(1)
        if self.conv_x.bias is None:
            return w, None
        return w, torch.cat([local(c.bias) for c in convs], dim=0)

    @torch.no_grad()
    def reset_mamba_parameters(
        self,
        *,
        time_step_min: float,
        time_step_max: float,
        time_step_floor: float,
        generator: torch.Generator | None = None,
    ) -> None:
        """A_log = log(U[1, 16]); dt_bias = softplus^-1(dt), dt log-uniform in [min, max] floored; D = 1."""
        h = self.num_heads
        dev = self.A_log.device
        A = torch.empty(h, dtype=torch.float32).uniform_(1.0, 16.0, generator=generator)
        self.A_log.copy_(torch.log(A).to(dev))
        u = torch.rand(h, dtype=torch.float32, generator=generator)
        dt = torch.exp(u * (math.log(time_step_max) - math.log(time_step_min)) + math.log(time_step_min))
        dt = dt.clamp(min=time_step_floor)
        self.dt_bias.copy_((dt + torch.log(-torch.expm1(-dt))).to(dev))  # inverse softplus
        self.D.fill_(1.0)
        self.norm.reset_parameters()

    def forward(
        self,
        hidden: torch.Tensor,
        *,
        seq_idx: torch.Tensor | None = None,
        state: MambaState | None = None,
    ) -> torch.Tensor:
        """hidden [B, T, hidden] -> [B, T, hidden].

        seq_idx: [B, T] int, non-decreasing per row; state restarts where it changes.
        state: inference state; when `state.filled` it is the state before position 0 (it belongs
        to each row's first segment); it is overwritten with the state after the last position.
        """
        b, t, _ = hidden.shape
        dtype = hidden.dtype
        z = self.z_proj(hidden)
        xbc = torch.cat([self.x_proj(hidden), self.B_proj(hidden), self.C_proj(hidden)], dim=-1)
        dt = self.dt_proj(hidden)
        A = -torch.exp(local(self.A_log).float())
        conv_w, conv_b = self._conv_params()
        h, p, g, n = self.num_heads, self.head_dim, self.n_groups, self.state_size

        kernels = _mamba_kernels() if (self.backend == "auto" and hidden.is_cuda and state is None) else {}
        if kernels:  # pragma: no cover - GPU with mamba_ssm only
            sidx = None if seq_idx is None else seq_idx.to(torch.int32).contiguous()
            xbc = kernels["conv"](xbc.transpose(1, 2), conv_w, conv_b, seq_idx=sidx, activation="silu")
            xbc = xbc.transpose(1, 2)
            xs, Bs, Cs = torch.split(xbc, [self.d_inner, g * n, g * n], dim=-1)
            y = kernels["scan"](
                xs.reshape(b, t, h, p),
                dt,
                A,
                Bs.reshape(b, t, g, n),
                Cs.reshape(b, t, g, n),
                self.chunk_size,
                D=local(self.D),
                z=None,
                dt_bias=local(self.dt_bias),
                dt_softplus=True,
                seq_idx=sidx,
            )
            y = y.reshape(b, t, self.d_inner)
            return self.out_proj(self.norm(y, z).to(dtype))

        filled = state is not None and state.filled
        if filled and t == 1 and seq_idx is None:
            return self._step(hidden, z, xbc, dt, A, conv_w, conv_b, state)

        k = self.conv_kernel
        conv_in = xbc
        xbc = F.silu(
            causal_conv1d(xbc, conv_w, conv_b, seq_idx=seq_idx, initial=state.conv if filled else None)
        )
        xs, Bs, Cs = torch.split(xbc, [self.d_inner, g * n, g * n], dim=-1)
        dt = F.softplus(dt + local(self.dt_bias))
        xs_h = xs.reshape(b, t, h, p)
        out = ssd_scan(
            xs_h,
            dt,
            A,
            Bs.reshape(b, t, g, n),
            Cs.reshape(b, t, g, n),
            chunk_size=self.chunk_size,
            seq_idx=seq_idx,
            initial_state=state.ssm if filled else None,
            return_final_state=state is not None,
        )
        if state is not None:
            y, final = out
            state.ssm.copy_(final)
            # Conv window for the next step: the last K-1 inputs, zeroed where they belong to an
            # earlier segment than the row's last token (so left padding never leaks).
            prev = state.conv if filled else conv_in.new_zeros(b, k - 1, conv_in.shape[-1])
            hist = torch.cat([prev.to(conv_in.dtype), conv_in], dim=1)[:, -(k - 1) :]
            if seq_idx is not None:
                seg_hist = torch.cat([seq_idx[:, :1].expand(b, k - 1), seq_idx], dim=1)[:, -(k - 1) :]
                hist = hist * (seg_hist == seq_idx[:, -1:]).unsqueeze(-1).to(hist.dtype)
            state.conv.copy_(hist)
            state.filled = True
        else:
            y = out
        y = y + xs_h.float() * local(self.D).float()[:, None]
        y = y.reshape(b, t, self.d_inner)
        return self.out_proj(self.norm(y, z).to(dtype))

    def _step(self, hidden, z, xbc, dt, A, conv_w, conv_b, state: MambaState) -> torch.Tensor:
        b = hidden.shape[0]
        dtype = hidden.dtype
        h, p, g, n = self.num_heads, self.head_dim, self.n_groups, self.state_size
        window = torch.cat([state.conv.to(xbc.dtype), xbc], dim=1)  # [b, K, C]
        state.conv.copy_(window[:, 1:])
        conv = (window * conv_w.t().unsqueeze(0)).sum(dim=1)
        if conv_b is not None:
            conv = conv + conv_b
        xbc = F.silu(conv)  # [b, C]
        xs, Bs, Cs = torch.split(xbc, [self.d_inner, g * n, g * n], dim=-1)
        dt = F.softplus(dt[:, 0] + local(self.dt_bias))
        xs_h = xs.reshape(b, h, p)
        y = ssd_step(state.ssm, xs_h, dt, A, Bs.reshape(b, g, n), Cs.reshape(b, g, n))
        y = y + xs_h.float() * local(self.D).float()[:, None]
        y = y.reshape(b, 1, self.d_inner)
        return self.out_proj(self.norm(y, z).to(dtype))
