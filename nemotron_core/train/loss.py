"""Cross-entropy over already-shifted labels: the one place token losses are computed.

Every stage's loss goes through `token_cross_entropy`: it is the seam where a tensor-parallel
change plugs in vocab-sharded logits (a vocab-parallel CE returning the same per-token values),
and nothing else here needs to change.

Labels are aligned by the data reader (`labels[j]` is the token after `j`, `IGNORE_INDEX` where
the loss mask is 0); nothing here shifts or rolls them again.

How the train step normalises (see `nemotron_core/train/step.py`):
    token:    sum of token CE over the optimizer step / trainable tokens of the step
    sequence: mean over the step's documents with >= 1 trainable token of each document's mean CE

Example (tests/unit/train/test_loss.py): doc A has 3 trainable tokens of CE 2 ln 2, doc B one of
CE ln 2, doc C none. token = (3 x 2 ln 2 + ln 2) / 4 = 7/4 ln 2 = 1.21301;
sequence = (2 ln 2 + ln 2) / 2 = 3/2 ln 2 = 1.03972.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nemotron_core.constants import IGNORE_INDEX


def token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy in fp32, 0 where `labels == IGNORE_INDEX`.

    Args:
        logits: [T, V] (any float dtype; computed in fp32), or [..., V] with labels [...].
        labels: [T] int64 targets, already shifted.

    Returns:
        [T] fp32 CE (gradient flows to `logits`).
    """
    flat = logits.reshape(-1, logits.shape[-1]).float()
    return F.cross_entropy(flat, labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none")


def cross_entropy_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of token CE over labels != IGNORE_INDEX, number of those tokens).

    The sum is NOT divided by anything: the caller divides by the trainable tokens of the whole
    optimizer step (all micro-batches, all data-parallel ranks).

    Args:
        logits: [T, V]; labels: [T] (already shifted, IGNORE_INDEX to skip).

    Returns:
        (loss_sum fp32 scalar with grad, num_tokens int64 scalar).
    """
    return token_cross_entropy(logits, labels).sum(), (labels != IGNORE_INDEX).sum()


def sequence_losses(
    logits: torch.Tensor,
    labels: torch.Tensor,
    doc_ids: torch.Tensor,
    *,
    num_docs: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-document (sum of token CE, trainable-token count); the mean of doc d is sum[d] / count[d].

    Documents with count 0 (nothing trainable, or a padding segment) have sum 0 and must be left
    out of any mean (`step.py` does).

    Args:
        logits: [T, V]; labels: [T]; doc_ids: [T] segment index per token (`PackedBatch.doc_ids`).
        num_docs: number of segments S (default: doc_ids.max() + 1).

    Returns:
        (loss_sum [S] fp32 with grad, num_tokens [S] int64).
    """
    ce = token_cross_entropy(logits, labels)
    doc = doc_ids.reshape(-1).to(device=ce.device, dtype=torch.long)
    s = int(doc.max()) + 1 if num_docs is None else int(num_docs)
    sums = ce.new_zeros(s).index_add(0, doc, ce)
    valid = (labels.reshape(-1) != IGNORE_INDEX).to(device=ce.device, dtype=torch.long)
    counts = torch.zeros(s, dtype=torch.long, device=ce.device).index_add(0, doc, valid)
    return sums, counts


def sequence_mean_sum(doc_loss_sum: torch.Tensor, doc_num_tokens: torch.Tensor) -> torch.Tensor:
    """Sum over documents with >= 1 trainable token of each document's mean CE (scalar, with grad)."""
    keep = doc_num_tokens > 0
    means = doc_loss_sum / doc_num_tokens.clamp(min=1).to(doc_loss_sum.dtype)
    return torch.where(keep, means, torch.zeros_like(means)).sum()
