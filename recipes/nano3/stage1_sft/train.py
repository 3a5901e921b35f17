"""Stage 1: supervised fine-tuning of Nemotron 3 Nano on packed chat data.

    python recipes/nano3/stage1_sft/train.py                              # tiny model on CPU, about a minute
    python recipes/nano3/stage1_sft/train.py checkpoint.load=/models/nano3-hf optimizer.lr=1e-5
    python recipes/nano3/stage1_sft/train.py peft=lora peft.rank=16 peft.alpha=32 optimizer.lr=1e-3
    python recipes/nano3/stage1_sft/train.py -m optimizer.lr=1e-4,3e-3   # sweep: outputs/.../job<N>
    python recipes/nano3/stage1_sft/train.py --cfg job                    # dry run: the composed config

Reads the packed rows that `data_prep.py` wrote (`data.path`), refuses data made with another
tokenizer vocabulary, trains with the loss contract of `nemotron_core.train` (sum of token losses
over the trainable tokens of the whole optimizer step), writes DCP checkpoints to
`<out_dir>/checkpoints` (resumed automatically), metrics to `<out_dir>/metrics.jsonl`, a loss
curve PNG, and at the end a Hugging Face NemotronH export to `<out_dir>/hf`. With `peft=lora` the base
is frozen, the adapter is saved in the PEFT layout to `<out_dir>/adapter` and `<out_dir>/hf` holds
the merged model.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from nemotron_core.checkpoint import (
    export_hf,
    load_checkpoint,
    resolve_resume,
)
from nemotron_core.checkpoint.dcp import load_full_model
from nemotron_core.config import register_configs, to_object
from nemotron_core.data.chat import with_chat_template
from nemotron_core.data.online import load_online_sft
from nemotron_core.data.packed import PackedDataset
from nemotron_core.launch import external_world_size, launch, launch_rank
from nemotron_core.launch.preemption import PreemptionWatcher
from nemotron_core.lineage import Lineage, describe_dataset, read_metadata
from nemotron_core.model.nano3 import build_nano3
from nemotron_core.model.sizing import count_parameters
from nemotron_core.parallel import ParallelState, check_run, grad_reduction_for, parallelize
from nemotron_core.parallel.pipeline import merge_stages
from nemotron_core.peft import apply_lora, check_hf_exportable, merge_lora, save_adapter
from nemotron_core.runtime import log_and_save_config, seed_everything, setup_logging
from nemotron_core.tokenization import (
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
log = logging.getLogger("stage1_sft")


# ----------------------------------------------------------------------------- build
def preflight(cfg: DictConfig) -> None:
    """Fail in well under a second, naming the config keys, before any worker or tensor exists."""
    tc, par, peft = (to_object(cfg[k]) for k in ("train", "parallel", "peft"))
    check_run(to_object(cfg.model), par, global_batch_size=tc.global_batch_size, micro_batch_size=tc.micro_batch_size,
              world_size=external_world_size())
    validate_schedule(to_object(cfg.scheduler), total_steps=tc.steps)
    if peft.name == "lora" and par.tp > 1:
        raise ValueError(
            f"peft=lora with parallel.tp={par.tp}: LoRA adapters are not tensor-parallel yet; "
            "use a layout with tp=1 (dp, fsdp, pp and ep work with LoRA)"
        )


def load_data(data, tokenizer_fp, *, chat_template):
    """The train/valid rows: the packed files at `data.path`, after checking they were made with this
    tokenizer's vocab; or, with `data.online` (data=chat_jsonl), `data.input` tokenized and packed
    here into the same rows, with no data_prep step."""
    if data.online:
        meta, rows = load_online_sft(data, tokenizer_path=tokenizer_fp.path, tokenizer_name=tokenizer_fp.name, chat_template=chat_template)
        return meta, rows["train"], rows["valid"]
    meta = read_metadata(data.path, config_key="data.path")
    check_tokenizer_match(meta["tokenizer"], with_chat_template(tokenizer_fp, chat_template),
                          expected_from=f"data.path={data.path}", actual_from="tokenizer.path")
    meta = dict(meta, inputs=[*meta["inputs"], describe_dataset(data.path)])  # raw files, then the packed data
    return meta, PackedDataset(data.path, split="train"), PackedDataset(data.path, split="valid")


def build(cfg: DictConfig, resolved: dict, state: ParallelState) -> Run:
    """Tokenizer check -> data -> model (+ LoRA) -> parallelize -> optimizer -> resume."""
    tc, opt, sched, peft, par = (to_object(cfg[k]) for k in ("train", "optimizer", "scheduler", "peft", "parallel"))
    accum = grad_accumulation_steps(tc.global_batch_size, tc.micro_batch_size, state.dp)
    autocast_dtype = autocast_dtype_for(tc.dtype, state.device)
    tokenizer = load_tokenizer(cfg.tokenizer.path)
    tok_fp = fingerprint(tokenizer, name=cfg.tokenizer.name, path=cfg.tokenizer.path)
    meta, train_rows, valid_rows = load_data(to_object(cfg.data), tok_fp, chat_template=cfg.tokenizer.chat_template)
    model, parent = build_model(to_object(cfg.model), load=cfg.checkpoint.load, seed=cfg.seed, tokenizer_fp=tok_fp)
    if peft.name == "lora":
        adapted = apply_lora(model, peft)  # freezes the base, router and expert bias included
        check_hf_exportable(adapted, model_cfg=to_object(cfg.model))  # fail now, not at save time
        log.info("LoRA r=%d alpha=%g on %d modules", peft.rank, peft.alpha, len(adapted))
    model.to(state.device)
    stages, pipeline = parallelize(
        model, state, model_cfg=to_object(cfg.model), activation_checkpointing=tc.activation_checkpointing,
        compile=tc.compile, pp_schedule=par.pp_schedule, pp_virtual_stages=par.pp_virtual_stages, n_microbatches=accum,
        micro_batch_tokens=tc.micro_batch_size * cfg.data.pack_size, mixed_precision=autocast_dtype is not None,
    )
    model = merge_stages(stages)  # this rank's parameters, under their full-model names
    optimizer = build_optimizer(model, opt, device_type=state.device.type)
    scheduler = build_scheduler(optimizer, sched=sched, peak_lr=opt.lr, min_lr=opt.min_lr, total_steps=tc.steps)
    out_dir = Path(cfg.out_dir)
    lineage = Lineage(stage="stage1_sft/train", config=resolved, inputs=meta["inputs"], tokenizer=tok_fp.to_dict(), parent=parent)
    run = Run(
        out_dir=out_dir, train=tc, model=model, optimizer=optimizer, scheduler=scheduler, train_rows=train_rows,
        val_batches=validation_batches(valid_rows, micro_batch_size=tc.micro_batch_size, max_batches=tc.eval_batches,
                                       dp_rank=state.dp_rank, dp_size=state.dp, pad_to=None),
        autocast_dtype=autocast_dtype, grad_clip=opt.grad_clip,
        bias_rate=0.0 if peft.name == "lora" else tc.moe_expert_bias_update_rate,  # LoRA keeps the base frozen
        checkpoint=dict(out_dir=out_dir, model=model, optimizer=optimizer, scheduler=scheduler, tokenizer_dir=cfg.tokenizer.path,
                        tokenizer_fp=tok_fp.to_dict(), lineage=lineage, keep_last=cfg.checkpoint.keep_last),
        checkpoint_every=cfg.checkpoint.save_every, state=state, pipeline=pipeline,
        validate=len(valid_rows) > 0 and tc.eval_batches > 0,  # the same on every rank
        grad_reduction=grad_reduction_for(state),
    )
    if (resume := resolve_resume(cfg.checkpoint.resume, out_dir)) is not None:
        ckpt = load_checkpoint(resume, model=model, optimizer=optimizer, scheduler=scheduler)
        run.step, run.consumed_rows, run.checkpoint_path = ckpt.step, ckpt.consumed_rows, resume
    counts = count_parameters(to_object(cfg.model))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info(
        "model %s: %s parameters (%s active, %s trainable on this rank); %s; %d train rows (%d epochs in %d steps); "
        "global batch %d rows = %d micro-batches of %d x dp %d, up to %d tokens per step; starting at step %d",
        cfg.model.name, f"{counts.total:,}", f"{counts.active:,}", f"{trainable:,}", state.describe(), len(train_rows),
        math.ceil(tc.steps * tc.global_batch_size / len(train_rows)), tc.steps, tc.global_batch_size, accum,
        tc.micro_batch_size, state.dp, tc.global_batch_size * cfg.data.pack_size, run.step,
    )
    return run


def finish(run: Run, cfg: DictConfig, metrics: MetricsLogger) -> None:
    """Loss curve; when the run is complete: the LoRA adapter and the (merged) HF export (rank 0).

    One process exports its live model; a parallel run exports from its final checkpoint, loaded
    into a full single-device model on rank 0 (DCP reshards), so every layout exports the same."""
    if run.step < run.train.steps:
        return  # stopped early (train.stop_after_steps / preemption): the next job resumes from the checkpoint
    model = run.model
    if run.state.distributed:
        if run.state.rank != 0:
            return
        model = build_nano3(to_object(cfg.model), seed=cfg.seed)
        if cfg.peft.name == "lora":
            apply_lora(model, to_object(cfg.peft))
        load_full_model(run.checkpoint_path, model)
    plot_loss_curve(run.out_dir / cfg.logging.metrics_file, run.out_dir / "loss_curve.png", title=f"{cfg.run_name} (stage 1 SFT)")
    if cfg.peft.name == "lora":
        save_adapter(run.out_dir / "adapter", model, to_object(cfg.peft), model_cfg=to_object(cfg.model), overwrite=True,
                     lineage=run.checkpoint["lineage"])
        log.info("saved the LoRA adapter (PEFT layout) to %s", run.out_dir / "adapter")
        merge_lora(model)  # the HF export below is the merged model
    if cfg.checkpoint.export_hf:
        export_hf(run.out_dir / "hf", model, model_cfg=to_object(cfg.model), tokenizer_dir=cfg.tokenizer.path,
                  lineage=run.checkpoint["lineage"], collective=not run.state.distributed)
        log.info("exported Hugging Face NemotronH model to %s", run.out_dir / "hf")
        metrics.log_lineage_artifact(run.out_dir / "hf", kind="model")  # ModelArtifact-sft (wandb on)


# ----------------------------------------------------------------------------- main
def job(cfg: DictConfig, state: ParallelState) -> None:
    """One rank's run: build, loop, save."""
    setup_logging(cfg.logging.level, rank=state.rank)
    seed_everything(cfg.seed)
    run = build(cfg, OmegaConf.to_container(cfg, resolve=True), state)  # tokenizer check, data, model, optimizer, resume
    with MetricsLogger(run.out_dir, metrics_file=cfg.logging.metrics_file, wandb=to_object(cfg.logging.wandb), run_name=cfg.run_name,
                       config=run.checkpoint["lineage"].config, total_steps=run.train.steps, start_step=run.step,
                       progress_bar=cfg.logging.progress_bar, rank=state.rank) as metrics:
        if not cfg.data.online:
            metrics.log_lineage_artifact(cfg.data.path, kind="data", use=True)  # the packed data as the run's input
        watcher = PreemptionWatcher().install()  # Slurm's warning signal -> checkpoint, requeue (no-op elsewhere)
        train_loop(run, data_seed=cfg.data.seed, metrics=metrics, stop_requested=watcher.requested, on_stop=watcher.exit_for_requeue)
        finish(run, cfg, metrics)  # loss curve, adapter, HF export


@hydra.main(version_base="1.3", config_path="../../../conf", config_name="stage1_sft")
def main(cfg: DictConfig) -> None:
    setup_logging(cfg.logging.level, rank=launch_rank())
    log_and_save_config(cfg, out_dir=cfg.out_dir, job_name="train", rank=launch_rank())  # printed and saved; fails on ???
    preflight(cfg)  # layout, batch split, schedule: clear errors before any worker starts
    launch(job, cfg, parallel=to_object(cfg.parallel), model=to_object(cfg.model))  # local workers, torchrun or Slurm


if __name__ == "__main__":
    main()
