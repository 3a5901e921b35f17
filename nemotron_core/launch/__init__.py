"""Entry into a parallel layout: start local workers, or join torchrun's / Slurm's process group.

    launch(job, cfg, parallel=..., model=...)   # in a recipe's main(); job(cfg, state) runs on every rank

Who starts the ranks:
- torchrun (RANK / WORLD_SIZE / LOCAL_RANK in the environment): join its group (env://);
- a multi-task Slurm step (SLURM_NTASKS > 1): one rank per task, rendezvous at the first host
  of the job's node list (`nemotron_core.launch.slurm.slurm_env`);
- otherwise, when the layout needs N > 1 ranks: this process starts N local workers itself with
  torch's elastic launch API (spawned processes, rendezvous on a free localhost port) and waits;
  N = 1 runs `job` in this process with no process group.
The layout is validated (`validate_layout`) before anything starts, so an impossible layout fails
in well under a second naming its keys; under torchrun / Slurm dp = -1 is derived from the world
size and checked. Backend: NCCL on CUDA, gloo on CPU (`parallel.backend` overrides).
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
import uuid
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from nemotron_core.config.model import ModelConfig
from nemotron_core.config.parallel import ParallelConfig
from nemotron_core.parallel.memory import validate_layout
from nemotron_core.parallel.mesh import ParallelState, build_parallel_state

log = logging.getLogger("nemotron_core.launch")

BACKENDS = ("auto", "gloo", "nccl")


def _under_torchrun(environ=os.environ) -> bool:
    return "RANK" in environ and "WORLD_SIZE" in environ and "LOCAL_RANK" in environ


def _slurm_env(environ=os.environ):
    if int(environ.get("SLURM_NTASKS", "1") or 1) <= 1:
        return None
    from nemotron_core.launch.slurm import slurm_env

    return slurm_env(environ)


def external_world_size(environ=os.environ) -> int | None:
    """The world size torchrun or a multi-task Slurm step gives this process, else None."""
    if _under_torchrun(environ):
        return int(environ["WORLD_SIZE"])
    env = _slurm_env(environ)
    return env.world_size if env is not None else None


def launch_rank(environ=os.environ) -> int:
    """This process's global rank as its launcher says (torchrun RANK, Slurm SLURM_PROCID), else 0.
    Before the process group exists: for rank-0-only work such as saving the resolved config."""
    if _under_torchrun(environ):
        return int(environ["RANK"])
    env = _slurm_env(environ)
    return env.rank if env is not None else 0


def compute_device(local_rank: int = 0) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _backend(name: str, device: torch.device) -> str:
    if name not in BACKENDS:
        raise ValueError(f"parallel.backend={name!r} is not one of {list(BACKENDS)}")
    if name == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if name == "nccl" and device.type != "cuda":
        raise ValueError("parallel.backend=nccl needs CUDA devices; use parallel.backend=gloo (or auto) on CPU")
    return name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(parallel: ParallelConfig, *, dp: int) -> ParallelState:
    """Initialise the process group from the environment (torchrun, Slurm or a local worker) and
    build this rank's ParallelState. One process with world size 1 gets no process group."""
    environ = os.environ
    slurm = None if _under_torchrun(environ) else _slurm_env(environ)
    if slurm is not None:
        environ.setdefault("MASTER_ADDR", slurm.master_addr)
        environ.setdefault("MASTER_PORT", str(slurm.master_port))
        environ["RANK"], environ["WORLD_SIZE"] = str(slurm.rank), str(slurm.world_size)
        environ["LOCAL_RANK"] = str(slurm.local_rank)
    world = int(environ.get("WORLD_SIZE", "1"))
    device = compute_device(int(environ.get("LOCAL_RANK", "0")))
    if world > 1 and not (dist.is_available() and dist.is_initialized()):
        backend = _backend(parallel.backend, device)
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    return build_parallel_state(pp=parallel.pp, dp=dp, tp=parallel.tp, ep=parallel.ep, fsdp=parallel.fsdp, device=device)


def _worker(job: Callable[[DictConfig, ParallelState], Any], cfg_yaml: str, schema: type | None, parallel: dict, dp: int) -> None:
    torch.set_num_threads(1)  # N workers share the machine's cores
    cfg = OmegaConf.create(cfg_yaml)
    if schema is not None:  # the typed config the parent composed (structured groups)
        cfg = OmegaConf.merge(OmegaConf.structured(schema), cfg)
    state = init_distributed(ParallelConfig(**parallel), dp=dp)
    try:
        job(cfg, state)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def launch(
    job: Callable[[DictConfig, ParallelState], Any],
    cfg: DictConfig,
    *,
    parallel: ParallelConfig,
    model: ModelConfig,
) -> None:
    """Run `job(cfg, state)` on every rank of `parallel` (see the module docstring).

    `cfg` is resolved here (the workers do not have Hydra's runtime), so interpolations such as
    `${nc.job_suffix:}` keep the values of the launching process.
    """
    external = external_world_size()
    dp = validate_layout(model, parallel, world_size=external)  # before anything is allocated
    world = parallel.pp * dp * parallel.tp
    if external is not None or world == 1:
        state = init_distributed(parallel, dp=dp)
        try:
            job(cfg, state)
        finally:
            if external is not None and dist.is_initialized():
                dist.destroy_process_group()
        return

    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    resolved = OmegaConf.to_yaml(OmegaConf.create(OmegaConf.to_container(cfg, resolve=True)))
    log.info("parallel=%s: starting %d local workers (pp %d x dp %d x tp %d, ep %d)",
             parallel.name, world, parallel.pp, dp, parallel.tp, parallel.ep)
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=world,
        run_id=f"nemotron-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d",
        rdzv_endpoint=f"127.0.0.1:{_free_port()}",
        max_restarts=0,
        monitor_interval=0.1,
        start_method="spawn",
    )
    fields = {k: getattr(parallel, k) for k in ParallelConfig.__dataclass_fields__}
    schema = OmegaConf.get_type(cfg)
    elastic_launch(config, _worker)(job, resolved, schema if schema not in (dict, None) else None, fields, dp)


__all__ = ["compute_device", "external_world_size", "init_distributed", "launch", "launch_rank"]
