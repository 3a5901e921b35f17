"""Per-document mask alignment and the boundary arrays of a packed row.

A packed row holds documents back to back; `seq_start_id` lists each document's start offset
(the first is 0, the end is not listed). The role mask says which tokens were written by the
assistant (1: trained). Data prep aligns it once, per document, so that `loss_mask[j]` says whether
the label `input_ids[j + 1]` counts; a document's last position is always 0, so no label crosses a
document boundary. Readers use the aligned mask as is and never roll again.

    row of 9 tokens, seq_start_id [0, 3, 5]  ->  documents [0,3) [3,5) [5,9)
    cu_seqlens   [0, 3, 5, 9]
    position_ids [0, 1, 2, 0, 1, 0, 1, 2, 3]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _check_starts(seq_start_id: Sequence[int] | np.ndarray, total_len: int) -> np.ndarray:
    starts = np.asarray(seq_start_id)
    if starts.ndim != 1 or starts.size == 0:
        raise ValueError(f"seq_start_id must be a non-empty 1-D sequence, got shape {starts.shape}")
    if starts.dtype.kind not in "iu":
        raise TypeError(f"seq_start_id must be integers, got dtype {starts.dtype}")
    starts = starts.astype(np.int64)
    if starts[0] != 0:
        raise ValueError(f"seq_start_id must start at 0, got {int(starts[0])}")
    steps = np.diff(starts)
    if steps.size and steps.min() <= 0:
        k = int(np.flatnonzero(steps <= 0)[0]) + 1
        raise ValueError(
            f"seq_start_id must be strictly increasing: seq_start_id[{k}]={int(starts[k])} "
            f"<= seq_start_id[{k - 1}]={int(starts[k - 1])}"
        )
    if starts[-1] >= total_len:
        raise ValueError(
            f"seq_start_id[{starts.size - 1}]={int(starts[-1])} >= total_len={total_len}: "
            "every document needs at least one token"
        )
    return starts


def cu_seqlens_from_seq_start_id(
    seq_start_id: Sequence[int] | np.ndarray, total_len: int, *, pad_to: int | None = None
) -> np.ndarray:
    """Cumulative document boundaries of one packed row.

    Guarantees: returns int32 [n_docs + 1] = seq_start_id followed by total_len (e.g. [0, 3, 5]
    in a row of 9 -> [0, 3, 5, 9]); strictly increasing. With `pad_to > total_len`, the padding
    [total_len, pad_to) is one more segment: [..., total_len, pad_to]; `pad_to == total_len` adds
    nothing.

    Args:
        seq_start_id: [n_docs] start offsets, 0 first, strictly increasing.
        total_len: tokens of the row (end of the last document).
        pad_to: length the row is padded to (e.g. pack_size for fixed shapes), or None.

    Raises:
        ValueError: when seq_start_id does not start at 0, is not strictly increasing, or has a
            start >= total_len; when pad_to < total_len.
    """
    total_len = int(total_len)
    starts = _check_starts(seq_start_id, total_len)
    ends = [total_len]
    if pad_to is not None:
        if pad_to < total_len:
            raise ValueError(f"pad_to={pad_to} < total_len={total_len}")
        if pad_to > total_len:
            ends.append(int(pad_to))
    return np.concatenate([starts, np.asarray(ends, dtype=np.int64)]).astype(np.int32)


def position_ids_from_cu_seqlens(cu_seqlens: Sequence[int] | np.ndarray) -> np.ndarray:
    """Positions restarting at 0 in every segment.

    Guarantees: returns int64 [cu_seqlens[-1]] with `pos[j] = j - cu_seqlens[d]` for j in segment
    d (e.g. [0, 3, 5, 9] -> [0, 1, 2, 0, 1, 0, 1, 2, 3]).

    Raises:
        ValueError: when cu_seqlens does not start at 0 or is not strictly increasing.
    """
    cu = np.asarray(cu_seqlens).astype(np.int64)
    if cu.ndim != 1 or cu.size < 1 or cu[0] != 0:
        raise ValueError(f"cu_seqlens must be 1-D and start at 0, got {cu_seqlens!r}")
    lengths = np.diff(cu)
    if lengths.size and lengths.min() <= 0:
        raise ValueError(f"cu_seqlens must be strictly increasing, got {cu.tolist()}")
    total = int(cu[-1])
    return np.arange(total, dtype=np.int64) - np.repeat(cu[:-1], lengths)


def align_loss_mask(
    role_mask: Sequence[int] | np.ndarray,
    *,
    seq_start_id: Sequence[int] | np.ndarray,
    total_len: int | None = None,
) -> np.ndarray:
    """Align a packed row's role mask to labels, per document.

    Guarantees: for each document [s, e) (from seq_start_id and total_len),
    `loss_mask[j] = role_mask[j + 1]` for s <= j < e - 1 and `loss_mask[e - 1] = 0`; positions at or
    after total_len (padding) are 0. So `loss_mask[j]` says whether label `input_ids[j + 1]` counts,
    and no mask reaches across a document boundary. Returns uint8 [len(role_mask)]; vectorised
    (no Python loop over documents or tokens).

    Args:
        role_mask: [T] 0/1 per token (1: written by the assistant, trained).
        seq_start_id: [n_docs] document start offsets, 0 first, strictly increasing.
        total_len: end of the last document; defaults to T.

    Raises:
        ValueError: when role_mask is not 1-D or holds values other than 0/1; when total_len > T;
            for seq_start_id problems (see `cu_seqlens_from_seq_start_id`).
    """
    role = np.asarray(role_mask)
    if role.ndim != 1:
        raise ValueError(f"role_mask must be 1-D, got shape {role.shape}")
    if role.size and not np.isin(role, (0, 1)).all():
        bad = int(np.flatnonzero(~np.isin(role, (0, 1)))[0])
        raise ValueError(f"role_mask must hold 0/1, got {role[bad].item()!r} at position {bad}")
    n = role.size
    total = n if total_len is None else int(total_len)
    if total > n:
        raise ValueError(f"total_len={total} > len(role_mask)={n}")
    starts = _check_starts(seq_start_id, total)
    out = np.zeros(n, dtype=np.uint8)
    out[: total - 1] = role[1:total]
    ends = np.append(starts[1:], total)
    out[ends - 1] = 0
    return out
