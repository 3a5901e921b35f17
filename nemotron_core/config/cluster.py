"""Slurm cluster schema (`conf/cluster/`) and the resolvers that map it onto `conf/hydra/launcher/`.

A `cluster/` option describes where jobs run: partition, account, nodes, GPUs, limits, the shell
lines that prepare a node, a container. `conf/hydra/launcher/submitit_slurm.yaml` maps it onto
hydra-submitit-launcher's `SlurmQueueConf` by interpolation, so a run picks both with

    python recipes/nano3/stage1_sft/train.py -m hydra/launcher=submitit_slurm cluster=my_cluster parallel=tp4pp2

One rank per Slurm task: `tasks_per_node` is the ranks per node (the GPUs per node on GPU nodes),
and world size = nodes x tasks_per_node must be the layout's pp x dp x tp (checked by
`validate_cluster` when the sweep is submitted, and again from the Slurm environment when the job
starts). A data_prep job is one task on one node without GPUs, whatever the cluster.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf

from nemotron_core.config.parallel import ParallelConfig


@dataclass
class ClusterConfig:
    name: str = MISSING
    partition: str | None = None  # --partition; None: the cluster's default partition
    account: str | None = None  # --account
    qos: str | None = None  # --qos
    constraint: str | None = None  # --constraint, e.g. "h100"
    nodes: int = 1
    gpus_per_node: int | None = None  # --gpus-per-node; None on CPU nodes (no GPU request at all)
    tasks_per_node: int = 1  # ranks per node, one rank per task: gpus_per_node on GPU nodes
    cpus_per_task: int | None = None  # --cpus-per-task (data loading, CPU threads of one rank)
    mem_gb: int | None = None  # --mem per node in GB; None: the partition's default
    time_min: int = 60  # --time in minutes; submitit sends SIGUSR2 signal_delay_s before it ends
    setup: list[str] = field(default_factory=list)  # shell lines in the sbatch script before srun
    container: str | None = None  # pyxis/enroot image: srun --container-image=<it>
    container_mounts: str | None = None  # srun --container-mounts=<it> (with `container`)
    srun_args: list[str] = field(default_factory=list)  # extra srun flags, e.g. ["--mpi=pmix"]
    sbatch_args: dict[str, Any] = field(default_factory=dict)  # extra #SBATCH flags, e.g. {exclusive: true}


def slurm_setup(setup: list[str] | None, container: str | None, container_mounts: str | None, srun_args: list[str] | None) -> str:
    """The batch script's setup block of a cluster: its `setup` lines, then, when the cluster has a
    container or extra srun flags, a shell function `srun` that adds them to submitit's own srun
    line (hydra-submitit-launcher's SlurmQueueConf has no srun_args field; the function runs in
    the batch script only, before that line). Resolver `${nc.slurm_setup:...}` in
    conf/hydra/launcher/submitit_slurm.yaml; one string, so that it is one element of `setup`."""
    flags = []
    if container:
        flags.append(f"--container-image={container}")
        if container_mounts:
            flags.append(f"--container-mounts={container_mounts}")
    elif container_mounts:
        raise ValueError(f"cluster.container_mounts={container_mounts!r} needs cluster.container (an image)")
    flags += [str(a) for a in (srun_args or [])]
    lines = [str(line) for line in (setup or [])]
    if flags:
        lines.append(f'srun() {{ command srun {shlex.join(flags)} "$@"; }}  # cluster.container / cluster.srun_args')
    return "\n".join(lines)


def validate_cluster(cluster: ClusterConfig, parallel: ParallelConfig | None = None) -> int:
    """The Slurm world size (nodes x tasks_per_node), after checking the cluster against itself and
    against `parallel` (pp x dp x tp, or a multiple of pp x tp when dp = -1).
    Raises ValueError naming the config keys."""
    if cluster.nodes < 1 or cluster.tasks_per_node < 1:
        raise ValueError(f"cluster.nodes={cluster.nodes} and cluster.tasks_per_node={cluster.tasks_per_node} must be >= 1")
    if cluster.gpus_per_node is not None and cluster.gpus_per_node > 0 and cluster.tasks_per_node != cluster.gpus_per_node:
        raise ValueError(
            f"cluster.tasks_per_node={cluster.tasks_per_node} but cluster.gpus_per_node={cluster.gpus_per_node}: "
            "one rank per task and one GPU per rank, so they must be equal"
        )
    world = cluster.nodes * cluster.tasks_per_node
    if parallel is not None:
        model_parallel = parallel.pp * parallel.tp
        if parallel.dp > 0 and parallel.world_size() != world:
            raise ValueError(
                f"parallel={parallel.name} needs pp x dp x tp = {parallel.world_size()} ranks but cluster.nodes x "
                f"cluster.tasks_per_node = {cluster.nodes} x {cluster.tasks_per_node} = {world}"
            )
        if parallel.dp <= 0 and world % model_parallel:
            raise ValueError(
                f"parallel={parallel.name} (dp=-1) needs a multiple of pp x tp = {model_parallel} ranks but cluster.nodes x "
                f"cluster.tasks_per_node = {world}"
            )
    return world


SINGLE_TASK_JOBS = ("data_prep",)  # scripts that are one process (with their own worker pool)


def slurm_resources(key: str, cluster: DictConfig, parallel: DictConfig, job_name: str) -> int | None:
    """`nodes`, `tasks_per_node` or `gpus_per_node` of a job, for conf/hydra/launcher/submitit_slurm.yaml
    (resolver `${nc.slurm:<key>,${cluster},${parallel},${hydra.job.name}}`).

    A training job gets the cluster's values once `validate_cluster` accepts them with the layout,
    so a layout that does not fit fails when the sweep is submitted, not after waiting in the queue.
    A data_prep job is one process: one node, one task, no GPU, whatever the cluster and layout.
    """
    if key not in ("nodes", "tasks_per_node", "gpus_per_node"):
        raise ValueError(f"nc.slurm: unknown key {key!r} (nodes | tasks_per_node | gpus_per_node)")
    if job_name in SINGLE_TASK_JOBS:
        return {"nodes": 1, "tasks_per_node": 1, "gpus_per_node": None}[key]
    c = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ClusterConfig), cluster))
    p = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ParallelConfig), parallel))
    validate_cluster(c, p)
    return getattr(c, key)
