"""Optimizer and learning-rate schedule schemas (`conf/optimizer/`, `conf/scheduler/`)."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING


@dataclass
class OptimizerConfig:
    name: str = MISSING  # adamw
    lr: float = MISSING  # peak learning rate
    min_lr: float = 0.0  # floor the schedule decays to
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm; <= 0 disables clipping
    implementation: str = "auto"  # auto | fused | foreach | for_loop


@dataclass
class SchedulerConfig:
    name: str = MISSING  # cosine | wsd | constant
    warmup_steps: int = 0  # linear warmup from 0 to optimizer.lr
    # wsd: hold the peak, then decay over the last `decay_fraction` of the steps.
    decay_fraction: float = 0.2
    decay_style: str = "linear"  # wsd decay shape: linear | cosine | minus_sqrt
