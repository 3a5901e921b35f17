"""Packed SFT files: writers, the reader the trainer uses, and micro-batch collation.

A packed row is a dict of three 1-D arrays (see `masks.py` and nano3.md section 3):

- `input_ids` int32 [L]: the documents of the row back to back, not padded on disk;
- `loss_mask` uint8 [L]: ALREADY aligned per document: `loss_mask[j] = 1` means the label
  `input_ids[j + 1]` counts; the last token of every document (so of the row) is 0;
- `seq_start_id` int32 [n_docs]: document start offsets, 0 first, strictly increasing, end not listed.

On disk (one output directory, created atomically by the caller; the writers only write files):

    splits/{train,valid,test}/shard_000000.parquet ...   `write_parquet_split` (data.format=parquet)
        input_ids: list<int32>, loss_mask: list<uint8>, seq_start_id: list<int32>, zstd, one row
        group per shard; the same rows give the same bytes. A split with zero rows is one shard
        with the schema and no rows (so the split, its schema and its blend entry always exist).
    training.npy  validation.npy  test.npy              `write_npy_split` (data.format=npy)
        the layout Megatron-Bridge's packed SFT dataset reads: a numpy object array of dicts
        {"input_ids": [...], "loss_mask": [...], "seq_start_id": [...]} of Python ints.
    blend.json                                          `write_blend`: {split: [weight, path]}

One micro-batch, from rows to what the model and the loss take (`collate_packed`):

    row 0: ids [10 11 12 | 20 21 | 30 31 32 33]   seq_start_id [0, 3, 5]
           loss_mask [1 1 0 | 1 0 | 0 1 1 0]
    labels       [11 12 -100 | 21 -100 | -100 32 33 -100]   (ids[j+1] where the mask is 1)
    position_ids [0 1 2 | 0 1 | 0 1 2 3]
    cu_seqlens   [0, 3, 5, 9]  (a second row's documents continue: [0, 3, 5, 9, 13, ...])
    doc_ids      [0 0 0 1 1 2 2 2 2]

The reader never rolls the mask again, and it trusts the mask only where that is safe: a 1 at the
last token of a document would put the next document's first token (or nothing, at the row end)
as the label, so every reader here (`PackedDataset` on load, `collate_packed`, the writers)
raises ValueError on it, naming the file or row and position. Files from an earlier reference that
rolled the whole pack have exactly this defect; re-run data prep.

Data order (`iterate_batches`): a seeded permutation of the rows per epoch, epochs concatenated;
the data position is a global row counter, and optimizer step `s` uses positions
[s*G, (s+1)*G) whatever the data-parallel degree, so a run resumed under another dp degree
continues with exactly the rows it would have seen.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from nemotron_core.constants import IGNORE_INDEX
from nemotron_core.data.masks import position_ids_from_cu_seqlens
from nemotron_core.utils.atomic import atomic_write_json

COLUMNS = ("input_ids", "loss_mask", "seq_start_id")
SPLITS = ("train", "valid", "test")
# The reference's file names (Megatron-Bridge packed SFT), by our split names.
NPY_FILES = {"train": "training.npy", "valid": "validation.npy", "test": "test.npy"}
FORMATS = ("parquet", "npy")
PAD_TOKEN_ID = 0

PARQUET_SCHEMA = pa.schema(
    [
        ("input_ids", pa.list_(pa.int32())),
        ("loss_mask", pa.list_(pa.uint8())),
        ("seq_start_id", pa.list_(pa.int32())),
    ]
)
_DTYPES = {"input_ids": np.int32, "loss_mask": np.uint8, "seq_start_id": np.int32}
_INT32_MAX = np.iinfo(np.int32).max


# ---------------------------------------------------------------------------------------------
# Flat (columnar) rows and their validation
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _FlatRows:
    """N rows as offsets + flat values per column (the columnar form of a parquet list column).

    Row i's column c is `values[c][offsets[c][i]:offsets[c][i + 1]]`; offsets are int64 [N + 1]
    starting at 0.
    """

    offsets: dict[str, np.ndarray]
    values: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.offsets["input_ids"]) - 1

    def row(self, i: int) -> dict[str, np.ndarray]:
        return {c: self.values[c][self.offsets[c][i] : self.offsets[c][i + 1]].copy() for c in COLUMNS}

    @staticmethod
    def concat(parts: Sequence[_FlatRows]) -> _FlatRows:
        if not parts:
            return _FlatRows(
                offsets={c: np.zeros(1, np.int64) for c in COLUMNS},
                values={c: np.zeros(0, _DTYPES[c]) for c in COLUMNS},
            )
        if len(parts) == 1:
            return parts[0]
        offsets, values = {}, {}
        for c in COLUMNS:
            shift = np.cumsum([0] + [int(p.offsets[c][-1]) for p in parts[:-1]])
            offsets[c] = np.concatenate(
                [parts[0].offsets[c][:1]] + [p.offsets[c][1:] + s for p, s in zip(parts, shift)]
            )
            values[c] = np.concatenate([p.values[c] for p in parts])
        return _FlatRows(offsets, values)


def _as_int_values(values: Any, column: str, where: str) -> np.ndarray:
    """Column values as the on-disk dtype, refusing non-integers and values that do not fit."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{where}: {column} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        return arr.astype(_DTYPES[column])
    if arr.dtype.kind not in "iub":
        raise ValueError(f"{where}: {column} must hold integers, got dtype {arr.dtype}")
    if column == "loss_mask":
        if arr.min() < 0 or arr.max() > 1:
            bad = int(np.flatnonzero((arr < 0) | (arr > 1))[0])
            raise ValueError(
                f"{where}: loss_mask must hold 0/1, got {arr[bad].item()!r} at flat position {bad}"
            )
    elif arr.min() < 0 or arr.max() > _INT32_MAX:
        bad = int(np.flatnonzero((arr < 0) | (arr > _INT32_MAX))[0])
        raise ValueError(
            f"{where}: {column} must be in [0, 2**31), got {arr[bad].item()!r} at flat position {bad}"
        )
    return arr.astype(_DTYPES[column], copy=False)


def _flat_from_rows(rows: Sequence[Mapping[str, Any]], where: str, *, first_row: int = 0) -> _FlatRows:
    offsets, values = {}, {}
    for c in COLUMNS:
        arrays = []
        for i, row in enumerate(rows):
            if c not in row:
                raise ValueError(
                    f"{where}: row {first_row + i} has no {c!r} (keys: {sorted(row)}; need {list(COLUMNS)})"
                )
            arrays.append(_as_int_values(row[c], c, f"{where}: row {first_row + i}"))
        lens = np.fromiter((a.size for a in arrays), dtype=np.int64, count=len(arrays))
        offsets[c] = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        values[c] = np.concatenate(arrays) if arrays else np.zeros(0, _DTYPES[c])
    return _FlatRows(offsets, values)


def _validate(flat: _FlatRows, where: str, *, first_row: int = 0) -> None:
    """Check every row of `flat`, vectorised; errors name `where` and the row (first_row + i).

    Raises ValueError when: lengths of input_ids and loss_mask differ; a row has no token; a
    row's seq_start_id is empty, does not start at 0, is not strictly increasing, or has a start
    >= the row length; loss_mask is 1 at the last token of a document (not aligned per document).
    """
    n = len(flat)
    if n == 0:
        return
    id_off, mask_off, st_off = (flat.offsets[c] for c in COLUMNS)
    ids_len, mask_len, n_docs = np.diff(id_off), np.diff(mask_off), np.diff(st_off)
    starts, mask = flat.values["seq_start_id"].astype(np.int64), flat.values["loss_mask"]

    def fail(i: int, msg: str) -> None:
        raise ValueError(f"{where}: row {first_row + int(i)}: {msg}")

    if (bad := np.flatnonzero(ids_len != mask_len)).size:
        i = bad[0]
        fail(i, f"len(input_ids)={ids_len[i]} != len(loss_mask)={mask_len[i]}")
    if (bad := np.flatnonzero(ids_len == 0)).size:
        fail(bad[0], "no tokens (empty input_ids)")
    if (bad := np.flatnonzero(n_docs == 0)).size:
        fail(bad[0], "seq_start_id is empty (the first document starts at 0: list it)")
    if (bad := np.flatnonzero(starts[st_off[:-1]] != 0)).size:
        i = bad[0]
        fail(i, f"seq_start_id must start at 0, got {starts[st_off[i]]}")
    steps = np.diff(starts)
    within = np.ones(steps.size, dtype=bool)
    within[st_off[1:-1] - 1] = False  # the step from one row's last start to the next row's 0
    if (bad := np.flatnonzero((steps <= 0) & within)).size:
        k = int(bad[0]) + 1
        i = int(np.searchsorted(st_off, k, side="right")) - 1
        j = k - int(st_off[i])
        fail(
            i,
            f"seq_start_id must be strictly increasing: seq_start_id[{j}]={starts[k]} <= seq_start_id[{j - 1}]={starts[k - 1]}",
        )
    last_start = starts[st_off[1:] - 1]
    if (bad := np.flatnonzero(last_start >= ids_len)).size:
        i = bad[0]
        fail(
            i,
            f"seq_start_id[{n_docs[i] - 1}]={last_start[i]} >= row length {ids_len[i]}: every document needs a token",
        )
    # Last token of every document: the next start, or the row length for the row's last document.
    ends = np.empty_like(starts)
    ends[:-1] = starts[1:]
    ends[st_off[1:] - 1] = ids_len
    row_of_doc = np.repeat(np.arange(n), n_docs)
    last_tok = mask_off[:-1][row_of_doc] + ends - 1
    if (bad := np.flatnonzero(mask[last_tok] != 0)).size:
        d = int(bad[0])
        i = int(row_of_doc[d])
        fail(
            i,
            f"loss_mask[{ends[d] - 1}]=1 at the last token of document {d - int(st_off[i])} "
            f"(tokens [{starts[d]}, {ends[d]})): the mask is not aligned per document, so its label would "
            "cross into the next document or past the row (files whose whole pack was rolled have this); "
            "re-run data prep with align_loss_mask",
        )


def _split_info(flat: _FlatRows, *, path: str, shards: list[str]) -> dict[str, Any]:
    return {
        "rows": len(flat),
        "sequences": int(flat.offsets["seq_start_id"][-1]),
        "path": path,
        "shards": shards,
        "tokens": int(flat.offsets["input_ids"][-1]),
        "trainable_tokens": int(flat.values["loss_mask"].sum(dtype=np.int64)),
    }


def _merge_info(infos: list[dict[str, Any]], *, path: str, shards: list[str]) -> dict[str, Any]:
    out = {"rows": 0, "sequences": 0, "path": path, "shards": shards, "tokens": 0, "trainable_tokens": 0}
    for info in infos:
        for key in ("rows", "sequences", "tokens", "trainable_tokens"):
            out[key] += info[key]
    return out


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    return split


# ---------------------------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------------------------


def _parquet_table(flat: _FlatRows) -> pa.Table:
    arrays = []
    for c, field in zip(COLUMNS, PARQUET_SCHEMA):
        if flat.offsets[c][-1] > _INT32_MAX:
            raise ValueError(
                f"{c}: {flat.offsets[c][-1]} values in one shard overflow list<> offsets; lower rows_per_shard"
            )
        arrays.append(
            pa.ListArray.from_arrays(
                pa.array(flat.offsets[c].astype(np.int32), type=pa.int32()),
                pa.array(flat.values[c], type=field.type.value_type),
                type=field.type,
            )
        )
    return pa.Table.from_arrays(arrays, schema=PARQUET_SCHEMA)


def write_parquet_split(
    rows: Iterable[Mapping[str, Any]], directory: str | os.PathLike, *, split: str, rows_per_shard: int
) -> dict[str, Any]:
    """Write one split as packed Parquet shards under `directory/splits/{split}/`.

    Guarantees: shards `shard_000000.parquet`, `shard_000001.parquet`, ... of at most
    `rows_per_shard` rows each, in input order, schema `PARQUET_SCHEMA` (input_ids: list<int32>,
    loss_mask: list<uint8>, seq_start_id: list<int32>), zstd, one row group per shard; the same
    rows give byte-identical files. Zero rows write one shard with the schema and no rows. Rows
    stream: at most one shard is held in memory. Every row is validated first (see the module
    docstring), so no invalid row reaches disk.

    Args:
        rows: packed row dicts (lists or arrays of integers).
        directory: the output directory (created by the caller, e.g. with `atomic_directory`).
        split: "train", "valid" or "test".
        rows_per_shard: rows per shard file, >= 1.

    Returns:
        {"rows", "sequences" (documents), "path" ("splits/{split}", relative to directory),
        "shards" (relative file paths), "tokens", "trainable_tokens" (sum of loss_mask)}.

    Raises:
        ValueError: for an unknown split, rows_per_shard < 1, or an invalid row (naming its index).
    """
    _check_split(split)
    if (
        isinstance(rows_per_shard, bool)
        or not isinstance(rows_per_shard, (int, np.integer))
        or rows_per_shard < 1
    ):
        raise ValueError(f"rows_per_shard must be a positive integer, got {rows_per_shard!r}")
    rel = f"splits/{split}"
    out_dir = Path(directory) / rel
    out_dir.mkdir(parents=True, exist_ok=True)
    shards: list[str] = []
    infos: list[dict[str, Any]] = []

    def flush(buffer: list[Mapping[str, Any]]) -> None:
        where = f"split {split!r}"
        first = sum(info["rows"] for info in infos)
        flat = _flat_from_rows(buffer, where, first_row=first)
        _validate(flat, where, first_row=first)
        name = f"{rel}/shard_{len(shards):06d}.parquet"
        pq.write_table(
            _parquet_table(flat),
            Path(directory) / name,
            compression="zstd",
            row_group_size=max(len(flat), 1),
        )
        shards.append(name)
        infos.append(_split_info(flat, path=rel, shards=[name]))

    buffer: list[Mapping[str, Any]] = []
    for row in rows:
        buffer.append(row)
        if len(buffer) == rows_per_shard:
            flush(buffer)
            buffer = []
    if buffer or not shards:
        flush(buffer)
    return _merge_info(infos, path=rel, shards=shards)


def write_npy_split(
    rows: Iterable[Mapping[str, Any]], directory: str | os.PathLike, *, split: str
) -> dict[str, Any]:
    """Write one split in the reference layout: `training.npy`, `validation.npy` or `test.npy`.

    Guarantees: `np.load(path, allow_pickle=True)` gives a 1-D object array with one dict per row,
    `{"input_ids": [...], "loss_mask": [...], "seq_start_id": [...]}` of Python ints, in input order
    (what Megatron-Bridge's packed SFT dataset reads). Rows are validated first. The same rows give
    byte-identical files. Zero rows give an empty object array.

    Returns:
        the dict of `write_parquet_split`, with "path" and "shards" the .npy file name.

    Raises:
        ValueError: for an unknown split or an invalid row (naming its index).
    """
    _check_split(split)
    rows = list(rows)
    where = f"split {split!r}"
    flat = _flat_from_rows(rows, where)
    _validate(flat, where)
    out = np.empty(len(flat), dtype=object)
    for i in range(len(flat)):
        out[i] = {c: v.tolist() for c, v in flat.row(i).items()}
    name = NPY_FILES[split]
    with open(Path(directory) / name, "wb") as f:
        np.save(f, out, allow_pickle=True)
    return _split_info(flat, path=name, shards=[name])


def write_blend(
    directory: str | os.PathLike, split_infos: Mapping[str, Mapping[str, Any]]
) -> dict[str, list]:
    """Write `directory/blend.json`: `{split: [1.0, path]}` for each split written.

    `path` is the writer's "path" (relative to directory): `splits/train` for Parquet,
    `training.npy` for npy. Weights are 1.0 (one source per split). Deterministic JSON.

    Raises:
        ValueError: for an unknown split name or an info without "path".
    """
    blend: dict[str, list] = {}
    for split, info in split_infos.items():
        _check_split(split)
        if "path" not in info:
            raise ValueError(f"split_infos[{split!r}] has no 'path' (pass the dict a write_*_split returned)")
        blend[split] = [1.0, str(info["path"])]
    atomic_write_json(Path(directory) / "blend.json", blend)
    return blend


# ---------------------------------------------------------------------------------------------
# Reader
# ---------------------------------------------------------------------------------------------


def _list_column(col: pa.ChunkedArray, name: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(offsets int64 [N + 1] from 0, flat values) of a list column, without Python objects per row."""
    arr = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    if not (pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type)):
        raise ValueError(f"{where}: column {name!r} must be a list of integers, got {arr.type}")
    vtype = arr.type.value_type
    if not (pa.types.is_integer(vtype) or pa.types.is_boolean(vtype)):
        raise ValueError(f"{where}: column {name!r} must be a list of integers, got {arr.type}")
    if arr.null_count:
        raise ValueError(f"{where}: column {name!r} has {arr.null_count} null rows")
    offsets = np.asarray(arr.offsets).astype(np.int64)
    values = arr.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
    if values.null_count:
        raise ValueError(f"{where}: column {name!r} has {values.null_count} null values")
    flat = values.to_numpy(zero_copy_only=False)
    return offsets - offsets[0], _as_int_values(flat, name, f"{where}: column {name!r}")


def _read_parquet(path: Path) -> _FlatRows:
    where = str(path)
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as e:
        raise ValueError(f"{where}: not a readable Parquet file ({e})") from e
    missing = [c for c in COLUMNS if c not in schema.names]
    if missing:
        raise ValueError(f"{where}: missing column(s) {missing}; found {schema.names}, need {list(COLUMNS)}")
    table = pq.read_table(path, columns=list(COLUMNS))
    offsets, values = {}, {}
    for c in COLUMNS:
        offsets[c], values[c] = _list_column(table.column(c), c, where)
    flat = _FlatRows(offsets, values)
    _validate(flat, where)
    return flat


def _read_npy(path: Path) -> _FlatRows:
    where = str(path)
    try:
        data = np.load(path, allow_pickle=True)
    except (OSError, ValueError) as e:
        raise ValueError(f"{where}: not a readable .npy file ({e})") from e
    if data.ndim != 1:
        raise ValueError(f"{where}: expected a 1-D array of row dicts, got shape {data.shape} ({data.dtype})")
    for i, row in enumerate(data):
        if not isinstance(row, Mapping):
            raise ValueError(
                f"{where}: row {i} is {type(row).__name__}, expected a dict with keys {list(COLUMNS)}"
            )
        missing = [c for c in COLUMNS if c not in row]
        if missing:
            raise ValueError(f"{where}: row {i} is missing key(s) {missing}; found {sorted(row)}")
    flat = _flat_from_rows(list(data), where)
    _validate(flat, where)
    return flat


class PackedDataset:
    """The packed rows of one split, loaded whole, read by index.

    Formats, detected from the files present under `path` (or named with `format=`):

    - parquet: `path/splits/{split}/*.parquet`, read in file-name order, columnar (offsets + flat
      values per column; rows are numpy slices, no Python list per row);
    - npy: `path/{training,validation,test}.npy` (or `path` itself, a .npy file), the reference
      layout. Loading it needs `np.load(..., allow_pickle=True)`, used for this format only:
      unpickling can execute arbitrary code, so only load .npy files you trust (written by
      this project's data prep or by Megatron-Bridge on your machines). Parquet has no such risk.

    Guarantees: every row was validated on load (see the module docstring); `self[i]` is a dict
    of numpy arrays `input_ids` int32 [L], `loss_mask` uint8 [L], `seq_start_id` int32 [n_docs]
    (fresh copies). An empty split (a schema-only shard) has length 0.

    Raises:
        FileNotFoundError: when no file of the split is found (lists what was looked for).
        ValueError: for an unknown split or format, both formats present without `format=`, or
            an invalid file or row (naming the file and the row).
    """

    def __init__(self, path: str | os.PathLike, *, split: str = "train", format: str | None = None):
        self.path = Path(path)
        self.split = _check_split(split)
        if format is not None and format not in FORMATS:
            raise ValueError(f"format must be one of {list(FORMATS)} or None, got {format!r}")
        if self.path.is_file():
            if self.path.suffix != ".npy" or format == "parquet":
                raise ValueError(
                    f"{self.path}: a file path must be a .npy file; pass the output directory for Parquet"
                )
            self.format, self.files = "npy", [self.path]
        else:
            shard_dir = self.path / "splits" / split
            shards = sorted(shard_dir.glob("*.parquet")) if shard_dir.is_dir() else []
            npy = self.path / NPY_FILES[split]
            found = {"parquet": shards, "npy": [npy] if npy.is_file() else []}
            if format is None:
                present = [f for f in FORMATS if found[f]]
                if len(present) > 1:
                    raise ValueError(
                        f"{self.path}: both {shard_dir}/*.parquet and {npy} exist; pass format='parquet' or 'npy'"
                    )
                format = present[0] if present else None
            if format is None or not found[format]:
                raise FileNotFoundError(
                    f"no packed {split!r} split under {self.path}: looked for {shard_dir}/*.parquet and {npy}"
                )
            self.format, self.files = format, found[format]
        reader = _read_parquet if self.format == "parquet" else _read_npy
        self._flat = _FlatRows.concat([reader(f) for f in self.files])
        self.lengths = np.diff(self._flat.offsets["input_ids"])  # int64 [N], tokens per row

    def __len__(self) -> int:
        return len(self._flat)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        n = len(self)
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"row index must be an integer, got {type(i).__name__}")
        if not -n <= i < n:
            raise IndexError(f"row {i} out of range for {n} rows ({self.path}, split {self.split!r})")
        return self._flat.row(int(i) % n)

    def __repr__(self) -> str:
        return f"PackedDataset({str(self.path)!r}, split={self.split!r}, format={self.format!r}, rows={len(self)})"


# ---------------------------------------------------------------------------------------------
# Collation
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class PackedBatch:
    """One micro-batch, flattened over its rows (batch dimension 1, as varlen attention expects).

    T = tokens of all rows (+ padding with `pad_to`); S = segments (documents + padding segments).

    - input_ids int64 [T]: every token of every document (padding: `PAD_TOKEN_ID` = 0).
    - labels int64 [T]: `input_ids[j + 1]` where the aligned loss_mask[j] is 1, else IGNORE_INDEX
      (always at a document's last token, a row's last token and padding).
    - position_ids int64 [T]: restart at 0 in every segment.
    - cu_seqlens int32 [S + 1]: segment boundaries over full document lengths, continuing across
      rows; a padding segment per padded row.
    - doc_ids int32 [T]: segment index per token (Mamba's `seq_idx`), consistent with cu_seqlens.
    - max_seqlen: longest segment; num_trainable_tokens: count of labels != IGNORE_INDEX;
      num_documents: real documents (padding segments excluded); num_padding_tokens.
    - row_indices: dataset indices of the rows, when known (set by `iterate_batches`).
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor
    cu_seqlens: torch.Tensor
    doc_ids: torch.Tensor
    max_seqlen: int
    num_trainable_tokens: int
    num_documents: int
    num_padding_tokens: int = 0
    row_indices: tuple[int, ...] = ()

    def to(self, device: torch.device | str, *, non_blocking: bool = False) -> PackedBatch:
        """The same batch with every tensor on `device`."""
        moved = {
            f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return dataclasses.replace(self, **moved)


def collate_packed(rows: Sequence[Mapping[str, Any]], *, pad_to: int | None = None) -> PackedBatch:
    """Flatten packed rows into one micro-batch (see `PackedBatch` for fields, shapes and dtypes).

    Guarantees: labels are `input_ids[j + 1]` exactly where the aligned mask is 1 (never rolled
    again); no label crosses a document or row boundary; `cu_seqlens` of row r continues from
    the end of row r-1 (e.g. [0, 3, 5, 9] then [9, 13, ...]); with `pad_to`, each row of length
    L < pad_to gets one padding segment [L, pad_to) of token 0, positions from 0 and ignored
    labels, so T = len(rows) x pad_to; a row of length pad_to gets none.

    Raises:
        ValueError: for no rows, an invalid row (naming its index in the micro-batch, including a
            mask of 1 at a document's last token), or a row longer than pad_to.
    """
    if len(rows) == 0:
        raise ValueError("collate_packed needs at least one row")
    flat = _flat_from_rows(rows, "micro-batch")
    _validate(flat, "micro-batch")
    ids_off, st_off = flat.offsets["input_ids"], flat.offsets["seq_start_id"]
    lens = np.diff(ids_off)
    n_rows, n_docs = len(flat), int(st_off[-1])
    if pad_to is not None:
        if isinstance(pad_to, bool) or not isinstance(pad_to, (int, np.integer)) or pad_to < 1:
            raise ValueError(f"pad_to must be a positive integer or None, got {pad_to!r}")
        if (bad := np.flatnonzero(lens > pad_to)).size:
            raise ValueError(
                f"micro-batch: row {int(bad[0])} has {int(lens[bad[0]])} tokens > pad_to={pad_to}"
            )
        padded = np.full(n_rows, int(pad_to), dtype=np.int64)
    else:
        padded = lens
    row_start = np.concatenate([[0], np.cumsum(padded)])  # [n_rows + 1] in the flattened batch
    total = int(row_start[-1])

    ids = np.full(total, PAD_TOKEN_ID, dtype=np.int64)
    mask = np.zeros(total, dtype=np.uint8)
    # Destination of each real token: its row's start in the batch + offset in the row.
    dest = np.arange(int(ids_off[-1]), dtype=np.int64) + np.repeat(row_start[:-1] - ids_off[:-1], lens)
    ids[dest] = flat.values["input_ids"]
    mask[dest] = flat.values["loss_mask"]
    # Validation proved mask is 0 at each document's (and row's) last token, so shifting the
    # flattened ids by one never reads across a boundary where it is used.
    labels = np.full(total, IGNORE_INDEX, dtype=np.int64)
    labels[:-1] = np.where(mask[:-1] == 1, ids[1:], IGNORE_INDEX)

    doc_starts = flat.values["seq_start_id"].astype(np.int64) + np.repeat(row_start[:-1], np.diff(st_off))
    pad_starts = (row_start[:-1] + lens)[padded > lens]
    cu = np.concatenate([np.union1d(doc_starts, pad_starts), [total]]).astype(np.int32)
    seg_lens = np.diff(cu)
    return PackedBatch(
        input_ids=torch.from_numpy(ids),
        labels=torch.from_numpy(labels),
        position_ids=torch.from_numpy(position_ids_from_cu_seqlens(cu)),
        cu_seqlens=torch.from_numpy(cu),
        doc_ids=torch.from_numpy(np.repeat(np.arange(seg_lens.size, dtype=np.int32), seg_lens)),
        max_seqlen=int(seg_lens.max()),
        num_trainable_tokens=int((labels != IGNORE_INDEX).sum()),
        num_documents=n_docs,
        num_padding_tokens=total - int(lens.sum()),
    )


# ---------------------------------------------------------------------------------------------
# Data order over steps and data-parallel ranks
# ---------------------------------------------------------------------------------------------


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def epoch_permutation(num_rows: int, *, epoch: int, seed: int) -> np.ndarray:
    """The row order of one epoch: a permutation of range(num_rows), a function of (seed, epoch) only.
    Cached (the current and next epoch), so a step costs O(global batch), not O(rows): at 30B scale
    the pretraining dataset has ~40M rows. The returned array is read-only."""
    return _epoch_permutation(int(num_rows), int(epoch), int(seed))


@functools.lru_cache(maxsize=2)
def _epoch_permutation(num_rows: int, epoch: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch]))
    perm = rng.permutation(num_rows)
    perm.flags.writeable = False
    return perm


def global_rows(num_rows: int, *, start: int, stop: int, seed: int) -> np.ndarray:
    """Dataset indices at data positions [start, stop) of the order: epochs' permutations concatenated."""
    out = []
    pos = start
    while pos < stop:
        epoch, offset = divmod(pos, num_rows)
        take = min(stop - pos, num_rows - offset)
        out.append(epoch_permutation(num_rows, epoch=epoch, seed=seed)[offset : offset + take])
        pos += take
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def iterate_batches(
    dataset: Sequence[Mapping[str, Any]],
    *,
    micro_batch_size: int,
    global_batch_size: int,
    dp_rank: int,
    dp_size: int,
    seed: int,
    start_row: int = 0,
    drop_last: bool = True,
    num_epochs: int | None = None,
    pad_to: int | None = None,
) -> Iterator[tuple[int, list[PackedBatch]]]:
    """Yield `(step, micro_batches)` for this data-parallel rank, one optimizer step at a time.

    Order: each epoch is `epoch_permutation(len(dataset), epoch=e, seed=seed)`; epochs are
    concatenated into one stream of data positions (a step may straddle two epochs). Step s uses
    positions [s*G, (s+1)*G) with G = global_batch_size, whatever dp_size is. Of those G rows,
    rank r takes the contiguous share [r*G/dp, (r+1)*G/dp), split in order into
    G / (micro_batch_size x dp) micro-batches of micro_batch_size rows, each collated with
    `collate_packed(..., pad_to=pad_to)` (its `row_indices` name the dataset rows). The union of
    all ranks' rows of a step is the same for every dp degree, so resuming with
    `start_row = steps_done x G` under another dp degree continues exactly.

    Args:
        dataset: a `PackedDataset` (or any sequence of row dicts).
        start_row: the global row counter to start from (rows consumed so far); a multiple of G.
        num_epochs: None streams forever (the trainer stops at train.steps); otherwise the stream
            ends after num_epochs x len(dataset) positions.
        drop_last: with num_epochs, drop a final step of fewer than G rows (True), or yield it
            (False): its rows are shared by the same rule, so ranks may get shorter or no
            micro-batches.

    Raises:
        ValueError: when global_batch_size is not divisible by micro_batch_size x dp (naming
            `train.global_batch_size`, `train.micro_batch_size` and the dp degree); when dp_rank
            is not in [0, dp_size); when start_row is negative or not a multiple of G; when the
            dataset is empty.
    """
    m = _positive_int(micro_batch_size, "train.micro_batch_size")
    g = _positive_int(global_batch_size, "train.global_batch_size")
    dp = _positive_int(dp_size, "dp_size (data-parallel degree)")
    if g % (m * dp):
        raise ValueError(
            f"train.global_batch_size={g} must be divisible by train.micro_batch_size={m} x data-parallel "
            f"degree dp={dp} (= {m * dp}); e.g. global_batch_size={max(1, g // (m * dp)) * m * dp}"
        )
    if isinstance(dp_rank, bool) or not isinstance(dp_rank, (int, np.integer)) or not 0 <= dp_rank < dp:
        raise ValueError(f"dp_rank must be in [0, {dp}), got {dp_rank!r}")
    if isinstance(start_row, bool) or not isinstance(start_row, (int, np.integer)) or start_row < 0:
        raise ValueError(f"start_row must be a non-negative integer, got {start_row!r}")
    if start_row % g:
        raise ValueError(
            f"start_row={start_row} is not a multiple of train.global_batch_size={g}: the data position "
            "is saved after whole optimizer steps"
        )
    n = len(dataset)
    if n == 0:
        raise ValueError("iterate_batches: the dataset has no rows")
    end = None if num_epochs is None else _positive_int(num_epochs, "num_epochs") * n
    share = g // dp
    step = int(start_row) // g
    while True:
        start = step * g
        stop = start + g
        if end is not None:
            if start >= end or (stop > end and drop_last):
                return
            stop = min(stop, end)
        rows = global_rows(n, start=start, stop=stop, seed=seed)
        mine = (
            rows[dp_rank * share : (dp_rank + 1) * share]
            if stop - start == g
            else _partial_share(rows, dp_rank, dp)
        )
        micro = []
        for k in range(0, len(mine), m):
            idx = [int(i) for i in mine[k : k + m]]
            batch = collate_packed([dataset[i] for i in idx], pad_to=pad_to)
            batch.row_indices = tuple(idx)
            micro.append(batch)
        yield step, micro
        step += 1


def _partial_share(rows: np.ndarray, rank: int, dp: int) -> np.ndarray:
    """Contiguous near-equal shares of a final short step (the first len % dp ranks get one more)."""
    return np.array_split(rows, dp)[rank]
