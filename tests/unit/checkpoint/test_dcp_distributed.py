"""DCP checkpoints under 2 gloo processes with FSDP2: each rank writes its own shard and RNG file,
the checkpoint reloads bitwise into a fresh sharded model and into a single process (resharding);
the HF export gathers the shards, and weights-only loads (HF or ours) shard them again."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from ckpt_helpers import TOKENIZER_DIR, build_training, make_batch, tiny_config, train_step
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
)

from nemotron_core.checkpoint.dcp import (
    TRAINER_STATE_FILE,
    export_hf,
    load_checkpoint,
    load_model_weights,
    save_checkpoint,
)

WORLD = 2
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def _sharded_training(cfg, *, seed, steps, rank):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    model, _, _ = build_training(cfg, seed=seed, steps=0)
    mesh = init_device_mesh("cpu", (WORLD,))
    for block in model.layers:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=10)
    for i in range(steps):  # each rank its own data, as data parallel does
        train_step(model, optimizer, scheduler, make_batch(100 + 10 * rank + i, cfg))
    return model, optimizer, scheduler


def _full(model, optimizer) -> dict:
    return {
        "model": get_model_state_dict(model, options=FULL),
        "optim": get_optimizer_state_dict(model, optimizer, options=FULL),
    }


def _worker(rank: int, init_file: str, out_dir: str, tokenizer_fp: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        cfg = tiny_config()
        model, opt, sched = _sharded_training(cfg, seed=0, steps=2, rank=rank)
        torch.manual_seed(1000 + rank)  # a different stream per rank
        save_checkpoint(
            out_dir,
            step=2,
            model=model,
            optimizer=opt,
            scheduler=sched,
            consumed_rows=16,
            tokenizer_dir=TOKENIZER_DIR,
            tokenizer_fp=tokenizer_fp,
            lineage=None,
            keep_last=2,
        )
        expect_rand = torch.rand(4)
        full = _full(model, opt)

        model2, opt2, sched2 = _sharded_training(cfg, seed=1, steps=0, rank=rank)
        ts = load_checkpoint(
            os.path.join(out_dir, "checkpoints", "step_00000002"),
            model=model2,
            optimizer=opt2,
            scheduler=sched2,
        )
        assert torch.equal(torch.rand(4), expect_rand)
        assert (ts.step, ts.consumed_rows, ts.world_size, ts.rng_restored) == (2, 16, WORLD, True)
        full2 = _full(model2, opt2)

        # HF export gathers the shards (rank 0 writes); weights-only loads shard them again.
        hf_dir = export_hf(
            os.path.join(out_dir, "hf"), model, model_cfg=cfg, tokenizer_dir=TOKENIZER_DIR, lineage=None
        )
        for source in (hf_dir, out_dir):
            model3, _, _ = _sharded_training(cfg, seed=2, steps=0, rank=rank)
            info = load_model_weights(source, model3)
            assert info["tokenizer"]["vocab_hash"] == tokenizer_fp["vocab_hash"]
            loaded = get_model_state_dict(model3, options=FULL)
            if rank == 0:
                assert _assert_equal(loaded, full["model"]) == len(full["model"])
        if rank == 0:
            torch.save(
                {"full": full, "full2": full2, "rand0": expect_rand}, os.path.join(out_dir, "expect.pt")
            )
    finally:
        dist.destroy_process_group()


def _flat(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flat(v, f"{prefix}{k}.")
        elif isinstance(v, list):
            yield from _flat(dict(enumerate(v)), f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _assert_equal(a: dict, b: dict) -> int:
    fa, fb = dict(_flat(a)), dict(_flat(b))
    assert fa.keys() == fb.keys()
    n = 0
    for k, v in fa.items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, fb[k]), k
            n += 1
        else:
            assert v == fb[k], k
    return n


def test_two_process_fsdp_save_writes_a_shard_per_rank_and_reloads(tmp_path, tokenizer_fp):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("needs torch.distributed with gloo")
    out_dir = tmp_path / "run"
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(out_dir), tokenizer_fp), nprocs=WORLD, join=True)

    path = out_dir / "checkpoints" / "step_00000002"
    names = sorted(p.name for p in path.iterdir())
    assert {"__0_0.distcp", "__1_0.distcp", "rng_rank0.pt", "rng_rank1.pt", ".metadata"} <= set(names)
    # Sharded parameters: each rank's file holds half of the tensors' data.
    s0, s1 = (path / "__0_0.distcp").stat().st_size, (path / "__1_0.distcp").stat().st_size
    assert s1 > 0.4 * s0
    assert json.loads((path / TRAINER_STATE_FILE).read_text())["world_size"] == WORLD
    assert not [p for p in (out_dir / "checkpoints").iterdir() if p.name.startswith(".")]

    expect = torch.load(out_dir / "expect.pt", weights_only=True)
    n = _assert_equal(expect["full"], expect["full2"])  # 2 ranks -> 2 ranks
    assert n > 3 * len(expect["full"]["model"]) // 2

    # 2 ranks -> 1 process: DCP reshards onto a plain model.
    cfg = tiny_config()
    model, opt, sched = build_training(cfg, seed=3, steps=0)
    ts = load_checkpoint(path, model=model, optimizer=opt, scheduler=sched)
    assert ts.world_size == WORLD and ts.rng_restored
    assert torch.equal(torch.rand(4), expect["rand0"])  # rank 0's stream
    _assert_equal(expect["full"], _full(model, opt))

    # The export written from the sharded model loads into a plain one with the same weights.
    plain = build_training(cfg, seed=4, steps=0)[0]
    assert load_model_weights(out_dir / "hf", plain)["source"] == "hf"
    _assert_equal(expect["full"]["model"], plain.state_dict())
