"""Describe a composed stage config without a GPU or weights: model size, layout, memory, FLOPs.

    python scripts/describe.py model=nano3_30b_a3b parallel=tp1ep8
    python scripts/describe.py --stage stage0_pretrain experiment=nano3_30b_a3b_pretrain
    python scripts/describe.py experiment=nano3_30b_a3b_sft --world-size 64

Positional arguments are Hydra overrides, composed exactly as the stage's train.py would
(`hydra.compose` on `conf/<stage>.yaml`). Only the keys printed here are resolved, so values the
run still needs (`tokenizer.path=???`, `data.input`) do not matter. `--world-size` sets the
world size of a `parallel.dp=-1` layout (default: its minimum, the least dp with ep | dp x tp).

Tests import `describe(cfg)` and `compose_stage(stage, overrides)` from this file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout

import nemotron_core.config  # noqa: E402, F401  (registers schemas and resolvers)
from nemotron_core.config import PretrainDataConfig  # noqa: E402
from nemotron_core.model.sizing import count_parameters, format_count, training_flops_per_token  # noqa: E402
from nemotron_core.parallel.memory import (  # noqa: E402
    COMPUTE_BYTES,
    GIB,
    GRAD_BYTES,
    OPTIMIZER_BYTES,
    PARAM_BYTES,
    estimate_memory,
    min_world_size,
    resolve_dp,
)
from nemotron_core.paths import CONF_DIR  # noqa: E402

STAGES = ("stage0_pretrain", "stage1_sft")


def compose_stage(stage: str = "stage1_sft", overrides: list[str] | None = None) -> DictConfig:
    """Compose `conf/<stage>.yaml` with Hydra overrides, as the stage's train.py would."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if stage not in STAGES:
        raise ValueError(f"--stage {stage!r}: expected one of {STAGES}")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(stage, overrides=list(overrides or []))
    finally:
        GlobalHydra.instance().clear()


def _seq_len(cfg: DictConfig) -> tuple[int, str]:
    """Tokens per row: data.seq_length for pretraining, data.pack_size for packed SFT."""
    if OmegaConf.get_type(cfg.data) is PretrainDataConfig:
        return int(cfg.data.seq_length), "data.seq_length"
    return int(cfg.data.pack_size), "data.pack_size"


def _flops(n: int) -> str:
    """22035679104 -> '22.04 GFLOP'."""
    for div, unit in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.2f} {unit}FLOP"
    return f"{n} FLOP"


def _gib(n: int) -> str:
    return f"{n / GIB:8.2f} GiB" if n >= GIB // 10 else f"{n / 2**20:8.2f} MiB"


def describe(cfg: DictConfig, *, world_size: int | None = None) -> str:
    """A human-readable summary of a composed stage config (see the module doc)."""
    model = OmegaConf.to_object(cfg.model)
    parallel = OmegaConf.to_object(cfg.parallel)
    gbs, mbs = int(cfg.train.global_batch_size), int(cfg.train.micro_batch_size)
    dtype, ac = str(cfg.train.dtype), bool(cfg.train.activation_checkpointing)
    seq_len, seq_key = _seq_len(cfg)

    counts = count_parameters(model)
    lines = [f"stage        {cfg.stage}"]

    # --- model
    by_kind = " + ".join(f"{n} {k}" for k, n in counts.layers_by_kind.items())
    lines += [
        f"model        {model.name}: {model.num_layers} layers = {by_kind}",
        f"pattern      {model.hybrid_override_pattern}",
        f"parameters   {format_count(counts.total)} total / {format_count(counts.active)} active per token "
        f"({format_count(counts.active_with_embedding)} with the input embedding)",
        f"             total {counts.total:,}; active {counts.active:,}; embedding {counts.embedding:,}; "
        f"lm_head {counts.lm_head:,}",
    ]
    for k, n in counts.layers_by_kind.items():
        active = f" ({counts.per_kind_active[k]:,} active)" if k == "moe" else ""
        lines.append(
            f"             {k:<9} {n:3d} x {counts.per_kind[k]:,}{active} = {counts.per_kind_total[k]:,}"
        )

    # --- layout
    if world_size is None and parallel.dp == -1:
        world_size = min_world_size(parallel)
    dp = resolve_dp(parallel, world_size)
    # pipeline in-flight count from the real step's micro-batches when they divide
    n_micro = gbs // (mbs * dp) if parallel.pp > 1 and gbs % (mbs * dp) == 0 else None
    mem = estimate_memory(
        model,
        parallel,
        micro_batch_size=mbs,
        seq_len=seq_len,
        dtype=dtype,
        activation_checkpointing=ac,
        world_size=world_size,
        num_microbatches=n_micro,
    )
    derived = " (dp derived from the world size)" if parallel.dp == -1 else ""
    lines += [
        f"parallel     {parallel.name}: tp={parallel.tp} pp={parallel.pp} dp={dp} ep={parallel.ep} "
        f"fsdp={str(parallel.fsdp).lower()} -> world size {mem.world_size}{derived}",
    ]
    for s in mem.stages:
        span = f"{s.layers.start}-{s.layers.stop - 1}"
        pattern = "".join(model.hybrid_override_pattern[i] for i in s.layers)
        extras = (["embedding"] if s.stage == 0 else []) + (
            ["lm_head, final norm"] if s.stage == parallel.pp - 1 else []
        )
        lines.append(
            f"pipeline     stage {s.stage}: layers {span} ({len(s.layers)}: {pattern})"
            f"{' + ' + ' + '.join(extras) if extras else ''}; {s.params:,} params per rank"
        )

    # --- memory
    w = mem.worst
    lines += [
        f"memory/rank  worst stage {w.stage}; fp32 params + fp32 grads + fp32 AdamW moments "
        f"({PARAM_BYTES}+{GRAD_BYTES}+{OPTIMIZER_BYTES} B/param), activations in {COMPUTE_BYTES[dtype]} B "
        f"(train.dtype={dtype}), activation checkpointing {'on' if ac else 'off'}, "
        f"micro batch {mbs} x {seq_len} tokens, {w.in_flight_microbatches} in flight",
        f"  params     {_gib(w.param_bytes)}  ({w.params:,} params)",
        f"  grads      {_gib(w.grad_bytes)}",
        f"  optimizer  {_gib(w.optimizer_bytes)}",
        f"  activations{_gib(w.activation_bytes)}",
        f"  fsdp bufs  {_gib(w.fsdp_buffer_bytes)}",
        f"  total      {_gib(w.total_bytes)}",
    ]

    # --- step
    flops = training_flops_per_token(model, seq_len=seq_len)
    lines += [
        f"tokens/step  {gbs * seq_len:,} = train.global_batch_size {gbs} x {seq_key} {seq_len}",
        f"train FLOPs  {_flops(flops.total)} per token at seq {seq_len} = 6 x active {_flops(flops.dense)}"
        f" + attention 12 L n_h d_h s {_flops(flops.attention)} + SSD 21 L d_inner N {_flops(flops.ssm)};"
        f" {_flops(flops.total * gbs * seq_len)} per step",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", default="stage1_sft", choices=STAGES)
    parser.add_argument("--world-size", type=int, default=None, help="world size for parallel.dp=-1 layouts")
    parser.add_argument(
        "overrides", nargs="*", help="Hydra overrides, e.g. model=nano3_30b_a3b parallel=tp1ep8"
    )
    args = parser.parse_args(argv)
    cfg = compose_stage(args.stage, args.overrides)
    try:
        print(describe(cfg, world_size=args.world_size))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
