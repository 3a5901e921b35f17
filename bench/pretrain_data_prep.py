"""Benchmark the stage 0 data prep against the bare batch tokenizer on the same text.

    python bench/pretrain_data_prep.py                    # shipped tiny text x 10 (about 4M tokens), all cores
    python bench/pretrain_data_prep.py --copies 20 --repeat 3 --num-workers 2

Prints, in one run on the same documents:
1. tokens/s of the bare batch encode `tokenizer(texts, add_special_tokens=False)` (the documents'
   texts already in memory; the fast tokenizer parallelises a batch over every core itself), and of
   the backend's `encode_batch_fast` (no offsets), the fastest plain call;
2. tokens/s of the whole data prep (`prepare_pretrain_data`: read the JSONL, parse, validate,
   tokenize in worker processes, EOD, split/shard assignment, megatron-core IndexedDatasetBuilder
   writes, blend.json, metadata), counting the same tokens (EOD excluded);
3. their ratios (goal >= 0.85 against the bare batch encode), in wall time and per CPU-second
   (the process's threads plus the finished workers): on a machine shared with other jobs the
   wall ratio moves with their load, the CPU ratio much less.
Printing only: nothing here gates a test.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout

from nemotron_core.config import PretrainDataConfig  # noqa: E402
from nemotron_core.data.indexed import megatron_datasets  # noqa: E402
from nemotron_core.data.pretrain_prep import prepare_pretrain_data  # noqa: E402
from nemotron_core.paths import asset_path  # noqa: E402
from nemotron_core.tokenization import load_tokenizer  # noqa: E402


def cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its finished children (the data prep's workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def timed(fn):
    """(wall seconds, CPU seconds, result)."""
    t, c = time.perf_counter(), cpu_seconds()
    out = fn()
    return time.perf_counter() - t, cpu_seconds() - c, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", default=str(asset_path("data/tiny_text.jsonl")))
    p.add_argument("--copies", type=int, default=10, help="the input repeated this many times (a bigger corpus)")
    p.add_argument("--tokenizer", default=str(asset_path("tokenizer")))
    p.add_argument("--num-workers", type=int, default=0, help="0: one per core")
    p.add_argument("--num-shards", type=int, default=4)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()

    megatron_datasets()  # imported once, outside the timed runs (a one-off cost per process)
    tok = load_tokenizer(args.tokenizer)
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "corpus.jsonl"
        raw = Path(args.input).read_bytes()
        src.write_bytes(raw * args.copies)
        texts = [json.loads(line)["text"] for line in src.read_text().splitlines() if line.strip()]

        def bare():
            return tok(texts, add_special_tokens=False)["input_ids"]

        def fast():
            return [e.ids for e in tok.backend_tokenizer.encode_batch_fast(texts, add_special_tokens=False)]

        def prep():
            out = os.path.join(d, "out")
            data = PretrainDataConfig(name="bench", input=str(src), output_dir=out, path=out, num_shards=args.num_shards,
                                      num_workers=args.num_workers, force=True)
            return prepare_pretrain_data(data, tokenizer_path=args.tokenizer, tokenizer_name="bench", resolved_config={},
                                         progress=False)

        # interleaved, best of `repeat` each: load from other jobs hits all three alike
        t_bare = t_fast = t_prep = c_bare = c_fast = c_prep = float("inf")
        for _ in range(args.repeat):
            t, c, enc = timed(bare)
            t_bare, c_bare = min(t_bare, t), min(c_bare, c)
            t, c, _ = timed(fast)
            t_fast, c_fast = min(t_fast, t), min(c_fast, c)
            t, c, meta = timed(prep)
            t_prep, c_prep = min(t_prep, t), min(c_prep, c)
        n_tokens = sum(len(x) for x in enc)
    assert meta["num_tokens"] - meta["num_documents"] == n_tokens, "data prep and the bare encode disagree"
    cores = os.cpu_count()
    mb = len(raw) * args.copies / 1e6
    print(f"{len(texts):,} documents, {mb:.1f} MB of JSONL, {n_tokens:,} tokens (+{meta['num_documents']:,} EOD), "
          f"{cores} cores, best of {args.repeat} interleaved")
    w = args.num_workers or cores
    print(f"{'':42s} {'wall s':>8s} {'tokens/s':>12s} {'CPU s':>8s} {'tokens/CPU-s':>13s}")
    for name, t, c in (("bare tokenizer(texts) batch encode", t_bare, c_bare),
                       ("bare backend encode_batch_fast", t_fast, c_fast),
                       (f"whole data prep (workers={w})", t_prep, c_prep)):
        print(f"{name:42s} {t:8.2f} {n_tokens / t:12,.0f} {c:8.2f} {n_tokens / c:13,.0f}")
    print(f"data prep throughput / bare batch encode:  {t_bare / t_prep:6.2f} wall   {c_bare / c_prep:6.2f} per CPU-s   (goal >= 0.85)")
    print(f"data prep throughput / encode_batch_fast:  {t_fast / t_prep:6.2f} wall   {c_fast / c_prep:6.2f} per CPU-s")


if __name__ == "__main__":
    main()
