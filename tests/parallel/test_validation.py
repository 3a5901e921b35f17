"""Impossible layouts fail before any process group, worker or tensor exists, naming the config keys."""

from __future__ import annotations

import dataclasses
import time

import pytest

from nemotron_core.config import load_model_preset
from nemotron_core.config.parallel import ParallelConfig
from nemotron_core.parallel import check_run

TINY = load_model_preset("nano3_tiny")
NANO = load_model_preset("nano3_30b_a3b")


def layout(**kw) -> ParallelConfig:
    return ParallelConfig(**{"name": "x", **kw})


CASES = [
    # (model, layout, world size from torchrun/Slurm, gbs, mbs, words the message must contain)
    (TINY, layout(tp=3), None, 4, 1, ["model.num_key_value_heads=2", "parallel.tp=3"]),
    (TINY, layout(tp=8), None, 8, 1, ["parallel.tp=8"]),
    (TINY, layout(dp=2, ep=3), None, 4, 1, ["parallel.ep=3", "parallel.dp x parallel.tp"]),
    (TINY, layout(dp=-1, ep=16), 16, 16, 1, ["model.n_routed_experts=8", "parallel.ep=16"]),
    (TINY, layout(tp=2, pp=2), 8, 8, 1, ["world size 8", "parallel.pp x parallel.dp x parallel.tp"]),
    (TINY, layout(dp=-1, tp=4), 6, 8, 1, ["world size 6", "parallel.pp x parallel.tp"]),
    (TINY, layout(pp=13), None, 16, 1, ["parallel.pp=13", "12 layers"]),
    (TINY, layout(pp=2, dp=2), None, 4, 2, ["pp_schedule=1F1B", "parallel.pp=2", "train.global_batch_size"]),
    (TINY, layout(pp=2, pp_schedule="Interleaved1F1B"), None, 8, 1, ["pp_virtual_stages=1"]),
    (TINY, layout(pp=2, pp_schedule="Interleaved1F1B", pp_virtual_stages=2), None, 6, 2, ["a multiple of pp"]),
    (TINY, layout(pp=4, pp_schedule="Interleaved1F1B", pp_virtual_stages=4), None, 16, 1, ["exceed the 12 layers"]),
    (TINY, layout(pp=2, pp_schedule="ZeroBubble"), None, 4, 1, ["parallel.pp_schedule='ZeroBubble'"]),
    (TINY, layout(dp=2), None, 6, 2, ["train.global_batch_size=6", "train.micro_batch_size=2"]),
    (NANO, layout(tp=3), None, 8, 1, ["parallel.tp=3"]),
    (dataclasses.replace(TINY, n_groups=2), layout(tp=4), None, 8, 1, ["model.n_groups=2", "parallel.tp=4"]),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_impossible_layout_fails_fast_naming_keys(case):
    model, par, world, gbs, mbs, words = CASES[case]
    t0 = time.perf_counter()
    with pytest.raises(ValueError) as err:
        check_run(model, par, global_batch_size=gbs, micro_batch_size=mbs, world_size=world)
    elapsed = time.perf_counter() - t0
    for w in words:
        assert w in str(err.value), (w, str(err.value))
    print(f"{elapsed * 1e3:.2f} ms: {err.value}")


@pytest.mark.parametrize("name", ["single", "dp2", "fsdp2", "tp2", "ep2", "tp4pp2", "tp2pp2dp2", "tp1ep8"])
def test_every_shipped_layout_is_possible_for_both_models(name):
    import yaml

    from nemotron_core.paths import CONF_DIR

    values = {k: v for k, v in yaml.safe_load((CONF_DIR / "parallel" / f"{name}.yaml").read_text()).items() if k != "defaults"}
    par = ParallelConfig(**values)
    for model in (TINY, NANO):
        dp = check_run(model, par, global_batch_size=16, micro_batch_size=1)
        assert dp == max(par.dp, 1)
