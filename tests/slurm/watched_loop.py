"""A stand-in training loop for tests/slurm/test_preemption_slurm.py, run as `srun python watched_loop.py <dir>`.

Every rank joins a gloo group from `slurm_env()` alone (no torchrun), counts `STEPS` steps of
0.2 s, and after each one asks the PreemptionWatcher; when it says stop, rank 0 "checkpoints" the
step, every rank waits for that, and `exit_for_requeue()` ends the job. A start resumes from the
checkpointed step. Each start appends `<rank> <start step> <SLURM_RESTART_COUNT>` to starts.txt;
rank 0 writes progress.txt after every step and done.txt at the end.
"""

from __future__ import annotations

import datetime
import os
import sys
import time
from pathlib import Path

import torch.distributed as dist

from nemotron_core.launch.preemption import PreemptionWatcher
from nemotron_core.launch.slurm import slurm_env

STEPS = 60


def main(out: Path) -> None:
    env = slurm_env()
    assert env is not None, "run me with srun -n 2"
    dist.init_process_group("gloo", init_method=f"tcp://{env.master_addr}:{env.master_port}", rank=env.rank,
                            world_size=env.world_size, timeout=datetime.timedelta(seconds=60))
    watcher = PreemptionWatcher().install()
    ckpt = out / "checkpoint.txt"
    step = int(ckpt.read_text()) if ckpt.exists() else 0
    with open(out / "starts.txt", "a") as f:
        f.write(f"{env.rank} {step} {os.environ.get('SLURM_RESTART_COUNT', '0')}\n")
    while step < STEPS:
        time.sleep(0.2)
        step += 1
        if env.rank == 0:
            (out / "progress.txt").write_text(str(step))
        if watcher.requested():
            if env.rank == 0:
                (out / "checkpoint.tmp").write_text(str(step))
                (out / "checkpoint.tmp").rename(ckpt)
            dist.barrier()
            watcher.exit_for_requeue()
    if env.rank == 0:
        (out / "done.txt").write_text(str(step))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
