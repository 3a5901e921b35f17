"""Unit tests for nemotron_core/train/loss.py and the normalisations of train_step, by hand.

The hand-made batch (vocab 4; a stub model's logits are a lookup of the input token):
    row 0: doc A = ids [0 0 0 0], mask [1 1 1 0] -> labels [0 0 0 X]; logits row of token 0 = 0
           (uniform): CE = ln 4 = 2 ln 2 per token, 3 tokens;
           doc B = ids [1 2],     mask [1 0]     -> labels [2 X];     logits row of token 1 =
           [0 0 ln3 0]: p(2) = 3/6, CE = ln 2, 1 token
    row 1: doc C = ids [3 3],     mask [0 0]     -> nothing trainable
    token:    (3 x 2 ln 2 + ln 2) / 4 = 7/4 ln 2 = 1.2130076
    sequence: (2 ln 2 + ln 2) / 2     = 3/2 ln 2 = 1.0397208   (C has no trainable token: left out)
Gradient on the logits row of token 0 (softmax - onehot = [-3/4, 1/4, 1/4, 1/4] per token):
    token:    3 tokens x 1/4 -> [-9/16, 3/16, 3/16, 3/16]
    sequence: 3 tokens x 1/3 (A's mean) x 1/2 (two documents) -> [-3/8, 1/8, 1/8, 1/8]
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from nemotron_core.constants import IGNORE_INDEX
from nemotron_core.data.packed import collate_packed
from nemotron_core.train.loss import cross_entropy_sum, sequence_losses, token_cross_entropy
from nemotron_core.train.step import train_step

LN2 = math.log(2)
ROW0 = {"input_ids": [0, 0, 0, 0, 1, 2], "loss_mask": [1, 1, 1, 0, 1, 0], "seq_start_id": [0, 4]}
ROW1 = {"input_ids": [3, 3], "loss_mask": [0, 0], "seq_start_id": [0]}


class LookupLM(nn.Module):
    """logits[t] = table[input_ids[t]]: a model whose per-token CE we know exactly."""

    def __init__(self):
        super().__init__()
        table = torch.zeros(4, 4)
        table[1, 2] = math.log(3)
        self.table = nn.Parameter(table)

    def forward(self, input_ids, **_):
        return SimpleNamespace(logits=self.table[input_ids], moe_aux_loss=None, moe_load=None)


def test_token_cross_entropy_by_hand():
    batch = collate_packed([ROW0, ROW1])
    assert batch.labels.tolist() == [0, 0, 0, IGNORE_INDEX, 2, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]
    logits = LookupLM().table[batch.input_ids]
    ce = token_cross_entropy(logits, batch.labels)
    assert ce.tolist() == pytest.approx([2 * LN2] * 3 + [0, LN2, 0, 0, 0], abs=1e-6)
    loss_sum, n = cross_entropy_sum(logits, batch.labels)
    assert int(n) == 4 and loss_sum.item() == pytest.approx(7 * LN2, rel=1e-6)
    sums, counts = sequence_losses(logits, batch.labels, batch.doc_ids)
    assert counts.tolist() == [3, 1, 0]
    assert sums.tolist() == pytest.approx([6 * LN2, LN2, 0.0], rel=1e-6)


@pytest.mark.parametrize("split", [[[ROW0, ROW1]], [[ROW0], [ROW1]], [[ROW1], [ROW0]]])
@pytest.mark.parametrize(
    "norm, loss, grad_row0",
    [
        ("token", 7 / 4 * LN2, [-9 / 16, 3 / 16, 3 / 16, 3 / 16]),
        ("sequence", 3 / 2 * LN2, [-3 / 8, 1 / 8, 1 / 8, 1 / 8]),
    ],
)
def test_train_step_normalisation_by_hand(split, norm, loss, grad_row0):
    model = LookupLM()
    before = model.table.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)  # parameter change = -gradient
    r = train_step(model, opt, [collate_packed(rows) for rows in split], normalization=norm, grad_clip=0.0)
    assert r.loss == pytest.approx(loss, rel=1e-6)  # 1.2130076 (token) / 1.0397208 (sequence)
    assert (r.num_trainable_tokens, r.num_documents) == (4, 3)
    grad = (before - model.table.detach())[0]
    assert grad.tolist() == pytest.approx(grad_row0, abs=1e-6)
    assert r.moe_load is None and r.moe_aux_loss == 0.0
