"""Helpers for tests/slurm: a real one-node Slurm on localhost (no mocks), and recipe submission.

The session fixture `slurm` (conftest.py) installs Debian's `slurmctld slurmd slurm-client munge` with apt-get
when they are missing, writes a `slurm.conf` into a temporary directory, starts a private munged
(its own key and socket), slurmctld and slurmd (`-f <conf>`, their own ports), waits until the
node is idle and yields a `LocalSlurm` whose `env` points clients at it (`SLURM_CONF`). Afterwards
it cancels what is left in its queue and stops the three daemons by PID. Where that cannot be done
(not root, no apt-get, a daemon that does not start) every test here skips, saying why.

`SlurmUser=root`: the state and spool directories live under pytest's temporary directories,
which are mode 0700. A requeued job waits about 2 minutes (its BeginTime) before it starts again;
`LocalSlurm.start_now` moves that to now.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
BINARIES = ("slurmctld", "slurmd", "munged", "sbatch", "srun", "scontrol", "squeue", "scancel", "sinfo")


@dataclass
class LocalSlurm:
    root: Path  # the temporary directory holding conf, state, logs
    conf: Path
    env: dict  # os.environ + SLURM_CONF: for every client call and for the processes tests start
    partition: str = "debug"

    def run(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), env=self.env, capture_output=True, text=True, check=check, timeout=timeout)

    def job_field(self, job_id: str, field: str) -> str | None:
        """A field of `scontrol show job` (JobState, RunTime, Restarts, ...); None once forgotten."""
        proc = self.run("scontrol", "show", "job", "-o", str(job_id), check=False)
        for item in proc.stdout.split():
            key, _, value = item.partition("=")
            if key == field:
                return value
        return None

    def wait_for(self, job_id: str, states: tuple[str, ...], *, timeout: float) -> str:
        """Poll until the job's JobState is one of `states`; return it. Fails with the logs."""
        deadline = time.monotonic() + timeout
        state = None
        while time.monotonic() < deadline:
            state = self.job_field(job_id, "JobState")
            if state in states:
                return state
            time.sleep(0.5)
        pytest.fail(f"job {job_id} is {state}, not one of {states}, after {timeout:.0f} s\n{self.logs()}")

    def start_now(self, job_id: str) -> None:
        """Let a requeued (pending) job start at once instead of after its ~2 minute BeginTime."""
        self.run("scontrol", "update", f"JobId={job_id}", "StartTime=now")

    def logs(self) -> str:
        out = []
        for name in ("slurmctld.log", "slurmd.log"):
            path = self.root / "log" / name
            if path.exists():
                out.append(f"--- {name} (tail)\n" + "\n".join(path.read_text(errors="replace").splitlines()[-30:]))
        return "\n".join(out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def why_not_possible() -> str | None:
    if not sys.platform.startswith("linux"):
        return "a local Slurm needs Linux"
    if os.geteuid() != 0:
        return f"starting slurmctld/slurmd/munged needs root (the tests run as uid {os.geteuid()})"
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if not missing:
        return None
    if shutil.which("apt-get") is None:
        return f"Slurm is not installed ({', '.join(missing)} missing) and there is no apt-get to install it"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *PACKAGES]):
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired:
            return f"`{' '.join(cmd)}` did not finish in 15 minutes"
        if proc.returncode != 0:
            return f"`{' '.join(cmd)}` failed ({proc.returncode}): {proc.stderr.strip()[-500:]}"
    missing = [b for b in BINARIES if shutil.which(b) is None]
    return f"apt-get installed {' '.join(PACKAGES)} but {', '.join(missing)} are still missing" if missing else None


def _node_line() -> str:
    """This machine as `slurmd -C` sees it (NodeName, CPUs, sockets, cores, RealMemory)."""
    proc = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=30, check=True)
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("NodeName="))
    return line + " NodeAddr=127.0.0.1 State=UNKNOWN"


def write_conf(root: Path) -> Path:
    node = _node_line()
    name = node.split()[0].removeprefix("NodeName=")
    conf = root / "slurm.conf"
    (root / "plugstack.conf").write_text("")  # no site SPANK plugins (pyxis, ...) in this cluster
    conf.write_text(f"""\
ClusterName=nctest
SlurmctldHost={name}(127.0.0.1)
SlurmUser=root
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.socket
PlugStackConfig={root}/plugstack.conf
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=10
Waittime=0
{node}
PartitionName=debug Nodes={name} Default=YES MaxTime=INFINITE State=UP
""")
    return conf


def read_pid(path: Path, timeout: float = 15) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return int(path.read_text().split()[0])
        time.sleep(0.1)
    raise RuntimeError(f"{path} did not appear")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def stop_pid(pid: int, timeout: float = 20) -> None:
    if not _alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------------------------- recipes
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
from regenerate_golden import RUNS  # noqa: E402

PREP, TRAIN = RUNS["stage1_sft_single"]  # the golden run's overrides (tests/assets/golden/stage1_sft_single.json)


@dataclass
class Submitted:
    proc: subprocess.CompletedProcess | None
    sweep_dir: Path  # <cwd>/outputs/stage1_sft/<run_name>

    def job_dir(self, n: int = 0) -> Path:
        return self.sweep_dir / f"job{n}"

    def job_ids(self) -> list[str]:
        """The Slurm jobs of this sweep (submitit's folders are named by job id)."""
        folder = self.sweep_dir / ".submitit"
        return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []

    def submitit_logs(self) -> str:
        files = sorted((self.sweep_dir / ".submitit").rglob("*_log.*")) if (self.sweep_dir / ".submitit").exists() else []
        return "\n".join(f"--- {f.name}\n{f.read_text(errors='replace')[-3000:]}" for f in files)


def submit_cmd(script: str, run_name: str, overrides: list[str]) -> list[str]:
    """`python recipes/nano3/stage1_sft/<script> -m hydra/launcher=submitit_slurm cluster=localhost ...`"""
    return [sys.executable, str(ROOT / "recipes/nano3/stage1_sft" / script), "-m", "hydra/launcher=submitit_slurm",
            "cluster=localhost", f"run_name={run_name}", "logging=quiet", *overrides]


FAILED_STATES = ("FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE")


def start_submission(slurm: LocalSlurm, cwd: Path, script: str, run_name: str, overrides: list[str]) -> tuple[subprocess.Popen, Submitted]:
    """Start the submitting command (it returns when its jobs end); its output goes to <cwd>/<run_name>.submit.*"""
    out = open(cwd / f"{run_name}.submit.out", "w")  # noqa: SIM115 (closed with the process, in finish_submission)
    err = open(cwd / f"{run_name}.submit.err", "w")  # noqa: SIM115
    proc = subprocess.Popen(submit_cmd(script, run_name, overrides), cwd=cwd, env=slurm.env, stdout=out, stderr=err, text=True)
    proc.files = (out, err)
    return proc, Submitted(None, cwd / "outputs/stage1_sft" / run_name)


def finish_submission(slurm: LocalSlurm, proc: subprocess.Popen, done: Submitted, *, timeout: float = 600) -> Submitted:
    """Wait for the submitting command; assert it succeeded.

    Without accounting submitit cannot see a job that died without its result file (a task that
    aborted) and would wait forever: a job of this sweep in a failed state ends the wait."""
    try:
        deadline, failed_since = time.monotonic() + timeout, None
        while proc.poll() is None:
            if failed_since is None and any(slurm.job_field(j, "JobState") in FAILED_STATES for j in done.job_ids()):
                failed_since = time.monotonic()
            if time.monotonic() > deadline or (failed_since is not None and time.monotonic() > failed_since + 30):
                proc.kill()
                pytest.fail(f"a Slurm job failed or the submission did not return in {timeout} s\n"
                            f"{done.submitit_logs()}\n{slurm.logs()}")
            time.sleep(1)
    finally:
        if proc.poll() is None:
            proc.kill()
        for f in proc.files:
            f.close()
    out, err = (Path(f.name).read_text() for f in proc.files)
    done.proc = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    assert proc.returncode == 0, f"{err[-3000:]}\n{done.submitit_logs()}"
    return done


def submit(slurm: LocalSlurm, cwd: Path, script: str, run_name: str, overrides: list[str], *, timeout: float = 600) -> Submitted:
    """Submit through Hydra's submitit launcher and wait until the jobs end."""
    proc, done = start_submission(slurm, cwd, script, run_name, overrides)
    return finish_submission(slurm, proc, done, timeout=timeout)
