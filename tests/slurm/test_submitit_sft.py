"""Stage 1 through `hydra/launcher=submitit_slurm` on a real (local, one-node) Slurm: data prep as
one task, training as two gloo ranks (one per Slurm task, rendezvous from the Slurm environment,
no torchrun); the losses are the golden single-process ones."""

from __future__ import annotations

import json

import pytest
from slurm_helpers import PREP, ROOT, TRAIN, submit

GOLDEN = json.loads((ROOT / "tests/assets/golden/stage1_sft_single.json").read_text())


@pytest.mark.slow
def test_data_prep_is_submitted_as_one_task(sft_data):
    data, done = sft_data
    assert (data / "metadata.json").is_file()
    job = done.job_dir(0)
    assert (job / "data_prep.resolved.yaml").is_file()  # the config, saved in the job's own directory
    logs = sorted(p.name for p in (done.sweep_dir / ".submitit").rglob("*_log.out"))
    assert len(logs) == 1 and logs[0].endswith("_0_log.out"), logs  # one task, whatever cluster.tasks_per_node says


@pytest.mark.slow
@pytest.mark.timeout(1500)  # the submission waits up to 600 s and fails first, with the job logs
def test_two_task_gloo_run_matches_the_local_losses(slurm, sft_data, tmp_path):
    data, _ = sft_data
    done = submit(slurm, tmp_path, "train.py", "dp2", ["parallel=dp2", f"data.path={data}", *PREP, *TRAIN])
    job = done.job_dir(0)
    records = [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 7))
    assert [r["loss"] for r in records] == pytest.approx(GOLDEN["loss"], rel=GOLDEN["tolerance"]["rel"])
    ckpt = job / "checkpoints" / "step_00000006"
    assert sorted(p.name for p in ckpt.glob("rng_rank*.pt")) == ["rng_rank0.pt", "rng_rank1.pt"]  # two ranks saved
    assert "out_dir: outputs/stage1_sft/dp2/job0" in (job / "train.resolved.yaml").read_text()
    task_logs = sorted(p.name.rsplit("_", 2)[-2] for p in (done.sweep_dir / ".submitit").rglob("*_log.out"))
    assert task_logs == ["0", "1"]  # two Slurm tasks, one rank each
