"""FSDP2 (`apply_fsdp`) under gloo equals one process: fsdp2, fsdp2 x ep2 (experts FSDP over a
1-rank edp mesh) and, with 4 processes (slow), fsdp4 x ep2 (experts sharded over edp 2, on dim 0,
and on dim 1 when a rank holds fewer experts than edp) and fsdp2 x tp2 x ep2 give the
single-process loss and parameters after one AdamW step (grad_reduction="sum") to 1e-5; bf16
mixed precision runs; a checkpoint saved under fsdp2 x ep2 loads into one process with the same
logits and resumes under fsdp2 with the same weights and Adam moments."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from dist_helpers import (
    build_model,
    build_optimizer_and_scheduler,
    compare,
    full_state,
    load_rank,
    moments,
    one_step,
    probe_input,
    rank_batches,
    reference_step,
    result_dict,
    save_rank,
    spawn,
)
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

from nemotron_core.checkpoint import save_checkpoint
from nemotron_core.checkpoint.dcp import checkpoint_dir, load_checkpoint, load_full_model
from nemotron_core.parallel import parallelize
from nemotron_core.parallel.mesh import build_parallel_state

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed with gloo"
)
CPU = torch.device("cpu")
# name: (dp, tp, ep, model overrides)
LAYOUTS_2 = {"fsdp2": (2, 1, 1, {}), "fsdp2ep2": (2, 1, 2, {}), "fsdp2ep2_bf16": (2, 1, 2, {})}
LAYOUTS_4 = {
    "fsdp4ep2": (4, 1, 2, {}),
    "fsdp4ep2_2experts": (4, 1, 2, {"n_routed_experts": 2, "num_experts_per_tok": 1}),
    "fsdp2tp2ep2": (2, 2, 2, {}),
}


def _run_layout(rank: int, out_dir: str, name: str, dp: int, tp: int, ep: int, overrides: dict, save: bool) -> dict:
    state = build_parallel_state(pp=1, dp=dp, tp=tp, ep=ep, fsdp=True, device=CPU)
    model = build_model(**overrides)
    parallelize(model, state, model_cfg=model.cfg, mixed_precision=name.endswith("_bf16"))
    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    up = [b.mixer.experts.up_proj for b in model.layers if b.kind == "moe"]
    optimizer, scheduler, result = one_step(
        model, rank_batches(state.dp_rank, state.dp), dp_group=state.dp_group, grad_reduction="sum", parallel=state
    )
    out = {
        "state": full_state(model),
        "result": result_dict(result),
        "units": len(units),
        # (mesh dims, sharded tensor dim of each mesh dim, local shape); FSDP's dim-0 shard of an
        # ep-sharded dim 0 is a _StridedShard(dim=0)
        "expert_layout": [(p.device_mesh.mesh_dim_names, tuple(getattr(pl, "dim", None) for pl in p.placements),
                           tuple(p.to_local().shape)) for p in up if isinstance(p, DTensor)],
    }
    if save:
        ids, cu = probe_input()
        with torch.no_grad():
            out["logits"] = model(ids, cu_seqlens=cu).logits
        save_checkpoint(out_dir, step=1, model=model, optimizer=optimizer, scheduler=scheduler, consumed_rows=8,
                        tokenizer_dir=None, tokenizer_fp=None, lineage=None, keep_last=0)
        out["moments"] = moments(model, optimizer)
    return out


def _worker(rank: int, world: int, out_dir: str, layouts: dict) -> None:
    out = {name: _run_layout(rank, out_dir, name, *layout, save=name == "fsdp2ep2") for name, layout in layouts.items()}
    if "fsdp2ep2" in layouts:  # the fsdp2 x ep2 checkpoint resumes under fsdp2 without ep (DCP reshards)
        state = build_parallel_state(pp=1, dp=2, tp=1, ep=1, fsdp=True, device=CPU)
        model = build_model(seed=5)
        parallelize(model, state, model_cfg=model.cfg)
        optimizer, scheduler = build_optimizer_and_scheduler(model)
        load_checkpoint(checkpoint_dir(out_dir, 1), model=model, optimizer=optimizer, scheduler=scheduler)
        out["resumed_fsdp2"] = {"state": full_state(model), "moments": moments(model, optimizer)}
    save_rank(out_dir, rank, out)


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("fsdp")
    spawn(_worker, 2, out_dir, LAYOUTS_2)
    return out_dir, [load_rank(out_dir, r) for r in range(2)]


def _check(ranks: list[dict], name: str, overrides: dict) -> None:
    want_state, want = reference_step(**overrides)
    for rank, got in enumerate(ranks):
        diffs = compare(got[name], want_state, want)
        print(f"{name} rank {rank}: loss {want.loss:.6f} |d loss| {diffs['loss']:.1e} max |d param| {diffs['params']:.1e}")


@pytest.mark.parametrize("name", ["fsdp2", "fsdp2ep2"])
def test_fsdp_train_step_equals_one_process(fsdp_run, name):
    ranks = fsdp_run[1]
    for got in ranks:
        run = got[name]
        assert run["units"] == 4 + 1 + (2 if name == "fsdp2ep2" else 0)  # blocks, root, experts
        if name == "fsdp2ep2":  # experts: FSDP over edp (1 rank) x ep, 2 of 4 experts per rank
            assert run["expert_layout"] == [(("edp", "ep"), (0, 0), (2, 16, 32))] * 2
    _check(ranks, name, LAYOUTS_2[name][3])


def test_fsdp_ep_mixed_precision_runs_bf16_and_keeps_fp32_weights(fsdp_run):
    want_state, want = reference_step()
    for got in fsdp_run[1]:
        run = got["fsdp2ep2_bf16"]
        assert abs(run["result"]["loss"] - want.loss) < 2e-2  # bf16 compute
        assert abs(run["result"]["loss"] - want.loss) > 0  # ... really in bf16
        assert all(v.dtype == want_state[k].dtype for k, v in run["state"].items())  # fp32 master weights
        assert max(float((v - want_state[k]).abs().max()) for k, v in run["state"].items()) < 5e-3


def test_fsdp_ep_checkpoint_loads_into_one_process(fsdp_run):
    out_dir, ranks = fsdp_run
    got = ranks[0]["fsdp2ep2"]
    model = build_model(seed=5)
    load_full_model(checkpoint_dir(out_dir, 1), model)
    for k, v in model.state_dict().items():
        assert torch.equal(v, got["state"][k]), k
    for rank in range(2):  # ... and resumes under fsdp2 without ep: same weights and Adam moments
        resumed = ranks[rank]["resumed_fsdp2"]
        for k, v in got["state"].items():
            assert torch.equal(resumed["state"][k], v), k
        assert resumed["moments"].keys() == got["moments"].keys() and len(got["moments"]) > 20
        for k, v in got["moments"].items():
            assert torch.equal(resumed["moments"][k], v), k
    ids, cu = probe_input()
    with torch.no_grad():
        logits = model(ids, cu_seqlens=cu).logits
    torch.testing.assert_close(logits, got["logits"], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_fsdp4_ep2_experts_sharded_over_edp(tmp_path):
    spawn(_worker, 4, tmp_path, LAYOUTS_4)
    ranks = [load_rank(tmp_path, r) for r in range(4)]
    for got in ranks:  # 2 of 4 experts per rank, split over edp 2 on dim 0; 1 of 2 experts: dim 1
        assert got["fsdp4ep2"]["expert_layout"] == [(("edp", "ep"), (0, 0), (1, 16, 32))] * 2
        assert got["fsdp4ep2_2experts"]["expert_layout"] == [(("edp", "ep"), (1, 0), (1, 8, 32))] * 2
        assert got["fsdp2tp2ep2"]["expert_layout"] == [(("edp", "ep"), (0, 0), (1, 16, 32))] * 2
    for name, (_, _, _, overrides) in LAYOUTS_4.items():
        _check(ranks, name, overrides)
