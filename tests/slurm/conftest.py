"""Fixtures of the Slurm tests: `slurm` (a real one-node Slurm on localhost, started once per session
and stopped by PID afterwards; see slurm_helpers.py) and `sft_data` (stage 1 data prep submitted to it)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from slurm_helpers import (
    PREP,
    LocalSlurm,
    Submitted,
    read_pid,
    stop_pid,
    submit,
    why_not_possible,
    write_conf,
)


@pytest.fixture(scope="session")
def slurm(tmp_path_factory) -> LocalSlurm:
    reason = why_not_possible()
    if reason:
        pytest.skip(f"no local Slurm: {reason}")
    root = tmp_path_factory.mktemp("slurm")
    for d in ("munge", "state", "spool", "log"):
        (root / d).mkdir(mode=0o700)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    conf = write_conf(root)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    pids: list[int] = []
    cluster = LocalSlurm(root=root, conf=conf, env=env)
    failure = None
    try:
        # --force: munged refuses to run as root without it; its own socket, so no other munged is touched
        subprocess.run(["munged", "--force", f"--socket={root}/munge/munge.socket", f"--key-file={key}",
                        f"--pid-file={root}/munge/munged.pid", f"--log-file={root}/munge/munged.log",
                        f"--seed-file={root}/munge/munged.seed"], check=True, capture_output=True, timeout=30)
        pids.append(read_pid(root / "munge" / "munged.pid"))
        subprocess.run(["slurmctld", "-f", str(conf)], check=True, capture_output=True, timeout=30, env=env)
        pids.append(read_pid(root / "slurmctld.pid"))
        subprocess.run(["slurmd", "-f", str(conf)], check=True, capture_output=True, timeout=30, env=env)
        pids.append(read_pid(root / "slurmd.pid"))
        state, deadline = "", time.monotonic() + 60
        while state != "idle" and time.monotonic() < deadline:
            time.sleep(0.5)
            state = cluster.run("sinfo", "-h", "-o", "%T", check=False).stdout.strip()
        if state != "idle":
            failure = f"the node did not become idle in 60 s (sinfo: {state!r})\n{cluster.logs()}"
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, RuntimeError, OSError) as e:
        detail = getattr(e, "stderr", b"") or b""
        failure = f"could not start the daemons: {e} {detail.decode(errors='replace')[-500:]}\n{cluster.logs()}"
    if failure:
        for pid in reversed(pids):
            stop_pid(pid)
        pytest.skip(f"no local Slurm: {failure}")
    try:
        yield cluster
    finally:
        cluster.run("scancel", "--full", "--partition", cluster.partition, check=False)
        deadline = time.monotonic() + 30  # KillWait=10: the jobs' steps are gone well before this
        while time.monotonic() < deadline and cluster.run("squeue", "-h", "-t", "running,completing", check=False).stdout.strip():
            time.sleep(0.5)
        for pid in reversed(pids):  # slurmd, slurmctld, munged
            stop_pid(pid)


@pytest.fixture(scope="session")
def sft_data(slurm, tmp_path_factory) -> tuple[Path, Submitted]:
    """The golden run's packed data, made by data_prep.py submitted to Slurm like train.py is."""
    cwd = tmp_path_factory.mktemp("prep")
    data = cwd / "data"
    done = submit(slurm, cwd, "data_prep.py", "prep", [f"data.output_dir={data}", *PREP], timeout=600)
    return data, done
