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
    # Record shape (nemotron_core/data/records.py). chat: OpenAI messages (+ tools) per record;
    # prompt_response: {input_key: prompt, output_key: response} (NeMo RL's ResponseDataset),
    # rendered as [system?, user, assistant] with the loss on the response.
    record_format: str = "chat"  # chat | prompt_response
    messages_key: str = "messages"
    tools_key: str = "tools"
    input_key: str = "input"
    output_key: str = "output"
    system_key: str | None = None  # prompt_response: a record field holding its system text
    system_prompt: str | None = None  # a system message for records that have none
    # Keep only records whose `filter_key` field (a string or a list of strings, e.g. used_in) holds
    # one of `filter_values`; the others are counted in metadata.json `num_filtered`.
    filter_key: str | None = None
    filter_values: list[str] = field(default_factory=list)
    # true: train.py reads `input` itself, tokenizing and packing in the loader (same rows as
    # data_prep would write; no files); false: train.py reads the packed files at `path`.
    online: bool = False


@dataclass
class PretrainDataConfig:
    """Raw text -> Megatron indexed .bin/.idx shards + blend.json (stage 0); read back through
    megatron-core's GPTDataset (`nemotron_core/data/indexed.py`)."""

    name: str = MISSING
    # JSONL or Parquet files (JSONL may be .gz/.zst compressed): a path, a glob or a list of them
    # (one corpus), or a mapping corpus name -> path/glob/list (one blend entry per corpus).
    input: Any = MISSING
    output_dir: str = MISSING  # where data_prep writes the shards
    path: str = "${.output_dir}"  # where train reads them (its blend.json and metadata.json)
    text_field: str = "text"
    add_bos: bool = False
    add_eos: bool = True
    # The end-of-document token add_eos appends (and reset_at_eod splits at); null: the tokenizer's
    # eos_token. Default `</s>` (Nano3's config.json eos, id 2), not the chat `<|im_end|>`.
    eod_token: str | None = "</s>"
    # Blend weight per corpus of a mapping `input` (normalised); null: proportional to tokens.
    weights: dict[str, float] | None = None
    num_shards: int = 1  # train shards per corpus; valid/test get proportionally fewer (at least 1)
    num_workers: int = 0  # tokenizer processes; 0: one per CPU core
    split: str = "98,1,1"  # train,valid,test weights: each document goes to one split (seeded)
    seed: int = 1234  # split assignment (data prep); GPTDataset and row shuffling (train)
    on_error: str = "raise"  # bad records: raise (file:line) | skip (counted in metadata.json)
    force: bool = False  # rebuild even if the output matches the inputs and config
    # Training-side values (not part of the data prep output):
    seq_length: int = 8192  # tokens per training sample (rows hold seq_length + 1: inputs + last label)
    reset_at_eod: bool = False  # isolate documents (cu_seqlens at EOD); off like the reference
    index_cache_dir: str = "${out_dir}/dataset_cache"  # megatron-core's GPTDataset/BlendedDataset index caches
