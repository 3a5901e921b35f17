"""Benchmark the stage 1 data prep against the bare tokenizer, and the packing algorithms.

    python bench/sft_data_prep.py                 # shipped tiny chat data, all cores; packing at 100k and 1M
    python bench/sft_data_prep.py --repeat 3 --sizes 100000

Prints, in one run on the same conversations:
1. tokens/s of the whole data prep (`prepare_sft_data`: read, validate, render, chunk, tokenize
   chunks, pack, align, write Parquet) and of the bare batch encode `tokenizer(texts)` of the same
   conversations' rendered training sequences (rendering not timed), and their ratio (goal >= 0.7);
   also the chunking step alone with the reference algorithm (one render per message) and the
   single-render one;
2. for each packing algorithm at 100k and 1M lognormal lengths: bins / lower bound and seconds.
Printing only: nothing here gates a test.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout

from nemotron_core.config import SFTDataConfig  # noqa: E402
from nemotron_core.data.chat import record_to_sequences, template_renderer  # noqa: E402
from nemotron_core.data.records import read_records, resolve_inputs  # noqa: E402
from nemotron_core.data.sft_prep import prepare_sft_data  # noqa: E402
from nemotron_core.paths import asset_path  # noqa: E402
from nemotron_core.tokenization import load_tokenizer  # noqa: E402


def best(fn, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", default=str(asset_path("data/tiny_chat.jsonl")))
    p.add_argument("--tokenizer", default=str(asset_path("tokenizer")))
    p.add_argument("--pack-size", type=int, default=4096)
    p.add_argument("--num-workers", type=int, default=0, help="0: one per core")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    args = p.parse_args()

    tok = load_tokenizer(args.tokenizer)
    records, _ = read_records(resolve_inputs(args.input))
    render = template_renderer(tok)
    t_ref, seqs = best(lambda: [s for r in records for s in record_to_sequences(r, render=render)], args.repeat)
    t_one, _ = best(lambda: [s for r in records for s in record_to_sequences(r, render=render, single_render=True)], args.repeat)
    texts = [s.text for s in seqs]
    t_bare, enc = best(lambda: tok(texts, add_special_tokens=False)["input_ids"], args.repeat)
    n_tokens = sum(len(x) for x in enc)

    def prep():
        with tempfile.TemporaryDirectory() as d:
            data = SFTDataConfig(name="bench", input=args.input, output_dir=os.path.join(d, "out"), path=os.path.join(d, "out"),
                                 pack_size=args.pack_size, num_workers=args.num_workers)
            return prepare_sft_data(data, tokenizer_path=args.tokenizer, tokenizer_name="bench", resolved_config={}, progress=False)

    t_prep, meta = best(prep, args.repeat)
    cores = os.cpu_count()
    print(f"{len(records)} conversations -> {len(seqs)} training sequences, {n_tokens:,} tokens, {cores} cores")
    print(f"chunking, reference (one render per message):  {t_ref:7.2f} s")
    print(f"chunking, single render per sequence:          {t_one:7.2f} s   ({t_ref / t_one:.1f}x faster)")
    print(f"bare tokenizer(texts) batch encode:            {t_bare:7.2f} s   {n_tokens / t_bare:12,.0f} tokens/s")
    print(f"whole data prep (workers={args.num_workers or cores}):                {t_prep:7.2f} s   "
          f"{meta['total_tokens'] / t_prep:12,.0f} tokens/s")
    print(f"data prep throughput / bare tokenizer:         {meta['total_tokens'] / t_prep / (n_tokens / t_bare):7.2f}   (goal >= 0.7)")
    print()
    sys.argv = [sys.argv[0], "--sizes", *map(str, args.sizes), "--repeats", str(args.repeat)]
    runpy.run_path(str(Path(__file__).with_name("sft_packing.py")), run_name="__main__")


if __name__ == "__main__":
    main()
