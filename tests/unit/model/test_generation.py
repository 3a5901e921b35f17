"""Cached generation equals the uncached full forward; batching, stop tokens, sampling."""

from __future__ import annotations

import torch

from nemotron_core.generation import generate, sample_next
from nemotron_core.model import build_nano3
from nemotron_core.model.cache import InferenceCache

PROMPTS = [[5, 9, 17, 3, 22, 41, 8, 13, 2, 30, 11], [7, 1, 60], [33, 12, 19, 4, 4, 50]]


def test_cached_decode_logits_equal_full_forward(small_cfg):
    model = build_nano3(small_cfg, seed=0).eval()
    ids = torch.randint(0, small_cfg.vocab_size, (2, 15), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(ids).logits
        cache = InferenceCache(model, 2, 15)
        steps = [model(ids[:, :9], cache=cache).logits]  # prefill crosses a chunk edge (8)
        for i in range(9, 15):
            steps.append(model(ids[:, i : i + 1], cache=cache).logits)
    assert (torch.cat(steps, dim=1) - full).abs().max() <= 1e-5


def test_greedy_generation_matches_uncached_forward_and_single_prompts(small_cfg):
    model = build_nano3(small_cfg, seed=0)
    res = generate(model, PROMPTS, max_new_tokens=7)
    assert [len(t) for t in res.tokens] == [7, 7, 7] and res.finish_reasons == ["length"] * 3
    for prompt, toks, lps in zip(PROMPTS, res.tokens, res.logprobs):
        seq = torch.tensor(prompt + toks)[None]
        with torch.no_grad():
            logp = torch.log_softmax(model(seq).logits[0], dim=-1)
        for j, (tok, lp) in enumerate(zip(toks, lps)):
            row = logp[len(prompt) - 1 + j]
            assert tok == int(row.argmax())
            assert abs(lp - float(row[tok])) <= 1e-5
        alone = generate(model, [prompt], max_new_tokens=7)
        assert alone.tokens[0] == toks


def test_stop_tokens_end_rows_independently(small_cfg):
    model = build_nano3(small_cfg, seed=0)
    free = generate(model, PROMPTS, max_new_tokens=6)
    stop = free.tokens[1][2]  # row 1 stops at its third token
    res = generate(model, PROMPTS, max_new_tokens=6, stop_token_ids=[stop])
    assert res.tokens[1] == free.tokens[1][:3] and res.finish_reasons[1] == "stop"
    for i in (0, 2):
        cut = free.tokens[i].index(stop) + 1 if stop in free.tokens[i] else 6
        assert res.tokens[i] == free.tokens[i][:cut]


def test_sampling_is_seeded_and_top_p_keeps_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(2000, 1)
    gen = torch.Generator().manual_seed(0)
    tok, lp = sample_next(logits, temperature=1.0, top_p=0.7, generator=gen)
    assert set(tok.tolist()) == {0, 1}  # 0.5 + 0.3 reaches 0.7; 0.15 and 0.05 are cut
    assert torch.allclose(lp, torch.log(torch.tensor([0.5, 0.3]))[tok])
    share = (tok == 0).float().mean().item()
    assert abs(share - 0.5 / 0.8) < 0.05
    again, _ = sample_next(logits, temperature=1.0, top_p=0.7, generator=torch.Generator().manual_seed(0))
    assert torch.equal(tok, again)
    greedy, glp = sample_next(logits[:1], temperature=0.0)
    assert greedy.item() == 0 and abs(glp.item() - torch.log(torch.tensor(0.5)).item()) < 1e-6


def test_temperature_sampling_logprobs_match_full_forward(small_cfg):
    model = build_nano3(small_cfg, seed=0)
    res = generate(
        model,
        PROMPTS[:2],
        max_new_tokens=5,
        temperature=0.8,
        top_p=0.9,
        generator=torch.Generator().manual_seed(3),
    )
    for prompt, toks, lps in zip(PROMPTS, res.tokens, res.logprobs):
        with torch.no_grad():
            logits = model(torch.tensor(prompt + toks)[None]).logits[0]
        logp = torch.log_softmax(logits / 0.8, dim=-1)
        for j, (tok, lp) in enumerate(zip(toks, lps)):
            assert abs(lp - float(logp[len(prompt) - 1 + j, tok])) <= 1e-5
