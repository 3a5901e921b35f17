"""Nemotron 3 Nano (NemotronH): embeddings -> blocks from the pattern -> final RMSNorm -> lm_head.

Each block is `h + mixer(RMSNorm(h))`, the mixer chosen by one character of
`hybrid_override_pattern` (M Mamba-2, E MoE, * attention, - dense MLP). Single device, no
parallelism: `nemotron_core/parallel/` wraps `model.layers[i]` (an nn.ModuleList of `Block`s, the
unit for activation checkpointing, compile and FSDP) from the outside.

Guarantees (tests in tests/unit/model/ and tests/parity/):
- packed rows: with `cu_seqlens`, each document's logits and input gradients equal the document
  run alone to 1e-5 (fp32), in attention AND Mamba layers (conv window and SSM state restart);
- padded batches: with `attention_mask` (left or right padding), padding never reaches a real
  token's output, in attention or Mamba;
- same logits (1e-5) and loss gradients as transformers' `NemotronHForCausalLM` on the same weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from nemotron_core.config.model import ModelConfig
from nemotron_core.constants import IGNORE_INDEX
from nemotron_core.model.attention import Attention
from nemotron_core.model.mamba import Mamba2Mixer
from nemotron_core.model.mlp import MLP
from nemotron_core.model.moe import MoE, MoEStats
from nemotron_core.model.norms import RMSNorm


@dataclass
class SequenceInfo:
    """Where the segments (documents / padding) of a batch are, in the forms each mixer needs.

    cu_seqlens: [n+1] boundaries over the flattened row (packed input), covering all tokens.
    seq_idx: [B, T] segment index for Mamba (and attention when `cu_seqlens` is None).
    segment_ids: [B*T] document index for the MoE aux loss, -1 for padding.
    """

    cu_seqlens: torch.Tensor | None = None
    max_seqlen: int | None = None
    seq_idx: torch.Tensor | None = None
    segment_ids: torch.Tensor | None = None
    num_segments: int | None = None


def seq_idx_from_cu_seqlens(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """Document index of each of `total` tokens [total] (long); tokens past cu_seqlens[-1] get n_docs."""
    pos = torch.arange(total, device=cu_seqlens.device)
    return torch.searchsorted(cu_seqlens[1:].to(torch.long), pos, right=True)


def seq_idx_from_attention_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] mask (1 real, 0 pad) -> [B, T] segment index that increases where the mask changes."""
    m = attention_mask.to(torch.long)
    change = torch.zeros_like(m)
    change[:, 1:] = (m[:, 1:] != m[:, :-1]).to(torch.long)
    return torch.cumsum(change, dim=1)


def build_sequence_info(
    batch: int,
    seqlen: int,
    *,
    cu_seqlens: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    max_seqlen: int | None = None,
    device=None,
) -> SequenceInfo:
    """SequenceInfo for an input of shape [batch, seqlen] (cu_seqlens over the flattened tokens)."""
    if cu_seqlens is not None:
        if attention_mask is not None:
            raise ValueError("pass either cu_seqlens (packed) or attention_mask (padded), not both")
        total = batch * seqlen
        cu = cu_seqlens.to(device=device, dtype=torch.long)
        n_docs = cu.numel() - 1
        last = int(cu[-1])
        if int(cu[0]) != 0 or last > total or bool((cu[1:] < cu[:-1]).any()):
            raise ValueError(f"cu_seqlens must rise from 0 to at most {total} tokens, got {cu.tolist()}")
        doc = seq_idx_from_cu_seqlens(cu, total)
        if last < total:  # trailing padding is its own segment
            cu = torch.cat([cu, cu.new_tensor([total])])
        segment_ids = torch.where(doc < n_docs, doc, torch.full_like(doc, -1))
        return SequenceInfo(
            cu_seqlens=cu,
            max_seqlen=max_seqlen,
            seq_idx=doc[None],
            segment_ids=segment_ids,
            num_segments=n_docs,
        )
    if attention_mask is not None:
        mask = attention_mask.to(device=device).bool()
        seq_idx = seq_idx_from_attention_mask(mask)
        rows = torch.arange(batch, device=mask.device)[:, None].expand(batch, seqlen)
        segment_ids = torch.where(mask, rows, torch.full_like(rows, -1)).reshape(-1)
        return SequenceInfo(seq_idx=seq_idx, segment_ids=segment_ids, num_segments=batch)
    rows = torch.arange(batch, device=device)[:, None].expand(batch, seqlen).reshape(-1)
    return SequenceInfo(segment_ids=rows, num_segments=batch)


class Block(nn.Module):
    """`h + mixer(norm(h))`; `kind` is one of mamba, attention, moe, mlp."""

    def __init__(self, kind: str, mixer: nn.Module, norm: RMSNorm):
        super().__init__()
        self.kind = kind
        self.norm = norm
        self.mixer = mixer

    def forward(
        self, h: torch.Tensor, info: SequenceInfo, state=None
    ) -> tuple[torch.Tensor, MoEStats | None]:
        x = self.norm(h)
        stats = None
        if self.kind == "mamba":
            y = self.mixer(x, seq_idx=info.seq_idx, state=state)
        elif self.kind == "attention":
            y = self.mixer(
                x,
                cu_seqlens=info.cu_seqlens,
                max_seqlen=info.max_seqlen,
                seq_idx=info.seq_idx,
                state=state,
            )
        elif self.kind == "moe":
            y, stats = self.mixer(x, segment_ids=info.segment_ids, num_segments=info.num_segments)
        else:
            y = self.mixer(x)
        return h + y, stats


def build_block(cfg: ModelConfig, kind: str) -> Block:
    if kind == "mamba":
        mixer = Mamba2Mixer(
            hidden_size=cfg.hidden_size,
            num_heads=cfg.mamba_num_heads,
            head_dim=cfg.mamba_head_dim,
            state_size=cfg.ssm_state_size,
            n_groups=cfg.n_groups,
            conv_kernel=cfg.conv_kernel,
            chunk_size=cfg.chunk_size,
            conv_bias=cfg.use_conv_bias,
            proj_bias=cfg.mamba_proj_bias,
            eps=cfg.layer_norm_epsilon,
        )
    elif kind == "attention":
        mixer = Attention(
            hidden_size=cfg.hidden_size,
            num_heads=cfg.num_attention_heads,
            num_kv_heads=cfg.num_key_value_heads,
            head_dim=cfg.head_dim,
            bias=cfg.attention_bias,
        )
    elif kind == "moe":
        if cfg.n_shared_experts != 1:
            raise ValueError(
                f"model.n_shared_experts={cfg.n_shared_experts}: NemotronH (and its HF layout) has exactly one "
                "shared expert MLP of width moe_shared_expert_intermediate_size"
            )
        mixer = MoE(
            hidden_size=cfg.hidden_size,
            num_experts=cfg.n_routed_experts,
            top_k=cfg.num_experts_per_tok,
            intermediate_size=cfg.moe_intermediate_size,
            shared_intermediate_size=cfg.moe_shared_expert_intermediate_size,
            routed_scaling_factor=cfg.routed_scaling_factor,
            norm_topk_prob=cfg.norm_topk_prob,
            bias=cfg.mlp_bias,
        )
    elif kind == "mlp":
        if cfg.mlp_hidden_act != "relu2":
            raise ValueError(f"model.mlp_hidden_act={cfg.mlp_hidden_act!r}: only 'relu2' is implemented")
        mixer = MLP(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
    else:
        raise ValueError(f"unknown layer kind {kind!r}")
    return Block(kind, mixer, RMSNorm(cfg.hidden_size, eps=cfg.layer_norm_epsilon))


@dataclass
class Nano3Output:
    logits: torch.Tensor | None  # [B, T, vocab] (fp32 cast of the lm_head output), None if not asked
    loss: torch.Tensor | None = None  # mean CE over labels != IGNORE_INDEX (labels already shifted)
    loss_sum: torch.Tensor | None = None  # sum of token CE
    num_tokens: torch.Tensor | None = None  # labels != IGNORE_INDEX
    moe_load: torch.Tensor | None = None  # [n_moe_layers, E] tokens per expert, padding excluded
    moe_aux_loss: torch.Tensor | None = None  # [n_moe_layers] sequence-level balance loss per layer
    hidden: torch.Tensor | None = field(default=None, repr=False)  # final-normed hidden [B, T, hidden]


class Nano3Model(nn.Module):
    """NemotronH causal LM. Module names: embeddings, layers[i].{norm,mixer}, norm_f, lm_head."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.tie_word_embeddings:
            raise ValueError("model.tie_word_embeddings=True is not supported (NemotronH unties them)")
        self.cfg = cfg
        self.embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList([build_block(cfg, kind) for kind in cfg.layer_kinds()])
        self.norm_f = RMSNorm(cfg.hidden_size, eps=cfg.layer_norm_epsilon)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    # --- backends -------------------------------------------------------------------------
    def set_backends(self, *, attention: str | None = None, mamba: str | None = None) -> None:
        """Force attention ("auto", "flash", "varlen", "sdpa") / Mamba ("auto", "torch") backends."""
        for block in self.layers:
            if attention is not None and block.kind == "attention":
                block.mixer.backend = attention
            if mamba is not None and block.kind == "mamba":
                block.mixer.backend = mamba

    # --- forward ----------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        cu_seqlens: torch.Tensor | None = None,
        max_seqlen: int | None = None,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_logits: bool = True,
        return_hidden: bool = False,
        cache=None,
    ) -> Nano3Output:
        """Logits (and loss, MoE balancing statistics) for `input_ids` [B, T].

        cu_seqlens: int [n_docs+1] over the flattened B*T tokens (packed row(s)); tokens past
            cu_seqlens[-1] are padding (own segment, excluded from MoE statistics).
        position_ids: accepted for interface compatibility and ignored (NoPE).
        attention_mask: [B, T] 1 = token, 0 = padding (left or right), for padded batches.
        labels: [B, T] already-shifted targets (labels[j] is the token after j), IGNORE_INDEX to skip.
        cache: `nemotron_core.model.cache.InferenceCache` for generation (prefill / decode).
        """
        del position_ids  # NoPE: positions only matter through cu_seqlens / the causal order
        if cache is not None and cu_seqlens is not None:
            raise ValueError("cache (generation) takes padded batches (attention_mask), not cu_seqlens")
        b, t = input_ids.shape
        info = build_sequence_info(
            b,
            t,
            cu_seqlens=cu_seqlens,
            attention_mask=attention_mask,
            max_seqlen=max_seqlen,
            device=input_ids.device,
        )
        ids = input_ids.reshape(1, b * t) if cu_seqlens is not None else input_ids
        h = self.embeddings(ids)
        loads, auxes = [], []
        for i, block in enumerate(self.layers):
            state = cache.layer_state(i) if cache is not None else None
            h, stats = block(h, info, state) if state is not None else block(h, info)
            if stats is not None:
                loads.append(stats.load)
                auxes.append(stats.aux_loss)
        if cache is not None:
            cache.advance(t)
        h = self.norm_f(h).reshape(b, t, -1)
        out = Nano3Output(logits=None)
        if loads:
            out.moe_load = torch.stack(loads)
            out.moe_aux_loss = torch.stack(auxes)
        if return_hidden:
            out.hidden = h
        if return_logits or labels is not None:
            logits = self.lm_head(h).float()
            if return_logits:
                out.logits = logits
            if labels is not None:
                flat = labels.reshape(-1).to(logits.device)
                out.loss_sum = F.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), flat, ignore_index=IGNORE_INDEX, reduction="sum"
                )
                out.num_tokens = (flat != IGNORE_INDEX).sum()
                out.loss = out.loss_sum / out.num_tokens.clamp(min=1)
        return out


# ---------------------------------------------------------------------------------------------
# Build, init, count
# ---------------------------------------------------------------------------------------------


def build_nano3(
    cfg: ModelConfig,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    seed: int | None = None,
) -> Nano3Model:
    """Build the model; on "meta" no memory is allocated and no init runs.

    The 30B-A3B config builds on meta in about 0.1 s (test: < 1 s), after the process's first
    meta-tensor use, which imports torch's symbolic-shape machinery once (about 2-3 s here).

    Otherwise parameters are initialised by `init_weights` (with `seed`, if given, for a private
    generator) and cast to `dtype` (buffers such as `e_score_correction_bias` stay fp32).
    """
    device = torch.device(device)
    with torch.device(device):
        model = Nano3Model(cfg)
    if device.type != "meta":
        gen = None
        if seed is not None:
            gen = torch.Generator(device="cpu").manual_seed(seed)
        init_weights(model, generator=gen)
        if dtype is not None:
            for p in model.parameters():
                p.data = p.data.to(dtype)
    return model


def _normal_(t: torch.Tensor, std: float, generator: torch.Generator | None) -> None:
    if generator is None or t.device.type == "cpu":
        nn.init.normal_(t, mean=0.0, std=std, generator=generator)
    else:  # draw on CPU for a device-independent init from a CPU generator
        t.copy_(torch.empty(t.shape, dtype=t.dtype).normal_(0.0, std, generator=generator))


@torch.no_grad()
def init_weights(model: Nano3Model, *, generator: torch.Generator | None = None) -> None:
    """Reference init (Megatron-style).

    - Linears, experts, router and embeddings: normal(0, init_std);
    - output projections (Mamba out_proj, attention o_proj, MLP/expert/shared down_proj):
      normal(0, init_std / sqrt(2 * num_layers)) (Megatron's scaled output init);
    - Mamba: A_log = log(U[1, 16]), dt_bias = softplus^-1(dt) with dt log-uniform in
      [time_step_min, time_step_max] floored at time_step_floor, D = 1, conv1d PyTorch default;
    - norms = 1, biases = 0, e_score_correction_bias = 0.
    """
    cfg = model.cfg
    std = cfg.init_std
    out_std = std / math.sqrt(2 * cfg.num_layers)
    _normal_(model.embeddings.weight, std, generator)
    _normal_(model.lm_head.weight, std, generator)
    model.norm_f.reset_parameters()
    for block in model.layers:
        block.norm.reset_parameters()
        m = block.mixer
        if block.kind == "mamba":
            for lin in (m.z_proj, m.x_proj, m.B_proj, m.C_proj, m.dt_proj):
                _normal_(lin.weight, std, generator)
            _normal_(m.out_proj.weight, out_std, generator)
            for conv in (m.conv_x, m.conv_B, m.conv_C):
                # PyTorch's default Conv1d init: kaiming_uniform(a=sqrt(5)) -> U(+-1/sqrt(fan_in)).
                bound = 1.0 / math.sqrt(conv.weight.shape[1] * conv.weight.shape[2])
                conv.weight.copy_(torch.empty(conv.weight.shape).uniform_(-bound, bound, generator=generator))
                if conv.bias is not None:
                    conv.bias.copy_(torch.empty(conv.bias.shape).uniform_(-bound, bound, generator=generator))
            m.reset_mamba_parameters(
                time_step_min=cfg.time_step_min,
                time_step_max=cfg.time_step_max,
                time_step_floor=cfg.time_step_floor,
                generator=generator,
            )
        elif block.kind == "attention":
            for lin in (m.q_proj, m.k_proj, m.v_proj):
                _normal_(lin.weight, std, generator)
            _normal_(m.o_proj.weight, out_std, generator)
        elif block.kind == "moe":
            _normal_(m.router.weight, std, generator)
            m.router.e_score_correction_bias.zero_()
            _normal_(m.experts.up_proj, std, generator)
            _normal_(m.experts.down_proj, out_std, generator)
            _normal_(m.shared_experts.up_proj.weight, std, generator)
            _normal_(m.shared_experts.down_proj.weight, out_std, generator)
        else:
            _normal_(m.up_proj.weight, std, generator)
            _normal_(m.down_proj.weight, out_std, generator)
        for mod in block.modules():
            if isinstance(mod, nn.Linear) and mod.bias is not None:
                mod.bias.zero_()


def count_model_parameters(model: Nano3Model) -> tuple[int, int]:
    """(total, active per token) element counts of the built modules; works on meta models.

    Equals the arithmetic `nemotron_core.model.sizing.count_parameters(cfg)` (total, active), a
    cross-check of the module structure (tests/unit/model/test_nano3_build.py).

    Counts parameters plus the router's `e_score_correction_bias` buffers. Active = what one token
    touches: its top-k routed experts, the shared expert, routers (incl. the bias), mixers, norms
    and lm_head; the input embedding is excluded (a lookup, not compute).
    """
    cfg = model.cfg
    total = sum(p.numel() for p in model.parameters())
    total += sum(b.numel() for n, b in model.named_buffers() if n.endswith("e_score_correction_bias"))
    active = total - model.embeddings.weight.numel()
    for block in model.layers:
        if block.kind == "moe":
            experts = block.mixer.experts
            per_expert = (experts.up_proj.numel() + experts.down_proj.numel()) // cfg.n_routed_experts
            active -= per_expert * (cfg.n_routed_experts - cfg.num_experts_per_tok)
    return total, active
