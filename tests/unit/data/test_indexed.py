"""Unit tests for nemotron_core/data/indexed.py: rows from samples, blends, megatron-core datasets,
and document isolation (`reset_at_eod`) on pretraining batches through the model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nemotron_core.constants import IGNORE_INDEX
from nemotron_core.data.indexed import (
    PretrainRows,
    build_gpt_datasets,
    check_split_documents,
    megatron_datasets,
    pretrain_row,
    read_blend,
    token_dtype,
)
from nemotron_core.data.packed import collate_packed
from nemotron_core.model import build_nano3

X = IGNORE_INDEX
EOD = 2


def write_indexed(prefix, docs, *, dtype=np.uint16) -> str:
    """Documents (lists of ids) -> prefix.bin/.idx through megatron-core's IndexedDatasetBuilder."""
    builder = megatron_datasets()["IndexedDatasetBuilder"](f"{prefix}.bin", dtype=dtype)
    for d in docs:
        builder.add_document(np.asarray(d), [len(d)])
    builder.finalize(f"{prefix}.idx")
    return str(prefix)


def random_docs(n, *, lo, hi, seed, min_len=3, max_len=12):
    """n documents of ids in [lo, hi), each ending with EOD."""
    rng = np.random.default_rng(seed)
    return [list(rng.integers(lo, hi, int(rng.integers(min_len, max_len)))) + [EOD] for _ in range(n)]


# ----------------------------------------------------------------------------- rows
def test_row_without_reset_trains_every_position_but_the_last():
    row = pretrain_row(np.array([5, 6, 2, 7, 8, 2, 9]), eod_id=EOD, reset_at_eod=False)
    assert row["input_ids"].dtype == np.int32 and row["input_ids"].tolist() == [5, 6, 2, 7, 8, 2, 9]
    assert row["loss_mask"].tolist() == [1, 1, 1, 1, 1, 1, 0]
    assert row["seq_start_id"].tolist() == [0]
    batch = collate_packed([row])
    assert batch.labels.tolist() == [6, 2, 7, 8, 2, 9, X]  # Megatron's tokens[:-1] -> labels[1:], seq_length of them
    assert batch.cu_seqlens.tolist() == [0, 7] and batch.num_trainable_tokens == 6


def test_row_with_reset_splits_after_each_eod_and_ignores_the_crossing_label():
    row = pretrain_row(np.array([5, 6, 2, 7, 8, 2, 9]), eod_id=EOD, reset_at_eod=True)
    assert row["seq_start_id"].tolist() == [0, 3, 6]
    assert row["loss_mask"].tolist() == [1, 1, 0, 1, 1, 0, 0]
    batch = collate_packed([row, pretrain_row(np.array([2, 4, 4, 2]), eod_id=EOD, reset_at_eod=True)])
    # EOD stays a label of its document (6 -> 2, 8 -> 2); EOD -> next document's first token does not
    assert batch.labels.tolist() == [6, 2, X, 8, 2, X, X, X, 4, 2, X]
    # an EOD first closes a one-token segment; an EOD last opens none
    assert batch.cu_seqlens.tolist() == [0, 3, 6, 7, 8, 11]
    assert batch.position_ids.tolist() == [0, 1, 2, 0, 1, 2, 0, 0, 0, 1, 2]
    assert batch.num_trainable_tokens == 6


def test_token_dtype_follows_the_vocabulary():
    assert token_dtype(4096) == np.uint16 and token_dtype(65499) == np.uint16
    assert token_dtype(131072) == np.int32


# ----------------------------------------------------------------------------- blends
def test_read_blend_resolves_relative_prefixes_and_checks_entries(tmp_path):
    (tmp_path / "blend.json").write_text(json.dumps({"train": [3, "train/a", 1.5, "/abs/b"], "valid": [1, "valid/a"]}))
    blend = read_blend(tmp_path)
    assert blend == {"train": [(3.0, str(tmp_path / "train/a")), (1.5, "/abs/b")], "valid": [(1.0, str(tmp_path / "valid/a"))], "test": []}
    for bad, msg in (({"train": [1, "a", 2]}, "flat list"), ({"train": [0, "a"]}, "positive"), ({"train": [1, 5]}, "prefix"),
                     ({"training": [1, "a"]}, "keys among")):
        (tmp_path / "blend.json").write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=msg):
            read_blend(tmp_path)
    with pytest.raises(FileNotFoundError, match="data.path="):
        read_blend(tmp_path / "nowhere")


@pytest.mark.timeout(120)
def test_a_split_with_zero_documents_fails_naming_it_instead_of_hanging(tmp_path):
    full = write_indexed(tmp_path / "full", random_docs(20, lo=10, hi=50, seed=0))
    empty = write_indexed(tmp_path / "empty", [])
    blend = {"train": [(1.0, full)], "valid": [(1.0, empty)], "test": []}
    assert check_split_documents(blend, splits=["train"], where="b.json")["train"][0] == 20
    with pytest.raises(ValueError, match=r"b.json: split 'valid' gets zero documents from .*empty"):
        check_split_documents(blend, splits=["train", "valid"], where="b.json")
    with pytest.raises(ValueError, match="split 'valid' gets zero documents"):
        build_gpt_datasets(blend, sizes={"train": 10, "valid": 4}, seq_length=8, seed=1, vocab_size=64, eod_id=EOD,
                           cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match="split 'test' lists no dataset"):
        check_split_documents(blend, splits=["test"], where="b.json")


def test_blend_shares_match_the_weights_over_10k_samples(tmp_path):
    # dataset a holds ids [10, 30), b ids [30, 60): a row's ids tell which dataset it came from
    a = write_indexed(tmp_path / "a", random_docs(300, lo=10, hi=30, seed=1))
    b = write_indexed(tmp_path / "b", random_docs(200, lo=30, hi=60, seed=2))
    blend = {"train": [(3.0, a), (7.0, b)]}  # unnormalised: 0.3 / 0.7
    ds = build_gpt_datasets(blend, sizes={"train": 10_000}, seq_length=8, seed=1234, vocab_size=64, eod_id=EOD,
                            cache_dir=tmp_path / "cache")["train"]
    assert len(ds) >= 10_000
    rows = PretrainRows(ds, eod_id=EOD, reset_at_eod=False)
    from_a = 0
    for i in range(10_000):
        ids = rows[i]["input_ids"]
        assert ids.shape == (9,)  # seq_length + 1
        real = ids[ids != EOD]
        in_a = bool((real < 30).all())
        assert in_a or bool((real >= 30).all())  # one dataset per sample
        assert in_a == (int(ds[i]["dataset_id"]) == 0)
        from_a += in_a
    assert abs(from_a / 10_000 - 0.3) <= 0.02
    # the same seed reads the same samples back from megatron-core's index cache; another seed shuffles differently
    again = build_gpt_datasets(blend, sizes={"train": 10_000}, seq_length=8, seed=1234, vocab_size=64, eod_id=EOD,
                               cache_dir=tmp_path / "cache")["train"]
    other = build_gpt_datasets(blend, sizes={"train": 10_000}, seq_length=8, seed=7, vocab_size=64, eod_id=EOD,
                               cache_dir=tmp_path / "cache")["train"]
    first = [rows.sample(i).tolist() for i in range(50)]
    assert [PretrainRows(again, eod_id=EOD, reset_at_eod=False).sample(i).tolist() for i in range(50)] == first
    assert [PretrainRows(other, eod_id=EOD, reset_at_eod=False).sample(i).tolist() for i in range(50)] != first
    assert list((tmp_path / "cache").glob("*BlendedDataset-train-dataset_index.npy"))


def test_samples_tile_the_documents_with_a_one_token_overlap(tmp_path):
    docs = [[10, 11, 12, EOD], [20, 21, EOD], [30, 31, 32, 33, 34, EOD]]  # 13 tokens
    p = write_indexed(tmp_path / "d", docs)
    ds = build_gpt_datasets({"train": [(1.0, p)]}, sizes={"train": 3}, seq_length=4, seed=0, vocab_size=64, eod_id=EOD,
                            cache_dir=tmp_path / "cache")["train"]
    rows = PretrainRows(ds, eod_id=EOD, reset_at_eod=True)
    assert len(rows) == 3  # (13 - 1) // 4
    samples = [rows.sample(i) for i in ds.shuffle_index.argsort()]  # in stream order
    for s, t in zip(samples, samples[1:]):
        assert s[-1] == t[0]  # the last token of a sample is the first of the next: every token is a label once
    stream = np.concatenate([samples[0]] + [s[1:] for s in samples[1:]])
    assert sorted(stream.tolist()) == sorted(sum(docs, []))
    with pytest.raises(IndexError):
        rows[3]


# ----------------------------------------------------------------------------- isolation through the model
@pytest.fixture
def eod_rows(tmp_path):
    """Two pretraining rows whose samples cross document boundaries (EOD = 2, small vocab)."""
    p = write_indexed(tmp_path / "d", random_docs(40, lo=3, hi=60, seed=5, min_len=2, max_len=9))
    ds = build_gpt_datasets({"train": [(1.0, p)]}, sizes={"train": 4}, seq_length=24, seed=3, vocab_size=64, eod_id=EOD,
                            cache_dir=tmp_path / "cache")["train"]
    return ds


def _segments(batch):
    cu = batch.cu_seqlens.tolist()
    return list(zip(cu[:-1], cu[1:]))


def test_reset_at_eod_isolates_documents_in_attention_and_mamba(small_cfg, eod_rows):
    rows = PretrainRows(eod_rows, eod_id=EOD, reset_at_eod=True)
    batch = collate_packed([rows[0], rows[1]])
    ids = batch.input_ids
    segments = _segments(batch)
    interior = [s for s, _ in segments if s not in (0, 25)]
    assert len(interior) >= 4  # the rows really hold several documents each
    for _, e in segments[:-1]:
        if e not in (25, 50):
            assert ids[e - 1] == EOD and batch.labels[e - 1] == X  # no label crosses from an EOD
    assert (ids == EOD).sum() >= 4 and (batch.labels[ids == EOD] == X).all()
    assert int((batch.labels != X).sum()) == 50 - len(segments)

    model = build_nano3(small_cfg, seed=0).eval()
    with torch.no_grad():
        packed = model(ids[None], cu_seqlens=batch.cu_seqlens, max_seqlen=batch.max_seqlen,
                       position_ids=batch.position_ids[None]).logits[0]
        for s, e in segments:
            alone = model(ids[None, s:e]).logits[0]
            assert (packed[s:e] - alone).abs().max() <= 1e-5, (s, e)
        # perturbing the first document of row 0 changes nothing after it
        s0, e0 = segments[0]
        other = ids.clone()
        other[s0 : e0 - 1] = (other[s0 : e0 - 1] + 7) % small_cfg.vocab_size
        changed = model(other[None], cu_seqlens=batch.cu_seqlens, max_seqlen=batch.max_seqlen,
                        position_ids=batch.position_ids[None]).logits[0]
    assert (changed[s0 : e0 - 1] - packed[s0 : e0 - 1]).abs().max() > 1e-3
    assert (changed[e0:] - packed[e0:]).abs().max() <= 1e-6


def test_without_reset_documents_see_each_other_so_the_isolation_test_can_fail(small_cfg, eod_rows):
    rows = PretrainRows(eod_rows, eod_id=EOD, reset_at_eod=False)
    batch = collate_packed([rows[0]])
    assert batch.cu_seqlens.tolist() == [0, 25] and batch.num_trainable_tokens == 24
    ids = batch.input_ids
    reset = collate_packed([PretrainRows(eod_rows, eod_id=EOD, reset_at_eod=True)[0]])
    s, e = _segments(reset)[1]  # the second document of the row
    model = build_nano3(small_cfg, seed=0).eval()
    with torch.no_grad():
        joined = model(ids[None], cu_seqlens=batch.cu_seqlens).logits[0]
        alone = model(ids[None, s:e]).logits[0]
    assert (joined[s:e] - alone).abs().max() > 1e-3
