"""The stage 0 data prep pipeline: raw text -> Megatron indexed `.bin/.idx` shards + `blend.json`.

    data.input (path / glob / list = one corpus, or {corpus name: path / glob / list})
    -> files in a fixed order, read in tasks of about 1 MiB (JSONL, plain / .gz / .zst; Parquet)
    -> worker processes: parse, validate (`file:line` errors), tokenize (no special tokens),
       + BOS / EOS per `add_bos` / `add_eos`; results consumed in task order
    -> each document to one split (a seeded hash of its index in its corpus, `data.split` weights)
       and, within the split, to shard `k % shards` (round robin over the split's documents)
    -> megatron-core's own `IndexedDatasetBuilder` per shard (token dtype from the vocab size)
    -> blend.json + metadata.json / lineage.json

Output directory (created atomically):

    blend.json                       {"train": [weight, "train/<corpus>/shard_00000", ...], "valid": [...], "test": [...]}
    train/<corpus>/shard_00000.bin   .idx   (valid/ and test/ likewise; empty shards are not written)
    metadata.json  lineage.json

Prefixes in blend.json are relative to its directory (the output can move); `indexed.read_blend`
resolves them. Weights: tokens per shard, or with `data.weights` per corpus that weight split over
the corpus' shards in proportion to their tokens. Documents whose text is empty are skipped and
counted (`num_skipped.empty_text`).

Guarantees: the output is identical, byte for byte, for any `num_workers` (documents, splits and
shards depend only on the inputs' order and the config); a rerun with the same inputs, tokenizer
and config is a cache hit (`cache_key` in metadata.json) unless `force`; the output directory
appears whole or not at all; a bad record stops the run naming `file:line` (JSONL) or
`file:row N` (Parquet) before anything is written, unless `on_error=skip` counts it instead.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import io
import itertools
import json
import logging
import math
import multiprocessing as mp
import os
import re
import zlib
from collections import Counter, deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zstandard

from nemotron_core import __version__
from nemotron_core.config.data import PretrainDataConfig
from nemotron_core.data.indexed import BLEND_FILE, SPLITS, megatron_datasets, token_dtype
from nemotron_core.data.records import RecordError
from nemotron_core.lineage import METADATA_FILE, Lineage, describe_inputs, write_metadata
from nemotron_core.tokenization import fingerprint, load_tokenizer
from nemotron_core.utils.atomic import atomic_directory, atomic_write_json

log = logging.getLogger(__name__)

JSONL_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".jsonl.zst", ".json.zst", ".jsonl.zstd", ".json.zstd")
PARQUET_SUFFIXES = (".parquet",)
_TASK_BYTES = 1 << 20  # raw text per worker task
_TASK_LINES = 8192
_PARQUET_BATCH_ROWS = 2048
_CORPUS_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_MAX_EXAMPLES = 20
_DECOMPRESS_ERRORS = (OSError, EOFError, zlib.error, zstandard.ZstdError)


# ----------------------------------------------------------------------------- inputs
def resolve_corpora(spec: Any, *, default_name: str, config_key: str = "data.input") -> dict[str, list[str]]:
    """`data.input` -> {corpus name: [files]} in a deterministic order.

    A path, glob or list of them is one corpus named `default_name`; a mapping names its corpora
    (sorted by name). Globs expand sorted; lists keep their order.

    Raises:
        ValueError: empty input, a bad corpus name, an unsupported file type (naming `config_key`).
        FileNotFoundError: a path or glob that matches no file.
    """
    if spec is None or spec == "" or spec == [] or spec == {}:
        raise ValueError(f"{config_key} is empty: give JSONL/Parquet files (a path, a glob, a list, or {{name: files}})")
    named = dict(spec) if isinstance(spec, Mapping) else {default_name: spec}
    out: dict[str, list[str]] = {}
    for name in sorted(named):
        if not _CORPUS_NAME.match(str(name)):
            raise ValueError(f"{config_key}: corpus name {name!r} must match {_CORPUS_NAME.pattern} (it names output folders)")
        items = named[name]
        items = list(items) if isinstance(items, (list, tuple)) or (hasattr(items, "__iter__") and not isinstance(items, str)) else [items]
        files: list[str] = []
        for item in items:
            item = os.fspath(item)
            matches = sorted(glob.glob(item)) if glob.has_magic(item) else [item]
            if not matches:
                raise FileNotFoundError(f"{config_key}: no file matches {item!r}")
            for m in matches:
                if not os.path.isfile(m):
                    raise FileNotFoundError(f"{config_key}: {m!r} does not exist")
                if not m.endswith(JSONL_SUFFIXES + PARQUET_SUFFIXES):
                    raise ValueError(
                        f"{config_key}: {m!r} is neither JSONL ({', '.join(JSONL_SUFFIXES)}) nor Parquet (.parquet)"
                    )
                files.append(m)
        if not files:
            raise ValueError(f"{config_key}: corpus {name!r} has no files")
        out[str(name)] = files
    return out


def parse_split(split: str, *, config_key: str = "data.split") -> list[float]:
    """"98,1,1" -> [0.98, 0.01, 0.01] (megatron-core's convention: missing trailing values are 0)."""
    try:
        values = [float(v) for v in str(split).replace(" ", "").split(",") if v != ""]
    except ValueError as e:
        raise ValueError(f"{config_key}={split!r} must be comma-separated train,valid,test weights, e.g. '98,1,1'") from e
    values += [0.0] * (3 - len(values))
    if len(values) != 3 or any(v < 0 or not math.isfinite(v) for v in values) or values[0] <= 0:
        raise ValueError(f"{config_key}={split!r}: need up to 3 non-negative weights with train > 0, e.g. '98,1,1'")
    total = sum(values)
    return [v / total for v in values]


def shards_per_split(num_shards: int, fractions: Sequence[float]) -> list[int]:
    """Train gets `num_shards`; valid/test ceil(num_shards x their share / train's), at least 1 (0 if unused)."""
    if isinstance(num_shards, bool) or not isinstance(num_shards, int) or num_shards < 1:
        raise ValueError(f"data.num_shards={num_shards!r} must be a positive integer")
    return [num_shards] + [0 if f == 0 else max(1, math.ceil(num_shards * f / fractions[0] - 1e-9)) for f in fractions[1:]]


def assign_splits(doc_index: np.ndarray, *, fractions: Sequence[float], seed: int, corpus: str) -> np.ndarray:
    """Split (0 train, 1 valid, 2 test) of each document, a pure function of (seed, corpus, index).

    u = splitmix64(index + key(seed, corpus)) / 2**64 in [0, 1); the split is the first whose
    cumulative fraction exceeds u. Streaming and independent of batching or worker count.
    """
    key = int.from_bytes(hashlib.sha256(f"{int(seed)}:{corpus}".encode()).digest()[:8], "little")
    with np.errstate(over="ignore"):
        x = np.asarray(doc_index, dtype=np.uint64) + np.uint64(key)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    u = (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    cum = np.cumsum(np.asarray(fractions, dtype=np.float64))
    cum[-1] = 1.0 + 1e-12  # rounding: every u < 1 lands in a split
    return np.searchsorted(cum, u, side="right").astype(np.uint8)


def _open_jsonl(path: str):
    """(raw file, binary line stream) for plain, gzip or zstd JSONL; raw.tell() is the progress."""
    raw = open(path, "rb")  # noqa: SIM115 - closed by the caller
    if path.endswith(".gz"):
        return raw, gzip.GzipFile(fileobj=raw, mode="rb")
    if path.endswith((".zst", ".zstd")):
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        return raw, io.BufferedReader(reader, buffer_size=1 << 20)
    return raw, raw


@dataclass(frozen=True)
class _Task:
    corpus: int  # index into the sorted corpora
    path: str
    kind: str  # "jsonl" | "parquet"
    first: int  # line number (1-based) of items[0], or row index (0-based)
    items: list  # raw lines (bytes) or texts (str | None)
    nbytes: int  # input bytes this task advances the progress bar by


def _iter_tasks(corpora: list[tuple[str, list[str]]], *, text_field: str) -> Iterator[_Task]:
    for ci, (_, files) in enumerate(corpora):
        for path in files:
            if path.endswith(PARQUET_SUFFIXES):
                yield from _parquet_tasks(ci, path, text_field=text_field)
            else:
                yield from _jsonl_tasks(ci, path)


def _jsonl_tasks(ci: int, path: str) -> Iterator[_Task]:
    raw, stream = _open_jsonl(path)
    try:
        lines: list[bytes] = []
        size, first, lineno, pos = 0, 1, 0, 0
        try:
            for lineno, line in enumerate(stream, start=1):
                lines.append(line)
                size += len(line)
                if size >= _TASK_BYTES or len(lines) >= _TASK_LINES:
                    now = raw.tell()
                    yield _Task(ci, path, "jsonl", first, lines, now - pos)
                    lines, size, first, pos = [], 0, lineno + 1, now
        except _DECOMPRESS_ERRORS as e:  # a truncated or corrupt .gz / .zst stream
            raise ValueError(f"{path}:{lineno + 1}: cannot read the file ({type(e).__name__}: {e})") from e
        end = os.path.getsize(path)
        if lines or end > pos:
            yield _Task(ci, path, "jsonl", first, lines, end - pos)
    finally:
        if stream is not raw:
            stream.close()
        raw.close()


def _parquet_tasks(ci: int, path: str, *, text_field: str) -> Iterator[_Task]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as e:
        raise ValueError(f"{path}: not a readable Parquet file ({e})") from e
    names = pf.schema_arrow.names
    if text_field not in names:
        raise ValueError(f"{path}: no column {text_field!r} (data.text_field); columns: {names}")
    ftype = pf.schema_arrow.field(text_field).type
    if not (pa.types.is_string(ftype) or pa.types.is_large_string(ftype)):
        raise ValueError(f"{path}: column {text_field!r} (data.text_field) must hold strings, got {ftype}")
    total_rows, size = max(pf.metadata.num_rows, 1), os.path.getsize(path)
    row, done = 0, 0
    for batch in pf.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=[text_field]):
        values = batch.column(0).to_pylist()
        advance = size * (row + len(values)) // total_rows - done
        yield _Task(ci, path, "parquet", row, values, advance)
        row += len(values)
        done += advance


# ----------------------------------------------------------------------------- tokenization (workers)
@dataclass(frozen=True)
class EncodeOptions:
    text_field: str
    add_bos: bool
    add_eos: bool
    bos_id: int | None
    eod_id: int | None
    dtype: str  # numpy dtype name of the tokens on disk
    on_error: str


@dataclass
class Encoded:
    """One task's documents: `tokens[offsets[i]:offsets[i+1]]` is document i (BOS/EOS included)."""

    tokens: np.ndarray
    lengths: np.ndarray  # int64 [n_docs]
    skipped: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    error: tuple[str, str, str, str] | None = None  # RecordError(where, field, message, reason) args


def _texts_of(task: _Task, opts: EncodeOptions, out: Encoded) -> list[str]:
    """Valid, non-empty texts of a task; problems go to `out` (first error stops when raising)."""
    texts: list[str] = []
    for k, item in enumerate(task.items):
        if task.kind == "jsonl":
            where = f"{task.path}:{task.first + k}"
            if not item.strip():
                continue  # blank line
            try:
                line = item.decode("utf-8")  # JSONL is UTF-8 (json.loads(bytes) would also guess UTF-16/32)
                obj = json.loads(line[1:] if task.first + k == 1 and line.startswith("\ufeff") else line)
            except UnicodeDecodeError as e:
                problem = ("line", f"not valid UTF-8 ({e.reason} at byte {e.start})", "invalid_utf8")
            except ValueError as e:
                detail = f"{e.msg} (column {e.colno})" if isinstance(e, json.JSONDecodeError) else str(e)
                problem = ("line", f"invalid JSON: {detail}", "invalid_json")
            else:
                if not isinstance(obj, dict):
                    problem = ("record", f"must be a JSON object, got {type(obj).__name__}", "not_an_object")
                elif opts.text_field not in obj:
                    problem = (opts.text_field, f"missing (data.text_field; record keys: {sorted(obj)[:10]})", "missing_text")
                else:
                    item = obj[opts.text_field]
                    problem = None
            if problem is not None:
                if _problem(out, where, *problem, on_error=opts.on_error):
                    return texts
                continue
        else:
            where = f"{task.path}:row {task.first + k}"
        if not isinstance(item, str):
            got = "null" if item is None else type(item).__name__
            if _problem(out, where, opts.text_field, f"must be a string, got {got}", "non_string_text", on_error=opts.on_error):
                return texts
            continue
        if not item:
            out.skipped["empty_text"] += 1
            continue
        texts.append(item)
    return texts


def _problem(out: Encoded, where: str, field_name: str, message: str, reason: str, *, on_error: str) -> bool:
    """Record a bad record; True when the task must stop (on_error=raise)."""
    if on_error == "raise":
        out.error = (where, field_name, message, reason)
        return True
    out.skipped[reason] += 1
    if len(out.examples) < _MAX_EXAMPLES:
        out.examples.append(str(RecordError(where, field_name, message, reason)))
    return False


def tokenize_batch(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, no special tokens added (the fast backend's batch encode)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def add_special_tokens(
    ids: Sequence[Sequence[int]], *, add_bos: bool, add_eos: bool, bos_id: int | None, eod_id: int | None, dtype: str
) -> tuple[np.ndarray, np.ndarray]:
    """Flatten documents into (tokens, lengths) with BOS before / EOD after each document.

    E.g. [[5, 6], [7]] with add_eos (eod 2) -> tokens [5 6 2 7 2], lengths [3 2].
    """
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    n = int(lengths.sum())
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=n)  # 2.6x a generator
    extra = int(add_bos) + int(add_eos)
    new_lengths = lengths + extra
    out = np.empty(n + extra * len(ids), dtype=dtype)
    shift = np.arange(len(ids), dtype=np.int64) * extra + int(add_bos)
    out[np.arange(n, dtype=np.int64) + np.repeat(shift, lengths)] = flat
    ends = np.cumsum(new_lengths)
    if add_bos:
        out[ends - new_lengths] = bos_id
    if add_eos:
        out[ends - 1] = eod_id
    return out, new_lengths


def encode_task(task: _Task, tokenizer, opts: EncodeOptions) -> Encoded:
    """Parse, validate and tokenize one task's records (runs in a worker process)."""
    out = Encoded(tokens=np.zeros(0, dtype=opts.dtype), lengths=np.zeros(0, dtype=np.int64))
    texts = _texts_of(task, opts, out)
    if out.error is not None or not texts:
        return out
    ids = tokenize_batch(tokenizer, texts)
    tokens, lengths = add_special_tokens(ids, add_bos=opts.add_bos, add_eos=opts.add_eos, bos_id=opts.bos_id,
                                         eod_id=opts.eod_id, dtype=opts.dtype)
    if (empty := int((lengths == 0).sum())):  # a text the tokenizer maps to nothing, no BOS/EOS
        out.skipped["no_tokens"] += empty
        lengths = lengths[lengths > 0]
    out.tokens, out.lengths = tokens, lengths
    return out


_worker_state: tuple[Any, EncodeOptions] | None = None
_inherited_tokenizer = None  # set in the parent just before a fork: the workers' copy, no reload


def _worker_init(tokenizer_path: str, opts: EncodeOptions) -> None:
    global _worker_state
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process per core already
    tokenizer = _inherited_tokenizer if _inherited_tokenizer is not None else load_tokenizer(tokenizer_path)
    _worker_state = (tokenizer, opts)


def _worker_task(task: _Task) -> Encoded:
    tokenizer, opts = _worker_state
    return encode_task(task, tokenizer, opts)


def _encoded_stream(tasks: Iterator[_Task], *, num_workers: int, tokenizer, tokenizer_path: str,
                    opts: EncodeOptions) -> Iterator[tuple[_Task, Encoded]]:
    """(task, result) in task order; at most 2 x workers + 2 tasks in flight (bounded memory)."""
    if num_workers <= 1:
        for t in tasks:
            yield t, encode_task(t, tokenizer, opts)
        return
    global _inherited_tokenizer
    method = "spawn" if mp.get_start_method(allow_none=True) == "spawn" else "fork"
    _inherited_tokenizer = tokenizer if method == "fork" else None  # forked workers start in ms
    try:
        pool = mp.get_context(method).Pool(num_workers, initializer=_worker_init, initargs=(tokenizer_path, opts))
    finally:
        _inherited_tokenizer = None
    with pool:
        pending: deque = deque()
        for t in tasks:
            # keep only the header here: the raw text lives in the worker until its result is back
            pending.append((_Task(t.corpus, t.path, t.kind, t.first, [], t.nbytes), pool.apply_async(_worker_task, (t,))))
            if len(pending) >= 2 * num_workers + 2:
                head, res = pending.popleft()
                yield head, res.get()
        while pending:
            head, res = pending.popleft()
            yield head, res.get()


# ----------------------------------------------------------------------------- writing
class _ShardWriter:
    """One megatron-core `IndexedDatasetBuilder` per (split, corpus, shard), opened on first use."""

    def __init__(self, root: Path, *, dtype: np.dtype):
        self._builder_cls = megatron_datasets()["IndexedDatasetBuilder"]
        self.root, self.dtype = root, dtype
        self.builders: dict[tuple[int, int, int], Any] = {}
        self.stats: dict[tuple[int, int, int], list[int]] = {}  # -> [documents, tokens]

    @staticmethod
    def prefix(split: int, corpus: str, shard: int) -> str:
        return f"{SPLITS[split]}/{corpus}/shard_{shard:05d}"

    def add(self, key: tuple[int, int, int], corpus: str, tokens: np.ndarray) -> None:
        b = self.builders.get(key)
        if b is None:
            path = self.root / self.prefix(key[0], corpus, key[2])
            path.parent.mkdir(parents=True, exist_ok=True)
            b = self.builders[key] = self._builder_cls(f"{path}.bin", dtype=self.dtype.type)
            self.stats[key] = [0, 0]
        b.add_document(tokens, [len(tokens)])
        s = self.stats[key]
        s[0] += 1
        s[1] += len(tokens)

    def finalize(self, corpora: Sequence[str]) -> None:
        for key in sorted(self.builders):
            self.builders[key].finalize(f"{self.root / self.prefix(key[0], corpora[key[1]], key[2])}.idx")


def blend_weights(stats: Mapping[tuple[int, int, int], Sequence[int]], *, corpora: Sequence[str],
                  weights: Mapping[str, float] | None) -> dict[str, list]:
    """{split: [weight, prefix, ...]} in (corpus, shard) order; see the module docstring for weights."""
    blend: dict[str, list] = {s: [] for s in SPLITS}
    for si, split in enumerate(SPLITS):
        keys = sorted(k for k in stats if k[0] == si)
        corpus_tokens = Counter()
        for k in keys:
            corpus_tokens[k[1]] += stats[k][1]
        for k in keys:
            tokens = stats[k][1]
            if weights is None:
                w: float = int(tokens)
            else:
                w = float(weights[corpora[k[1]]]) * tokens / corpus_tokens[k[1]]
            blend[split] += [w, _ShardWriter.prefix(si, corpora[k[1]], k[2])]
    return blend


# ----------------------------------------------------------------------------- orchestration
def _check_options(data: PretrainDataConfig, corpora: Sequence[str]) -> None:
    if data.on_error not in ("raise", "skip"):
        raise ValueError(f"data.on_error must be 'raise' or 'skip', got {data.on_error!r}")
    if not data.add_eos and not data.add_bos:
        log.warning("data.add_eos=false and data.add_bos=false: documents are concatenated with no boundary token")
    if data.weights is not None:
        w = dict(data.weights)
        if set(w) != set(corpora):
            raise ValueError(
                f"data.weights names {sorted(w)} but data.input has corpora {list(corpora)}: give one weight per corpus "
                "(a mapping data.input={name: files})"
            )
        if any(not isinstance(v, (int, float)) or not v > 0 for v in w.values()):
            raise ValueError(f"data.weights must be positive numbers, got {w}")


def special_token_ids(tokenizer, *, eod_token: str | None, add_bos: bool) -> tuple[int | None, int]:
    """(bos id or None, eod id) naming the config key when a token is not in the vocabulary."""
    token = eod_token if eod_token is not None else tokenizer.eos_token
    if token is None:
        raise ValueError("data.eod_token is null and the tokenizer has no eos_token: set data.eod_token")
    eod = tokenizer.convert_tokens_to_ids(token)
    if eod is None or eod == tokenizer.unk_token_id or tokenizer.convert_ids_to_tokens(eod) != token:
        raise ValueError(f"data.eod_token={token!r} is not a token of the tokenizer's vocabulary")
    bos = None
    if add_bos:
        if tokenizer.bos_token is None:
            raise ValueError("data.add_bos=true but the tokenizer has no bos_token")
        bos = tokenizer.bos_token_id
    return bos, int(eod)


def cache_key(data: PretrainDataConfig, *, corpora: Mapping[str, list[str]], inputs: list[dict[str, Any]],
              tokenizer_fp: Mapping[str, Any]) -> str:
    """What the output depends on: inputs' content (per corpus), the tokenizer's vocabulary and the
    config values that change the shards (not the training-side values, paths or worker count)."""
    relevant = {
        k: v for k, v in asdict(data).items()
        if k in ("text_field", "add_bos", "add_eos", "eod_token", "weights", "num_shards", "split", "seed", "on_error")
    }
    by_path = {i["path"]: i["sha256"] for i in inputs}
    blob = json.dumps(
        {"data": relevant, "corpora": {c: [by_path[f] for f in files] for c, files in corpora.items()},
         "tokenizer": tokenizer_fp["vocab_hash"], "version": __version__},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def prepare_pretrain_data(
    data: PretrainDataConfig, *, tokenizer_path: str, tokenizer_name: str, resolved_config: dict[str, Any],
    progress: bool = True,
) -> dict[str, Any]:
    """Run the whole stage 0 data prep; returns the metadata written to `data.output_dir`."""
    out = Path(data.output_dir)
    corpora = resolve_corpora(data.input, default_name=data.name)
    names = list(corpora)
    _check_options(data, names)
    fractions = parse_split(data.split)
    n_shards = shards_per_split(data.num_shards, fractions)
    tokenizer = load_tokenizer(tokenizer_path)
    tok_fp = fingerprint(tokenizer, name=tokenizer_name, path=tokenizer_path).to_dict()
    bos_id, eod_id = special_token_ids(tokenizer, eod_token=data.eod_token, add_bos=data.add_bos)
    dtype = token_dtype(len(tokenizer))
    files = list(dict.fromkeys(f for fs in corpora.values() for f in fs))
    inputs = describe_inputs(files)
    key = cache_key(data, corpora=corpora, inputs=inputs, tokenizer_fp=tok_fp)
    if (out / METADATA_FILE).is_file():
        old = json.loads((out / METADATA_FILE).read_text())
        if old.get("cache_key") == key and not data.force:
            log.info("cache hit: %s already holds this data (cache_key %s); data.force=true rebuilds", out, key[:12])
            return old
        log.info("%s is stale (inputs, tokenizer or config changed): rebuilding", out)
    elif out.exists() and any(out.iterdir()) and not data.force:
        raise FileExistsError(f"data.output_dir={str(out)!r} exists and holds no {METADATA_FILE}; refusing to overwrite (data.force=true)")

    opts = EncodeOptions(text_field=data.text_field, add_bos=data.add_bos, add_eos=data.add_eos, bos_id=bos_id,
                         eod_id=eod_id, dtype=dtype.name, on_error=data.on_error)
    num_workers = data.num_workers or os.cpu_count() or 1
    skipped: Counter = Counter()
    examples: list[str] = []
    corpus_docs = [0] * len(names)  # documents seen per corpus (the split hash's index)
    split_docs = np.zeros((len(names), 3), dtype=np.int64)  # per corpus and split (the round robin)
    bar = _progress(total=sum(i["bytes"] for i in inputs), enabled=progress)
    with atomic_directory(out, overwrite=True) as tmp:
        writer = _ShardWriter(tmp, dtype=dtype)
        tasks = _iter_tasks(list(corpora.items()), text_field=data.text_field)
        for task, enc in _encoded_stream(tasks, num_workers=num_workers, tokenizer=tokenizer,
                                         tokenizer_path=tokenizer_path, opts=opts):
            if enc.error is not None:
                raise RecordError(*enc.error)
            skipped.update(enc.skipped)
            examples.extend(enc.examples[: _MAX_EXAMPLES - len(examples)])
            ci, n = task.corpus, len(enc.lengths)
            split = assign_splits(np.arange(corpus_docs[ci], corpus_docs[ci] + n), fractions=fractions, seed=data.seed,
                                  corpus=names[ci])
            corpus_docs[ci] += n
            starts = np.concatenate([[0], np.cumsum(enc.lengths)])
            for d in range(n):
                s = int(split[d])
                shard = int(split_docs[ci, s] % n_shards[s])
                split_docs[ci, s] += 1
                writer.add((s, ci, shard), names[ci], enc.tokens[starts[d] : starts[d + 1]])
            bar.update(task.nbytes)
        bar.close()
        if not writer.builders:
            raise ValueError(f"data.input: no documents with text in {files} (skipped: {dict(skipped)})")
        writer.finalize(names)
        blend = blend_weights(writer.stats, corpora=names, weights=data.weights)
        atomic_write_json(tmp / BLEND_FILE, blend)
        meta = _metadata(data, writer.stats, names=names, corpora=corpora, fractions=fractions, n_shards=n_shards,
                         dtype=dtype, vocab_size=len(tokenizer), bos_id=bos_id, eod_id=eod_id, key=key,
                         skipped=skipped, examples=examples)
        for si, split in enumerate(SPLITS):
            if fractions[si] > 0 and not meta["splits"][split]["documents"]:
                log.warning("split %r got no documents (data.split=%s over %d documents)", split, data.split, meta["num_documents"])
        lineage = Lineage(stage="stage0_pretrain/data_prep", config=resolved_config, inputs=inputs, tokenizer=tok_fp)
        write_metadata(tmp, meta, lineage=lineage)
    return json.loads((out / METADATA_FILE).read_text())


def _metadata(data, stats, *, names, corpora, fractions, n_shards, dtype, vocab_size, bos_id, eod_id, key, skipped,
              examples) -> dict[str, Any]:
    splits: dict[str, Any] = {}
    for si, split in enumerate(SPLITS):
        shards = [
            {"prefix": _ShardWriter.prefix(k[0], names[k[1]], k[2]), "corpus": names[k[1]], "documents": v[0], "tokens": v[1]}
            for k, v in sorted(stats.items()) if k[0] == si
        ]
        splits[split] = {"documents": sum(s["documents"] for s in shards), "tokens": sum(s["tokens"] for s in shards),
                         "fraction": fractions[si], "num_shards": n_shards[si], "shards": shards}
    per_corpus = {
        c: {"files": corpora[c],
            "documents": sum(v[0] for k, v in stats.items() if k[1] == ci),
            "tokens": sum(v[1] for k, v in stats.items() if k[1] == ci),
            "weight": None if data.weights is None else float(data.weights[c])}
        for ci, c in enumerate(names)
    }
    return {
        "kind": "pretrain_indexed", "format": "megatron_indexed", "blend": BLEND_FILE, "cache_key": key,
        "token_dtype": dtype.name, "vocab_size": vocab_size, "text_field": data.text_field,
        "add_bos": data.add_bos, "add_eos": data.add_eos, "bos_token_id": bos_id, "eod_token_id": eod_id,
        "split": data.split, "seed": data.seed, "num_documents": sum(s["documents"] for s in splits.values()),
        "num_tokens": sum(s["tokens"] for s in splits.values()), "num_skipped": dict(sorted(skipped.items())),
        "skipped_examples": examples, "corpora": per_corpus, "splits": splits,
    }


def _progress(*, total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc="tokenize", disable=not enabled, dynamic_ncols=True)
