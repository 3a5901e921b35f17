"""DCP training checkpoints: bitwise save/load, RNG, atomicity, pruning, resume resolution,
weights-only loading from our checkpoints and HF exports, and the tokenizer fingerprint."""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as torch_dcp
from ckpt_helpers import TOKENIZER_DIR, build_training, make_batch, tiny_config, train_step

from nemotron_core.checkpoint.dcp import (
    TRAINER_STATE_FILE,
    checkpoint_dir,
    export_hf,
    find_latest_checkpoint,
    load_checkpoint,
    load_model_weights,
    resolve_resume,
    save_checkpoint,
)
from nemotron_core.lineage import Lineage, read_lineage, read_metadata
from nemotron_core.model.nano3 import build_nano3


def _save(out_dir, model, optimizer, scheduler, *, step, tokenizer_fp, keep_last=2, lineage=None, **kw):
    return save_checkpoint(
        out_dir,
        step=step,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        consumed_rows=8 * step,
        tokenizer_dir=TOKENIZER_DIR,
        tokenizer_fp=tokenizer_fp,
        lineage=lineage,
        keep_last=keep_last,
        **kw,
    )


def _steps(out_dir) -> list[str]:
    return sorted(p.name for p in (out_dir / "checkpoints").iterdir())


def _assert_state_equal(a: dict, b: dict) -> int:
    """Bitwise equality of two (nested) state dicts; returns the number of tensors compared."""
    assert a.keys() == b.keys()
    n = 0
    for k in a:
        if isinstance(a[k], dict):
            n += _assert_state_equal(a[k], b[k])
        elif isinstance(a[k], torch.Tensor):
            assert a[k].dtype == b[k].dtype, k
            assert torch.equal(a[k], b[k]), k
            n += 1
        else:
            assert a[k] == b[k], k
    return n


def test_save_load_restores_every_tensor_rng_and_counters(tmp_path, cfg, tokenizer_fp):
    model, opt, sched = build_training(cfg, seed=0, steps=2)
    lineage = Lineage(stage="test", config={"model": "tiny", "lr": 1e-2}, tokenizer=tokenizer_fp)
    torch.manual_seed(123)
    random.seed(123)
    np.random.seed(123)
    path = _save(tmp_path, model, opt, sched, step=2, tokenizer_fp=tokenizer_fp, lineage=lineage)
    # The streams the saving process continues with after the save.
    expect_torch, expect_py, expect_np = torch.rand(5), random.random(), np.random.rand(3)

    assert path == checkpoint_dir(tmp_path, 2) == tmp_path / "checkpoints" / "step_00000002"
    assert (path / "tokenizer" / "tokenizer.json").is_file()
    assert read_lineage(path)["config"] == lineage.config
    assert read_metadata(path)["tokenizer"]["vocab_hash"] == tokenizer_fp["vocab_hash"]
    state = json.loads((path / TRAINER_STATE_FILE).read_text())
    assert state["world_size"] == 1 and state["config_hash"] and state["model_config"]["vocab_size"] == 4096
    torch.load(path / "rng_rank0.pt", weights_only=True)  # safe types only

    model2, opt2, sched2 = build_training(cfg, seed=1, steps=0)
    assert not torch.equal(model2.lm_head.weight, model.lm_head.weight)  # the load has work to do
    torch.manual_seed(999)
    random.seed(999)
    np.random.seed(999)
    ts = load_checkpoint(path, model=model2, optimizer=opt2, scheduler=sched2)

    assert torch.equal(torch.rand(5), expect_torch)
    assert random.random() == expect_py
    assert np.array_equal(np.random.rand(3), expect_np)
    assert (ts.step, ts.consumed_rows, ts.rng_restored, ts.world_size) == (2, 16, True, 1)
    assert ts.tokenizer == tokenizer_fp
    n_model = _assert_state_equal(model.state_dict(), model2.state_dict())
    assert n_model == len(list(model.parameters())) + len(list(model.buffers()))
    n_optim = _assert_state_equal(opt.state_dict(), opt2.state_dict())
    assert n_optim == 3 * len(list(model.parameters()))  # step, exp_avg, exp_avg_sq each
    assert sched2.state_dict() == sched.state_dict()
    assert sched2.get_last_lr() == sched.get_last_lr()

    # Training continues identically from the restored state.
    batch = make_batch(7, cfg)
    train_step(model, opt, sched, batch)
    train_step(model2, opt2, sched2, batch)
    _assert_state_equal(model.state_dict(), model2.state_dict())


def test_keep_last_prunes_older_checkpoints_but_never_the_new_one(tmp_path, cfg, tokenizer_fp):
    model, opt, sched = build_training(cfg, seed=0, steps=1)
    for step in (1, 2, 3, 4):
        _save(tmp_path, model, opt, sched, step=step, tokenizer_fp=tokenizer_fp, keep_last=2)
    assert _steps(tmp_path) == ["step_00000003", "step_00000004"]
    # Re-saving an older step with keep_last=1: the newest stays, and so does the one just written.
    _save(tmp_path, model, opt, sched, step=1, tokenizer_fp=tokenizer_fp, keep_last=1)
    assert _steps(tmp_path) == ["step_00000001", "step_00000004"]
    _save(tmp_path, model, opt, sched, step=5, tokenizer_fp=tokenizer_fp, keep_last=0)  # 0 keeps all
    assert _steps(tmp_path) == ["step_00000001", "step_00000004", "step_00000005"]
    assert find_latest_checkpoint(tmp_path) == checkpoint_dir(tmp_path, 5)


def test_crash_mid_write_leaves_no_step_dir(tmp_path, cfg, tokenizer_fp, monkeypatch):
    model, opt, sched = build_training(cfg, seed=0, steps=1)
    good = _save(tmp_path, model, opt, sched, step=1, tokenizer_fp=tokenizer_fp)
    real_save = torch_dcp.save
    written = []

    def save_then_die(state_dict, *, checkpoint_id, **kw):
        real_save(state_dict, checkpoint_id=checkpoint_id, **kw)  # the shard and .metadata are on disk
        assert checkpoint_id.name.startswith(".step_00000002.tmp-")
        written.append(sorted(p.name for p in checkpoint_id.iterdir()))
        raise RuntimeError("node lost power")

    monkeypatch.setattr(torch_dcp, "save", save_then_die)
    with pytest.raises(RuntimeError, match="node lost power"):
        _save(tmp_path, model, opt, sched, step=2, tokenizer_fp=tokenizer_fp)
    assert written == [[".metadata", "__0_0.distcp"]]  # the crash really came after writing part
    assert _steps(tmp_path) == ["step_00000001"]  # no step_2, no temporary directory left
    monkeypatch.setattr(torch_dcp, "save", real_save)

    # A failure in rank 0's part (tokenizer copy) also leaves nothing.
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        save_checkpoint(
            tmp_path,
            step=3,
            model=model,
            optimizer=opt,
            scheduler=sched,
            consumed_rows=0,
            tokenizer_dir=tmp_path / "checkpoints",
            tokenizer_fp=tokenizer_fp,
            lineage=None,
            keep_last=2,
        )
    assert _steps(tmp_path) == ["step_00000001"]

    # A killed writer leaves a temporary directory (here even a complete-looking one): ignored.
    killed = tmp_path / "checkpoints" / ".step_00000009.tmp-killed"
    shutil.copytree(good, killed)
    assert find_latest_checkpoint(tmp_path) == good
    assert resolve_resume("auto", tmp_path) == good
    # ... and removed by the next successful save.
    _save(tmp_path, model, opt, sched, step=4, tokenizer_fp=tokenizer_fp)
    assert _steps(tmp_path) == ["step_00000001", "step_00000004"]


def test_resolve_resume(tmp_path, cfg, tokenizer_fp):
    assert resolve_resume("none", tmp_path) is None
    assert resolve_resume("auto", tmp_path) is None  # fresh run: nothing to resume
    model, opt, sched = build_training(cfg, seed=0, steps=1)
    p1 = _save(tmp_path, model, opt, sched, step=1, tokenizer_fp=tokenizer_fp)
    p3 = _save(tmp_path, model, opt, sched, step=3, tokenizer_fp=tokenizer_fp)
    assert resolve_resume("auto", tmp_path) == p3
    assert resolve_resume("none", tmp_path) is None
    assert resolve_resume(str(p1), tmp_path) == p1
    with pytest.raises(FileNotFoundError, match=r"checkpoint\.resume='.*step_00000007' does not exist"):
        resolve_resume(str(tmp_path / "checkpoints" / "step_00000007"), tmp_path)
    with pytest.raises(FileNotFoundError, match=r"checkpoint\.resume=.* is not a checkpoint directory"):
        resolve_resume(str(tmp_path), tmp_path)


def test_load_model_weights_from_checkpoint(tmp_path, cfg, tokenizer_fp):
    model, opt, sched = build_training(cfg, seed=0, steps=2)
    path = _save(tmp_path, model, opt, sched, step=2, tokenizer_fp=tokenizer_fp)
    for source in (path, tmp_path):  # the checkpoint itself, or the run directory (newest checkpoint)
        fresh = build_nano3(cfg, seed=5)
        assert not torch.equal(fresh.embeddings.weight, model.embeddings.weight)
        info = load_model_weights(source, fresh)
        assert (info["source"], info["path"], info["step"]) == ("checkpoint", str(path), 2)
        assert info["tokenizer"] == tokenizer_fp
        _assert_state_equal(model.state_dict(), fresh.state_dict())

    with pytest.raises(ValueError, match=r"checkpoint\.load=.*hidden_size: 64 \(source\) vs 32"):
        load_model_weights(path, build_nano3(tiny_config(hidden_size=32), seed=0))
    with pytest.raises(FileNotFoundError, match=r"checkpoint\.load="):
        load_model_weights(tmp_path / "nowhere", build_nano3(cfg, seed=0))


def test_export_hf_round_trip_same_logits(tmp_path, cfg, tokenizer_fp):
    model, _, _ = build_training(cfg, seed=0, steps=2)
    lineage = Lineage(stage="test", config={"x": 1}, tokenizer=tokenizer_fp)
    hf_dir = export_hf(tmp_path / "hf", model, model_cfg=cfg, tokenizer_dir=TOKENIZER_DIR, lineage=lineage)
    names = sorted(p.name for p in hf_dir.iterdir())
    for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "lineage.json"):
        assert f in names
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left
    # Export again over the existing one: replaced whole.
    export_hf(tmp_path / "hf", model, model_cfg=cfg, tokenizer_dir=TOKENIZER_DIR, lineage=lineage)

    fresh = build_nano3(cfg, seed=7)
    info = load_model_weights(hf_dir, fresh)
    assert info["source"] == "hf" and info["step"] is None
    assert info["tokenizer"]["vocab_hash"] == tokenizer_fp["vocab_hash"]  # computed from its files
    assert info["tokenizer"]["chat_template_hash"] == tokenizer_fp["chat_template_hash"]
    assert info["lineage"]["config"] == {"x": 1}
    ids, _ = make_batch(3, cfg)
    with torch.no_grad():
        torch.testing.assert_close(fresh(ids).logits, model(ids).logits, rtol=0, atol=0)

    with pytest.raises(ValueError, match=r"checkpoint\.load=.*vocab_size: 4096 \(source\) vs 8192"):
        load_model_weights(hf_dir, build_nano3(tiny_config(vocab_size=8192), seed=0))


def test_hf_dir_without_tokenizer_has_no_fingerprint(tmp_path, cfg):
    model = build_nano3(cfg, seed=0)
    hf_dir = export_hf(tmp_path / "hf", model, model_cfg=cfg, tokenizer_dir=None, lineage=None)
    info = load_model_weights(hf_dir, build_nano3(cfg, seed=1))
    assert info["tokenizer"] is None and info["lineage"] is None
