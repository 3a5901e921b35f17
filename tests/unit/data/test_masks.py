"""Unit tests for nemotron_core/data/masks.py: exact aligned masks, cu_seqlens and positions."""

from __future__ import annotations

import numpy as np
import pytest

from nemotron_core.data.masks import (
    align_loss_mask,
    cu_seqlens_from_seq_start_id,
    position_ids_from_cu_seqlens,
)


def loop_align(role_mask, seq_start_id, total_len):
    """The definition, one token at a time."""
    out = [0] * len(role_mask)
    ends = list(seq_start_id[1:]) + [total_len]
    for s, e in zip(seq_start_id, ends):
        for j in range(s, e - 1):
            out[j] = int(role_mask[j + 1])
    return out


def test_cu_seqlens_exact():
    cu = cu_seqlens_from_seq_start_id([0, 3, 5], 9)
    assert cu.tolist() == [0, 3, 5, 9] and cu.dtype == np.int32
    assert cu_seqlens_from_seq_start_id([0], 4).tolist() == [0, 4]
    padded = cu_seqlens_from_seq_start_id(np.array([0, 3, 5], dtype=np.int32), 9, pad_to=12)
    assert padded.tolist() == [0, 3, 5, 9, 12]
    assert cu_seqlens_from_seq_start_id([0, 3, 5], 9, pad_to=9).tolist() == [0, 3, 5, 9]


def test_position_ids_exact():
    pos = position_ids_from_cu_seqlens([0, 3, 5, 9])
    assert pos.tolist() == [0, 1, 2, 0, 1, 0, 1, 2, 3]
    assert position_ids_from_cu_seqlens(np.array([0, 3, 5, 9, 12], dtype=np.int32)).tolist() == [
        0, 1, 2, 0, 1, 0, 1, 2, 3, 0, 1, 2
    ]  # fmt: skip
    assert position_ids_from_cu_seqlens([0, 1, 2, 3]).tolist() == [0, 0, 0]
    assert position_ids_from_cu_seqlens([0]).tolist() == []


def test_align_loss_mask_exact_at_boundaries():
    # documents [0,3) [3,5) [5,9); every role bit that a whole-row roll would carry across a
    # boundary (positions 3 and 5) is 1, and each document's last position comes out 0
    role = np.array([0, 1, 1, 1, 1, 1, 0, 1, 1], dtype=np.uint8)
    got = align_loss_mask(role, seq_start_id=[0, 3, 5])
    assert got.tolist() == [1, 1, 0, 1, 0, 0, 1, 1, 0]
    assert got.dtype == np.uint8
    rolled = np.roll(role, -1)
    rolled[-1] = 0
    assert rolled.tolist() == [1, 1, 1, 1, 1, 0, 1, 1, 0]  # the leak the per-document rule removes


def test_align_loss_mask_padding_and_single_token_documents():
    role = np.ones(9, dtype=np.uint8)
    # documents [0,3) [3,7), padding [7,9)
    assert align_loss_mask(role, seq_start_id=[0, 3], total_len=7).tolist() == [1, 1, 0, 1, 1, 1, 0, 0, 0]
    # one-token documents have no label at all
    assert align_loss_mask([1, 1, 1], seq_start_id=[0, 1, 2]).tolist() == [0, 0, 0]
    # one document spanning the row: a plain shift with the last position 0
    assert align_loss_mask([0, 0, 1, 1, 0, 1], seq_start_id=[0]).tolist() == [0, 1, 1, 0, 1, 0]
    assert align_loss_mask([True, False, True], seq_start_id=[0]).tolist() == [0, 1, 0]


def test_align_loss_mask_matches_definition_on_random_rows():
    rng = np.random.default_rng(0)
    boundaries = 0
    for _ in range(300):
        n = int(rng.integers(1, 40))
        total = int(rng.integers(1, n + 1))
        k = int(rng.integers(0, total))
        starts = [0] + sorted(rng.choice(np.arange(1, total), size=min(k, total - 1), replace=False).tolist())
        role = rng.integers(0, 2, size=n)
        got = align_loss_mask(role, seq_start_id=starts, total_len=total)
        assert got.tolist() == loop_align(role.tolist(), starts, total)
        ends = starts[1:] + [total]
        assert all(got[e - 1] == 0 for e in ends)
        boundaries += len(starts) - 1
    assert boundaries > 500  # the loop really crossed interior document starts


def test_errors():
    with pytest.raises(ValueError, match="must start at 0"):
        cu_seqlens_from_seq_start_id([1, 3], 9)
    with pytest.raises(ValueError, match=r"strictly increasing: seq_start_id\[2\]=3 <= seq_start_id\[1\]=3"):
        cu_seqlens_from_seq_start_id([0, 3, 3], 9)
    with pytest.raises(ValueError, match=r"seq_start_id\[1\]=9 >= total_len=9"):
        cu_seqlens_from_seq_start_id([0, 9], 9)
    with pytest.raises(ValueError, match="pad_to=8 < total_len=9"):
        cu_seqlens_from_seq_start_id([0, 3], 9, pad_to=8)
    with pytest.raises(ValueError, match="strictly increasing"):
        position_ids_from_cu_seqlens([0, 3, 3])
    with pytest.raises(ValueError, match="start at 0"):
        position_ids_from_cu_seqlens([1, 3])
    with pytest.raises(ValueError, match="total_len=10 > len"):
        align_loss_mask([0] * 9, seq_start_id=[0], total_len=10)
    with pytest.raises(ValueError, match="must hold 0/1, got 2 at position 1"):
        align_loss_mask([0, 2, 1], seq_start_id=[0])
    with pytest.raises(ValueError, match="non-empty"):
        align_loss_mask([0, 1], seq_start_id=[])
