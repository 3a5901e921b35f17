"""Benchmark the SFT packing kernels: bins over the lower bound, and seconds, at 100k and 1M lengths.

    python bench/sft_packing.py                  # about 15 s on one core
    python bench/sft_packing.py --sizes 100000   # one size only

Lengths: `sample_lognormal_lengths` (median 400, sigma 0.9, clipped to [16, 4096], seed 0), bins
of 4096 tokens. The last column is seconds(1M) / seconds(100k): ~10x for O(n log n) kernels
(a little more from the deeper trees and colder caches), ~100x would mean a scan over open bins.
Printing only; the guarantees are asserted in tests/unit/data/test_packing.py.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout

from nemotron_core.data.packing import (  # noqa: E402
    ALGORITHMS,
    pack_sequences,
    packing_lower_bound,
    sample_lognormal_lengths,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--pack-size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=1, help="best of N timings")
    args = parser.parse_args()

    data = {n: sample_lognormal_lengths(n, seed=0) for n in args.sizes}
    bounds = {n: packing_lower_bound(lengths, pack_size=args.pack_size) for n, lengths in data.items()}
    for n, lengths in data.items():
        print(f"n={n:>9,}  tokens={int(lengths.sum()):,}  lower bound={bounds[n]:,} bins")

    header = f"{'algorithm':<22}" + "".join(f"  {f'bins/LB @{n:,}':>20}{'seconds':>9}" for n in args.sizes)
    if len(args.sizes) > 1:
        header += f"  {f'time {args.sizes[-1]:,}/{args.sizes[0]:,}':>20}"
    print(header)
    for algorithm in ALGORITHMS:
        row = f"{algorithm:<22}"
        seconds = []
        for n in args.sizes:
            best = float("inf")
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                bins = pack_sequences(data[n], pack_size=args.pack_size, algorithm=algorithm, seed=0)
                best = min(best, time.perf_counter() - t0)
            seconds.append(best)
            row += f"  {len(bins) / bounds[n]:>20.5f}{best:>9.2f}"
        if len(args.sizes) > 1:
            row += f"  {seconds[-1] / seconds[0]:>19.1f}x"
        print(row, flush=True)


if __name__ == "__main__":
    main()
