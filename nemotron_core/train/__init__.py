"""Layout-agnostic training mechanics every stage's train.py calls: loss normalisation, token
counting, gradient accumulation (`step.py`), schedules, optimizer, metrics."""

from nemotron_core.train.loss import cross_entropy_sum, sequence_losses, token_cross_entropy
from nemotron_core.train.metrics import METRIC_NAMES, MetricsLogger, plot_loss_curve
from nemotron_core.train.optim import build_optimizer, clip_grad_norm, param_groups
from nemotron_core.train.schedule import build_scheduler, lr_at
from nemotron_core.train.step import StepResult, evaluate, grad_accumulation_steps, train_step

__all__ = [
    "METRIC_NAMES",
    "MetricsLogger",
    "StepResult",
    "build_optimizer",
    "build_scheduler",
    "clip_grad_norm",
    "cross_entropy_sum",
    "evaluate",
    "grad_accumulation_steps",
    "lr_at",
    "param_groups",
    "plot_loss_curve",
    "sequence_losses",
    "token_cross_entropy",
    "train_step",
]
