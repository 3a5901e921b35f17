"""Expert parallelism under 2 gloo processes equals one process: the MoE layer alone (uneven token
counts, a rank whose experts get no token, tp ranks sharing tokens), a full train_step under dp2 x
ep2 and tp2 x ep2 (loss, load, parameters and expert bias after one AdamW step to 1e-5), and a DCP
checkpoint saved under ep2 loading into one process with the same logits.

One process group (one spawn, `ep_run`) computes every case; the tests compare."""

from __future__ import annotations

import copy

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
from torch import nn
from torch.distributed.tensor import DTensor

from nemotron_core.checkpoint import save_checkpoint
from nemotron_core.checkpoint.dcp import checkpoint_dir, load_checkpoint, load_full_model
from nemotron_core.model.moe import MoE
from nemotron_core.parallel import parallelize
from nemotron_core.parallel.expert import apply_expert_parallel
from nemotron_core.parallel.mesh import build_parallel_state

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed with gloo"
)
CPU = torch.device("cpu")
H = 16
SKEW = [9.0, 9.0, 0.0, 0.0]  # router bias: every token picks experts 0 and 1 (ep rank 0's)
LAYOUTS = {"dp2ep2": (2, 1), "tp2ep2": (1, 2), "dp2ep2_ckpt": (2, 1)}  # name: (dp, tp); ckpt: + activation ckpt
MOE_CASES = {  # name: (dp, tp, tokens per dp rank, router bias)
    "dp2ep2_uneven": (2, 1, [5, 9], None),
    "dp2ep2_rank1_idle": (2, 1, [6, 3], SKEW),
    "tp2ep2_odd_rows": (1, 2, [7], None),
    "tp2ep2_rank1_idle": (1, 2, [6], SKEW),
}


class _Block(nn.Module):
    def __init__(self, mixer):
        super().__init__()
        self.mixer = mixer


class _Layers(nn.Module):
    """A `layers` list around one MoE, as `apply_expert_parallel` expects."""

    def __init__(self, moe):
        super().__init__()
        self.layers = nn.ModuleList([_Block(moe)])


def _moe(bias) -> MoE:
    torch.manual_seed(0)
    moe = MoE(hidden_size=H, num_experts=4, top_k=2, intermediate_size=8, shared_intermediate_size=12,
              routed_scaling_factor=2.5)
    for p in moe.parameters():
        nn.init.normal_(p, std=0.3)
    if bias is not None:
        moe.router.e_score_correction_bias.copy_(torch.tensor(bias))
    return moe


def _moe_case(dp: int, tp: int, tokens: list[int], bias) -> dict:
    """MoE alone: this dp rank's tokens through EP vs the whole batch through one MoE -> the
    largest differences of outputs, input grads and every parameter's (dp-summed) grad."""
    state = build_parallel_state(pp=1, dp=dp, tp=tp, ep=2, fsdp=False, device=CPU)
    ref = _moe(bias)
    moe = copy.deepcopy(ref)
    apply_expert_parallel(_Layers(moe), state)
    local_experts = moe.experts.up_proj.to_local().shape[0]

    g = torch.Generator().manual_seed(1)
    x_all, w = torch.randn(sum(tokens), H, generator=g), torch.randn(sum(tokens), H, generator=g)
    lo = sum(tokens[: state.dp_rank])
    hi = lo + tokens[state.dp_rank]
    x_ref = x_all.clone().requires_grad_()
    y_ref, _ = ref(x_ref)
    (y_ref * w).sum().backward()
    x = x_all[lo:hi].clone().requires_grad_()
    y, stats = moe(x)
    (y * w[lo:hi]).sum().backward()

    diffs = {"out": float((y - y_ref[lo:hi]).detach().abs().max()),
             "x.grad": float((x.grad - x_ref.grad[lo:hi]).abs().max())}
    for name, p in moe.named_parameters():
        grad = p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad.clone()
        if not isinstance(p, DTensor) and state.dp_group is not None:  # replicas: summed over dp
            dist.all_reduce(grad, group=state.dp_group)
        diffs[name] = float((grad - ref.get_parameter(name).grad).abs().max())
    idle = torch.tensor(float(stats.load[2:].sum()))  # tokens routed to ep rank 1's experts, all ranks
    dist.all_reduce(idle)
    return {"diffs": diffs, "local_experts": local_experts, "tokens_to_rank1_experts": float(idle)}


def _worker(rank: int, world: int, out_dir: str) -> None:
    out = {"moe": {name: _moe_case(*case) for name, case in MOE_CASES.items()}}
    cfg = build_model().cfg
    for layout, (dp, tp) in LAYOUTS.items():
        state = build_parallel_state(pp=1, dp=dp, tp=tp, ep=2, fsdp=False, device=CPU)
        model = build_model()
        parallelize(model, state, model_cfg=cfg, activation_checkpointing=layout.endswith("_ckpt"))
        experts = [b.mixer.experts for b in model.layers if b.kind == "moe"]
        optimizer, scheduler, result = one_step(
            model, rank_batches(state.dp_rank, state.dp), dp_group=state.dp_group, grad_reduction="all_reduce",
            parallel=state,
        )
        out[layout] = {
            "state": full_state(model),
            "result": result_dict(result),
            "experts": [(e.up_proj.to_local().shape[0], e.up_proj.device_mesh.mesh_dim_names) for e in experts],
            "router_is_dtensor": any(isinstance(b.mixer.router.weight, DTensor) for b in model.layers
                                     if b.kind == "moe"),
        }
        if layout == "dp2ep2":
            ids, cu = probe_input()
            with torch.no_grad():
                out[layout]["logits"] = model(ids, cu_seqlens=cu).logits
            save_checkpoint(out_dir, step=1, model=model, optimizer=optimizer, scheduler=scheduler,
                            consumed_rows=8, tokenizer_dir=None, tokenizer_fp=None, lineage=None, keep_last=0)
            out[layout]["moments"] = moments(model, optimizer)
        elif layout == "tp2ep2":  # the dp2 x ep2 checkpoint resumes under tp2 x ep2 (DCP reshards model and optimizer)
            model = build_model(seed=5)
            parallelize(model, state, model_cfg=cfg)
            optimizer, scheduler = build_optimizer_and_scheduler(model)
            load_checkpoint(checkpoint_dir(out_dir, 1), model=model, optimizer=optimizer, scheduler=scheduler)
            out["resumed_tp2ep2"] = {"state": full_state(model), "moments": moments(model, optimizer)}
    save_rank(out_dir, rank, out)


@pytest.fixture(scope="module")
def ep_run(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ep")
    spawn(_worker, 2, out_dir)
    return out_dir, [load_rank(out_dir, r) for r in range(2)]


@pytest.fixture(scope="module")
def reference():
    return reference_step()


@pytest.mark.parametrize("case", list(MOE_CASES))
def test_moe_layer_equals_one_process(ep_run, case):
    for rank, got in enumerate(ep_run[1]):
        r = got["moe"][case]
        assert r["local_experts"] == 2
        assert len(r["diffs"]) == 2 + 5  # out, x.grad, router + shared up/down + experts up/down
        bad = {k: v for k, v in r["diffs"].items() if not v <= 1e-5}
        assert not bad, (case, rank, bad)
        if MOE_CASES[case][3] is not None:  # the case is what it says: ep rank 1's experts got nothing
            assert r["tokens_to_rank1_experts"] == 0


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_train_step_equals_one_process(ep_run, reference, layout):
    want_state, want = reference
    for rank, got in enumerate(ep_run[1]):
        run = got[layout]
        assert run["experts"] == [(2, ("ep",))] * 2  # two MoE layers, 2 of 4 experts per rank
        assert not run["router_is_dtensor"]
        diffs = compare(run, want_state, want)
        print(f"{layout} rank {rank}: loss {want.loss:.6f} |d loss| {diffs['loss']:.1e} "
              f"max |d param| {diffs['params']:.1e}")


def test_ep2_checkpoint_loads_into_one_process(ep_run):
    out_dir, ranks = ep_run
    got = ranks[0]["dp2ep2"]
    path = checkpoint_dir(out_dir, 1)
    assert {"__0_0.distcp", "__1_0.distcp"} <= {p.name for p in path.iterdir()}
    model = build_model(seed=5)
    load_full_model(path, model)
    for k, v in model.state_dict().items():
        assert torch.equal(v, got["state"][k]), k
    for rank in range(2):  # ... and resumes under tp2 x ep2: same weights, the saved Adam moments
        resumed = ranks[rank]["resumed_tp2ep2"]
        for k, v in got["state"].items():
            assert torch.equal(resumed["state"][k], v), k
        assert resumed["moments"].keys() == got["moments"].keys() and len(got["moments"]) > 20
        for k, v in got["moments"].items():
            assert torch.equal(resumed["moments"][k], v), k
    ids, cu = probe_input()
    with torch.no_grad():
        logits = model(ids, cu_seqlens=cu).logits
    torch.testing.assert_close(logits, got["logits"], rtol=0, atol=1e-5)
