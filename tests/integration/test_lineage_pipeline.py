"""Lineage end to end: every stage-1 output carries lineage.json back to the raw inputs' hashes, the
online path trains on the same rows as the offline one, and wandb gets the lineage as artifacts."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from nemotron_core.config.run import WandbConfig
from nemotron_core.lineage import Lineage, describe_dataset, describe_inputs, write_metadata
from nemotron_core.paths import PACKAGE_DIR, asset_path
from nemotron_core.train import metrics as metrics_mod
from nemotron_core.train.metrics import (
    MetricsLogger,
    lineage_artifact_name,
    log_lineage_artifact,
    log_lineage_artifacts_run,
)

ROOT = PACKAGE_DIR.parent
CHAT = asset_path("data/tiny_chat.jsonl")
SFT = ROOT / "recipes/nano3/stage1_sft"
DATA = ["data.sample=80", "data.pack_size=384"]
TRAIN = ["train.steps=1", "train.global_batch_size=2", "train.micro_batch_size=2", "train.eval_batches=1",
         "scheduler.warmup_steps=0", "checkpoint.save_every=0", "logging=quiet"]  # fmt: skip


def _run(script: str, overrides: list[str], cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(SFT / script), *overrides], cwd=cwd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _first_loss(run_dir: Path) -> float:
    return json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])["loss"]


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("offline")
    _run("data_prep.py", [f"data.output_dir={d}/data", "logging=quiet", f"out_dir={d}/run", *DATA], d)
    _run("train.py", [f"data.path={d}/data", f"out_dir={d}/run", f"hydra.run.dir={d}/run", "run_name=offline",
                      "checkpoint.export_hf=true", *DATA, *TRAIN], d)  # fmt: skip
    return d


@pytest.mark.slow
def test_export_lineage_leads_back_to_the_packed_datas_input_hash(offline_run):
    data_dir, run_dir = offline_run / "data", offline_run / "run"
    chat_sha = hashlib.sha256(CHAT.read_bytes()).hexdigest()
    packed_lineage = json.loads((data_dir / "lineage.json").read_text())
    packed_meta = json.loads((data_dir / "metadata.json").read_text())
    assert packed_lineage["stage"] == "stage1_sft/data_prep"
    assert packed_lineage["inputs"][0]["sha256"] == chat_sha
    checkpoint = next((run_dir / "checkpoints").iterdir())
    for out in (run_dir / "hf", checkpoint):
        lineage = json.loads((out / "lineage.json").read_text())
        assert lineage["stage"] == "stage1_sft/train" and lineage["code"]["nemotron_core"]
        assert lineage["tokenizer"]["vocab_hash"] == packed_lineage["tokenizer"]["vocab_hash"]
        raw, packed = lineage["inputs"]
        # the export names the packed data it trained on (by content: its cache key) ...
        assert packed == describe_dataset(data_dir) and packed["cache_key"] == packed_meta["cache_key"]
        assert packed["lineage_sha256"] == hashlib.sha256((data_dir / "lineage.json").read_bytes()).hexdigest()
        # ... and through it, the raw file and its hash
        trace = json.loads((Path(packed["path"]) / "lineage.json").read_text())
        assert raw == trace["inputs"][0] and raw["sha256"] == chat_sha
        assert lineage["config"]["data"]["path"] == str(data_dir)


@pytest.mark.slow
def test_online_training_gives_the_offline_first_step_loss(offline_run, tmp_path):
    _run("train.py", ["data=chat_jsonl", f"out_dir={tmp_path}/run", f"hydra.run.dir={tmp_path}/run", "run_name=online",
                      "checkpoint.export_hf=false", *DATA, *TRAIN], tmp_path)  # fmt: skip
    assert not (tmp_path / "outputs" / "data").exists()  # no data_prep output anywhere
    online, offline = _first_loss(tmp_path / "run"), _first_loss(offline_run / "run")
    assert abs(online - offline) <= 1e-6
    checkpoint = next((tmp_path / "run" / "checkpoints").iterdir())
    lineage = json.loads((checkpoint / "lineage.json").read_text())
    assert [i["sha256"] for i in lineage["inputs"]] == [hashlib.sha256(CHAT.read_bytes()).hexdigest()]


# --------------------------------------------------------------------------- wandb artifacts
class FakeArtifact:
    def __init__(self, name, type, metadata):
        self.name, self.type, self.metadata, self.files, self.references = name, type, metadata, {}, []

    def add_file(self, path, name):
        self.files[name] = Path(path).read_text()

    def add_reference(self, uri, name, checksum):
        self.references.append((uri, name, checksum))


class FakeRun:
    def __init__(self, offline=False):
        self.offline, self.logged, self.used, self.finished = offline, [], [], False

    def log_artifact(self, a):
        self.logged.append(a)

    def use_artifact(self, a):
        self.used.append(a)

    def finish(self):
        self.finished = True


def _packed_dir(tmp_path) -> Path:
    d = tmp_path / "packed"
    lineage = Lineage(stage="stage1_sft/data_prep", config={"data": {"pack_size": 8}}, inputs=describe_inputs([CHAT]),
                      tokenizer={"name": "tiny", "vocab_hash": "v"})  # fmt: skip
    write_metadata(d, {"kind": "sft_packed", "cache_key": "k"}, lineage=lineage)
    return d


@pytest.fixture
def fake_wandb(monkeypatch):
    runs = []

    def init(**kw):
        runs.append(FakeRun(offline=kw["mode"] == "offline"))
        runs[-1].init = kw
        return runs[-1]

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(Artifact=FakeArtifact, init=init))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    return runs


def test_lineage_artifacts_carry_the_lineage(tmp_path, fake_wandb):
    d = _packed_dir(tmp_path)
    run = FakeRun()
    art = log_lineage_artifact(run, d, kind="data", stage_tag="sft")
    assert run.logged == [art] and (art.name, art.type) == ("DataBlendsArtifact-sft", "dataset")
    assert art.metadata == {"path": str(d.resolve()), **json.loads((d / "lineage.json").read_text())}
    assert art.metadata["inputs"][0]["sha256"] == hashlib.sha256(CHAT.read_bytes()).hexdigest()
    assert set(art.files) == {"lineage.json", "metadata.json"}
    assert art.references == [(d.resolve().as_uri(), "files", False)]  # nothing large uploaded
    assert lineage_artifact_name("model", "sft") == "ModelArtifact-sft"
    # use=True declares an input; offline wandb cannot, so the lineage alone links the run there
    online = FakeRun()
    log_lineage_artifact(online, d, kind="data", stage_tag="sft", use=True)
    assert len(online.used) == 1 and not online.logged
    offline = FakeRun(offline=True)
    assert log_lineage_artifact(offline, d, kind="data", stage_tag="sft", use=True) is None and not offline.used
    with pytest.raises(FileNotFoundError, match="has no lineage.json"):
        log_lineage_artifact(run, tmp_path, kind="model", stage_tag="sft")
    with pytest.raises(ValueError, match="artifact kind must be one of"):
        lineage_artifact_name("weights", "sft")


def test_data_prep_run_logs_the_data_artifact_offline_by_default(tmp_path, fake_wandb):
    d = _packed_dir(tmp_path)
    [art] = log_lineage_artifacts_run(WandbConfig(), {"data": d}, out_dir=tmp_path / "run", run_name="r", job_type="data_prep")
    [run] = fake_wandb
    assert run.init["mode"] == "offline" and run.init["job_type"] == "data_prep" and run.finished
    assert run.logged == [art] and art.name == "DataBlendsArtifact-sft"
    assert log_lineage_artifacts_run(WandbConfig(mode="disabled"), {"data": d}, out_dir=tmp_path, run_name="r", job_type="x") == []
    assert len(fake_wandb) == 1  # disabled: no run started


def test_metrics_logger_logs_model_artifacts_on_rank_0_only(tmp_path, fake_wandb):
    d = _packed_dir(tmp_path)
    with MetricsLogger(tmp_path / "run", wandb=WandbConfig(), run_name="r", progress_bar=False) as m:
        art = m.log_lineage_artifact(d, kind="model")
        assert art.name == "ModelArtifact-sft" and fake_wandb[0].logged == [art]
    with MetricsLogger(tmp_path / "run1", wandb=WandbConfig(), run_name="r", rank=1, progress_bar=False) as m:
        assert m.log_lineage_artifact(d, kind="model") is None
    assert len(fake_wandb) == 1


def test_real_wandb_offline_writes_the_artifact_locally(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    d = _packed_dir(tmp_path)
    [art] = log_lineage_artifacts_run(WandbConfig(), {"data": d}, out_dir=tmp_path / "run", run_name="r", job_type="data_prep")
    assert art.name.startswith("DataBlendsArtifact-sft") and art.metadata["stage"] == "stage1_sft/data_prep"
    assert any((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert metrics_mod.ARTIFACT_KINDS["data"] == ("DataBlendsArtifact", "dataset")
