"""Checkpoint-and-requeue on Slurm's warning signal, at a step boundary that every rank agrees on.

    watcher = PreemptionWatcher().install()       # once per rank, in the main thread, before the loop
    ...after every optimizer step:
    if watcher.requested():                       # collective when torch.distributed is initialised
        save_checkpoint(...)
        watcher.exit_for_requeue()                # rank 0 requeues the job; every rank exits

Which signals (read from submitit 1.5, `submitit/core/job_environment.py`, `slurm/slurm.py`):
- submitit submits with `#SBATCH --signal=USR2@<signal_delay_s>`: Slurm sends SIGUSR2 to every
  task of the step that long before the time limit, and `scancel --signal=USR2` sends it on demand
  (the signal is `SUBMITIT_PREEMPT_SIGNAL`, USR2 unless that variable names another). submitit's
  own handler would checkpoint the callable and requeue at once, wherever training happens to be;
  this watcher takes the signal over, only sets a flag, and hands the signal to submitit's handler
  later, from `exit_for_requeue`, once the loop has saved a checkpoint. That handler then does what
  it always does: counts timeouts against `max_num_timeout`, pickles the callable
  (`hydra.launcher`'s `checkpoint`), runs `scontrol requeue <job>` and exits (rank 0 only).
- SIGTERM: Slurm's own stop (preemption, `scontrol requeue`, `scancel`, the time limit) is
  SIGCONT + SIGTERM, then SIGKILL `KillWait` seconds later. The watcher sets the flag too, so the
  loop saves a checkpoint if a step ends in time; it does not requeue (Slurm already decided: a
  requeue or preemption puts the job back itself, a cancel must stay cancelled).
Without submitit (an sbatch script that runs `srun python train.py` with `--signal=USR2@120`)
rank 0 runs `scontrol requeue` itself. Outside Slurm (no SLURM_JOB_ID) the watcher is a no-op:
`install` registers nothing and `requested` is always False.

The requeued job runs the same config, so its `out_dir` is the same and `checkpoint.resume=auto`
continues from the checkpoint saved here.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from typing import NoReturn

log = logging.getLogger("nemotron_core.launch")

__all__ = ["PreemptionWatcher", "requeue_signal"]

_SUBMITIT_SIGNAL_ENV = "SUBMITIT_PREEMPT_SIGNAL"  # submitit.core.job_environment._PREEMPT_SIG_ENV


def requeue_signal(environ: Mapping[str, str] = os.environ) -> signal.Signals:
    """The signal submitit asks Slurm for (`--signal=<it>@<delay>`): SIGUSR2 unless
    SUBMITIT_PREEMPT_SIGNAL names another. Raises ValueError naming the variable if it is unknown."""
    name = environ.get(_SUBMITIT_SIGNAL_ENV, "USR2").strip().upper()
    sig = getattr(signal, "SIG" + name.removeprefix("SIG"), None)
    if not isinstance(sig, signal.Signals):
        raise ValueError(f"{_SUBMITIT_SIGNAL_ENV}={environ[_SUBMITIT_SIGNAL_ENV]!r} is not a signal name (e.g. USR2)")
    return sig


def _slurm_job_id(environ: Mapping[str, str]) -> str | None:
    """The id `scontrol requeue` takes: `<array job>_<task>` for an array task, else SLURM_JOB_ID."""
    if environ.get("SLURM_ARRAY_JOB_ID") and environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{environ['SLURM_ARRAY_JOB_ID']}_{environ['SLURM_ARRAY_TASK_ID']}"
    return environ.get("SLURM_JOB_ID") or None


class PreemptionWatcher:
    """Turns Slurm's timeout/preemption signals into a flag the training loop polls.

    Guarantees (tests/unit/launch/test_preemption.py, tests/slurm/test_preemption_slurm.py):
    - outside Slurm `install()` changes no signal handler and `requested()` is False;
    - after the signal reaches any one rank, the next `requested()` is True on every rank (one
      all-reduce MAX of a single int per call when torch.distributed is initialised, on the
      default group unless `group` is given), and stays True;
    - `exit_for_requeue()` never returns: on rank 0 after the requeue signal it requeues the job
      (submitit's handler when submitit runs this process, else `scontrol requeue`); other ranks
      and the SIGTERM case exit with status 0 so that a KillOnBadExit site does not kill rank 0
      before it has requeued.
    """

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        self._environ = environ
        self._signal: int | None = None  # the first watched signal received
        self._previous: dict[int, Callable | int | None] = {}

    @property
    def active(self) -> bool:
        """Whether this process runs inside a Slurm job (and so is watched once installed)."""
        return _slurm_job_id(self._environ) is not None

    @property
    def signal_received(self) -> int | None:
        """The signal this process received (not the agreement of all ranks: see `requested`)."""
        return self._signal

    def install(self) -> PreemptionWatcher:
        """Take over the requeue signal and SIGTERM (main thread only; a no-op outside Slurm).
        The handlers found there (submitit's) are kept for `exit_for_requeue` and `uninstall`."""
        if not self.active or self._previous:
            return self
        for sig in (requeue_signal(self._environ), signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._on_signal)
        log.info("preemption watcher: %s and SIGTERM checkpoint at the next step (Slurm job %s)",
                 requeue_signal(self._environ).name, _slurm_job_id(self._environ))
        return self

    def uninstall(self) -> None:
        """Put back the handlers `install` replaced."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    def _on_signal(self, signum: int, frame) -> None:
        if self._signal is None or signum == requeue_signal(self._environ):  # the requeue signal wins
            self._signal = signum
        # no logging here: a handler may interrupt a logging call holding its lock
        os.write(2, f"preemption watcher: got {signal.Signals(signum).name}; checkpointing after this step\n".encode())

    def requested(self, group=None) -> bool:
        """True on every rank once any rank received a watched signal (collective when
        torch.distributed is initialised: every rank of `group` must call it at the same step)."""
        if not self.active:
            return False  # the same on every rank: no collective outside Slurm
        local = self._signal is not None
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return local
        import torch

        requeue_sig = requeue_signal(self._environ)
        # 2: the requeue signal, 1: SIGTERM, 0: nothing; MAX so that every rank acts the same way
        kind = 0 if self._signal is None else (2 if self._signal == requeue_sig else 1)
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl" else torch.device("cpu")
        flag = torch.tensor([kind], dtype=torch.int32, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
        agreed = int(flag.item())
        if agreed > kind:  # another rank got a signal first (or the requeue one): act as it will
            self._signal = requeue_sig if agreed == 2 else signal.SIGTERM
        return agreed > 0

    def _rank(self) -> int:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank()
        return int(self._environ.get("SLURM_PROCID", "0") or 0)

    def exit_for_requeue(self) -> NoReturn:
        """Requeue the Slurm job (rank 0, after the requeue signal) and exit this process.
        Call it after the checkpoint is complete on every rank (save_checkpoint's barrier)."""
        rank = self._rank()
        requeue_sig = requeue_signal(self._environ)
        job = _slurm_job_id(self._environ)
        if job is None:
            log.warning("stop requested outside Slurm: exiting without requeue")
            sys.exit(0)
        if rank != 0:
            sys.exit(0)
        if self._signal != requeue_sig:
            log.warning("Slurm is stopping job %s (SIGTERM): checkpoint saved, not requeuing", job)
            sys.exit(0)
        previous = self._previous.get(requeue_sig)
        if callable(previous):  # submitit: pickles the callable, counts timeouts, requeues, exits
            log.warning("requeueing Slurm job %s through submitit's handler", job)
            self.uninstall()
            previous(requeue_sig, None)
            sys.exit(-1)  # submitit's handler exits; a foreign handler that returns gets the same
        log.warning("requeueing Slurm job %s (scontrol requeue)", job)
        proc = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            log.error("scontrol requeue %s failed (%d): %s; the job ends here, resume it by resubmitting",
                      job, proc.returncode, proc.stderr.strip())
            sys.exit(1)
        sys.exit(0)
