"""describe.py's analytic per-rank parameter counts == the 30B-A3B meta-device model sharded by the
real plans (`nemotron_core.parallel.parallelize`), rank by rank, in one process: torch's fake
process group plays each rank of the 8-rank world (no memory, no communication)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from nemotron_core.config import load_model_preset
from nemotron_core.config.parallel import ParallelConfig
from nemotron_core.parallel.memory import params_per_rank
from nemotron_core.paths import PACKAGE_DIR

ROOT = PACKAGE_DIR.parent
LAYOUTS = {
    "tp4pp2": ParallelConfig(name="tp4pp2", tp=4, pp=2, dp=1, ep=1),
    "tp1ep8": ParallelConfig(name="tp1ep8", tp=1, pp=1, dp=8, ep=8),  # counted before FSDP (unsharded)
}


def local_numel(module: torch.nn.Module) -> int:
    """Parameters and saved buffers (e_score_correction_bias is a checkpoint tensor, as in HF) on this rank."""
    return sum((t._local_tensor if hasattr(t, "_local_tensor") else t).numel() for t in module.state_dict().values())


def sharded_count(parallel: ParallelConfig, rank: int) -> tuple[int, int]:
    """(pipeline stage, parameters on `rank`) of the meta 30B model under the real plans."""
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from nemotron_core.model.nano3 import build_nano3
    from nemotron_core.parallel import build_parallel_state, parallelize
    from nemotron_core.parallel.pipeline import merge_stages

    cfg = load_model_preset("nano3_30b_a3b")
    world = parallel.pp * parallel.dp * parallel.tp
    dist.init_process_group("fake", rank=rank, world_size=world, store=FakeStore())
    try:
        state = build_parallel_state(pp=parallel.pp, dp=parallel.dp, tp=parallel.tp, ep=parallel.ep, fsdp=False,
                                     device=torch.device("cpu"))
        model = build_nano3(cfg, device="meta")
        stages, _ = parallelize(model, state, model_cfg=cfg, n_microbatches=parallel.pp, micro_batch_tokens=8)
        return state.pp_rank, local_numel(merge_stages(stages))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_analytic_per_rank_params_equal_the_sharded_meta_model(name):
    parallel = LAYOUTS[name]
    cfg = load_model_preset("nano3_30b_a3b")
    analytic = params_per_rank(cfg, parallel)
    world = parallel.pp * parallel.dp * parallel.tp
    for rank in sorted({0, world // 2 - 1, world - 1}):
        stage, count = sharded_count(parallel, rank)
        assert count == analytic[stage].unsharded, (name, rank, stage)


@pytest.mark.parametrize("layout", ["tp1ep8", "tp4pp2"])
def test_describe_prints_per_rank_memory_for_30b(layout):
    out = subprocess.run([sys.executable, str(ROOT / "scripts/describe.py"), "model=nano3_30b_a3b", f"parallel={layout}"],
                         capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert "31.58B total" in out and "3.23B active" in out
    for word in ("param", "optimizer", "activation"):
        assert word in out.lower(), word
