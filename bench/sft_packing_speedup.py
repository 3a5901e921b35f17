"""Packed (document-isolated) training vs the same conversations as padded batches, tiny model, CPU.

    python bench/sft_packing_speedup.py                 # 256 conversations, rows of 2048
    python bench/sft_packing_speedup.py --sequences 512 --batch 8

Both sides run one forward+backward per batch on the same tokenized sequences with the same
model: packed rows (cu_seqlens: attention per document, Mamba state restarting per document)
versus padded batches (each batch padded to its longest sequence, attention_mask). Prints useful
(non-padding) tokens per second for each and the ratio (goal >= 2.3x), plus what the document
resets cost: packed rows with their boundaries vs the same rows as one long document (not
isolated, for reference only). Printing only, nothing gates.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout

import torch  # noqa: E402

from nemotron_core.config import load_model_preset  # noqa: E402
from nemotron_core.constants import IGNORE_INDEX  # noqa: E402
from nemotron_core.data.packed import collate_packed  # noqa: E402
from nemotron_core.data.packing import pack_sequences  # noqa: E402
from nemotron_core.data.records import read_records, resolve_inputs  # noqa: E402
from nemotron_core.data.sft_prep import build_rows, tokenize_sequences  # noqa: E402
from nemotron_core.model.nano3 import build_nano3  # noqa: E402
from nemotron_core.paths import asset_path  # noqa: E402
from nemotron_core.tokenization import load_tokenizer  # noqa: E402


def tiny_model() -> torch.nn.Module:
    return build_nano3(load_model_preset("nano3_tiny"), seed=0)


def fwd_bwd(model, **kw) -> None:
    out = model(**kw)
    out.loss_sum.backward()
    model.zero_grad(set_to_none=True)


def timed(fn, batches, repeat) -> float:
    fn(batches[0])  # warm up
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for b in batches:
            fn(b)
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sequences", type=int, default=256)
    p.add_argument("--pack-size", type=int, default=2048)
    p.add_argument("--batch", type=int, default=8, help="sequences per padded batch")
    p.add_argument("--repeat", type=int, default=2)
    args = p.parse_args()
    torch.manual_seed(0)
    tok = load_tokenizer(asset_path("tokenizer"))
    records, _ = read_records(resolve_inputs(str(asset_path("data/tiny_chat.jsonl"))))
    seqs, _ = tokenize_sequences(records[: args.sequences], tok, truncate_history_thinking=True, on_error="raise", single_render=True)
    seqs = [s for s in seqs if len(s.input_ids) <= args.pack_size][: args.sequences]
    useful = sum(len(s.input_ids) for s in seqs)
    model = tiny_model()

    bins = pack_sequences([len(s.input_ids) for s in seqs], pack_size=args.pack_size, algorithm="first_fit_decreasing")
    rows = build_rows(seqs, bins)
    packed = [collate_packed([r]) for r in rows]

    def run_packed(b):
        fwd_bwd(model, input_ids=b.input_ids[None], cu_seqlens=b.cu_seqlens, max_seqlen=b.max_seqlen, labels=b.labels[None])

    def run_one_doc(b):
        fwd_bwd(model, input_ids=b.input_ids[None], labels=b.labels[None])

    padded = []
    for i in range(0, len(seqs), args.batch):
        group = seqs[i : i + args.batch]
        t = max(len(s.input_ids) for s in group)
        ids = torch.zeros(len(group), t, dtype=torch.long)
        mask = torch.zeros(len(group), t, dtype=torch.long)
        labels = torch.full((len(group), t), IGNORE_INDEX, dtype=torch.long)
        for j, s in enumerate(group):
            n = len(s.input_ids)
            ids[j, :n] = torch.as_tensor(s.input_ids, dtype=torch.long)
            mask[j, :n] = 1
            lab = torch.as_tensor(s.input_ids[1:], dtype=torch.long)
            keep = torch.as_tensor(s.role_mask[1:], dtype=torch.bool)
            labels[j, : n - 1] = torch.where(keep, lab, torch.full_like(lab, IGNORE_INDEX))
        padded.append((ids, mask, labels))

    def run_padded(b):
        ids, mask, labels = b
        fwd_bwd(model, input_ids=ids, attention_mask=mask, labels=labels)

    t_packed = timed(run_packed, packed, args.repeat)
    t_padded = timed(run_padded, padded, args.repeat)
    t_one = timed(run_one_doc, packed, args.repeat)
    padded_tokens = sum(b[0].numel() for b in padded)
    print(f"{len(seqs)} sequences, {useful:,} useful tokens; packed: {len(rows)} rows of <= {args.pack_size}; "
          f"padded: {len(padded)} batches of {args.batch}, {padded_tokens:,} tokens with padding")
    print(f"packed, documents isolated:    {t_packed:7.2f} s   {useful / t_packed:9,.0f} useful tokens/s")
    print(f"padded to longest + mask:      {t_padded:7.2f} s   {useful / t_padded:9,.0f} useful tokens/s")
    print(f"packed / padded:               {t_padded / t_packed:7.2f}x   (goal >= 2.3x)")
    print(f"same rows as one document:     {t_one:7.2f} s   document resets cost {100 * (t_packed / t_one - 1):+.1f}%")


if __name__ == "__main__":
    main()
