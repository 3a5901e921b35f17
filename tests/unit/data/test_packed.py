"""Unit tests for nemotron_core/data/packed.py: writers, reader, collation and data order."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from nemotron_core.constants import IGNORE_INDEX
from nemotron_core.data.masks import align_loss_mask
from nemotron_core.data.packed import (
    PARQUET_SCHEMA,
    PackedDataset,
    collate_packed,
    epoch_permutation,
    iterate_batches,
    write_blend,
    write_npy_split,
    write_parquet_split,
)

X = IGNORE_INDEX

# Documents [0,3) [3,5) [5,9); the mask is already aligned (0 at 2, 4 and 8: each document's last token).
ROW_A = {
    "input_ids": [10, 11, 12, 20, 21, 30, 31, 32, 33],
    "loss_mask": [1, 1, 0, 1, 0, 0, 1, 1, 0],
    "seq_start_id": [0, 3, 5],
}
# Documents [0,4) [4,6).
ROW_B = {
    "input_ids": [40, 41, 42, 43, 50, 51],
    "loss_mask": [0, 1, 1, 0, 1, 0],
    "seq_start_id": [0, 4],
}


def as_arrays(row):
    return {
        "input_ids": np.asarray(row["input_ids"], dtype=np.int32),
        "loss_mask": np.asarray(row["loss_mask"], dtype=np.uint8),
        "seq_start_id": np.asarray(row["seq_start_id"], dtype=np.int32),
    }


def random_rows(n, *, seed=0, max_docs=4, max_doc_len=7):
    """Valid packed rows: random documents, role masks aligned with align_loss_mask."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        lens = rng.integers(1, max_doc_len + 1, size=rng.integers(1, max_docs + 1))
        starts = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int32)
        total = int(lens.sum())
        ids = rng.integers(1, 1000, size=total).astype(np.int32)
        role = rng.integers(0, 2, size=total)
        rows.append(
            {
                "input_ids": ids,
                "loss_mask": align_loss_mask(role, seq_start_id=starts),
                "seq_start_id": starts,
            }
        )
    return rows


def assert_rows_equal(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        w = as_arrays(w)
        for key in ("input_ids", "loss_mask", "seq_start_id"):
            assert g[key].dtype == w[key].dtype, key
            np.testing.assert_array_equal(g[key], w[key])


# ---------------------------------------------------------------------------------------------
# collate_packed: exact values
# ---------------------------------------------------------------------------------------------


def test_collate_one_row_exact():
    b = collate_packed([ROW_A])
    assert b.input_ids.tolist() == [10, 11, 12, 20, 21, 30, 31, 32, 33]
    assert b.labels.tolist() == [11, 12, X, 21, X, X, 32, 33, X]
    assert b.position_ids.tolist() == [0, 1, 2, 0, 1, 0, 1, 2, 3]
    assert b.cu_seqlens.tolist() == [0, 3, 5, 9]
    assert b.doc_ids.tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2]
    assert b.max_seqlen == 4
    assert b.num_trainable_tokens == 5  # by hand: 11, 12, 21, 32, 33
    assert b.num_documents == 3
    assert b.num_padding_tokens == 0
    assert b.cu_seqlens.dtype == torch.int32
    assert b.labels.dtype == torch.int64 and b.input_ids.dtype == torch.int64
    assert b.position_ids.dtype == torch.int64 and b.doc_ids.dtype == torch.int32


def test_collate_two_rows_cu_seqlens_continue():
    b = collate_packed([ROW_A, as_arrays(ROW_B)])
    assert b.input_ids.tolist() == ROW_A["input_ids"] + ROW_B["input_ids"]
    assert b.labels.tolist() == [11, 12, X, 21, X, X, 32, 33, X] + [X, 42, 43, X, 51, X]
    assert b.cu_seqlens.tolist() == [0, 3, 5, 9, 13, 15]
    assert b.position_ids.tolist() == [0, 1, 2, 0, 1, 0, 1, 2, 3] + [0, 1, 2, 3, 0, 1]
    assert b.doc_ids.tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4]
    assert b.max_seqlen == 4
    assert b.num_trainable_tokens == 8  # 5 + (42, 43, 51)
    assert b.num_documents == 5


def test_collate_pad_to_adds_padding_segments():
    b = collate_packed([ROW_A, ROW_B], pad_to=10)
    assert b.input_ids.tolist() == ROW_A["input_ids"] + [0] + ROW_B["input_ids"] + [0, 0, 0, 0]
    assert b.labels.tolist() == [11, 12, X, 21, X, X, 32, 33, X, X] + [X, 42, 43, X, 51, X, X, X, X, X]
    assert b.cu_seqlens.tolist() == [0, 3, 5, 9, 10, 14, 16, 20]
    assert b.position_ids.tolist() == [0, 1, 2, 0, 1, 0, 1, 2, 3, 0] + [0, 1, 2, 3, 0, 1, 0, 1, 2, 3]
    assert b.doc_ids.tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 4, 4, 4, 4, 5, 5, 6, 6, 6, 6]
    assert b.num_documents == 5 and b.num_padding_tokens == 5
    assert b.num_trainable_tokens == 8  # padding adds none
    assert b.max_seqlen == 4


def test_collate_pad_to_exact_length_adds_nothing():
    b = collate_packed([ROW_A], pad_to=9)
    assert b.cu_seqlens.tolist() == [0, 3, 5, 9]
    assert b.num_padding_tokens == 0
    with pytest.raises(ValueError, match=r"row 1 has 9 tokens > pad_to=8"):
        collate_packed([ROW_B, ROW_A], pad_to=8)


def test_collate_matches_definition_and_bridge_pairs():
    """Labels = ids[j+1] where mask[j] (never rolled again); every (context, label) pair equals what
    Megatron-Bridge's per-document construction (tokens ids[s:e-1], labels ids[s+1:e]) trains."""
    rows = random_rows(6, seed=1)
    for pad_to in (None, 40):
        b = collate_packed(rows, pad_to=pad_to)
        ours, bridge, interior_doc_starts = [], [], 0
        row_base = 0
        for r in rows:
            ids, mask, starts = r["input_ids"], r["loss_mask"], r["seq_start_id"]
            L = len(ids)
            interior_doc_starts += len(starts) - 1
            ends = list(starts[1:]) + [L]
            for s, e in zip(starts, ends):
                for j in range(s, e - 1):  # Bridge: input ids[j] at position j-s, label ids[j+1]
                    if mask[j]:
                        bridge.append((tuple(ids[s : j + 1]), int(ids[j + 1])))
                expect = [int(ids[j + 1]) if mask[j] else X for j in range(s, e - 1)] + [X]
                assert b.labels[row_base + s : row_base + e].tolist() == expect
            row_base += L if pad_to is None else pad_to
        labels = b.labels.tolist()
        for j, lab in enumerate(labels):
            if lab != X:
                d = int(b.doc_ids[j])
                s = int(b.cu_seqlens[d])
                ours.append((tuple(b.input_ids[s : j + 1].tolist()), lab))
        assert interior_doc_starts > 0 and len(ours) > 10
        assert sorted(ours) == sorted(bridge)
        assert b.num_trainable_tokens == len(bridge) == sum(int(r["loss_mask"].sum()) for r in rows)
        # doc_ids agree with cu_seqlens, positions restart per segment.
        cu = b.cu_seqlens.tolist()
        for d in range(len(cu) - 1):
            assert (b.doc_ids[cu[d] : cu[d + 1]] == d).all()
            assert b.position_ids[cu[d] : cu[d + 1]].tolist() == list(range(cu[d + 1] - cu[d]))


def test_collate_rejects_unaligned_mask_at_document_end():
    """The reader trusts the aligned mask but not blindly: a 1 at a document's last token would
    make the next document's first token a label (a leak), so it raises instead of guessing."""
    bad = dict(ROW_A, loss_mask=[1, 1, 1, 1, 0, 0, 1, 1, 0])  # 1 at index 2, the end of document 0
    with pytest.raises(
        ValueError, match=r"row 1: loss_mask\[2\]=1 at the last token of document 0.*not aligned"
    ):
        collate_packed([ROW_B, bad])
    row_end = dict(ROW_A, loss_mask=[1, 1, 0, 1, 0, 0, 1, 1, 1])  # 1 at the row's last token
    with pytest.raises(ValueError, match=r"loss_mask\[8\]=1 at the last token of document 2"):
        collate_packed([row_end])
    with pytest.raises(ValueError, match="at least one row"):
        collate_packed([])


def test_batch_to_device_keeps_values():
    b = collate_packed([ROW_A]).to("cpu")
    assert b.labels.tolist() == [11, 12, X, 21, X, X, 32, 33, X] and b.max_seqlen == 4


# ---------------------------------------------------------------------------------------------
# Writers and reader
# ---------------------------------------------------------------------------------------------


def test_parquet_round_trip_info_and_deterministic_bytes(tmp_path):
    rows = [ROW_A, ROW_B] + random_rows(3, seed=2)
    info = write_parquet_split(rows, tmp_path / "a", split="train", rows_per_shard=2)
    assert info["rows"] == 5
    assert info["path"] == "splits/train"
    assert info["shards"] == [f"splits/train/shard_00000{i}.parquet" for i in range(3)]
    assert info["sequences"] == 3 + 2 + sum(len(r["seq_start_id"]) for r in rows[2:])
    assert info["tokens"] == 9 + 6 + sum(len(r["input_ids"]) for r in rows[2:])
    assert info["trainable_tokens"] == 5 + 3 + sum(int(r["loss_mask"].sum()) for r in rows[2:])
    assert pq.read_schema(tmp_path / "a" / info["shards"][0]).remove_metadata().equals(PARQUET_SCHEMA)
    meta = pq.ParquetFile(tmp_path / "a" / info["shards"][0]).metadata
    assert meta.num_rows == 2 and meta.num_row_groups == 1
    assert meta.row_group(0).column(0).compression == "ZSTD"

    ds = PackedDataset(tmp_path / "a", split="train")
    assert ds.format == "parquet" and len(ds) == 5
    assert_rows_equal([ds[i] for i in range(len(ds))], rows)
    assert ds.lengths.tolist() == [len(r["input_ids"]) for r in rows]
    np.testing.assert_array_equal(ds[-1]["input_ids"], rows[-1]["input_ids"])

    info2 = write_parquet_split(iter(rows), tmp_path / "b", split="train", rows_per_shard=2)  # a generator
    assert info2 == info
    for shard in info["shards"]:
        assert (tmp_path / "a" / shard).read_bytes() == (tmp_path / "b" / shard).read_bytes()


def test_parquet_empty_split_is_one_schema_shard(tmp_path):
    info = write_parquet_split([], tmp_path, split="test", rows_per_shard=4)
    assert info == {
        "rows": 0,
        "sequences": 0,
        "path": "splits/test",
        "shards": ["splits/test/shard_000000.parquet"],
        "tokens": 0,
        "trainable_tokens": 0,
    }
    assert pq.read_table(tmp_path / info["shards"][0]).num_rows == 0
    ds = PackedDataset(tmp_path, split="test")
    assert len(ds) == 0
    with pytest.raises(IndexError):
        ds[0]


def test_npy_round_trip_reference_layout(tmp_path):
    rows = [ROW_A, ROW_B] + random_rows(2, seed=3)
    info = write_npy_split(rows, tmp_path, split="valid")
    assert info["path"] == "validation.npy" and info["shards"] == ["validation.npy"]
    assert (info["rows"], info["sequences"]) == (4, 5 + sum(len(r["seq_start_id"]) for r in rows[2:]))

    raw = np.load(tmp_path / "validation.npy", allow_pickle=True)  # what Megatron-Bridge does
    assert raw.dtype == object and raw.shape == (4,)
    assert raw[0] == ROW_A and raw[1] == ROW_B
    for d in raw:
        assert set(d) == {"input_ids", "loss_mask", "seq_start_id"}
        assert all(type(v) is list and all(type(x) is int for x in v) for v in d.values())

    ds = PackedDataset(tmp_path, split="valid")
    assert ds.format == "npy" and len(ds) == 4
    assert_rows_equal([ds[i] for i in range(4)], rows)
    assert len(PackedDataset(tmp_path / "validation.npy")) == 4  # a file path works too

    (tmp_path / "again").mkdir()
    write_npy_split(rows, tmp_path / "again", split="valid")
    assert (tmp_path / "again" / "validation.npy").read_bytes() == (tmp_path / "validation.npy").read_bytes()
    write_npy_split([ROW_A], tmp_path, split="train")
    write_npy_split([ROW_B], tmp_path, split="test")
    assert sorted(p.name for p in tmp_path.glob("*.npy")) == ["test.npy", "training.npy", "validation.npy"]


def test_write_blend(tmp_path):
    infos = {
        split: write_parquet_split([ROW_A], tmp_path, split=split, rows_per_shard=8)
        for split in ("train", "valid", "test")
    }
    blend = write_blend(tmp_path, infos)
    expected = {"train": [1.0, "splits/train"], "valid": [1.0, "splits/valid"], "test": [1.0, "splits/test"]}
    assert blend == expected
    assert json.loads((tmp_path / "blend.json").read_text()) == expected
    (tmp_path / "n").mkdir()
    assert write_blend(tmp_path / "n", {"train": {"path": "training.npy"}}) == {
        "train": [1.0, "training.npy"]
    }
    with pytest.raises(ValueError, match="split must be one of"):
        write_blend(tmp_path, {"training": infos["train"]})


def test_writers_reject_invalid_rows(tmp_path):
    with pytest.raises(ValueError, match=r"split 'train': row 1: len\(input_ids\)=9 != len\(loss_mask\)=8"):
        write_parquet_split(
            [ROW_B, dict(ROW_A, loss_mask=ROW_A["loss_mask"][:-1])], tmp_path, split="train", rows_per_shard=1
        )
    with pytest.raises(ValueError, match=r"split 'valid': row 2 has no 'seq_start_id'"):
        write_parquet_split(
            [ROW_A, ROW_B, {"input_ids": [1], "loss_mask": [0]}], tmp_path, split="valid", rows_per_shard=2
        )
    with pytest.raises(ValueError, match="loss_mask must hold 0/1"):
        write_npy_split([dict(ROW_A, loss_mask=[2] * 9)], tmp_path, split="train")
    with pytest.raises(ValueError, match="split must be one of"):
        write_npy_split([ROW_A], tmp_path, split="validation")
    with pytest.raises(ValueError, match="rows_per_shard"):
        write_parquet_split([ROW_A], tmp_path, split="train", rows_per_shard=0)


def _raw_parquet(path, columns: dict):
    path.parent.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([PARQUET_SCHEMA.field(name) for name in columns])
    pq.write_table(pa.table(columns, schema=schema), path)
    return path


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        (
            {"input_ids": [ROW_A["input_ids"]], "loss_mask": [ROW_A["loss_mask"]]},
            r"missing column\(s\) \['seq_start_id'\]",
        ),
        (
            {"input_ids": [ROW_A["input_ids"]], "loss_mask": [ROW_A["loss_mask"][:5]], "seq_start_id": [[0, 3, 5]]},
            r"row 0: len\(input_ids\)=9 != len\(loss_mask\)=5",
        ),
        (
            {"input_ids": [ROW_B["input_ids"], ROW_A["input_ids"]], "loss_mask": [ROW_B["loss_mask"], ROW_A["loss_mask"]],
             "seq_start_id": [[0, 4], [1, 3, 5]]},
            r"row 1: seq_start_id must start at 0, got 1",
        ),
        (
            {"input_ids": [ROW_A["input_ids"]], "loss_mask": [[0] * 9], "seq_start_id": [[0, 5, 3]]},
            r"row 0: seq_start_id must be strictly increasing: seq_start_id\[2\]=3 <= seq_start_id\[1\]=5",
        ),
        (
            {"input_ids": [ROW_A["input_ids"]], "loss_mask": [[0] * 9], "seq_start_id": [[0, 3, 9]]},
            r"row 0: seq_start_id\[2\]=9 >= row length 9",
        ),
        (
            {"input_ids": [ROW_A["input_ids"]], "loss_mask": [[0] * 9], "seq_start_id": [[]]},
            r"row 0: seq_start_id is empty",
        ),
        (
            {"input_ids": [ROW_A["input_ids"]], "loss_mask": [[1, 1, 1, 1, 0, 0, 1, 1, 0]], "seq_start_id": [[0, 3, 5]]},
            r"row 0: loss_mask\[2\]=1 at the last token of document 0",
        ),
    ],
)  # fmt: skip
def test_reader_errors_name_the_file(tmp_path, columns, message):
    shard = _raw_parquet(tmp_path / "splits" / "train" / "shard_000000.parquet", columns)
    with pytest.raises(ValueError, match=message) as exc:
        PackedDataset(tmp_path)
    assert str(shard) in str(exc.value)


def test_reader_npy_errors_and_detection(tmp_path):
    bad = np.empty(2, dtype=object)
    bad[0], bad[1] = ROW_A, {"input_ids": [1, 2], "loss_mask": [0, 0]}
    np.save(tmp_path / "training.npy", bad, allow_pickle=True)
    with pytest.raises(ValueError, match=r"training.npy: row 1 is missing key\(s\) \['seq_start_id'\]"):
        PackedDataset(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"no packed 'valid' split.*validation.npy"):
        PackedDataset(tmp_path, split="valid")
    write_npy_split([ROW_A], tmp_path, split="test")
    write_parquet_split([ROW_B], tmp_path, split="test", rows_per_shard=1)
    with pytest.raises(ValueError, match="both .* exist; pass format="):
        PackedDataset(tmp_path, split="test")
    assert PackedDataset(tmp_path, split="test", format="npy")[0]["input_ids"].tolist() == ROW_A["input_ids"]
    assert (
        PackedDataset(tmp_path, split="test", format="parquet")[0]["input_ids"].tolist() == ROW_B["input_ids"]
    )


def test_reader_rows_collate_like_input(tmp_path):
    rows = random_rows(4, seed=4)
    write_parquet_split(rows, tmp_path, split="train", rows_per_shard=3)
    ds = PackedDataset(tmp_path)
    got, want = collate_packed([ds[i] for i in range(4)], pad_to=30), collate_packed(rows, pad_to=30)
    for name in ("input_ids", "labels", "position_ids", "cu_seqlens", "doc_ids"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name


# ---------------------------------------------------------------------------------------------
# iterate_batches
# ---------------------------------------------------------------------------------------------


class Rows(list):
    """A dataset of single-token-document rows whose token names the row (row i -> id i + 1)."""

    def __init__(self, n):
        super().__init__({"input_ids": [i + 1], "loss_mask": [0], "seq_start_id": [0]} for i in range(n))


def step_rows(dataset, *, steps, dp_size, micro_batch_size, global_batch_size=12, seed=7, start_row=0):
    """{step: rows of the step, ranks concatenated in rank order}, checking ids match row_indices."""
    out = {}
    for rank in range(dp_size):
        it = iterate_batches(
            dataset, micro_batch_size=micro_batch_size, global_batch_size=global_batch_size,
            dp_rank=rank, dp_size=dp_size, seed=seed, start_row=start_row,
        )  # fmt: skip
        for _ in range(steps):
            step, micro = next(it)
            assert len(micro) == global_batch_size // (micro_batch_size * dp_size)
            for b in micro:
                assert len(b.row_indices) == micro_batch_size
                assert b.input_ids.tolist() == [i + 1 for i in b.row_indices]
            out.setdefault(step, []).extend(i for b in micro for i in b.row_indices)
    return out


def test_iterate_batches_order_is_seeded_epochs():
    n, g = 10, 4
    ds = Rows(n)
    rows = step_rows(ds, steps=5, dp_size=1, micro_batch_size=2, global_batch_size=g)
    assert sorted(rows) == [0, 1, 2, 3, 4]
    stream = [i for s in range(5) for i in rows[s]]  # 20 positions = 2 epochs; step 2 straddles them
    assert stream[:n] == epoch_permutation(n, epoch=0, seed=7).tolist()
    assert stream[n:] == epoch_permutation(n, epoch=1, seed=7).tolist()
    assert sorted(stream[:n]) == sorted(stream[n:]) == list(range(n))
    assert stream[:n] != stream[n:] and stream[:n] != list(range(n))
    assert step_rows(ds, steps=5, dp_size=1, micro_batch_size=2, global_batch_size=g) == rows
    assert step_rows(ds, steps=5, dp_size=1, micro_batch_size=2, global_batch_size=g, seed=8) != rows


def test_iterate_batches_same_global_rows_for_any_dp():
    ds = Rows(30)
    one = step_rows(ds, steps=6, dp_size=1, micro_batch_size=4)
    two = step_rows(ds, steps=6, dp_size=2, micro_batch_size=2)
    three = step_rows(ds, steps=6, dp_size=3, micro_batch_size=1)
    assert one == two == three  # contiguous shares: ranks in order give the step's rows in order
    for rows in one.values():
        assert len(rows) == 12 and len(set(rows)) == 12  # disjoint across ranks (12 <= 30 rows)


def test_iterate_batches_resume_under_other_dp_continues_exactly():
    ds = Rows(17)
    full = step_rows(ds, steps=8, dp_size=2, micro_batch_size=3)
    resumed = step_rows(ds, steps=5, dp_size=4, micro_batch_size=1, start_row=3 * 12)
    assert sorted(resumed) == [3, 4, 5, 6, 7]
    assert resumed == {s: full[s] for s in range(3, 8)}


def test_iterate_batches_collates_with_pad_to_and_counts_tokens():
    rows = [ROW_A, ROW_B]
    (step, micro), *_ = iterate_batches(
        rows, micro_batch_size=2, global_batch_size=2, dp_rank=0, dp_size=1, seed=0, num_epochs=1, pad_to=10
    )
    assert step == 0 and len(micro) == 1
    assert micro[0].input_ids.shape == (20,) and micro[0].num_trainable_tokens == 8
    assert sorted(micro[0].row_indices) == [0, 1]


def test_iterate_batches_num_epochs_and_drop_last():
    ds = Rows(10)
    kw = dict(micro_batch_size=1, global_batch_size=4, dp_size=2, seed=1, num_epochs=1)
    assert [s for s, _ in iterate_batches(ds, dp_rank=0, **kw)] == [0, 1]
    last = [list(iterate_batches(ds, dp_rank=r, drop_last=False, **kw))[-1] for r in range(2)]
    assert [s for s, _ in last] == [2, 2]
    assert [len(m) for _, m in last] == [1, 1]  # the final 2 rows, one per rank
    seen = [
        i
        for r in range(2)
        for _, m in iterate_batches(ds, dp_rank=r, drop_last=False, **kw)
        for b in m
        for i in b.row_indices
    ]
    assert sorted(seen) == list(range(10))


def test_iterate_batches_errors():
    ds = Rows(8)
    with pytest.raises(
        ValueError,
        match=r"train.global_batch_size=8 must be divisible by train.micro_batch_size=2 x data-parallel degree dp=3",
    ):
        next(iterate_batches(ds, micro_batch_size=2, global_batch_size=8, dp_rank=0, dp_size=3, seed=0))
    with pytest.raises(ValueError, match=r"start_row=6 is not a multiple of train.global_batch_size=4"):
        next(
            iterate_batches(
                ds, micro_batch_size=2, global_batch_size=4, dp_rank=0, dp_size=1, seed=0, start_row=6
            )
        )
    with pytest.raises(ValueError, match=r"dp_rank must be in \[0, 2\)"):
        next(iterate_batches(ds, micro_batch_size=1, global_batch_size=4, dp_rank=2, dp_size=2, seed=0))
    with pytest.raises(ValueError, match="no rows"):
        next(iterate_batches([], micro_batch_size=1, global_batch_size=1, dp_rank=0, dp_size=1, seed=0))
