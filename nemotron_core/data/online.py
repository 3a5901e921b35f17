"""Online SFT data: train straight from chat JSONL/Parquet, with no data_prep step (`data=chat_jsonl`).

    python recipes/nano3/stage1_sft/train.py data=chat_jsonl data.input=my_chats.jsonl

The loader runs the offline pipeline in memory when the trainer starts (`prepare_sft_rows`: read
and validate, split, render, chunk, tokenize, pack, align masks) and serves the packed rows of a
split. Nothing is written; nothing is cached between runs.

Guarantees (tests/unit/data/test_online.py):
- `OnlineSFTDataset(split)` has the interface of `PackedDataset`: `len`, `ds[i]` -> a fresh
  `{"input_ids" int32 [L], "loss_mask" uint8 [L], "seq_start_id" int32 [n_docs]}`, `lengths`;
- its rows equal, array for array, the rows `data_prep.py` writes for the same config, inputs and
  tokenizer (chat template included), so the two paths give the same batches and the same loss
  (the first-step loss is checked to <= 1e-6);
- bad records fail with `file:line` before any tokenization, as in data prep.

Cost: every rank tokenizes every record at start-up (seconds for thousands of conversations on
the tiny tokenizer). For large data or many ranks use the offline path, the default.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from nemotron_core.config.data import SFTDataConfig
from nemotron_core.data.packed import COLUMNS, SPLITS
from nemotron_core.data.sft_prep import open_sft_source, prepare_sft_rows, split_efficiency, split_totals


class OnlineSFTDataset:
    """The packed rows of one split, built in memory (see the module docstring)."""

    def __init__(self, rows: Sequence[dict[str, np.ndarray]], *, split: str, source: str):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        self.split, self.source = split, source
        # rows come aligned from build_rows; collate_packed checks every micro-batch again
        self._rows = [{c: np.asarray(r[c]) for c in COLUMNS} for r in rows]
        self.lengths = np.array([len(r["input_ids"]) for r in self._rows], dtype=np.int64)  # tokens per row

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        n = len(self)
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"row index must be an integer, got {type(i).__name__}")
        if not -n <= i < n:
            raise IndexError(f"row {i} out of range for {n} rows ({self.source}, split {self.split!r})")
        return {c: v.copy() for c, v in self._rows[int(i) % n].items()}

    def __repr__(self) -> str:
        return f"OnlineSFTDataset({self.source!r}, split={self.split!r}, rows={len(self)})"


def load_online_sft(
    data: SFTDataConfig, *, tokenizer_path: str, tokenizer_name: str, chat_template: str | None = "default",
    splits: Sequence[str] = ("train", "valid"), progress: bool = False,
) -> tuple[dict[str, Any], dict[str, OnlineSFTDataset]]:
    """(metadata, {split: dataset}) for `data.input`, tokenized and packed in this process.

    The metadata has the keys train.py reads from an offline `metadata.json` (`kind`
    "sft_online", `tokenizer` fingerprint with the chat template in use, `inputs` with sha256,
    `cache_key`, counts), so lineage records the raw inputs the same way.
    """
    src = open_sft_source(data, tokenizer_path=tokenizer_path, tokenizer_name=tokenizer_name, chat_template=chat_template)
    prepared = prepare_sft_rows(data, src, tokenizer_path=tokenizer_path, progress=progress, splits=splits)
    source = ", ".join(s.path for s in src.sources)
    datasets = {split: OnlineSFTDataset(prepared.splits[split].rows, split=split, source=source) for split in splits}
    meta: dict[str, Any] = {
        "kind": "sft_online", "pack_size": data.pack_size, "packing_algorithm": data.packing_algorithm,
        "seed": data.seed, "split_fractions": list(data.split), "cache_key": src.cache_key,
        "num_records": prepared.num_records, "tokenizer": src.tokenizer_fp, "inputs": src.inputs,
        "num_filtered": dict(sorted(prepared.filtered.items())),
        "splits": {
            split: {**split_totals(res), "packing_efficiency": split_efficiency(res, pack_size=data.pack_size)}
            for split, res in prepared.splits.items()
        },
    }
    return meta, datasets
