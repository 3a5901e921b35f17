"""Unit tests for nemotron_core/train/metrics.py: JSONL content, resume, PNG, wandb never imported."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from nemotron_core.config.run import WandbConfig
from nemotron_core.train.metrics import METRIC_NAMES, MetricsLogger, plot_loss_curve, read_metrics
from nemotron_core.train.step import StepResult, moe_load_imbalance

OFF = WandbConfig(mode="disabled")


def result(loss: float) -> StepResult:
    return StepResult(
        loss=loss,
        lm_loss=loss - 0.01,
        moe_aux_loss=0.01,
        grad_norm=0.5,
        lr=1e-3,
        num_trainable_tokens=100,
        num_documents=4,
        num_tokens=200,
        moe_load=torch.tensor([[2.0, 2.0, 2.0, 2.0], [1.0, 3.0, 2.0, 2.0]], dtype=torch.float64),
        time_s=0.5,
    )


def test_moe_load_imbalance():
    # Layer 0 balanced (1.0); layer 1 max 3 / mean 2 = 1.5; the worst layer is reported.
    assert moe_load_imbalance(result(1.0).moe_load) == 1.5


def test_jsonl_records_and_png(tmp_path):
    with MetricsLogger(
        tmp_path,
        metrics_file="metrics.jsonl",
        wandb=OFF,
        run_name="t",
        config={},
        rank=0,
        total_steps=3,
        progress_bar=True,
    ) as logger:
        for step, loss in [(1, 3.0), (2, 2.5), (3, 2.0)]:
            logger.log(step, result(loss).metrics())
        logger.log(3, {"val_loss": 2.2})
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert len(records) == 4
    assert records[0] == {
        "step": 1,
        "loss": 3.0,
        "lm_loss": 2.99,
        "moe_aux_loss": 0.01,
        "lr": 1e-3,
        "grad_norm": 0.5,
        "tokens_per_s": 400.0,
        "trainable_tokens": 100,
        "tokens": 200,
        "documents": 4,
        "moe_load_imbalance": 1.5,
    }
    assert records[3] == {"step": 3, "val_loss": 2.2}
    assert set(METRIC_NAMES) <= set(records[0]) | {"step", "val_loss"}
    png = plot_loss_curve(tmp_path / "metrics.jsonl", tmp_path / "loss.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_resume_drops_records_after_the_checkpoint(tmp_path):
    with MetricsLogger(tmp_path, wandb=OFF, run_name="t", rank=0, progress_bar=False) as logger:
        for step in (1, 2, 3, 4):
            logger.log(step, {"loss": float(step)})
    with MetricsLogger(tmp_path, wandb=OFF, run_name="t", rank=0, progress_bar=False, start_step=2) as logger:
        logger.log(3, {"loss": 30.0})
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "metrics.jsonl")] == [
        (1, 1.0),
        (2, 2.0),
        (3, 30.0),
    ]


def test_other_ranks_write_nothing(tmp_path):
    with MetricsLogger(tmp_path / "run", wandb=WandbConfig(mode="offline"), run_name="t", rank=1) as logger:
        logger.log(1, {"loss": 1.0})
    assert not (tmp_path / "run").exists()


def test_plot_needs_a_loss(tmp_path):
    (tmp_path / "m.jsonl").write_text(json.dumps({"step": 1, "val_loss": 1.0}) + "\n")
    with pytest.raises(ValueError, match="no 'loss' record"):
        plot_loss_curve(tmp_path / "m.jsonl", tmp_path / "x.png")


def test_wandb_disabled_is_never_imported(tmp_path):
    code = textwrap.dedent(
        f"""
        import os, sys
        os.environ.pop("WANDB_MODE", None)
        from nemotron_core.config.run import WandbConfig
        from nemotron_core.train.metrics import MetricsLogger
        with MetricsLogger({str(tmp_path)!r}, wandb=WandbConfig(mode="disabled"), run_name="t", config={{"a": 1}},
                           rank=0, progress_bar=False) as m:
            m.log(1, {{"loss": 1.0}})
        assert "wandb" not in sys.modules, "wandb was imported"
        print("ok")
        """
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "WANDB_MODE"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    with pytest.raises(ValueError, match="logging.wandb.mode"):
        MetricsLogger(tmp_path, wandb=WandbConfig(mode="cloud"), run_name="t", rank=0)
