"""Stage 0 end to end: data prep recipe, golden losses, exact resume, reset_at_eod, tokenizer
refusal, and the stage 0 -> stage 1 pipeline script."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from nemotron_core.paths import PACKAGE_DIR

ROOT = PACKAGE_DIR.parent
sys.path.insert(0, str(ROOT / "scripts"))
from regenerate_golden import RUNS, run_stage0  # noqa: E402

GOLDEN = json.loads((ROOT / "tests/assets/golden/stage0_pretrain_single.json").read_text())
PREP, TRAIN = RUNS["stage0_pretrain_single"]
WITH_EXPORT = [o for o in TRAIN if not o.startswith("checkpoint.export_hf")] + ["checkpoint.export_hf=true"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def recipe(script: str, *args, cwd, timeout=600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "recipes/nano3/stage0_pretrain" / script), *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=ENV)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    d = tmp_path_factory.mktemp("full")
    return d, run_stage0(d, PREP, WITH_EXPORT)


@pytest.mark.slow
def test_data_prep_recipe_prints_a_summary_and_dry_runs(tmp_path):
    proc = recipe("data_prep.py", f"data.output_dir={tmp_path}/data", f"out_dir={tmp_path}/run", "logging=quiet",
                  "data.num_workers=1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "4000 documents, 398025 tokens (uint16): train 3924 documents" in proc.stdout
    meta = json.loads((tmp_path / "data/metadata.json").read_text())
    assert meta["splits"]["valid"]["documents"] == 34 and meta["splits"]["test"]["documents"] == 42
    dry = recipe("train.py", "--cfg", "job", "--resolve", cwd=tmp_path)
    assert dry.returncode == 0 and "seq_length: 256" in dry.stdout and "weight_decay: 0.1" in dry.stdout


@pytest.mark.slow
def test_golden_losses(uninterrupted):
    _, records = uninterrupted
    assert GOLDEN["data_prep_overrides"] == PREP and GOLDEN["train_overrides"] == TRAIN
    assert [r["step"] for r in records] == list(range(1, 7))
    assert [r["loss"] for r in records] == pytest.approx(GOLDEN["loss"], rel=GOLDEN["tolerance"]["rel"])
    val = {str(r["step"]): r["val_loss"] for r in records if "val_loss" in r}
    assert val.keys() == GOLDEN["val_loss"].keys()
    assert [val[k] for k in sorted(val)] == pytest.approx([GOLDEN["val_loss"][k] for k in sorted(val)], rel=1e-4)
    # 4 rows of 128 + 1 tokens, one document each (no reset), every position but the last trained
    assert all(r["tokens"] == 4 * 129 and r["trainable_tokens"] == 4 * 128 and r["documents"] == 4 for r in records)
    assert records[-1]["loss"] < records[0]["loss"] - 1.0  # it learns
    assert 0 < records[0]["moe_aux_loss"] < 1e-3  # coefficient 1e-4 x a per-sequence balance loss near 1 per layer


@pytest.mark.slow
def test_resume_after_kill_equals_uninterrupted_bitwise(uninterrupted, tmp_path):
    full_dir, full = uninterrupted
    first = run_stage0(tmp_path, PREP, WITH_EXPORT, extra=["train.stop_after_steps=3"])
    assert [r["step"] for r in first] == [1, 2, 3]
    assert not (tmp_path / "run" / "hf").exists()  # a stopped job does not export
    resumed = run_stage0(tmp_path, PREP, WITH_EXPORT)  # checkpoint.resume=auto finds step 3
    assert [r["step"] for r in resumed] == list(range(1, 7))
    assert [r["loss"] for r in resumed] == [r["loss"] for r in full]  # exact, not approximate
    a = (full_dir / "run" / "hf" / "model.safetensors").read_bytes()
    b = (tmp_path / "run" / "hf" / "model.safetensors").read_bytes()
    assert a == b
    lineage = json.loads((tmp_path / "run" / "hf" / "lineage.json").read_text())
    assert lineage["stage"] == "stage0_pretrain/train" and lineage["inputs"][0]["path"].endswith("tiny_text.jsonl")


@pytest.mark.slow
def test_reset_at_eod_trains_documents_apart(tmp_path):
    records = run_stage0(tmp_path, PREP, [*TRAIN[1:], "data.seq_length=128", "data.reset_at_eod=true", "train.steps=3", "scheduler.warmup_steps=1",
                                          "train.eval_every=0", "train.eval_batches=0"])
    for r in records:
        # rows of 129 tokens split after every EOD: more segments than rows, one untrained label per segment
        assert r["documents"] > 4 and r["trainable_tokens"] == 4 * 129 - r["documents"]


@pytest.mark.slow
def test_refuses_data_from_another_tokenizer(tmp_path):
    from tokenizers import Tokenizer

    from nemotron_core.paths import asset_path

    other = tmp_path / "other_tok"
    other.mkdir()
    for f in asset_path("tokenizer").iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    spec = json.loads((other / "tokenizer.json").read_text())
    spec["model"]["vocab"]["Ġthe"], spec["model"]["vocab"]["Ġand"] = spec["model"]["vocab"]["Ġand"], spec["model"]["vocab"]["Ġthe"]
    (other / "tokenizer.json").write_text(json.dumps(spec))
    Tokenizer.from_file(str(other / "tokenizer.json"))
    # data made with the shipped tokenizer, training asked to use the other one
    with pytest.raises(RuntimeError, match="tokenizer vocabulary mismatch"):
        run_stage0(tmp_path, PREP, TRAIN, extra=[f"tokenizer.path={other}", "tokenizer.name=other"])


@pytest.mark.slow
def test_pipeline_script_starts_stage1_from_the_stage0_export(tmp_path):
    env = {**ENV, "PYTHON": sys.executable,
           "STAGE0_ARGS": "logging=quiet data.seq_length=128 train.steps=4 train.global_batch_size=4 train.micro_batch_size=2 "
                          "train.eval_batches=0 scheduler.warmup_steps=1 checkpoint.save_every=0",
           "STAGE1_ARGS": "logging=quiet data.sample=60 data.pack_size=512 train.steps=2 train.global_batch_size=2 "
                          "train.micro_batch_size=2 train.eval_batches=0 scheduler.warmup_steps=1 checkpoint.save_every=0"}
    proc = subprocess.run(["bash", str(ROOT / "scripts/run_pipeline.sh")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    stage0 = tmp_path / "outputs/stage0_pretrain/nano3_tiny-tiny_text"
    stage1 = tmp_path / "outputs/stage1_sft/nano3_tiny-tiny_chat-from-stage0"
    assert (stage0 / "hf/config.json").is_file() and (stage1 / "hf/config.json").is_file()
    lineage = json.loads((stage1 / "hf/lineage.json").read_text())
    assert lineage["parent"]["checkpoint"] == str(stage0 / "hf")
    assert lineage["parent"]["lineage"]["stage"] == "stage0_pretrain/train"
    first = json.loads((stage1 / "metrics.jsonl").read_text().splitlines()[0])
    assert first["loss"] < 8.0  # a fresh init starts at ln(4096) = 8.3


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["dp2", "tp2"])
def test_parallel_layouts_match_the_single_process_golden(tmp_path, layout):
    # megatron-core builds its indices on rank 0 first (barriers on the world group), every rank reads them
    records = run_stage0(tmp_path, PREP, TRAIN, extra=[f"parallel={layout}"])
    assert [r["loss"] for r in records] == pytest.approx(GOLDEN["loss"], rel=1e-5)
    assert [r["val_loss"] for r in records if "val_loss" in r] == pytest.approx(list(GOLDEN["val_loss"].values()), rel=1e-5)
