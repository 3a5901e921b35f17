"""PreemptionWatcher under a real Slurm, with a stand-in loop (watched_loop.py) of two srun tasks:
SIGUSR2 (what submitit's `--signal` sends before the time limit) -> checkpoint, rank 0 requeues
with scontrol; `scontrol requeue` (Slurm's SIGTERM) -> checkpoint, Slurm requeues; each start
resumes from the step checkpointed last, and the job completes."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def _wait(predicate, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


def _int(path: Path) -> int:
    return int(path.read_text() or 0) if path.exists() else 0


def _starts(out: Path) -> list[tuple[int, int, int]]:
    if not (out / "starts.txt").exists():
        return []
    return sorted(tuple(map(int, line.split())) for line in (out / "starts.txt").read_text().splitlines())


@pytest.mark.slow
def test_watcher_checkpoints_then_the_job_is_requeued_and_resumes(slurm, tmp_path):
    script = tmp_path / "job.sh"
    script.write_text(f"""#!/bin/bash
#SBATCH --ntasks=2
#SBATCH --cpus-per-task=1
#SBATCH --mem=2G
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output={tmp_path}/slurm-%j.out
srun {sys.executable} {HERE / "watched_loop.py"} {tmp_path}
""")
    job = slurm.run("sbatch", "--parsable", f"--chdir={tmp_path}", str(script)).stdout.strip()
    log = lambda: (tmp_path / f"slurm-{job}.out").read_text() if (tmp_path / f"slurm-{job}.out").exists() else ""  # noqa: E731

    # 1. the requeue signal: the watcher flags it, rank 0 checkpoints, then requeues the job itself
    _wait(lambda: _int(tmp_path / "progress.txt") >= 5, f"5 steps\n{log()}")
    slurm.run("scancel", "--signal=USR2", job)
    slurm.wait_for(job, ("PENDING",), timeout=60)
    first = _int(tmp_path / "checkpoint.txt")
    assert 5 <= first < 60, log()
    slurm.start_now(job)

    # 2. Slurm's own requeue (SIGTERM, SIGKILL KillWait=10 s later): checkpoint, exit; Slurm requeues
    _wait(lambda: len(_starts(tmp_path)) == 4 and _int(tmp_path / "progress.txt") >= first + 5, f"the restart\n{log()}")
    slurm.run("scontrol", "requeue", job)
    slurm.wait_for(job, ("PENDING",), timeout=60)
    second = _int(tmp_path / "checkpoint.txt")
    assert first + 5 <= second < 60, log()
    slurm.start_now(job)

    slurm.wait_for(job, ("COMPLETED",), timeout=180)
    assert _starts(tmp_path) == [(0, 0, 0), (0, first, 1), (0, second, 2), (1, 0, 0), (1, first, 1), (1, second, 2)], log()
    assert _int(tmp_path / "done.txt") == 60
    assert slurm.job_field(job, "Restarts") == "2"
