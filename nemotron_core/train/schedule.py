"""Learning-rate schedules: cosine, warmup-stable-decay (wsd) and constant, all with linear warmup.

`step` is the 0-based index of the optimizer update the lr is used for (step 0 = first update).
With W = warmup_steps, N = total_steps, P = peak_lr, m = min_lr:

    warmup (step < W):   P x (step + 1) / W          first update P / W (never a wasted 0-lr step),
                                                      update W - 1 is at P
    cosine (step >= W):  m + (P - m) x (1 + cos(pi x p)) / 2,  p = (step - W) / (N - W)
    wsd:                 P until the decay starts at S = N - round(decay_fraction x N), then for
                         p = (step - S) / (N - S):  linear   P - (P - m) x p
                                                    cosine   m + (P - m) x (1 + cos(pi x p)) / 2
                                                    minus_sqrt  m + (P - m) x (1 - sqrt(p))
    constant:            P after warmup

Both decays reach m at step N (one past the last update N - 1, as Megatron's `decay_steps`), and
stay at m after it. Exact values are tested in tests/unit/train/test_schedule.py, e.g. cosine with
W = 10, N = 110, P = 1e-3, m = 1e-4: step 0 -> 1e-4, step 9 -> 1e-3, step 60 -> 5.5e-4,
step 110 -> 1e-4.
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from nemotron_core.config.optim import SchedulerConfig

SCHEDULES = ("cosine", "wsd", "constant")
DECAY_STYLES = ("linear", "cosine", "minus_sqrt")


def validate_schedule(sched: SchedulerConfig, *, total_steps: int) -> None:
    """Raise ValueError, naming the config keys, when the schedule cannot run for `total_steps`."""
    if sched.name not in SCHEDULES:
        raise ValueError(f"scheduler.name={sched.name!r} is not one of {list(SCHEDULES)}")
    if total_steps < 1:
        raise ValueError(f"train.steps={total_steps} must be >= 1")
    if sched.warmup_steps < 0:
        raise ValueError(f"scheduler.warmup_steps={sched.warmup_steps} must be >= 0")
    if sched.name == "cosine" and sched.warmup_steps >= total_steps:
        raise ValueError(
            f"scheduler.warmup_steps={sched.warmup_steps} must be < train.steps={total_steps} for a cosine schedule"
        )
    if sched.name == "wsd":
        if sched.decay_style not in DECAY_STYLES:
            raise ValueError(
                f"scheduler.decay_style={sched.decay_style!r} is not one of {list(DECAY_STYLES)}"
            )
        if not 0.0 < sched.decay_fraction <= 1.0:
            raise ValueError(f"scheduler.decay_fraction={sched.decay_fraction} must be in (0, 1]")
        start = _wsd_decay_start(sched, total_steps)
        if sched.warmup_steps > start or start >= total_steps:
            raise ValueError(
                f"scheduler.warmup_steps={sched.warmup_steps} and scheduler.decay_fraction={sched.decay_fraction} "
                f"leave no valid decay for train.steps={total_steps} (decay would start at step {start})"
            )


def _wsd_decay_start(sched: SchedulerConfig, total_steps: int) -> int:
    return total_steps - int(round(sched.decay_fraction * total_steps))


def lr_at(step: int, *, sched: SchedulerConfig, peak_lr: float, min_lr: float, total_steps: int) -> float:
    """The learning rate of optimizer update `step` (0-based); formulas in the module docstring.

    Raises:
        ValueError: for an unknown schedule or decay style, a negative step, or a schedule that does
            not fit `total_steps` (see `validate_schedule`).
    """
    validate_schedule(sched, total_steps=total_steps)
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    w = sched.warmup_steps
    if step < w:
        return peak_lr * (step + 1) / w
    if sched.name == "constant":
        return peak_lr
    if sched.name == "cosine":
        p = min(1.0, (step - w) / (total_steps - w))
        return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * p))
    # wsd
    start = _wsd_decay_start(sched, total_steps)
    if step < start:
        return peak_lr
    p = min(1.0, (step - start) / (total_steps - start))
    if sched.decay_style == "linear":
        return peak_lr - (peak_lr - min_lr) * p
    if sched.decay_style == "cosine":
        return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * p))
    return min_lr + (peak_lr - min_lr) * (1.0 - math.sqrt(p))


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    sched: SchedulerConfig,
    peak_lr: float,
    min_lr: float,
    total_steps: int,
) -> LambdaLR:
    """A `LambdaLR` that sets each group's lr to `initial_lr x lr_at(step) / peak_lr`.

    Built with the optimizer's groups at `peak_lr` (as `build_optimizer` leaves them), every group
    gets exactly `lr_at(step)` (to fp rounding: 1e-15 relative); a group created with another lr
    keeps its ratio to the peak. The lr is already set for step 0 on return; call
    `scheduler.step()` after each `optimizer.step()`.

    Checkpointing: `state_dict()` holds `last_epoch` (= updates done), `base_lrs` and `_last_lr`
    (no function objects); restore it together with the optimizer's state dict (whose groups
    hold the current lr): the next update then uses `lr_at(last_epoch)`. The
    formula itself comes from the config, so a resumed run follows the config it is given.

    Raises:
        ValueError: as `validate_schedule`, or for peak_lr <= 0.
    """
    validate_schedule(sched, total_steps=total_steps)
    if peak_lr <= 0:
        raise ValueError(f"optimizer.lr={peak_lr} must be > 0")

    def factor(step: int) -> float:
        return lr_at(step, sched=sched, peak_lr=peak_lr, min_lr=min_lr, total_steps=total_steps) / peak_lr

    return LambdaLR(optimizer, lr_lambda=factor)
