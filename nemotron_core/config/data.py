"""Data schemas, one per kind of data (`conf/data/`): packed SFT chat data, indexed pretraining text.

Each stage's data prep writes `output_dir`; the same stage's train reads `path`, which defaults to
`${.output_dir}`, so `data_prep.py && train.py` chain with no arguments.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING


@dataclass
class SFTDataConfig:
    """OpenAI chat JSONL/Parquet -> role-masked sequences -> packed rows (stage 1)."""

    name: str = MISSING
    # A path, a glob, a list of them, or a blend file (JSON list of {"path", "weight"|"max_records"}).
    input: Any = MISSING
    output_dir: str = MISSING  # where data_prep writes the packed dataset
    path: str = "${.output_dir}"  # where train reads it
    format: str = "parquet"  # parquet | npy (the reference's training/validation/test.npy)
    pack_size: int = 4096  # tokens per packed row
    packing_algorithm: str = "first_fit_shuffle"  # | first_fit_decreasing | best_fit_decreasing | concatenative
    on_overlong: str = "truncate"  # sequences longer than pack_size: truncate | reject
    max_doc_tokens: int | None = None  # truncate each sequence to this many tokens first
    split: list[float] = field(default_factory=lambda: [0.98, 0.01, 0.01])  # train/valid/test
    seed: int = 42  # shuffle, split and first_fit_shuffle seed
    on_error: str = "raise"  # bad records: raise (file:line) | skip (counted in metadata)
    sample: int | None = None  # use only the first N records (quick look)
    rows_per_shard: int = 10000
    num_workers: int = 0  # 0: one per CPU core
    force: bool = False  # rebuild even if the output matches the inputs and config
    # Chat-template switches, passed top-level and inside chat_template_kwargs.
    truncate_history_thinking: bool = True


@dataclass
class PretrainDataConfig:
    """Raw text -> Megatron indexed .bin/.idx shards + blend.json (stage 0)."""

    name: str = MISSING
    input: Any = MISSING  # JSONL / Parquet (optionally .gz/.zst), path, glob or list
    output_dir: str = MISSING  # where data_prep writes the shards
    path: str = "${.output_dir}"  # where train reads them
    text_field: str = "text"
    add_bos: bool = False
    add_eos: bool = True
    num_shards: int = 1
    num_workers: int = 0  # 0: one per CPU core
    seq_length: int = 8192  # tokens per training sample
    split: str = "98,1,1"  # train,valid,test weights over documents (megatron-core convention)
    seed: int = 1234
    reset_at_eod: bool = False  # isolate documents (cu_seqlens at EOD); off like the reference
    force: bool = False
