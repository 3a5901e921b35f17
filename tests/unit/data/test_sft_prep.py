"""pack_split and split_records with exact values on hand-made sequences."""

from __future__ import annotations

import numpy as np
import pytest

from nemotron_core.config import SFTDataConfig
from nemotron_core.data.sft_prep import TokenizedSequence, pack_split, split_records


def seq(n, trained_from):
    ids = np.arange(100, 100 + n, dtype=np.int32)
    mask = (np.arange(n) >= trained_from).astype(np.uint8)
    return TokenizedSequence(ids, mask, f"t:{n}")


def data(**kw):
    base = dict(name="t", input="x", output_dir="o", pack_size=8, packing_algorithm="first_fit_decreasing")
    base.update(kw)
    return SFTDataConfig(**base)


def test_pack_split_exact_rows():
    res = pack_split([seq(5, 3), seq(3, 1), seq(2, 1)], data(), seed=0)
    assert res.bins == [[0, 1], [2]]
    row = res.rows[0]
    assert row["input_ids"].tolist() == [100, 101, 102, 103, 104, 100, 101, 102]
    assert row["seq_start_id"].tolist() == [0, 5]
    # role [0,0,0,1,1 | 0,1,1] aligned per document: mask[j] = role[j+1], 0 at each document end
    assert row["loss_mask"].tolist() == [0, 0, 1, 1, 0, 1, 1, 0]
    assert res.rows[1]["loss_mask"].tolist() == [1, 0]


def test_max_doc_tokens_and_untrainable_filter():
    # 6 tokens trained from 4 -> cut to 4 tokens: nothing trainable left; 1-token sequence: no label
    res = pack_split([seq(6, 4), seq(1, 0), seq(4, 2)], data(max_doc_tokens=4), seed=0)
    assert res.filtered == {"no_trainable_tokens": 2}
    assert res.lengths.tolist() == [4]


def test_overlong_truncate_and_reject():
    res = pack_split([seq(12, 2), seq(12, 10)], data(), seed=0)
    assert res.num_truncated == 2 and res.lengths.tolist() == [8]
    assert res.filtered == {"no_trainable_tokens_after_truncation": 1}
    with pytest.raises(ValueError, match="sequence 0 has length 12 > pack_size=8"):
        pack_split([seq(12, 2)], data(on_overlong="reject"), seed=0)


def test_split_records_is_seeded_and_complete():
    parts = split_records(200, [0.9, 0.05, 0.05], seed=3)
    assert [len(parts[k]) for k in ("train", "valid", "test")] == [180, 10, 10]
    assert sorted(np.concatenate(list(parts.values())).tolist()) == list(range(200))
    again = split_records(200, [0.9, 0.05, 0.05], seed=3)
    assert all((parts[k] == again[k]).all() for k in parts)
    with pytest.raises(ValueError, match="data.split"):
        split_records(10, [0.5, 0.5], seed=0)
