"""nemotron_core/launch/preemption.py: the watcher's flag, its agreement over ranks, its exits.

The Slurm behaviour itself (the signal from `scancel --signal`, `scontrol requeue`, the restart)
is tested against a real Slurm in tests/slurm/test_requeue.py; here the environment is a dict."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from nemotron_core.launch.preemption import PreemptionWatcher, requeue_signal

IN_SLURM = {"SLURM_JOB_ID": "77", "SLURM_PROCID": "0"}


@pytest.fixture
def restore_handlers():
    saved = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


def test_outside_slurm_it_is_a_no_op(restore_handlers):
    before = {s: signal.getsignal(s) for s in (signal.SIGUSR2, signal.SIGTERM)}
    watcher = PreemptionWatcher(environ={}).install()
    assert {s: signal.getsignal(s) for s in before} == before
    assert not watcher.active and not watcher.requested()


def test_the_signal_sets_the_flag_and_uninstall_restores(restore_handlers):
    seen = []
    signal.signal(signal.SIGUSR2, lambda s, f: seen.append(s))
    previous = signal.getsignal(signal.SIGUSR2)
    watcher = PreemptionWatcher(environ=IN_SLURM).install()
    assert watcher.active and not watcher.requested()
    os.kill(os.getpid(), signal.SIGUSR2)
    assert watcher.requested() and watcher.requested()  # and stays so
    assert watcher.signal_received == signal.SIGUSR2
    assert seen == []  # submitit's (here: a stand-in) handler is not run by the signal itself
    watcher.uninstall()
    assert signal.getsignal(signal.SIGUSR2) is previous


def test_sigterm_sets_the_flag_and_a_later_requeue_signal_wins(restore_handlers):
    watcher = PreemptionWatcher(environ=IN_SLURM).install()
    os.kill(os.getpid(), signal.SIGTERM)
    assert watcher.requested() and watcher.signal_received == signal.SIGTERM
    os.kill(os.getpid(), signal.SIGUSR2)
    assert watcher.signal_received == signal.SIGUSR2


def test_submitit_preempt_signal_variable(restore_handlers):
    assert requeue_signal({}) == signal.SIGUSR2
    assert requeue_signal({"SUBMITIT_PREEMPT_SIGNAL": "USR1"}) == signal.SIGUSR1
    watcher = PreemptionWatcher(environ={**IN_SLURM, "SUBMITIT_PREEMPT_SIGNAL": "USR1"}).install()
    os.kill(os.getpid(), signal.SIGUSR1)
    assert watcher.requested()
    with pytest.raises(ValueError, match="SUBMITIT_PREEMPT_SIGNAL='HUP2' is not a signal name"):
        requeue_signal({"SUBMITIT_PREEMPT_SIGNAL": "HUP2"})


def test_rank0_hands_the_signal_to_submitits_handler_and_exits(restore_handlers):
    calls = []
    signal.signal(signal.SIGUSR2, lambda s, f: calls.append(s))  # where submitit's checkpoint_and_try_requeue sits
    watcher = PreemptionWatcher(environ=IN_SLURM).install()
    os.kill(os.getpid(), signal.SIGUSR2)
    assert watcher.requested()
    with pytest.raises(SystemExit):
        watcher.exit_for_requeue()
    assert calls == [signal.SIGUSR2]


@pytest.mark.parametrize(("environ", "sig"), [({**IN_SLURM, "SLURM_PROCID": "1"}, signal.SIGUSR2), (IN_SLURM, signal.SIGTERM)],
                         ids=["rank1", "sigterm"])
def test_other_ranks_and_sigterm_exit_0_without_requeue(restore_handlers, environ, sig):
    calls = []
    signal.signal(signal.SIGUSR2, lambda s, f: calls.append(s))
    watcher = PreemptionWatcher(environ=environ).install()
    os.kill(os.getpid(), sig)
    assert watcher.requested()
    with pytest.raises(SystemExit) as exc:
        watcher.exit_for_requeue()
    assert exc.value.code == 0 and calls == []


def _agree_worker(rank: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        watcher = PreemptionWatcher(environ={"SLURM_JOB_ID": "77", "SLURM_PROCID": str(rank)}).install()
        before = watcher.requested()
        if rank == 1:
            os.kill(os.getpid(), signal.SIGUSR2)
        after = watcher.requested()
        with open(f"{out}.{rank}", "w") as f:
            json.dump({"before": before, "after": after, "signal": watcher.signal_received}, f)
    finally:
        dist.destroy_process_group()


def test_one_rank_signalled_every_rank_stops(tmp_path):
    mp.spawn(_agree_worker, args=(str(tmp_path / "init"), str(tmp_path / "out")), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"out.{r}").read_text()) for r in range(2)]
    assert results == [{"before": False, "after": True, "signal": int(signal.SIGUSR2)}] * 2
