"""Print packed SFT rows decoded, with the trained spans highlighted: what the model learns.

    python scripts/inspect_packed.py                                  # first train row of the tiny default
    python scripts/inspect_packed.py outputs/data/sft/tiny_chat-tiny-2048 --split valid --row 3
    python scripts/inspect_packed.py DIR --plain                      # [[...]] markers instead of colour

Trained text is the labels whose aligned loss mask is 1 (label input_ids[j+1] where
loss_mask[j] == 1); it is shown in green (or between [[ and ]]); `|` marks a document boundary.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout

import numpy as np  # noqa: E402

from nemotron_core.data.packed import PackedDataset  # noqa: E402
from nemotron_core.tokenization import load_tokenizer  # noqa: E402

DEFAULT_DIR = "outputs/data/sft/tiny_chat-tiny-2048"


def render_row(row: dict[str, np.ndarray], tokenizer, *, plain: bool) -> str:
    """The row as text: documents separated by a boundary mark, trained spans highlighted."""
    ids, mask = row["input_ids"], row["loss_mask"]
    starts = list(row["seq_start_id"]) + [len(ids)]
    on, off = ("[[", "]]") if plain else ("\x1b[1;32m", "\x1b[0m")
    sep = "\n|----- document boundary -----|\n" if plain else "\n\x1b[1;35m|----- document boundary -----|\x1b[0m\n"
    docs = []
    for s, e in zip(starts[:-1], starts[1:]):
        trained = np.zeros(e - s, dtype=bool)
        trained[1:] = mask[s : e - 1] == 1  # token j+1 is a trained label when mask[j] == 1
        parts, k = [], 0
        while k < e - s:
            j = k
            while j < e - s and trained[j] == trained[k]:
                j += 1
            text = tokenizer.decode(ids[s + k : s + j].tolist())
            parts.append(f"{on}{text}{off}" if trained[k] else text)
            k = j
        docs.append("".join(parts))
    return sep.join(docs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("path", nargs="?", default=DEFAULT_DIR, help="packed dataset directory (data.output_dir)")
    p.add_argument("--split", default="train", choices=["train", "valid", "test"])
    p.add_argument("--row", type=int, default=0)
    p.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the one in metadata.json)")
    p.add_argument("--plain", action="store_true", help="mark trained text with [[ ]] instead of colour")
    args = p.parse_args()

    meta = json.loads((Path(args.path) / "metadata.json").read_text())
    tokenizer = load_tokenizer(args.tokenizer or meta["tokenizer"]["path"])
    ds = PackedDataset(args.path, split=args.split)
    row = ds[args.row]
    n_docs, n_tok, n_train = len(row["seq_start_id"]), len(row["input_ids"]), int(row["loss_mask"].sum())
    print(f"{args.path} [{args.split}] row {args.row}/{len(ds)}: {n_docs} documents, {n_tok} tokens, {n_train} trained labels")
    print(render_row(row, tokenizer, plain=args.plain or not sys.stdout.isatty()))


if __name__ == "__main__":
    main()
