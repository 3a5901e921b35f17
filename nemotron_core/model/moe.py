"""Mixture of experts of NemotronH: sigmoid router with aux-loss-free bias, squared-ReLU experts.

Routing (fp32, same numerics as transformers' `NemotronHTopkRouter` with n_group = 1):
    scores = sigmoid(x @ W^T)                       [N, E]
    chosen = top-k of (scores + e_score_correction_bias)   (the bias changes WHICH experts)
    weights = scores[chosen] / sum(scores[chosen]) * routed_scaling_factor  (the bias is not in them)
Every token goes to exactly k experts (no capacity, no dropping). Dispatch sorts the (token, slot)
pairs by expert and runs one matmul per expert over its contiguous slice. The shared expert is
added to every token.

Balancing: `expert_bias_update` (aux-loss-free, outside the gradient) and `sequence_aux_loss`
(DeepSeek-V3 per-sequence balance loss, per document when the row is packed).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nemotron_core.model.mlp import MLP, relu2
from nemotron_core.model.params import local


@dataclass
class Routing:
    """Result of the router for N tokens."""

    scores: torch.Tensor  # [N, E] fp32 sigmoid scores (no bias)
    indices: torch.Tensor  # [N, K] chosen experts
    weights: torch.Tensor  # [N, K] fp32 combine weights


class Router(nn.Module):
    """Sigmoid top-k router. `e_score_correction_bias` is a buffer: saved, never given gradients."""

    def __init__(
        self,
        *,
        hidden_size: int,
        num_experts: int,
        top_k: int,
        routed_scaling_factor: float = 1.0,
        norm_topk_prob: bool = True,
    ):
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"num_experts_per_tok {top_k} must be in [1, n_routed_experts={num_experts}]")
        self.num_experts, self.top_k = num_experts, top_k
        self.routed_scaling_factor, self.norm_topk_prob = routed_scaling_factor, norm_topk_prob
        self.weight = nn.Parameter(torch.empty(num_experts, hidden_size))
        self.register_buffer("e_score_correction_bias", torch.zeros(num_experts, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> Routing:
        """x: [N, hidden] -> Routing."""
        logits = F.linear(x.float(), self.weight.float())
        scores = logits.sigmoid()
        choice = scores + self.e_score_correction_bias.float()
        indices = torch.topk(choice, k=self.top_k, dim=-1, sorted=False)[1]
        weights = scores.gather(1, indices)
        if self.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        weights = weights * self.routed_scaling_factor
        return Routing(scores=scores, indices=indices, weights=weights)


class GroupedExperts(nn.Module):
    """`n` squared-ReLU experts as 3-D parameters (expert dim first, so EP shards dim 0).

    up_proj: [E, I, hidden], down_proj: [E, hidden, I] (nn.Linear layout per expert, as HF).
    """

    def __init__(self, *, num_experts: int, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.num_experts = num_experts
        self.up_proj = nn.Parameter(torch.empty(num_experts, intermediate_size, hidden_size))
        self.down_proj = nn.Parameter(torch.empty(num_experts, hidden_size, intermediate_size))

    def forward(self, x_sorted: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """x_sorted: [M, hidden] rows grouped by expert (counts[e] rows for expert e) -> [M, hidden]."""
        up, down = local(self.up_proj), local(self.down_proj)  # this rank's experts / width under EP / TP
        outs = []
        for e, xe in enumerate(torch.split(x_sorted, counts, dim=0)):
            if counts[e] == 0:
                continue
            outs.append(F.linear(relu2(F.linear(xe, up[e])), down[e]))
        if not outs:
            return x_sorted.new_zeros(x_sorted.shape)
        return torch.cat(outs, dim=0)


@dataclass
class MoEStats:
    """Per-layer balancing information of one forward."""

    load: torch.Tensor  # [E] float: tokens routed to each expert (padding excluded), no grad
    aux_loss: torch.Tensor  # scalar: sequence-level balance loss (grad flows to the router)


def sequence_aux_loss(
    scores: torch.Tensor,
    indices: torch.Tensor,
    *,
    top_k: int,
    segment_ids: torch.Tensor | None = None,
    num_segments: int | None = None,
) -> torch.Tensor:
    """DeepSeek-V3 sequence-wise balance loss, averaged over sequences (documents).

    For each sequence with T tokens: f_i = E / (K * T) * #tokens routed to expert i,
    P_i = mean over its tokens of s_i / sum_j s_j (normalised sigmoid scores); loss = sum_i f_i P_i.
    A perfectly balanced router gives 1.0.

    Args:
        scores: [N, E] sigmoid scores; indices: [N, K] chosen experts;
        segment_ids: [N] long, the sequence of each token, -1 to exclude (padding); None = one sequence.
        num_segments: number of sequences (ids in [0, num_segments)).
    """
    n, e = scores.shape
    if segment_ids is None:
        segment_ids = torch.zeros(n, dtype=torch.long, device=scores.device)
        num_segments = 1
    keep = segment_ids >= 0
    seg = torch.where(keep, segment_ids, torch.zeros_like(segment_ids))
    w = keep.to(scores.dtype)
    probs = scores / scores.sum(dim=-1, keepdim=True) * w[:, None]  # [N, E]
    chosen = torch.zeros(n, e, dtype=scores.dtype, device=scores.device)
    chosen.scatter_(1, indices, 1.0)
    chosen = chosen * w[:, None]
    rows = max(num_segments, 1)  # a batch of padding only has no sequence: the loss is 0
    p_sum = scores.new_zeros(rows, e).index_add(0, seg, probs)
    c_sum = scores.new_zeros(rows, e).index_add(0, seg, chosen)
    tokens = scores.new_zeros(rows).index_add(0, seg, w)
    present = tokens > 0
    t = tokens.clamp(min=1)[:, None]
    f = c_sum * (e / (top_k * t))
    p = p_sum / t
    per_seq = (f * p).sum(dim=-1)
    return per_seq[present].mean() if bool(present.any()) else per_seq.sum() * 0


@torch.no_grad()
def expert_bias_update(bias: torch.Tensor, load: torch.Tensor, rate: float) -> torch.Tensor:
    """Aux-loss-free balancing step, in place: bias += rate * sign(mean(load) - load).

    Under-loaded experts become more likely to be chosen. `load` is the tokens per expert summed
    over the step (all micro-batches, and all data-parallel ranks once reduced by the caller).
    Returns `bias`.
    """
    load = load.to(torch.float32)
    bias.add_(rate * torch.sign(load.mean() - load).to(bias.dtype))
    return bias


class MoE(nn.Module):
    """Routed squared-ReLU experts + one always-on shared expert (NemotronH `E` layer)."""

    def __init__(
        self,
        *,
        hidden_size: int,
        num_experts: int,
        top_k: int,
        intermediate_size: int,
        shared_intermediate_size: int,
        routed_scaling_factor: float = 1.0,
        norm_topk_prob: bool = True,
        bias: bool = False,
    ):
        super().__init__()
        self.router = Router(
            hidden_size=hidden_size,
            num_experts=num_experts,
            top_k=top_k,
            routed_scaling_factor=routed_scaling_factor,
            norm_topk_prob=norm_topk_prob,
        )
        self.experts = GroupedExperts(
            num_experts=num_experts, hidden_size=hidden_size, intermediate_size=intermediate_size
        )
        self.shared_experts = MLP(hidden_size, shared_intermediate_size, bias=bias)

    def forward(
        self,
        hidden: torch.Tensor,
        *,
        segment_ids: torch.Tensor | None = None,
        num_segments: int | None = None,
    ) -> tuple[torch.Tensor, MoEStats]:
        """hidden [..., hidden] -> (output of the same shape, MoEStats).

        segment_ids: [N] (N = tokens of `hidden` flattened) sequence index for the aux loss and the
        load, -1 for padding tokens (routed and computed, but not counted).
        """
        shape = hidden.shape
        x = hidden.reshape(-1, shape[-1])
        n = x.shape[0]
        routing = self.router(x)
        k = self.router.top_k
        num_experts = self.router.num_experts

        flat_expert = routing.indices.reshape(-1)  # [N*K]
        order = torch.argsort(flat_expert, stable=True)
        token_of = order // k
        counts = torch.bincount(flat_expert, minlength=num_experts)
        y = self.experts(x[token_of], counts.tolist())  # [N*K, hidden], grouped by expert
        y = y * routing.weights.reshape(-1)[order, None]  # fp32 combine, as HF
        routed = torch.zeros(n, shape[-1], dtype=y.dtype, device=x.device).index_add_(0, token_of, y)
        out = routed.to(hidden.dtype).reshape(shape) + self.shared_experts(hidden)

        with torch.no_grad():
            if segment_ids is None:
                load = counts.to(torch.float32)
            else:
                valid = (segment_ids >= 0).repeat_interleave(k)
                load = torch.zeros(num_experts, dtype=torch.float32, device=x.device)
                load.index_add_(0, flat_expert, valid.to(torch.float32))
        aux = sequence_aux_loss(
            routing.scores,
            routing.indices,
            top_k=k,
            segment_ids=segment_ids,
            num_segments=num_segments,
        )
        return out, MoEStats(load=load, aux_loss=aux)
