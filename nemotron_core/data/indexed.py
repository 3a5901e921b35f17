"""Pretraining data on the training side: blends of Megatron indexed datasets, read through
megatron-core's `BlendedMegatronDatasetBuilder` + `GPTDataset`, presented as packed rows.

megatron-core does the sampling: per split, each `.bin/.idx` prefix of the blend becomes a
`GPTDataset` (documents shuffled with `seed`, concatenated, cut into samples of seq_length + 1
tokens; consecutive samples overlap by one token, so every token is a label once) and a
`BlendedDataset` draws from them in proportion to the blend weights. Its index caches live in
`cache_dir`. It runs on CPU; blends need a process group, so a 1-rank gloo group is opened when
none exists.

`PretrainRows` turns each sample into the packed-row format the shared loop trains on
(`nemotron_core/data/packed.py`): `input_ids` = the seq_length + 1 sample tokens, and the aligned
`loss_mask` puts a label on the first seq_length of them, so a row trains exactly Megatron's
(tokens[:-1] -> labels[1:]) pairs; the model sees one extra input token whose label is ignored.

    sample   [5 6 2 7 8 2 9]   (seq_length 6, EOD 2)
    reset_at_eod=false: seq_start_id [0]        loss_mask [1 1 1 1 1 1 0]
                        labels [6 2 7 8 2 9 -100]          cu_seqlens [0, 7]
    reset_at_eod=true:  seq_start_id [0, 3, 6]  loss_mask [1 1 0 1 1 0 0]
                        labels [6 2 -100 8 2 -100 -100]    cu_seqlens [0, 3, 6, 7]

With `reset_at_eod` a new segment starts after every EOD, so attention and Mamba restart there
(cu_seqlens), and the label that would cross from an EOD into the next document is ignored
(Megatron's `eod_mask_loss`); EOD itself stays a label of its document. Off by default: the
reference concatenates documents without isolation in pretraining.

A split that gets zero documents makes megatron-core's GPTDataset loop forever while it counts
epochs; `check_split_documents` fails first, naming the split and the prefix.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nemotron_core.lineage import read_metadata

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
BLEND_FILE = "blend.json"


# ----------------------------------------------------------------------------- blends
def read_blend(data_path: str | os.PathLike, *, config_key: str = "data.path") -> dict[str, list[tuple[float, str]]]:
    """`<data_path>/blend.json` -> {split: [(weight, absolute prefix), ...]} for train/valid/test.

    The file is `{"train": [weight, prefix, ...], "valid": [...], "test": [...]}` (a missing split
    is empty); relative prefixes are relative to the file's directory.

    Raises:
        FileNotFoundError: no blend.json (naming `config_key`).
        ValueError: malformed JSON, an odd-length list, a non-positive weight or a non-string prefix.
    """
    root = Path(data_path)
    path = root / BLEND_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{config_key}={os.fspath(data_path)!r} has no {BLEND_FILE}: run stage 0's data_prep.py first")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: not valid JSON: {e.msg}") from e
    if not isinstance(raw, dict) or set(raw) - set(SPLITS):
        raise ValueError(f"{path}: expected an object with keys among {list(SPLITS)}, got {type(raw).__name__} {sorted(raw) if isinstance(raw, dict) else ''}")
    out: dict[str, list[tuple[float, str]]] = {}
    for split in SPLITS:
        items = raw.get(split) or []
        if not isinstance(items, list) or len(items) % 2:
            raise ValueError(f"{path}: {split!r} must be a flat list [weight, prefix, weight, prefix, ...]")
        entries = []
        for j in range(0, len(items), 2):
            w, p = items[j], items[j + 1]
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not w > 0:
                raise ValueError(f"{path}: {split!r} entry {j // 2}: weight must be a positive number, got {w!r}")
            if not isinstance(p, str) or not p:
                raise ValueError(f"{path}: {split!r} entry {j // 2}: prefix must be a non-empty string, got {p!r}")
            entries.append((float(w), p if os.path.isabs(p) else str(root / p)))
        out[split] = entries
    return out


def prefix_stats(prefix: str) -> tuple[int, int]:
    """(documents, tokens) of one `.bin/.idx` prefix, read from the index alone.

    The .idx layout (megatron-core's `_IndexWriter`): magic `MMIDIDX\\0\\0`, version u64 = 1, dtype
    code u8, sequence count u64, document count u64, then the int32 sequence lengths. (megatron-core's
    own reader maps the .bin too, which fails on an empty shard instead of reporting it.)
    """
    for suffix in (".idx", ".bin"):
        if not os.path.isfile(prefix + suffix):
            raise FileNotFoundError(f"{prefix}{suffix} does not exist")
    with open(prefix + ".idx", "rb") as f:
        head = f.read(34)
        if len(head) < 34 or head[:9] != b"MMIDIDX\x00\x00" or int.from_bytes(head[9:17], "little") != 1:
            raise ValueError(f"{prefix}.idx is not a megatron-core index (version 1)")
        count = int.from_bytes(head[18:26], "little")
        lengths = np.fromfile(f, dtype=np.int32, count=count)
    if lengths.size != count:
        raise ValueError(f"{prefix}.idx is truncated: {lengths.size} of {count} sequence lengths")
    return count, int(lengths.sum(dtype=np.int64))


def check_split_documents(
    blend: Mapping[str, Sequence[tuple[float, str]]], *, splits: Sequence[str], where: str
) -> dict[str, tuple[int, int]]:
    """Refuse, before megatron-core hangs on it, a requested split that has no dataset or a prefix
    with zero documents / tokens. Returns {split: (documents, tokens)} over the requested splits.

    Raises:
        ValueError: naming `where` (e.g. the blend file), the split and the prefix.
    """
    out = {}
    for split in splits:
        entries = blend.get(split) or []
        if not entries:
            raise ValueError(f"{where}: split {split!r} lists no dataset, so it gets zero documents")
        docs = tokens = 0
        for _, prefix in entries:
            d, t = prefix_stats(prefix)
            if d == 0 or t == 0:
                raise ValueError(
                    f"{where}: split {split!r} gets zero documents from {prefix} ({d} documents, {t} tokens); "
                    "megatron-core's GPTDataset would hang on it: remove it from the blend or re-run data prep "
                    "with more data or another data.split"
                )
            docs, tokens = docs + d, tokens + t
        out[split] = (docs, tokens)
    return out


# ----------------------------------------------------------------------------- megatron-core
_MEGATRON_CLASSES: dict[str, Any] = {}


def megatron_datasets() -> dict[str, Any]:
    """megatron-core's dataset classes, imported once (its package import is slow and warns about
    the absent Transformer Engine / Apex, which the datasets do not use)."""
    if not _MEGATRON_CLASSES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
            from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
            from megatron.core.datasets.indexed_dataset import DType, IndexedDataset, IndexedDatasetBuilder
        _MEGATRON_CLASSES.update(BlendedMegatronDatasetBuilder=BlendedMegatronDatasetBuilder, GPTDataset=GPTDataset,
                         GPTDatasetConfig=GPTDatasetConfig, DType=DType, IndexedDataset=IndexedDataset,
                         IndexedDatasetBuilder=IndexedDatasetBuilder)
    return _MEGATRON_CLASSES


def token_dtype(vocab_size: int) -> np.dtype:
    """The .bin token dtype megatron-core picks for a vocabulary: uint16 below 65500, else int32."""
    return np.dtype(megatron_datasets()["DType"].optimal_dtype(int(vocab_size)))


class TokenizerInfo:
    """What GPTDataset needs of a tokenizer: vocab size, EOD id, and a cache identity. No `pad`
    attribute on purpose: megatron-core then pads with -1, an id no sample holds, and never rewrites
    or masks a real token."""

    def __init__(self, *, vocab_size: int, eod_id: int):
        self.vocab_size, self.eod = int(vocab_size), int(eod_id)
        self.unique_identifiers = {"class": "nemotron_core.TokenizerInfo", "vocab_size": self.vocab_size, "eod": self.eod}


@contextlib.contextmanager
def process_group_for_datasets() -> Iterator[None]:
    """The existing process group, or a 1-rank gloo group for the duration (blends need one)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        yield
        return
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def build_gpt_datasets(
    blend: Mapping[str, Sequence[tuple[float, str]]],
    *,
    sizes: Mapping[str, int],
    seq_length: int,
    seed: int,
    vocab_size: int,
    eod_id: int,
    cache_dir: str | os.PathLike,
    where: str = "blend",
) -> dict[str, Any]:
    """megatron-core datasets of at least `sizes[split]` samples for each split with a size > 0.

    Every rank calls it (megatron-core builds on rank 0 first, then the others read its index
    cache in `cache_dir`, which must be shared). Returns {split: GPTDataset | BlendedDataset}
    for the requested splits; a dataset's item `i` is a dict whose `tokens`/`labels` are the
    sample's tokens [:-1] / [1:] (seq_length each).

    Raises:
        ValueError: train not requested; a requested split with zero documents
            (`check_split_documents`); seq_length < 1.
    """
    if isinstance(seq_length, bool) or not isinstance(seq_length, int) or seq_length < 1:
        raise ValueError(f"data.seq_length must be a positive integer, got {seq_length!r}")
    wanted = [s for s in SPLITS if sizes.get(s)]
    if "train" not in wanted:
        raise ValueError("build_gpt_datasets needs a train size > 0")
    check_split_documents(blend, splits=wanted, where=where)
    m = megatron_datasets()
    per_split = [([p for _, p in blend[s]], [w for w, _ in blend[s]]) if s in wanted else None for s in SPLITS]
    cfg = m["GPTDatasetConfig"](
        random_seed=int(seed), sequence_length=seq_length, blend_per_split=per_split,
        tokenizer=TokenizerInfo(vocab_size=vocab_size, eod_id=eod_id), path_to_cache=os.fspath(cache_dir),
        reset_position_ids=False, reset_attention_mask=False, eod_mask_loss=False, create_attention_mask=False,
    )
    mlog = logging.getLogger("megatron.core")
    level = mlog.level
    mlog.setLevel(max(level, logging.WARNING))  # its per-index INFO lines drown the run's log
    try:
        with warnings.catch_warnings(), process_group_for_datasets():
            warnings.simplefilter("ignore", UserWarning)
            built = m["BlendedMegatronDatasetBuilder"](
                m["GPTDataset"], [sizes.get(s) if s in wanted else None for s in SPLITS], lambda: True, cfg
            ).build()
    finally:
        mlog.setLevel(level)
    return {s: built[i] for i, s in enumerate(SPLITS) if s in wanted}


# ----------------------------------------------------------------------------- rows
def pretrain_row(sample: np.ndarray, *, eod_id: int, reset_at_eod: bool) -> dict[str, np.ndarray]:
    """One sample of seq_length + 1 tokens as a packed row (module docstring for the example).

    Guarantees: `input_ids` is the sample (int32); `loss_mask` is 1 everywhere except at the last
    token of each segment (so exactly seq_length labels without `reset_at_eod`); with
    `reset_at_eod` segments start at 0 and after every EOD that is not the last token.
    """
    ids = np.asarray(sample).astype(np.int32, copy=False)
    if ids.ndim != 1 or ids.size < 2:
        raise ValueError(f"a pretraining sample needs >= 2 tokens (seq_length + 1), got shape {ids.shape}")
    if reset_at_eod:
        starts = np.concatenate([[0], np.flatnonzero(ids[:-1] == eod_id) + 1]).astype(np.int32)
    else:
        starts = np.zeros(1, dtype=np.int32)
    mask = np.ones(ids.size, dtype=np.uint8)
    mask[np.append(starts[1:], ids.size) - 1] = 0
    return {"input_ids": ids, "loss_mask": mask, "seq_start_id": starts}


class PretrainRows:
    """A megatron-core GPT/Blended dataset as a sequence of packed rows (`pretrain_row`), what the
    shared loop's `iterate_batches` and `validation_batches` read."""

    def __init__(self, dataset, *, eod_id: int, reset_at_eod: bool):
        self.dataset, self.eod_id, self.reset_at_eod = dataset, int(eod_id), bool(reset_at_eod)

    def __len__(self) -> int:
        return len(self.dataset)

    def sample(self, i: int) -> np.ndarray:
        """The raw sample i: seq_length + 1 tokens (int64)."""
        n = len(self)
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < n:
            raise IndexError(f"sample {i!r} out of range for {n} samples")
        item = self.dataset[int(i)]
        return np.concatenate([item["tokens"].numpy(), item["labels"][-1:].numpy()])

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return pretrain_row(self.sample(i), eod_id=self.eod_id, reset_at_eod=self.reset_at_eod)


def load_pretrain_rows(
    data_path: str | os.PathLike,
    *,
    seq_length: int,
    seed: int,
    reset_at_eod: bool,
    train_samples: int,
    valid_samples: int,
    cache_dir: str | os.PathLike,
    model_vocab_size: int,
) -> tuple[dict[str, Any], PretrainRows, PretrainRows | list]:
    """(metadata, train rows, valid rows) of a stage 0 data prep output.

    Train has at least `train_samples` rows; valid (when the blend has a valid split and
    `valid_samples` > 0) at least `valid_samples`, else it is an empty list (no validation).

    Raises:
        FileNotFoundError: no metadata.json / blend.json under `data_path` (naming data.path).
        ValueError: the data's vocabulary is larger than `model.vocab_size`; a split with zero
            documents (naming it).
    """
    meta = read_metadata(data_path, config_key="data.path")
    if meta.get("kind") != "pretrain_indexed":
        raise ValueError(f"data.path={os.fspath(data_path)!r} holds {meta.get('kind')!r} data, not stage 0's pretrain_indexed")
    if int(meta["vocab_size"]) > model_vocab_size:
        raise ValueError(
            f"data.path={os.fspath(data_path)!r} was tokenized with a vocabulary of {meta['vocab_size']} tokens, "
            f"more than model.vocab_size={model_vocab_size}"
        )
    blend = read_blend(data_path)
    sizes = {"train": int(train_samples)}
    if valid_samples > 0 and blend.get("valid"):
        sizes["valid"] = int(valid_samples)
    elif valid_samples > 0:
        log.warning("%s lists no valid split: no validation loss", Path(data_path) / BLEND_FILE)
    built = build_gpt_datasets(blend, sizes=sizes, seq_length=seq_length, seed=seed, vocab_size=meta["vocab_size"],
                               eod_id=meta["eod_token_id"], cache_dir=cache_dir, where=str(Path(data_path) / BLEND_FILE))
    rows = {s: PretrainRows(d, eod_id=meta["eod_token_id"], reset_at_eod=reset_at_eod) for s, d in built.items()}
    return meta, rows["train"], rows.get("valid", [])
