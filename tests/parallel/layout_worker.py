"""Runs the real stage-1 recipe (`job(cfg, state)`) under several layouts inside ONE gloo process
group per world size, so a test pays for process start-up once. Used by test_layouts.py."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes/nano3/stage1_sft/train.py"
CONF = ROOT / "conf"


def load_recipe():
    spec = importlib.util.spec_from_file_location("stage1_sft_train", RECIPE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose("stage1_sft", overrides=overrides)


def state_for(cfg, world: int):
    from nemotron_core.config import to_object
    from nemotron_core.parallel import build_parallel_state, check_run

    par = to_object(cfg.parallel)
    dp = check_run(to_object(cfg.model), par, global_batch_size=cfg.train.global_batch_size,
                   micro_batch_size=cfg.train.micro_batch_size, world_size=world)
    return build_parallel_state(pp=par.pp, dp=dp, tp=par.tp, ep=par.ep, fsdp=par.fsdp, device=torch.device("cpu"))


def reshard_logits(cfg, world: int, checkpoint: str, batch_file: str) -> torch.Tensor:
    """Logits of `checkpoint` (saved under any layout) loaded into `cfg`'s layout on this rank."""
    from nemotron_core.checkpoint import load_checkpoint
    from nemotron_core.config import to_object
    from nemotron_core.model.nano3 import build_nano3
    from nemotron_core.parallel import parallelize

    state = state_for(cfg, world)
    model = build_nano3(to_object(cfg.model), seed=999)  # different init: the load must overwrite it
    (model,), _ = parallelize(model, state, model_cfg=to_object(cfg.model))
    load_checkpoint(checkpoint, model=model, optimizer=None, scheduler=None)
    ids = torch.load(batch_file)
    with torch.no_grad():
        return model(ids).logits


def worker(rank: int, world: int, init_file: str, plan_file: str) -> None:
    """plan: {"runs": [[overrides...], ...], "reshard": [{"overrides", "checkpoint", "batch", "out"}]}"""
    torch.set_num_threads(1)
    os.environ.setdefault("WANDB_MODE", "disabled")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        plan = json.loads(Path(plan_file).read_text())
        recipe = load_recipe()
        for overrides in plan.get("runs", []):
            cfg = compose(overrides)
            recipe.job(cfg, state_for(cfg, world))
            dist.barrier()
        for item in plan.get("reshard", []):
            logits = reshard_logits(compose(item["overrides"]), world, item["checkpoint"], item["batch"])
            if rank == 0:
                torch.save(logits, item["out"])
            dist.barrier()
    finally:
        dist.destroy_process_group()
