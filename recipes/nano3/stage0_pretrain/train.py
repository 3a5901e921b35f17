"""Stage 0: pretraining Nemotron 3 Nano on Megatron indexed text.

    python recipes/nano3/stage0_pretrain/train.py                                  # tiny model on CPU, about a minute
    python recipes/nano3/stage0_pretrain/train.py data.reset_at_eod=true           # documents isolated at EOD
    python recipes/nano3/stage0_pretrain/train.py parallel=dp2                     # 2 local workers (gloo on CPU)
    python recipes/nano3/stage0_pretrain/train.py experiment=nano3_30b_a3b_pretrain cluster=my_cluster hydra/launcher=submitit_slurm -m
    python recipes/nano3/stage0_pretrain/train.py --cfg job                        # dry run: the composed config

Reads the shards that `data_prep.py` wrote (`data.path`: blend.json + metadata.json), refuses data
made with another tokenizer vocabulary, samples sequences of `data.seq_length` (+ 1 label) tokens
through megatron-core's BlendedMegatronDatasetBuilder + GPTDataset (blend weights, seeded
shuffling, index caches in `data.index_cache_dir`), and trains with the shared loop of
`nemotron_core.train` (loss = sum of token losses over the trainable tokens of the whole optimizer
step): warmup-stable-decay schedule, weight decay 0.1, MoE sequence-level aux loss and
expert-bias balancing. Writes DCP checkpoints to `<out_dir>/checkpoints` (resumed automatically),
metrics to `<out_dir>/metrics.jsonl`, a loss curve PNG and at the end a Hugging Face NemotronH
export to `<out_dir>/hf`, which stage 1 starts from with `checkpoint.load=<out_dir>/hf`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from nemotron_core.checkpoint import export_hf, load_checkpoint, resolve_resume
from nemotron_core.checkpoint.dcp import load_full_model
from nemotron_core.config import register_configs, to_object
from nemotron_core.data.indexed import load_pretrain_rows
from nemotron_core.launch import external_world_size, launch, launch_rank
from nemotron_core.launch.preemption import PreemptionWatcher
from nemotron_core.lineage import Lineage, describe_dataset
from nemotron_core.model.nano3 import build_nano3
from nemotron_core.model.sizing import count_parameters
from nemotron_core.parallel import ParallelState, check_run, grad_reduction_for, parallelize
from nemotron_core.parallel.pipeline import merge_stages
from nemotron_core.runtime import log_and_save_config, seed_everything, setup_logging
from nemotron_core.tokenization import (
    TokenizerFingerprint,
    check_tokenizer_match,
    fingerprint,
    load_tokenizer,
)
from nemotron_core.train.loop import Run, train_loop, validation_batches
from nemotron_core.train.metrics import MetricsLogger, plot_loss_curve
from nemotron_core.train.optim import build_optimizer
from nemotron_core.train.schedule import build_scheduler, validate_schedule
from nemotron_core.train.setup import autocast_dtype_for, build_model
from nemotron_core.train.step import grad_accumulation_steps

register_configs()
log = logging.getLogger("stage0_pretrain")


# ----------------------------------------------------------------------------- build
def preflight(cfg: DictConfig) -> None:
    """Fail in well under a second, naming the config keys, before any worker or tensor exists."""
    tc, par = to_object(cfg.train), to_object(cfg.parallel)
    check_run(to_object(cfg.model), par, global_batch_size=tc.global_batch_size, micro_batch_size=tc.micro_batch_size,
              world_size=external_world_size())
    validate_schedule(to_object(cfg.scheduler), total_steps=tc.steps)
    if cfg.data.seq_length < 1:
        raise ValueError(f"data.seq_length={cfg.data.seq_length} must be >= 1")


def load_data(data, train, *, tokenizer_fp: TokenizerFingerprint, model_vocab_size: int):
    """Train/valid rows of `data.path` (after checking its tokenizer vocab): megatron-core samples
    enough for `train.steps x train.global_batch_size` rows and the validation micro-batches."""
    meta, train_rows, valid_rows = load_pretrain_rows(
        data.path, seq_length=data.seq_length, seed=data.seed, reset_at_eod=data.reset_at_eod,
        train_samples=train.steps * train.global_batch_size, valid_samples=train.eval_batches * train.micro_batch_size,
        cache_dir=data.index_cache_dir, model_vocab_size=model_vocab_size,
    )
    check_tokenizer_match(meta["tokenizer"], tokenizer_fp, expected_from=f"data.path={data.path}", actual_from="tokenizer.path")
    meta = dict(meta, inputs=[*meta["inputs"], describe_dataset(data.path)])  # raw files, then the shards
    return meta, train_rows, valid_rows


def build(cfg: DictConfig, resolved: dict, state: ParallelState) -> Run:
    """Tokenizer check -> data (megatron-core indices) -> model -> parallelize -> optimizer -> resume."""
    tc, opt, sched, par, data = (to_object(cfg[k]) for k in ("train", "optimizer", "scheduler", "parallel", "data"))
    accum = grad_accumulation_steps(tc.global_batch_size, tc.micro_batch_size, state.dp)
    autocast_dtype = autocast_dtype_for(tc.dtype, state.device)
    tokenizer = load_tokenizer(cfg.tokenizer.path)
    tok_fp = fingerprint(tokenizer, name=cfg.tokenizer.name, path=cfg.tokenizer.path)
    meta, train_rows, valid_rows = load_data(data, tc, tokenizer_fp=tok_fp, model_vocab_size=cfg.model.vocab_size)
    model, parent = build_model(to_object(cfg.model), load=cfg.checkpoint.load, seed=cfg.seed, tokenizer_fp=tok_fp)
    model.to(state.device)
    row_tokens = data.seq_length + 1  # a GPTDataset sample: seq_length inputs + the last label
    stages, pipeline = parallelize(
        model, state, model_cfg=to_object(cfg.model), activation_checkpointing=tc.activation_checkpointing,
        compile=tc.compile, pp_schedule=par.pp_schedule, pp_virtual_stages=par.pp_virtual_stages, n_microbatches=accum,
        micro_batch_tokens=tc.micro_batch_size * row_tokens, mixed_precision=autocast_dtype is not None,
    )
    model = merge_stages(stages)  # this rank's parameters, under their full-model names
    optimizer = build_optimizer(model, opt, device_type=state.device.type)
    scheduler = build_scheduler(optimizer, sched=sched, peak_lr=opt.lr, min_lr=opt.min_lr, total_steps=tc.steps)
    out_dir = Path(cfg.out_dir)
    lineage = Lineage(stage="stage0_pretrain/train", config=resolved, inputs=meta["inputs"], tokenizer=tok_fp.to_dict(), parent=parent)
    run = Run(
        out_dir=out_dir, train=tc, model=model, optimizer=optimizer, scheduler=scheduler, train_rows=train_rows,
        val_batches=validation_batches(valid_rows, micro_batch_size=tc.micro_batch_size, max_batches=tc.eval_batches,
                                       dp_rank=state.dp_rank, dp_size=state.dp, pad_to=None),
        autocast_dtype=autocast_dtype, grad_clip=opt.grad_clip, bias_rate=tc.moe_expert_bias_update_rate,
        checkpoint=dict(out_dir=out_dir, model=model, optimizer=optimizer, scheduler=scheduler, tokenizer_dir=cfg.tokenizer.path,
                        tokenizer_fp=tok_fp.to_dict(), lineage=lineage, keep_last=cfg.checkpoint.keep_last),
        checkpoint_every=cfg.checkpoint.save_every, state=state, pipeline=pipeline,
        grad_reduction=grad_reduction_for(state),
    )
    if (resume := resolve_resume(cfg.checkpoint.resume, out_dir)) is not None:
        ckpt = load_checkpoint(resume, model=model, optimizer=optimizer, scheduler=scheduler)
        run.step, run.consumed_rows, run.checkpoint_path = ckpt.step, ckpt.consumed_rows, resume
    counts = count_parameters(to_object(cfg.model))
    step_tokens = tc.global_batch_size * data.seq_length
    log.info(
        "model %s: %s parameters (%s active); %s; %d train samples of %d tokens (+1 label) from %d documents / %d tokens "
        "(%.2f epochs in %d steps), reset_at_eod=%s; global batch %d samples = %d micro-batches of %d x dp %d, "
        "%d trained tokens per step; starting at step %d",
        cfg.model.name, f"{counts.total:,}", f"{counts.active:,}", state.describe(), len(train_rows), data.seq_length,
        meta["splits"]["train"]["documents"], meta["splits"]["train"]["tokens"],
        tc.steps * step_tokens / max(meta["splits"]["train"]["tokens"], 1), tc.steps, data.reset_at_eod,
        tc.global_batch_size, accum, tc.micro_batch_size, state.dp, step_tokens, run.step,
    )
    return run


def finish(run: Run, cfg: DictConfig, metrics: MetricsLogger) -> None:
    """Loss curve and, when the run is complete, the HF export (rank 0).

    One process exports its live model; a parallel run exports from its final checkpoint, loaded
    into a full single-device model on rank 0 (DCP reshards), so every layout exports the same."""
    if run.step < run.train.steps:
        return  # stopped early (train.stop_after_steps / preemption): the next job resumes from the checkpoint
    model = run.model
    if run.state.distributed:
        if run.state.rank != 0:
            return
        model = build_nano3(to_object(cfg.model), seed=cfg.seed)
        load_full_model(run.checkpoint_path, model)
    plot_loss_curve(run.out_dir / cfg.logging.metrics_file, run.out_dir / "loss_curve.png", title=f"{cfg.run_name} (stage 0 pretraining)")
    if cfg.checkpoint.export_hf:
        export_hf(run.out_dir / "hf", model, model_cfg=to_object(cfg.model), tokenizer_dir=cfg.tokenizer.path,
                  lineage=run.checkpoint["lineage"], collective=not run.state.distributed)
        log.info("exported Hugging Face NemotronH model to %s (stage 1: checkpoint.load=%s)", run.out_dir / "hf", run.out_dir / "hf")
        metrics.log_lineage_artifact(run.out_dir / "hf", kind="model", stage_tag="pretrain")  # ModelArtifact-pretrain (wandb on)


# ----------------------------------------------------------------------------- main
def job(cfg: DictConfig, state: ParallelState) -> None:
    """One rank's run: build, loop, save."""
    setup_logging(cfg.logging.level, rank=state.rank)
    seed_everything(cfg.seed)
    run = build(cfg, OmegaConf.to_container(cfg, resolve=True), state)  # tokenizer check, data, model, optimizer, resume
    with MetricsLogger(run.out_dir, metrics_file=cfg.logging.metrics_file, wandb=to_object(cfg.logging.wandb), run_name=cfg.run_name,
                       config=run.checkpoint["lineage"].config, total_steps=run.train.steps, start_step=run.step,
                       progress_bar=cfg.logging.progress_bar, rank=state.rank) as metrics:
        metrics.log_lineage_artifact(cfg.data.path, kind="data", stage_tag="pretrain", use=True)  # the shards as the run's input
        watcher = PreemptionWatcher().install()  # Slurm's warning signal -> checkpoint, requeue (no-op elsewhere)
        train_loop(run, data_seed=cfg.data.seed, metrics=metrics, stop_requested=watcher.requested, on_stop=watcher.exit_for_requeue)
        finish(run, cfg, metrics)  # loss curve, HF export


@hydra.main(version_base="1.3", config_path="../../../conf", config_name="stage0_pretrain")
def main(cfg: DictConfig) -> None:
    setup_logging(cfg.logging.level, rank=launch_rank())
    log_and_save_config(cfg, out_dir=cfg.out_dir, job_name="train", rank=launch_rank())  # printed and saved; fails on ???
    preflight(cfg)  # layout, batch split, schedule: clear errors before any worker starts
    launch(job, cfg, parallel=to_object(cfg.parallel), model=to_object(cfg.model))  # local workers, torchrun or Slurm


if __name__ == "__main__":
    main()
