"""Our Nano3Model == transformers' NemotronHForCausalLM on the same weights (fp32, CPU).

HF does not isolate packed documents (no seq_idx in its Mamba path), so our packed row is compared
with HF run on each document alone. transformers 5.23 clamps dt below at `time_step_min` in its
scan (on the run-time dt, not only the init), so the HF reference config gets
time_step_min = 1e-9; our run-time dt stays far above it (init floored at 1e-4).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

from nemotron_core.checkpoint.hf import hf_config_dict, to_hf_state_dict  # noqa: E402
from nemotron_core.model import build_nano3, count_model_parameters  # noqa: E402

LENGTHS = (13, 5, 19)  # chunk_size 8: document and chunk boundaries do not align


def build_pair(cfg):
    model = build_nano3(cfg, seed=0)
    with torch.no_grad():  # a bias that changes expert choices, so its handling is compared too
        for block in model.layers:
            if block.kind == "moe":
                block.mixer.router.e_score_correction_bias.copy_(torch.randn(cfg.n_routed_experts) * 0.05)
    d = hf_config_dict(cfg)
    d["time_step_min"] = 1e-9
    hf_cfg = transformers.NemotronHConfig(
        **{k: v for k, v in d.items() if k not in ("architectures", "model_type")}
    )
    hf_cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    hf = transformers.NemotronHForCausalLM(hf_cfg).eval()
    missing, unexpected = hf.load_state_dict(
        to_hf_state_dict(model.state_dict(), cfg, layout="memory"), strict=True
    )
    assert not missing and not unexpected
    return model.eval(), hf


def test_parameter_count_matches_transformers(small_cfg):
    model, hf = build_pair(small_cfg)
    hf_total = sum(p.numel() for p in hf.parameters()) + sum(
        b.numel() for n, b in hf.named_buffers() if n.endswith("e_score_correction_bias")
    )
    assert count_model_parameters(model)[0] == hf_total


def test_packed_logits_and_loss_gradients_match_transformers_per_document(small_cfg):
    cfg = small_cfg
    model, hf = build_pair(cfg)
    gen = torch.Generator().manual_seed(0)
    docs = [torch.randint(0, cfg.vocab_size, (n,), generator=gen) for n in LENGTHS]
    n_labels = sum(n - 1 for n in LENGTHS)

    # Ours: one packed row, labels shifted per document (last token of each document ignored).
    ids = torch.cat(docs)[None]
    labels = torch.cat([torch.cat([d[1:], torch.tensor([-100])]) for d in docs])[None]
    cu = torch.tensor([0, *torch.tensor(LENGTHS).cumsum(0).tolist()], dtype=torch.int32)
    out = model(ids, cu_seqlens=cu, labels=labels)
    assert out.num_tokens.item() == n_labels
    out.loss.backward()

    # HF: each document alone; the same loss = sum of token CE over all documents / n_labels.
    hf_logits, hf_loss = [], 0.0
    for d in docs:
        logits = hf(input_ids=d[None], use_cache=False).logits[0]
        hf_logits.append(logits)
        hf_loss = hf_loss + F.cross_entropy(logits[:-1], d[1:], reduction="sum")
    hf_loss = hf_loss / n_labels
    hf_loss.backward()

    logit_diff = (out.logits[0] - torch.cat(hf_logits)).abs().max().item()
    assert logit_diff <= 1e-5, logit_diff
    assert abs(out.loss.item() - hf_loss.item()) <= 1e-6
    # The comparison is not vacuous: logits are far from uniform and depend on context.
    assert out.logits.std() > 0.05

    ours = {n: p.grad for n, p in model.named_parameters()}
    ours.update({n: torch.zeros_like(b) for n, b in model.named_buffers()})  # the bias has no gradient
    mapped = to_hf_state_dict(ours, cfg, layout="memory")
    hf_grads = dict(hf.named_parameters())
    worst = 0.0
    for name, g in mapped.items():
        if name.endswith("e_score_correction_bias"):
            continue
        ref = hf_grads[name].grad
        assert ref is not None, name
        scale = max(1.0, ref.abs().max().item())
        worst = max(worst, (g - ref).abs().max().item() / scale)
    assert worst <= 1e-5, worst
    # Every HF parameter got a nonzero gradient (all layer kinds were exercised).
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in hf.parameters())


def test_padded_batch_matches_transformers_on_unpadded_rows(small_cfg):
    model, hf = build_pair(small_cfg)
    gen = torch.Generator().manual_seed(2)
    a = torch.randint(0, small_cfg.vocab_size, (12,), generator=gen)
    b = torch.randint(0, small_cfg.vocab_size, (7,), generator=gen)
    ids = torch.zeros(2, 12, dtype=torch.long)
    mask = torch.zeros(2, 12, dtype=torch.long)
    ids[0], mask[0] = a, 1
    ids[1, 5:], mask[1, 5:] = b, 1  # left padding
    with torch.no_grad():
        ours = model(ids, attention_mask=mask).logits
        ref_a = hf(input_ids=a[None], use_cache=False).logits[0]
        ref_b = hf(input_ids=b[None], use_cache=False).logits[0]
    assert (ours[0] - ref_a).abs().max() <= 1e-5
    assert (ours[1, 5:] - ref_b).abs().max() <= 1e-5


def test_30b_config_json_builds_the_same_size_model_in_transformers(preset, repo_root):
    cfg = preset(repo_root / "conf/model/nano3_30b_a3b.yaml")
    d = hf_config_dict(cfg)
    hf_cfg = transformers.NemotronHConfig(
        **{k: v for k, v in d.items() if k not in ("architectures", "model_type")}
    )
    assert hf_cfg.hybrid_override_pattern == cfg.hybrid_override_pattern
    with torch.device("meta"):
        hf = transformers.NemotronHForCausalLM(hf_cfg)
    hf_total = sum(p.numel() for p in hf.parameters()) + sum(b.numel() for b in hf.buffers())
    assert hf_total == 31_577_940_288
    assert count_model_parameters(build_nano3(cfg, device="meta")) == (31_577_940_288, 3_227_754_816)
