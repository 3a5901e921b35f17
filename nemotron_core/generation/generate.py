"""Batched generation with an inference cache (KV for attention, conv + fp32 SSM state for Mamba).

Prompts of different lengths are left-padded into one batch; the padding is its own segment, so it
reaches neither attention nor Mamba state (`attention_mask` in the prefill). Guarantee
(tests/unit/model/test_generation.py): each generated token's log-prob equals the full forward of
the prompt plus the tokens before it, run alone without cache, to 1e-5 (fp32), and a batch gives
the same tokens as each prompt generated alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from nemotron_core.model.cache import InferenceCache


@dataclass
class GenerationResult:
    """Per prompt: generated token ids (stop token included), their log-probs, why it stopped."""

    tokens: list[list[int]]
    logprobs: list[list[float]]
    finish_reasons: list[str]  # "stop" (a stop token was sampled) or "length"


def sample_next(
    logits: torch.Tensor,
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick one token per row from logits [B, V] (fp32).

    temperature 0: greedy (argmax). Otherwise sample from softmax(logits / temperature) restricted
    to the smallest set of tokens whose probability reaches `top_p` (nucleus sampling).
    Returns (tokens [B], log-probs [B]): the log-prob of each chosen token under
    softmax(logits / temperature) (temperature 1 for greedy), before top-p truncation, i.e. under
    the policy that RL needs.
    """
    logits = logits.float()
    if temperature <= 0.0:
        tokens = logits.argmax(dim=-1)
        logp = torch.log_softmax(logits, dim=-1)
    else:
        logp = torch.log_softmax(logits / temperature, dim=-1)
        probs = logp.exp()
        if top_p < 1.0:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            before = sorted_p.cumsum(dim=-1) - sorted_p  # mass strictly before each token
            sorted_p = sorted_p.masked_fill(before >= top_p, 0.0)  # always keeps the top token
            probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
        tokens = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)


@torch.no_grad()
def generate(
    model,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    stop_token_ids: Sequence[int] = (),
    pad_token_id: int = 0,
    generator: torch.Generator | None = None,
) -> GenerationResult:
    """Generate up to `max_new_tokens` tokens after each prompt (a list of token ids).

    A row stops after sampling any of `stop_token_ids` (the stop token is returned); finished rows
    keep stepping with `pad_token_id` until all rows are done, and their extra tokens are dropped.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate needs at least one prompt and no empty prompt")
    device = next(model.parameters()).device
    b = len(prompts)
    plen = max(len(p) for p in prompts)
    ids = torch.full((b, plen), pad_token_id, dtype=torch.long, device=device)
    mask = torch.zeros(b, plen, dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        ids[i, plen - len(p) :] = torch.as_tensor(list(p), dtype=torch.long, device=device)
        mask[i, plen - len(p) :] = 1
    cache = InferenceCache(model, b, plen + max_new_tokens)
    was_training = model.training
    model.eval()
    try:
        out = model(ids, attention_mask=mask, cache=cache, return_logits=False, return_hidden=True)
        logits = model.lm_head(out.hidden[:, -1]).float()
        stops = set(int(s) for s in stop_token_ids)
        tokens: list[list[int]] = [[] for _ in range(b)]
        logprobs: list[list[float]] = [[] for _ in range(b)]
        done = [False] * b
        reasons = ["length"] * b
        for _ in range(max_new_tokens):
            nxt, lp = sample_next(logits, temperature=temperature, top_p=top_p, generator=generator)
            for i in range(b):
                if done[i]:
                    continue
                tok = int(nxt[i])
                tokens[i].append(tok)
                logprobs[i].append(float(lp[i]))
                if tok in stops:
                    done[i], reasons[i] = True, "stop"
            if all(done) or len(max(tokens, key=len)) >= max_new_tokens:
                break
            step = torch.where(torch.tensor(done, device=device), torch.full_like(nxt, pad_token_id), nxt)
            out = model(step[:, None], cache=cache, return_logits=False, return_hidden=True)
            logits = model.lm_head(out.hidden[:, -1]).float()
    finally:
        model.train(was_training)
    return GenerationResult(tokens=tokens, logprobs=logprobs, finish_reasons=reasons)
