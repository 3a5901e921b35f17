"""Unit tests for nemotron_core/data/pretrain_prep.py: the round trip through megatron-core's
IndexedDataset, splits and shards, inputs (gzip, zstd, Parquet, globs, corpora), errors, cache."""

from __future__ import annotations

import gzip
import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from nemotron_core.config import PretrainDataConfig
from nemotron_core.data import pretrain_prep
from nemotron_core.data.indexed import megatron_datasets, read_blend
from nemotron_core.data.pretrain_prep import (
    add_special_tokens,
    assign_splits,
    parse_split,
    prepare_pretrain_data,
    resolve_corpora,
    shards_per_split,
)
from nemotron_core.data.records import RecordError
from nemotron_core.paths import asset_path
from nemotron_core.tokenization import load_tokenizer

TOK = str(asset_path("tokenizer"))
TEXT = asset_path("data/tiny_text.jsonl")
EOD = 2  # `</s>` in the tiny tokenizer, as in Nano3


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(TOK)


@pytest.fixture(scope="module")
def texts():
    return [json.loads(line)["text"] for line in TEXT.read_text().splitlines()[:300]]


def write_jsonl(path: Path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def cfg(tmp_path, input, **kw) -> PretrainDataConfig:
    out = str(tmp_path / "out")
    base = dict(name="t", input=input, output_dir=out, path=out, num_workers=1, num_shards=1, split="1,0,0")
    base.update(kw)
    return PretrainDataConfig(**base)


def run(data: PretrainDataConfig) -> dict:
    return prepare_pretrain_data(data, tokenizer_path=TOK, tokenizer_name="tiny", resolved_config={"data": "test"}, progress=False)


def read_docs(prefix: str) -> list[list[int]]:
    ds = megatron_datasets()["IndexedDataset"](prefix)
    return [ds[i].tolist() for i in range(len(ds))]


def tree_digest(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()}


def expected_docs(tokenizer, texts, *, bos=False, eos=True):
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [([tokenizer.bos_token_id] if bos else []) + x + ([EOD] if eos else []) for x in ids]


# ----------------------------------------------------------------------------- pure functions
def test_add_special_tokens_exact_values():
    tokens, lengths = add_special_tokens([[5, 6], [7]], add_bos=False, add_eos=True, bos_id=None, eod_id=2, dtype="uint16")
    assert tokens.tolist() == [5, 6, 2, 7, 2] and lengths.tolist() == [3, 2] and tokens.dtype == np.uint16
    tokens, lengths = add_special_tokens([[5, 6], [], [7]], add_bos=True, add_eos=True, bos_id=1, eod_id=2, dtype="int32")
    assert tokens.tolist() == [1, 5, 6, 2, 1, 2, 1, 7, 2] and lengths.tolist() == [4, 2, 3]
    tokens, lengths = add_special_tokens([[5, 6], [7]], add_bos=False, add_eos=False, bos_id=None, eod_id=2, dtype="int32")
    assert tokens.tolist() == [5, 6, 7] and lengths.tolist() == [2, 1]


def test_split_parsing_and_shard_counts():
    assert parse_split("98,1,1") == pytest.approx([0.98, 0.01, 0.01])
    assert parse_split("1") == [1.0, 0.0, 0.0]
    for bad in ("0,1,1", "a,b", "1,-1,0", "1,1,1,1"):
        with pytest.raises(ValueError, match="data.split"):
            parse_split(bad)
    assert shards_per_split(128, parse_split("98,1,1")) == [128, 2, 2]
    assert shards_per_split(2, parse_split("98,1,1")) == [2, 1, 1]
    assert shards_per_split(4, parse_split("1,0,0")) == [4, 0, 0]
    with pytest.raises(ValueError, match="data.num_shards"):
        shards_per_split(0, [1.0, 0.0, 0.0])


def test_split_assignment_is_a_seeded_function_of_the_index():
    idx = np.arange(20_000)
    a = assign_splits(idx, fractions=[0.8, 0.15, 0.05], seed=1, corpus="c")
    assert np.array_equal(a[5000:6000], assign_splits(idx[5000:6000], fractions=[0.8, 0.15, 0.05], seed=1, corpus="c"))
    shares = np.bincount(a, minlength=3) / a.size
    assert shares == pytest.approx([0.8, 0.15, 0.05], abs=0.01)
    assert not np.array_equal(a, assign_splits(idx, fractions=[0.8, 0.15, 0.05], seed=2, corpus="c"))
    assert not np.array_equal(a, assign_splits(idx, fractions=[0.8, 0.15, 0.05], seed=1, corpus="d"))
    assert (assign_splits(idx, fractions=[1.0, 0.0, 0.0], seed=1, corpus="c") == 0).all()
    assert set(assign_splits(idx, fractions=[0.5, 0.0, 0.5], seed=1, corpus="c").tolist()) == {0, 2}


def test_resolve_corpora(tmp_path):
    for n in ("b", "a", "c"):
        (tmp_path / f"{n}.jsonl").write_text("")
    (tmp_path / "x.txt").write_text("")
    assert resolve_corpora(str(tmp_path / "*.jsonl"), default_name="t") == {"t": [str(tmp_path / f"{n}.jsonl") for n in "abc"]}
    got = resolve_corpora({"z": str(tmp_path / "c.jsonl"), "m": [str(tmp_path / "b.jsonl"), str(tmp_path / "a.jsonl")]}, default_name="t")
    assert list(got) == ["m", "z"] and got["m"] == [str(tmp_path / "b.jsonl"), str(tmp_path / "a.jsonl")]
    with pytest.raises(FileNotFoundError, match="data.input: no file matches"):
        resolve_corpora(str(tmp_path / "*.parquet"), default_name="t")
    with pytest.raises(ValueError, match="neither JSONL"):
        resolve_corpora(str(tmp_path / "x.txt"), default_name="t")
    with pytest.raises(ValueError, match="corpus name"):
        resolve_corpora({"../up": str(tmp_path / "a.jsonl")}, default_name="t")


# ----------------------------------------------------------------------------- round trip
def test_round_trip_documents_equal_the_tokenizer_output_with_eod(tmp_path, tokenizer, texts):
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": t, "id": i} for i, t in enumerate(texts)])
    meta = run(cfg(tmp_path, src))
    blend = read_blend(tmp_path / "out")
    assert [p for _, p in blend["train"]] == [str(tmp_path / "out/train/t/shard_00000")] and blend["valid"] == blend["test"] == []
    docs = read_docs(blend["train"][0][1])
    assert docs == expected_docs(tokenizer, texts)  # order, tokens and one EOD at each end
    assert all(d[-1] == EOD and EOD not in d[:-1] for d in docs)
    assert meta["token_dtype"] == "uint16" and meta["eod_token_id"] == EOD and meta["bos_token_id"] is None
    assert meta["num_documents"] == len(texts) and meta["num_tokens"] == sum(map(len, docs))
    assert meta["splits"]["train"]["shards"] == [
        {"prefix": "train/t/shard_00000", "corpus": "t", "documents": len(texts), "tokens": meta["num_tokens"]}
    ]
    assert meta["tokenizer"]["vocab_hash"] and meta["inputs"][0]["sha256"]


def test_add_bos_and_the_tokenizers_eos_instead_of_eod(tmp_path, tokenizer, texts):
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in texts[:20]])
    run(cfg(tmp_path, src, add_bos=True, eod_token=None))
    docs = read_docs(str(tmp_path / "out/train/t/shard_00000"))
    eos = tokenizer.eos_token_id  # <|im_end|> in the tiny tokenizer
    ids = tokenizer(texts[:20], add_special_tokens=False)["input_ids"]
    assert docs == [[tokenizer.bos_token_id] + x + [eos] for x in ids]
    with pytest.raises(ValueError, match="data.eod_token='<nope>'"):
        run(cfg(tmp_path, src, eod_token="<nope>", force=True))


def test_splits_and_shards_partition_the_documents(tmp_path, tokenizer, texts):
    texts = list(dict.fromkeys(texts))  # unique, so a document's tokens name its input position
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in texts])
    meta = run(cfg(tmp_path, src, split="70,20,10", num_shards=3, seed=7))
    blend = read_blend(tmp_path / "out")
    assert [len(blend[s]) for s in ("train", "valid", "test")] == [3, 1, 1]  # ceil(3 x 0.2 / 0.7) = 1
    want = Counter(map(tuple, expected_docs(tokenizer, texts)))
    got: Counter = Counter()
    order = {tuple(d): i for i, d in enumerate(expected_docs(tokenizer, texts))}
    per_split = {}
    for split in ("train", "valid", "test"):
        per_split[split] = 0
        for weight, prefix in blend[split]:
            docs = read_docs(prefix)
            positions = [order[tuple(d)] for d in docs]
            assert positions == sorted(positions)  # each shard keeps input order
            assert weight == sum(map(len, docs))  # weights: tokens per shard
            got.update(map(tuple, docs))
            per_split[split] += len(docs)
    assert got == want  # every document exactly once
    assert per_split["train"] / len(texts) == pytest.approx(0.7, abs=0.08)
    assert {s: v["documents"] for s, v in meta["splits"].items()} == per_split
    sizes = [s["documents"] for s in meta["splits"]["train"]["shards"]]
    assert max(sizes) - min(sizes) <= 1  # round robin


@pytest.mark.timeout(300)
def test_output_identical_for_any_worker_count_and_input_form(tmp_path, monkeypatch, texts):
    monkeypatch.setattr(pretrain_prep, "_TASK_LINES", 40)  # many tasks in flight
    records = [{"text": t} for t in texts]
    plain = write_jsonl(tmp_path / "in.jsonl", records)
    gz = tmp_path / "in.jsonl.gz"
    gz.write_bytes(gzip.compress(Path(plain).read_bytes()))
    zst = tmp_path / "in.jsonl.zst"
    # two zstd frames: readers must continue across frames
    raw = Path(plain).read_bytes()
    cut = raw.index(b"\n", len(raw) // 2) + 1
    c = zstandard.ZstdCompressor()
    zst.write_bytes(c.compress(raw[:cut]) + c.compress(raw[cut:]))
    pq.write_table(pa.table({"text": texts, "other": list(range(len(texts)))}), tmp_path / "in.parquet", row_group_size=70)
    digests = {}
    for name, inp, workers in (("w1", plain, 1), ("w2", plain, 2), ("gz", str(gz), 2), ("zst", str(zst), 1),
                               ("parquet", str(tmp_path / "in.parquet"), 2)):
        d = tmp_path / name
        run(cfg(d, inp, num_workers=workers, split="90,5,5", num_shards=2))
        tree = tree_digest(d / "out")
        digests[name] = {k: v for k, v in tree.items() if k.endswith((".bin", ".idx", "blend.json"))}
        assert len(digests[name]) == 2 * (2 + 1 + 1) + 1
    assert digests["w1"] == digests["w2"] == digests["gz"] == digests["zst"] == digests["parquet"]
    assert tree_digest(tmp_path / "w1/out") == tree_digest(tmp_path / "w2/out")  # metadata and lineage too


def test_corpora_with_weights_make_one_blend_entry_per_shard(tmp_path, texts):
    a = write_jsonl(tmp_path / "a.jsonl", [{"text": t} for t in texts[:100]])
    b = write_jsonl(tmp_path / "b.jsonl", [{"text": t} for t in texts[100:160]])
    meta = run(cfg(tmp_path, {"web": a, "code": [b]}, weights={"web": 3.0, "code": 1.0}, num_shards=2))
    raw = json.loads((tmp_path / "out/blend.json").read_text())
    prefixes = raw["train"][1::2]
    assert prefixes == ["train/code/shard_00000", "train/code/shard_00001", "train/web/shard_00000", "train/web/shard_00001"]
    w = raw["train"][0::2]
    assert sum(w[:2]) == pytest.approx(1.0) and sum(w[2:]) == pytest.approx(3.0)
    tok = {s["prefix"]: s["tokens"] for s in meta["splits"]["train"]["shards"]}
    assert w[0] / w[1] == pytest.approx(tok[prefixes[0]] / tok[prefixes[1]])
    assert meta["corpora"]["web"]["documents"] == 100 and meta["corpora"]["code"]["weight"] == 1.0
    with pytest.raises(ValueError, match="data.weights names"):
        run(cfg(tmp_path, {"web": a, "code": b}, weights={"web": 1.0}, force=True))


# ----------------------------------------------------------------------------- errors and skips
@pytest.mark.parametrize(
    "line, match",
    [
        ('{"text": "ok"', r"bad\.jsonl:3: line: invalid JSON"),
        ('["a list"]', r"bad\.jsonl:3: record: must be a JSON object, got list"),
        ('{"body": "no text"}', r"bad\.jsonl:3: text: missing \(data\.text_field"),
        ('{"text": 42}', r"bad\.jsonl:3: text: must be a string, got int"),
        ('{"text": null}', r"bad\.jsonl:3: text: must be a string, got null"),
    ],
)
def test_bad_record_names_file_and_line_and_writes_nothing(tmp_path, line, match):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"text": "first"}\n\n' + line + '\n{"text": "after"}\n')
    with pytest.raises(RecordError, match=match):
        run(cfg(tmp_path, str(src)))
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_skip_counts_bad_records_and_empty_texts(tmp_path, tokenizer):
    src = tmp_path / "bad.jsonl"
    src.write_bytes(b'{"text": "first"}\n{"text": ""}\n{"text": 1}\n\xff\xfe\n{"x": 1}\n{"text": "last"}\n')
    meta = run(cfg(tmp_path, str(src), on_error="skip"))
    assert meta["num_skipped"] == {"empty_text": 1, "invalid_utf8": 1, "missing_text": 1, "non_string_text": 1}
    assert meta["skipped_examples"][0].startswith(f"{src}:3: text: must be a string")
    assert read_docs(str(tmp_path / "out/train/t/shard_00000")) == expected_docs(tokenizer, ["first", "last"])


def test_parquet_errors_name_the_row_and_the_column(tmp_path):
    pq.write_table(pa.table({"text": ["a", None, "c"]}), tmp_path / "p.parquet")
    with pytest.raises(RecordError, match=r"p\.parquet:row 1: text: must be a string, got null"):
        run(cfg(tmp_path, str(tmp_path / "p.parquet")))
    pq.write_table(pa.table({"body": ["a"]}), tmp_path / "q.parquet")
    with pytest.raises(ValueError, match=r"q\.parquet: no column 'text' \(data.text_field\)"):
        run(cfg(tmp_path, str(tmp_path / "q.parquet")))


def test_corrupt_compressed_input_names_the_file(tmp_path):
    bad = tmp_path / "in.jsonl.gz"
    bad.write_bytes(gzip.compress(b'{"text": "a"}\n' * 1000)[:-30])
    with pytest.raises(ValueError, match=r"in\.jsonl\.gz:\d+: cannot read the file"):
        run(cfg(tmp_path, str(bad)))


# ----------------------------------------------------------------------------- cache and overwrite
def test_rerun_is_a_cache_hit_unless_forced_or_changed(tmp_path, caplog, texts):
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in texts[:50]])
    first = run(cfg(tmp_path, src))
    stamp = (tmp_path / "out/train/t/shard_00000.bin").stat().st_mtime_ns
    with caplog.at_level("INFO"):
        again = run(cfg(tmp_path, src, num_workers=2, seq_length=64, reset_at_eod=True))  # training-side values
    assert again == first and "cache hit" in caplog.text
    assert (tmp_path / "out/train/t/shard_00000.bin").stat().st_mtime_ns == stamp
    forced = run(cfg(tmp_path, src, force=True))
    assert forced["cache_key"] == first["cache_key"]
    changed = run(cfg(tmp_path, src, add_bos=True))
    assert changed["cache_key"] != first["cache_key"] and changed["num_tokens"] == first["num_tokens"] + 50


def test_refuses_to_overwrite_a_foreign_directory(tmp_path, texts):
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in texts[:5]])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "precious.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="data.output_dir"):
        run(cfg(tmp_path, src))
    assert (tmp_path / "out" / "precious.txt").read_text() == "keep"
