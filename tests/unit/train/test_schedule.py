"""Unit tests for nemotron_core/train/schedule.py: exact learning rates at chosen steps."""

from __future__ import annotations

import math

import pytest
import torch

from nemotron_core.config.optim import SchedulerConfig
from nemotron_core.train.schedule import build_scheduler, lr_at

P, M = 1e-3, 1e-4


def lr(step, total, **sched):
    return lr_at(step, sched=SchedulerConfig(**sched), peak_lr=P, min_lr=M, total_steps=total)


@pytest.mark.parametrize(
    "step, expected",
    [
        (0, 1e-4),  # warmup: P x 1/10, never 0
        (4, 5e-4),
        (9, 1e-3),  # last warmup update at the peak
        (10, 1e-3),  # cosine p = 0
        (35, 1e-4 + 9e-4 * 0.5 * (1 + math.cos(math.pi / 4))),  # p = 1/4: 8.6819805e-4
        (60, 5.5e-4),  # p = 1/2: halfway between peak and floor
        (110, 1e-4),  # reaches min_lr at total_steps
        (500, 1e-4),  # and stays there
    ],
)
def test_cosine(step, expected):
    assert lr(step, 110, name="cosine", warmup_steps=10) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    "style, step, expected",
    [
        ("linear", 50, 1e-3),  # stable phase
        ("linear", 80, 1e-3),  # decay starts at 100 - 0.2 x 100 = 80, p = 0
        ("linear", 90, 5.5e-4),
        ("linear", 100, 1e-4),
        ("cosine", 85, 1e-4 + 9e-4 * 0.5 * (1 + math.cos(math.pi / 4))),  # 8.6819805e-4
        ("cosine", 90, 5.5e-4),
        ("minus_sqrt", 90, 1e-4 + 9e-4 * (1 - math.sqrt(0.5))),  # 3.6360390e-4
        ("minus_sqrt", 82, 1e-4 + 9e-4 * (1 - math.sqrt(0.1))),  # 7.1539501e-4
        ("minus_sqrt", 100, 1e-4),
    ],
)
def test_wsd(style, step, expected):
    got = lr(step, 100, name="wsd", warmup_steps=10, decay_fraction=0.2, decay_style=style)
    assert got == pytest.approx(expected, rel=1e-12)
    assert lr(4, 100, name="wsd", warmup_steps=10, decay_style=style) == pytest.approx(5e-4, rel=1e-12)


def test_constant():
    assert [lr(s, 20, name="constant", warmup_steps=4) for s in range(5)] == pytest.approx(
        [2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3], rel=1e-12
    )
    assert lr(0, 20, name="constant", warmup_steps=0) == P
    assert lr(19, 20, name="constant", warmup_steps=0) == P


def test_invalid_schedules_name_the_keys():
    with pytest.raises(ValueError, match="scheduler.name"):
        lr(0, 10, name="linear")
    with pytest.raises(ValueError, match="scheduler.warmup_steps=10 must be < train.steps=10"):
        lr(0, 10, name="cosine", warmup_steps=10)
    with pytest.raises(ValueError, match="scheduler.decay_style"):
        lr(0, 10, name="wsd", decay_style="exp")
    with pytest.raises(ValueError, match="scheduler.decay_fraction"):
        lr(0, 10, name="wsd", decay_fraction=0.0)


def test_scheduler_follows_lr_at_and_resumes_from_its_state_dict():
    sched = SchedulerConfig(name="cosine", warmup_steps=3)

    def make():
        p = torch.nn.Parameter(torch.zeros(2, 2))
        opt = torch.optim.AdamW([p], lr=P)
        return opt, build_scheduler(opt, sched=sched, peak_lr=P, min_lr=M, total_steps=12)

    opt, s = make()
    seen = []
    for _ in range(7):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        s.step()
    expected = [lr_at(i, sched=sched, peak_lr=P, min_lr=M, total_steps=12) for i in range(7)]
    assert seen == pytest.approx(expected, rel=1e-12)
    assert seen[0] == pytest.approx(P / 3, rel=1e-12) and seen[2] == pytest.approx(P, rel=1e-12)

    state = s.state_dict()
    assert state["last_epoch"] == 7 and state["lr_lambdas"] == [None]  # no function objects
    opt2, s2 = make()
    s2.load_state_dict(state)
    opt2.param_groups[0]["lr"] = s2.get_last_lr()[0]
    assert opt2.param_groups[0]["lr"] == pytest.approx(
        lr_at(7, sched=sched, peak_lr=P, min_lr=M, total_steps=12)
    )
    opt.step()
    s.step()
    opt2.step()
    s2.step()
    assert (
        opt2.param_groups[0]["lr"]
        == opt.param_groups[0]["lr"]
        == pytest.approx(lr_at(8, sched=sched, peak_lr=P, min_lr=M, total_steps=12), rel=1e-12)
    )
