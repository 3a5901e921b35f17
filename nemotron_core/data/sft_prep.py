"""The stage 1 data prep pipeline: chat records -> role-masked sequences -> packed files.

    records (validated, file:line errors)  -> split by record (seeded)
    -> training sequences and role chunks (chat.py; worker processes, order preserved)
    -> tokens + role mask (chunks tokenized separately, batched) -> max_doc_tokens, drop untrainable
    -> over-long policy -> pack into bins (packing.py) -> per-document mask alignment (masks.py)
    -> packed Parquet shards or the reference .npy files (packed.py) + metadata.json/lineage.json

Guarantees: the output is identical, byte for byte, for any `num_workers`; a rerun with the same
inputs, tokenizer and config is a cache hit (`cache_key` in metadata.json) unless `force`; the
output directory appears whole or not at all.

`prepare_sft_rows` is the same pipeline up to the packed rows, in memory: the online loader
(`nemotron_core/data/online.py`) trains on exactly the rows `prepare_sft_data` writes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nemotron_core import __version__
from nemotron_core.config.data import SFTDataConfig
from nemotron_core.data.chat import (
    ChunkingError,
    record_to_sequences,
    resolve_chat_template,
    set_chat_template,
    template_renderer,
)
from nemotron_core.data.masks import align_loss_mask
from nemotron_core.data.packed import write_blend, write_npy_split, write_parquet_split
from nemotron_core.data.packing import pack_sequences, packing_stats, truncate_or_reject
from nemotron_core.data.records import Record, RecordSchema, Source, read_records, resolve_inputs
from nemotron_core.lineage import METADATA_FILE, Lineage, describe_inputs, write_metadata
from nemotron_core.tokenization import fingerprint, load_tokenizer
from nemotron_core.utils.atomic import atomic_directory

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
_RECORDS_PER_TASK = 64
_SELF_CHECK_RECORDS = 32  # records on which the single-render chunker is checked against the reference


@dataclass
class TokenizedSequence:
    input_ids: np.ndarray  # int32 [L]
    role_mask: np.ndarray  # uint8 [L], 1 = assistant token (trained)
    where: str


@dataclass
class SplitResult:
    rows: list[dict[str, np.ndarray]]
    lengths: np.ndarray
    bins: list[list[int]]
    num_sequences_in: int = 0
    num_truncated: int = 0
    filtered: Counter = field(default_factory=Counter)


# ----------------------------------------------------------------------------- tokenization
def single_render_agrees(records: Sequence[Record], tokenizer, *, truncate_history_thinking: bool) -> bool:
    """Whether the one-render-per-sequence chunker gives the reference chunks on `records`.

    Data prep checks a sample before using the fast path, so a template whose prefixes behave
    differently from the Nano3 format silently gets the (slower) reference algorithm instead.
    """
    render = template_renderer(tokenizer, truncate_history_thinking=truncate_history_thinking)
    for rec in records:
        try:
            ref = record_to_sequences(rec, render=render)
        except ChunkingError:
            continue
        fast = record_to_sequences(rec, render=render, single_render=True)
        if [[(c.text, c.trained) for c in s.chunks] for s in ref] != [[(c.text, c.trained) for c in s.chunks] for s in fast]:
            log.warning("%s: single-render chunking differs from the reference; using the reference algorithm", rec.where)
            return False
    return True


def tokenize_sequences(
    records: Sequence[Record], tokenizer, *, truncate_history_thinking: bool, on_error: str, single_render: bool = False
):
    """Render, chunk and tokenize the records' training sequences.

    Chunks are tokenized separately (`add_special_tokens=False`, one batched call) and
    concatenated; the role mask is 1 on assistant chunks. Returns (sequences, error counts).
    """
    render = template_renderer(tokenizer, truncate_history_thinking=truncate_history_thinking)
    sequences, errors = [], Counter()
    for rec in records:
        try:
            sequences.extend(record_to_sequences(rec, render=render, single_render=single_render))
        except ChunkingError:
            if on_error == "raise":
                raise
            errors["chunking_error"] += 1
    texts = [c.text for s in sequences for c in s.chunks]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    out, k = [], 0
    for s in sequences:
        parts = ids[k : k + len(s.chunks)]
        k += len(s.chunks)
        tokens = np.fromiter((t for p in parts for t in p), dtype=np.int32)
        mask = np.repeat(
            np.array([c.trained for c in s.chunks], dtype=np.uint8), [len(p) for p in parts]
        )
        out.append(TokenizedSequence(tokens, mask, s.where))
    return out, errors


_worker_tokenizer = None


def _worker_init(tokenizer_path: str, chat_template: str | None) -> None:
    global _worker_tokenizer
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _worker_tokenizer = load_tokenizer(tokenizer_path)
    if chat_template is not None:  # the resolved template text (None: the tokenizer's own)
        _worker_tokenizer.chat_template = chat_template


def _worker_task(task):
    return _tokenize_in_process(task, _worker_tokenizer)


def _tokenize_all(records, *, tokenizer, tokenizer_path, chat_template, truncate, on_error, num_workers, single_render) -> Iterator:
    tasks = [
        (records[i : i + _RECORDS_PER_TASK], truncate, on_error, single_render)
        for i in range(0, len(records), _RECORDS_PER_TASK)
    ]
    if num_workers <= 1 or len(tasks) <= 1:
        for t in tasks:
            yield _tokenize_in_process(t, tokenizer), len(t[0])
        return
    ctx = mp.get_context("spawn" if mp.get_start_method(allow_none=True) == "spawn" else "fork")
    with ctx.Pool(num_workers, initializer=_worker_init, initargs=(tokenizer_path, chat_template)) as pool:
        # imap keeps task order, so the output does not depend on the worker count
        for t, res in zip(tasks, pool.imap(_worker_task, tasks, chunksize=1)):
            yield res, len(t[0])


def _tokenize_in_process(task, tokenizer):
    records, truncate, on_error, single = task
    return tokenize_sequences(records, tokenizer, truncate_history_thinking=truncate, on_error=on_error, single_render=single)


# ----------------------------------------------------------------------------- packing
def build_rows(seqs: Sequence[TokenizedSequence], bins: Sequence[Sequence[int]]) -> list[dict[str, np.ndarray]]:
    """Concatenate each bin's sequences into one row with aligned loss mask and seq_start_id."""
    rows = []
    for b in bins:
        ids = np.concatenate([seqs[i].input_ids for i in b]).astype(np.int32)
        role = np.concatenate([seqs[i].role_mask for i in b])
        starts = np.cumsum([0] + [len(seqs[i].input_ids) for i in b[:-1]]).astype(np.int32)
        rows.append(
            {"input_ids": ids, "loss_mask": align_loss_mask(role, seq_start_id=starts), "seq_start_id": starts}
        )
    return rows


def pack_split(seqs: list[TokenizedSequence], data: SFTDataConfig, *, seed: int) -> SplitResult:
    """max_doc_tokens, untrainable filter, over-long policy, packing and alignment for one split."""
    filtered: Counter = Counter()
    kept = []
    for s in seqs:
        if data.max_doc_tokens is not None and len(s.input_ids) > data.max_doc_tokens:
            s = TokenizedSequence(s.input_ids[: data.max_doc_tokens], s.role_mask[: data.max_doc_tokens], s.where)
        # the first token is never a label, so a sequence trains only if a later token is masked in
        if len(s.input_ids) < 2 or not s.role_mask[1:].any():
            filtered["no_trainable_tokens"] += 1
            continue
        kept.append(s)
    lengths = np.array([len(s.input_ids) for s in kept], dtype=np.int64)
    lengths, num_truncated = truncate_or_reject(lengths, pack_size=data.pack_size, mode=data.on_overlong) if len(kept) else (lengths, 0)
    final = []
    for s, n in zip(kept, lengths):
        if n < len(s.input_ids):
            s = TokenizedSequence(s.input_ids[:n], s.role_mask[:n], s.where)
            if not s.role_mask[1:].any():
                filtered["no_trainable_tokens_after_truncation"] += 1
                continue
        final.append(s)
    lengths = np.array([len(s.input_ids) for s in final], dtype=np.int64)
    bins = pack_sequences(lengths, pack_size=data.pack_size, algorithm=data.packing_algorithm, seed=seed) if len(final) else []
    return SplitResult(build_rows(final, bins), lengths, bins, len(seqs), num_truncated, filtered)


# ----------------------------------------------------------------------------- orchestration
def split_records(n: int, fractions: Sequence[float], *, seed: int) -> dict[str, np.ndarray]:
    """Seeded split of record indices into train/valid/test by `fractions` (sum 1).

    Splitting records (not sequences) keeps every sequence of a conversation in one split.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"data.split must be three non-negative fractions summing to 1, got {list(fractions)}")
    order = np.random.default_rng(seed).permutation(n)
    n_valid, n_test = round(fractions[1] * n), round(fractions[2] * n)
    n_train = n - n_valid - n_test
    return {
        "train": np.sort(order[:n_train]),
        "valid": np.sort(order[n_train : n_train + n_valid]),
        "test": np.sort(order[n_train + n_valid :]),
    }


# Fields added to SFTDataConfig after its first release, with their defaults: left out of the cache
# key while at the default, so outputs written before they existed stay cache hits.
_LATER_FIELDS = {
    "record_format": "chat", "messages_key": "messages", "tools_key": "tools", "input_key": "input",
    "output_key": "output", "system_key": None, "system_prompt": None, "filter_key": None, "filter_values": [],
}
# Where rows are read or written and how, not what they hold.
_NOT_IN_KEY = ("output_dir", "path", "force", "num_workers", "input", "online")


def cache_key(data: SFTDataConfig, *, inputs: list[dict[str, Any]], tokenizer_fp: dict[str, Any]) -> str:
    """What the output depends on: inputs' content, the tokenizer (vocab and the chat template in
    use) and the config values that change rows (not where they are written or how many workers
    write them)."""
    relevant = {
        k: v for k, v in asdict(data).items()
        if k not in _NOT_IN_KEY and not (k in _LATER_FIELDS and v == _LATER_FIELDS[k])
    }
    blob = json.dumps(
        {"data": relevant, "inputs": [(i["sha256"], i.get("weight"), i.get("max_records")) for i in inputs],
         "tokenizer": [tokenizer_fp["vocab_hash"], tokenizer_fp["chat_template_hash"]], "version": __version__},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def record_schema(data: SFTDataConfig) -> RecordSchema:
    """The record fields and tag filter of `data` (raises ValueError naming the data.* key)."""
    return RecordSchema(
        record_format=data.record_format, messages_key=data.messages_key, tools_key=data.tools_key,
        input_key=data.input_key, output_key=data.output_key, system_key=data.system_key,
        system_prompt=data.system_prompt, filter_key=data.filter_key, filter_values=tuple(data.filter_values),
    )


@dataclass
class SFTSource:
    """What a data prep (offline or online) reads, checked and hashed before any expensive work."""

    sources: list[Source]
    schema: RecordSchema
    tokenizer: Any
    chat_template: str | None  # the resolved template text; None: the tokenizer's own
    tokenizer_fp: dict[str, Any]  # fingerprint of the tokenizer with that template
    inputs: list[dict[str, Any]]  # describe_inputs + weight/max_records
    cache_key: str


def open_sft_source(
    data: SFTDataConfig, *, tokenizer_path: str, tokenizer_name: str, chat_template: str | None = "default"
) -> SFTSource:
    """Resolve `data.input`, check the record fields, load the tokenizer with `chat_template`
    (`tokenizer.chat_template`), hash the inputs. Reads no record."""
    schema = record_schema(data)
    sources = resolve_inputs(data.input)
    template = resolve_chat_template(chat_template)
    tokenizer = set_chat_template(load_tokenizer(tokenizer_path), chat_template)
    tok_fp = fingerprint(tokenizer, name=tokenizer_name, path=tokenizer_path).to_dict()
    inputs = [dict(d, weight=s.weight, max_records=s.max_records) for d, s in zip(describe_inputs([s.path for s in sources]), sources)]
    key = cache_key(data, inputs=inputs, tokenizer_fp=tok_fp)
    return SFTSource(sources, schema, tokenizer, template, tok_fp, inputs, key)


@dataclass
class PreparedSFT:
    """The packed splits of one data prep, in memory (`prepare_sft_rows`)."""

    splits: dict[str, SplitResult]
    num_records: int
    filtered: Counter  # reason -> records or sequences left out (read errors skipped, tag filter, ...)
    skipped_examples: list[str]


def prepare_sft_rows(
    data: SFTDataConfig, src: SFTSource, *, tokenizer_path: str, progress: bool = True, splits: Sequence[str] = SPLITS,
) -> PreparedSFT:
    """Read, validate, split, render, tokenize and pack; the rows of `splits`, nothing written.

    Guarantees: the rows of a split are those `prepare_sft_data` writes for the same config,
    inputs and tokenizer (same order, same bytes), for any `num_workers`.
    """
    # 1. read and validate everything before any expensive work
    records, read_stats = read_records(src.sources, on_error=data.on_error, sample=data.sample, seed=data.seed, schema=src.schema)
    if not records:
        filtered = f" (the tag filter {data.filter_key} in {list(data.filter_values)} left out {sum(read_stats.filtered.values())})" if read_stats.filtered else ""
        raise ValueError(f"data.input: no valid records in {[s.path for s in src.sources]}{filtered}")
    log.info("read %d records from %d file(s)%s%s", len(records), len(src.sources),
             f"; skipped {dict(read_stats.skipped)}" if read_stats.skipped else "",
             f"; filtered {dict(read_stats.filtered)}" if read_stats.filtered else "")
    parts = split_records(len(records), data.split, seed=data.seed)

    # 2. render, chunk and tokenize (worker processes, order preserved)
    num_workers = data.num_workers or os.cpu_count() or 1
    single_render = single_render_agrees(records[:_SELF_CHECK_RECORDS], src.tokenizer, truncate_history_thinking=data.truncate_history_thinking)
    tokenized: dict[str, list[TokenizedSequence]] = {}
    errors: Counter = Counter()
    bar = _progress(total=sum(len(parts[s]) for s in splits), enabled=progress)
    for split in splits:
        tokenized[split] = []
        for (seqs, errs), n in _tokenize_all(
            [records[i] for i in parts[split]], tokenizer=src.tokenizer, tokenizer_path=tokenizer_path,
            chat_template=src.chat_template, truncate=data.truncate_history_thinking, on_error=data.on_error,
            num_workers=num_workers, single_render=single_render,
        ):
            tokenized[split].extend(seqs)
            errors.update(errs)
            bar.update(n)
    bar.close()

    # 3. pack (each split with its own seed, whichever splits are asked for)
    filtered = Counter(read_stats.skipped) + errors + read_stats.filtered
    out = {}
    for split in splits:
        out[split] = pack_split(tokenized.pop(split), data, seed=data.seed + SPLITS.index(split))
        filtered.update(out[split].filtered)
    return PreparedSFT(out, len(records), filtered, read_stats.skipped_examples)


def prepare_sft_data(
    data: SFTDataConfig, *, tokenizer_path: str, tokenizer_name: str, resolved_config: dict[str, Any],
    progress: bool = True, chat_template: str | None = "default",
) -> dict[str, Any]:
    """Run the whole stage 1 data prep; returns the metadata written to `data.output_dir`.

    `chat_template` is `tokenizer.chat_template` (see nemotron_core/data/chat.py)."""
    if data.format not in ("parquet", "npy"):
        raise ValueError(f"data.format must be 'parquet' or 'npy', got {data.format!r}")
    out = Path(data.output_dir)
    src = open_sft_source(data, tokenizer_path=tokenizer_path, tokenizer_name=tokenizer_name, chat_template=chat_template)
    key = src.cache_key
    if (out / METADATA_FILE).is_file():
        old = json.loads((out / METADATA_FILE).read_text())
        if old.get("cache_key") == key and not data.force:
            log.info("cache hit: %s already holds this data (cache_key %s); data.force=true rebuilds", out, key[:12])
            return old
        log.info("%s is stale (inputs, tokenizer or config changed): rebuilding", out)
    elif out.exists() and any(out.iterdir()) and not data.force:
        raise FileExistsError(f"data.output_dir={str(out)!r} exists and holds no {METADATA_FILE}; refusing to overwrite (data.force=true)")

    prepared = prepare_sft_rows(data, src, tokenizer_path=tokenizer_path, progress=progress)

    # 4. write
    meta: dict[str, Any] = {
        "kind": "sft_packed", "format": data.format, "pack_size": data.pack_size,
        "packing_algorithm": data.packing_algorithm, "seed": data.seed, "split_fractions": list(data.split),
        "cache_key": key, "num_records": prepared.num_records, "splits": {},
    }
    totals = Counter()
    with atomic_directory(out, overwrite=True) as tmp:
        for split in SPLITS:
            res = prepared.splits[split]
            if data.format == "parquet":
                info = write_parquet_split(res.rows, tmp, split=split, rows_per_shard=data.rows_per_shard)
            else:
                info = write_npy_split(res.rows, tmp, split=split)
            meta["splits"][split] = {**info, "packing_efficiency": split_efficiency(res, pack_size=data.pack_size)}
            totals.update(split_totals(res))
        write_blend(tmp, meta["splits"])
        meta.update(totals)
        meta["packing_factor"] = totals["num_sequences"] / max(totals["num_packed_sequences"], 1)
        meta["packing_efficiency"] = totals["total_tokens"] / max(totals["num_packed_sequences"] * data.pack_size, 1)
        meta["num_filtered"] = dict(sorted(prepared.filtered.items()))
        meta["skipped_examples"] = prepared.skipped_examples
        lineage = Lineage(stage="stage1_sft/data_prep", config=resolved_config, inputs=src.inputs, tokenizer=src.tokenizer_fp)
        write_metadata(tmp, meta, lineage=lineage)
    return json.loads((out / METADATA_FILE).read_text())


def split_efficiency(res: SplitResult, *, pack_size: int) -> float:
    stats = packing_stats(res.lengths, res.bins, pack_size=pack_size) if res.bins else {}
    return stats.get("packing_efficiency", 0.0)


def split_totals(res: SplitResult) -> dict[str, int]:
    """Counts of one packed split, summed into metadata.json."""
    return dict(
        num_sequences=len(res.lengths), num_packed_sequences=len(res.bins), num_truncated=res.num_truncated,
        total_tokens=int(res.lengths.sum()) if len(res.lengths) else 0,
        trainable_tokens=int(sum(int(r["loss_mask"].sum()) for r in res.rows)),
    )


def _progress(*, total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="rec", desc="render+tokenize", disable=not enabled, dynamic_ncols=True)
