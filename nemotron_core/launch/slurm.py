"""Rank layout of a multi-task Slurm step, read from the environment: no torchrun, no scontrol.

    env = slurm_env()          # None unless this process is one task of a step with SLURM_NTASKS > 1
    env.rank, env.world_size, env.master_addr, env.master_port

One rank per Slurm task (`srun`, or submitit's `srun` with `tasks_per_node` = ranks per node):
rank = SLURM_PROCID, local rank = SLURM_LOCALID, world size = SLURM_NTASKS, node rank =
SLURM_NODEID. The rendezvous host is the first host of the step's node list (task 0 runs there);
the port is a function of the job id, so every task of the job, and the same job after a requeue,
computes the same one without talking to the others. MASTER_ADDR / MASTER_PORT, when already set,
win (a site's wrapper script may choose them).

Guarantees (tests/unit/launch/test_slurm_env.py): `expand_hostlist("node[01-04,07],gpu-a1")` is
the six hosts in that order with zero padding kept; `master_port_for_job(j)` is
`20000 + j % 10000`, so in [20000, 29999]: unprivileged and below Linux's ephemeral range (32768+);
a malformed variable raises ValueError naming it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["PORT_BASE", "PORT_SPAN", "SlurmEnv", "expand_hostlist", "master_port_for_job", "slurm_env"]

PORT_BASE = 20000  # torch's default 29500 lies inside; Linux's ephemeral ports start at 32768
PORT_SPAN = 10000
# Step ids Slurm uses for the batch script, the extern and interactive steps, pending steps
# (0xfffffff0 and above): a process there is not one task of a parallel step.
_SPECIAL_STEP_IDS = 0xFFFFFFF0
_BRACKETS = re.compile(r"\[([^\[\]]*)\]")


@dataclass(frozen=True)
class SlurmEnv:
    rank: int  # SLURM_PROCID
    local_rank: int  # SLURM_LOCALID
    world_size: int  # SLURM_NTASKS
    local_world_size: int  # tasks of this step on this node (SLURM_STEP_TASKS_PER_NODE)
    node_rank: int  # SLURM_NODEID
    master_addr: str  # MASTER_ADDR, else the first host of the step's node list
    master_port: int  # MASTER_PORT, else master_port_for_job(job_id)
    job_id: int  # SLURM_JOB_ID (unique per array task)


def _int(environ: Mapping[str, str], name: str, *, minimum: int = 0) -> int:
    value = environ.get(name)
    if value is None:
        raise ValueError(f"{name} is not set; a Slurm step sets it for every task (is this process started by srun?)")
    try:
        number = int(value.strip())
    except ValueError:
        raise ValueError(f"{name}={value!r} is not an integer") from None
    if number < minimum:
        raise ValueError(f"{name}={value!r} must be >= {minimum}")
    return number


def _split_top_level(text: str, *, name: str) -> list[str]:
    """Split on commas outside brackets: "a[1,2],b" -> ["a[1,2]", "b"]."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
            if depth > 1:
                raise ValueError(f"{name}={text!r}: nested '[' at character {i}")
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"{name}={text!r}: ']' without '[' at character {i}")
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth != 0:
        raise ValueError(f"{name}={text!r}: '[' is never closed")
    parts.append(text[start:])
    return parts


def _expand_range_list(body: str, *, text: str, name: str) -> list[str]:
    """ "01-03,07" -> ["01", "02", "03", "07"] (the width of the lower bound is kept)."""
    out = []
    for item in body.split(","):
        lo, sep, hi = item.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f"{name}={text!r}: {item!r} inside [...] is not N or N-M")
        if not sep:
            out.append(lo)
            continue
        if int(hi) < int(lo):
            raise ValueError(f"{name}={text!r}: range {item!r} runs backwards")
        out.extend(str(n).zfill(len(lo)) for n in range(int(lo), int(hi) + 1))
    return out


def expand_hostlist(hostlist: str, *, name: str = "SLURM_JOB_NODELIST") -> list[str]:
    """Slurm's compressed host list -> host names, in order, as `scontrol show hostnames` prints.

    "node[01-04,07],gpu-a1" -> node01 node02 node03 node04 node07 gpu-a1; several bracket groups
    in one name expand as a product, left to right ("r[1-2]n[1-2]" -> r1n1 r1n2 r2n1 r2n2).
    Raises ValueError naming `name` for empty names, unbalanced or nested brackets, bad ranges.
    """
    text = hostlist.strip()
    if not text:
        raise ValueError(f"{name} is empty")
    hosts: list[str] = []
    for part in _split_top_level(text, name=name):
        if not part:
            raise ValueError(f"{name}={hostlist!r}: empty host name between commas")
        expanded = [""]
        pos = 0
        for m in _BRACKETS.finditer(part):
            prefix = part[pos : m.start()]
            choices = _expand_range_list(m.group(1), text=hostlist, name=name)
            expanded = [e + prefix + c for e in expanded for c in choices]
            pos = m.end()
        expanded = [e + part[pos:] for e in expanded]
        hosts.extend(expanded)
    return hosts


def _tasks_per_node(spec: str, *, name: str) -> list[int]:
    """SLURM_TASKS_PER_NODE form "2(x3),1" -> [2, 2, 2, 1]."""
    counts = []
    for item in spec.split(","):
        m = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", item)
        if m is None:
            raise ValueError(f"{name}={spec!r}: {item!r} is not N or N(xM)")
        counts.extend([int(m.group(1))] * int(m.group(2) or 1))
    return counts


def master_port_for_job(job_id: int) -> int:
    """The rendezvous port of a job: `PORT_BASE + job_id % PORT_SPAN`, the same on every node and
    after a requeue; jobs sharing a node (a sweep's array tasks) get different ports unless
    their ids differ by a multiple of PORT_SPAN."""
    return PORT_BASE + job_id % PORT_SPAN


def _in_parallel_step(environ: Mapping[str, str]) -> bool:
    """True inside an srun step; False in the batch script, salloc's shell or outside Slurm
    (those have SLURM_NTASKS, even SLURM_PROCID=0, but only one process)."""
    if "SLURM_PROCID" not in environ or "SLURM_NTASKS" not in environ:
        return False
    step = environ.get("SLURM_STEP_ID", "").strip()
    if not step or step in ("batch", "extern", "interactive"):
        return False
    return not (step.isdigit() and int(step) >= _SPECIAL_STEP_IDS)


def slurm_env(environ: Mapping[str, str] = os.environ) -> SlurmEnv | None:
    """This task's place in a multi-task Slurm step, or None outside one (no Slurm, the batch
    script itself, or a step of a single task).

    Raises ValueError naming the variable when one is missing or malformed, or when they
    disagree (SLURM_PROCID >= SLURM_NTASKS, SLURM_LOCALID >= the tasks on this node).
    """
    if not _in_parallel_step(environ):
        return None
    world_size = _int(environ, "SLURM_NTASKS", minimum=1)
    if world_size == 1:
        return None
    rank = _int(environ, "SLURM_PROCID")
    if rank >= world_size:
        raise ValueError(f"SLURM_PROCID={rank} is not below SLURM_NTASKS={world_size}")
    local_rank = _int(environ, "SLURM_LOCALID")
    node_rank = _int(environ, "SLURM_NODEID") if "SLURM_NODEID" in environ else 0
    job_id = _int(environ, "SLURM_JOBID" if "SLURM_JOB_ID" not in environ and "SLURM_JOBID" in environ else "SLURM_JOB_ID")

    per_node_name = "SLURM_STEP_TASKS_PER_NODE" if "SLURM_STEP_TASKS_PER_NODE" in environ else "SLURM_TASKS_PER_NODE"
    if per_node_name in environ:
        per_node = _tasks_per_node(environ[per_node_name], name=per_node_name)
        if node_rank >= len(per_node):
            raise ValueError(f"SLURM_NODEID={node_rank} but {per_node_name}={environ[per_node_name]!r} lists {len(per_node)} nodes")
        local_world_size = per_node[node_rank]
    else:
        local_world_size = world_size
    if local_rank >= local_world_size:
        raise ValueError(f"SLURM_LOCALID={local_rank} is not below the {local_world_size} tasks on this node ({per_node_name})")

    if environ.get("MASTER_ADDR"):
        master_addr = environ["MASTER_ADDR"]
    else:
        # the step's nodes: task 0 runs on the first; the job's list when the step does not say
        list_name = "SLURM_STEP_NODELIST" if environ.get("SLURM_STEP_NODELIST") else "SLURM_JOB_NODELIST"
        if not environ.get(list_name):
            raise ValueError("SLURM_JOB_NODELIST is not set; set MASTER_ADDR or run under srun")
        master_addr = expand_hostlist(environ[list_name], name=list_name)[0]
    if environ.get("MASTER_PORT"):
        master_port = _int(environ, "MASTER_PORT", minimum=1)
        if master_port > 65535:
            raise ValueError(f"MASTER_PORT={master_port} is not a TCP port (1-65535)")
    else:
        master_port = master_port_for_job(job_id)
    return SlurmEnv(
        rank=rank, local_rank=local_rank, world_size=world_size, local_world_size=local_world_size,
        node_rank=node_rank, master_addr=master_addr, master_port=master_port, job_id=job_id,
    )
