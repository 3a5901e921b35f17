"""A stage 1 training job submitted with `hydra/launcher=submitit_slurm`, signalled mid-run the
way Slurm warns of its time limit (SIGUSR2), is requeued by submitit, restarts, resumes from its
last checkpoint in the same out_dir (checkpoint.resume=auto) and ends with the losses of an
uninterrupted run."""

from __future__ import annotations

import json
import time

import pytest
from slurm_helpers import PREP, ROOT, TRAIN, finish_submission, start_submission

GOLDEN = json.loads((ROOT / "tests/assets/golden/stage1_sft_single.json").read_text())


@pytest.mark.slow
@pytest.mark.timeout(1500)  # the submission waits up to 600 s and fails first, with the job logs
def test_signalled_job_is_requeued_and_ends_with_the_uninterrupted_losses(slurm, sft_data, tmp_path):
    data, _ = sft_data
    overrides = ["parallel=single", "cluster.tasks_per_node=1", f"data.path={data}", *PREP, *TRAIN, "checkpoint.save_every=1"]
    proc, sweep = start_submission(slurm, tmp_path, "train.py", "requeue", overrides)
    job_dir = sweep.job_dir(0)
    deadline = time.monotonic() + 600
    while not (job_dir / "checkpoints" / "step_00000002").is_dir():  # mid-run, after a checkpoint
        if proc.poll() is not None or time.monotonic() > deadline:
            finish_submission(slurm, proc, sweep, timeout=1)
            pytest.fail(f"the job ended or made no checkpoint at step 2 in 600 s\n{sweep.submitit_logs()}")
        time.sleep(0.2)
    (job,) = sweep.job_ids()
    slurm.run("scancel", "--signal=USR2", job)  # what Slurm sends signal_delay_s before the time limit
    slurm.wait_for(job, ("PENDING",), timeout=120)
    steps_before = len((job_dir / "metrics.jsonl").read_text().splitlines())
    slurm.start_now(job)  # instead of its ~2 minute BeginTime
    finish_submission(slurm, proc, sweep, timeout=600)
    assert 2 <= steps_before < 6  # it was interrupted mid-run
    assert slurm.job_field(job, "Restarts") == "1"
    records = [json.loads(line) for line in (job_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 7))
    assert [r["loss"] for r in records] == pytest.approx(GOLDEN["loss"], rel=GOLDEN["tolerance"]["rel"])
    assert records[-1]["loss"] == pytest.approx(GOLDEN["loss"][-1], rel=GOLDEN["tolerance"]["rel"])
    assert (job_dir / "checkpoints" / "step_00000006").is_dir()
