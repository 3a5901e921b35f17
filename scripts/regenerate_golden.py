"""Regenerate the golden loss curves that tests/integration compare against.

    python scripts/regenerate_golden.py            # all
    python scripts/regenerate_golden.py stage1_sft_single

Each golden file `tests/assets/golden/<name>.json` holds the exact commands' overrides and the
per-step losses they produced on CPU (fp32). Change golden values only through this script, with a
commit message saying why they moved.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "assets" / "golden"

# name -> (data prep overrides, train overrides); both run with data.output_dir/out_dir in a temp dir
RUNS = {
    "stage1_sft_single": (
        ["data.sample=120", "data.pack_size=512"],
        ["train.steps=6", "train.global_batch_size=4", "train.micro_batch_size=2", "train.eval_every=3",
         "train.eval_batches=2", "scheduler.warmup_steps=2", "checkpoint.save_every=0", "checkpoint.export_hf=false"],
    ),
    "stage0_pretrain_single": (
        [],
        ["data.seq_length=128", "train.steps=6", "train.global_batch_size=4", "train.micro_batch_size=2",
         "train.eval_every=3", "train.eval_batches=2", "scheduler.warmup_steps=2", "checkpoint.save_every=0",
         "checkpoint.export_hf=false"],
    ),
}


def run_stage1(workdir: Path, prep: list[str], train: list[str], *, extra: list[str] = ()) -> list[dict]:
    """Run stage 1 data prep + train with the given overrides in `workdir`; return metrics records."""
    common = [f"data.output_dir={workdir}/data", f"hydra.run.dir={workdir}/run", "run_name=golden",
              "logging=quiet", f"out_dir={workdir}/run"]
    for script, overrides in (("data_prep.py", prep), ("train.py", prep + train + list(extra))):
        cmd = [sys.executable, str(ROOT / "recipes/nano3/stage1_sft" / script), *common, *overrides]
        proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")
    return [json.loads(line) for line in (workdir / "run" / "metrics.jsonl").read_text().splitlines()]


def run_stage0(workdir: Path, prep: list[str], train: list[str], *, extra: list[str] = ()) -> list[dict]:
    """Run stage 0 data prep + train with the given overrides in `workdir`; return metrics records.

    One OpenMP thread: the same summation order every run, and no spin-waiting threads when other
    jobs share the cores (which made a tiny step 10x slower)."""
    common = [f"data.output_dir={workdir}/data", f"hydra.run.dir={workdir}/run", "run_name=golden",
              "logging=quiet", f"out_dir={workdir}/run"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for script, overrides in (("data_prep.py", prep), ("train.py", prep + train + list(extra))):
        cmd = [sys.executable, str(ROOT / "recipes/nano3/stage0_pretrain" / script), *common, *overrides]
        proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=900, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")
    return [json.loads(line) for line in (workdir / "run" / "metrics.jsonl").read_text().splitlines()]


def main(names: list[str]) -> None:
    GOLDEN.mkdir(parents=True, exist_ok=True)
    for name in names or list(RUNS):
        prep, train = RUNS[name]
        with tempfile.TemporaryDirectory() as d:
            records = (run_stage0 if name.startswith("stage0") else run_stage1)(Path(d), prep, train)
        golden = {
            "data_prep_overrides": prep,
            "train_overrides": train,
            "loss": [r["loss"] for r in records],
            "val_loss": {str(r["step"]): r["val_loss"] for r in records if "val_loss" in r},
            "tolerance": {"rel": 1e-4, "why": "fp32 CPU; BLAS thread count and kernels may reorder sums"},
        }
        path = GOLDEN / f"{name}.json"
        path.write_text(json.dumps(golden, indent=2) + "\n")
        print(f"{path}: losses {[round(x, 4) for x in golden['loss']]}")


if __name__ == "__main__":
    main(sys.argv[1:])
