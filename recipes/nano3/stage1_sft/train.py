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
from dataclasses import dataclass
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from nemotron_core.checkpoint import (
    export_hf,
    load_checkpoint,
    load_model_weights,
    resolve_resume,
    save_checkpoint,
)
from nemotron_core.config import TrainConfig, register_configs, to_object
from nemotron_core.data.packed import PackedDataset, collate_packed, iterate_batches
from nemotron_core.lineage import Lineage, read_metadata
from nemotron_core.model.nano3 import build_nano3
from nemotron_core.model.sizing import count_parameters
from nemotron_core.parallel.activation import apply_activation_checkpointing
from nemotron_core.peft import apply_lora, check_hf_exportable, merge_lora, save_adapter
from nemotron_core.runtime import log_and_save_config, seed_everything, setup_logging
from nemotron_core.tokenization import (
    TokenizerFingerprint,
    check_tokenizer_match,
    fingerprint,
    load_tokenizer,
)
from nemotron_core.train.metrics import MetricsLogger, plot_loss_curve
from nemotron_core.train.optim import build_optimizer
from nemotron_core.train.schedule import build_scheduler, validate_schedule
from nemotron_core.train.step import evaluate, grad_accumulation_steps, train_step

register_configs()
log = logging.getLogger("stage1_sft")


# ----------------------------------------------------------------------------- build
def check_layout(parallel) -> None:
    """This recipe trains in one process; the parallel layouts arrive with nemotron_core.parallel."""
    if parallel.tp * parallel.pp * max(parallel.dp, 1) * parallel.ep != 1:
        raise ValueError(
            f"parallel={parallel.name} (tp={parallel.tp} pp={parallel.pp} dp={parallel.dp} ep={parallel.ep}) "
            "needs the multi-process trainer, which stage 1 does not have yet: use parallel=single"
        )


def load_data(data_path: str, tokenizer_fp):
    """The packed train/valid splits, after checking they were made with this tokenizer's vocab."""
    meta = read_metadata(data_path, config_key="data.path")
    check_tokenizer_match(meta["tokenizer"], tokenizer_fp, expected_from=f"data.path={data_path}", actual_from="tokenizer.path")
    train = PackedDataset(data_path, split="train")
    valid = PackedDataset(data_path, split="valid")
    return meta, train, valid


def build_model(model_cfg, *, load: str | None, seed: int, tokenizer_fp: TokenizerFingerprint):
    """A fresh init of `model_cfg`, or the weights of `checkpoint.load` (same tokenizer vocab)."""
    model = build_nano3(model_cfg, seed=seed)
    parent = None
    if load:
        info = load_model_weights(load, model)
        if info["tokenizer"] is not None:
            check_tokenizer_match(info["tokenizer"], tokenizer_fp, expected_from=f"checkpoint.load={load}", actual_from="the data")
        parent = {"checkpoint": info["path"], "step": info["step"], "lineage": info["lineage"]}
    return model, parent


def compute_setup(dtype: str) -> tuple[torch.device, torch.dtype | None]:
    """CUDA if present (bf16 autocast unless train.dtype=fp32), else CPU in fp32."""
    if dtype not in ("auto", "fp32", "bf16"):
        raise ValueError(f"train.dtype must be auto, fp32 or bf16, got {dtype!r}")
    if torch.cuda.is_available():
        return torch.device("cuda"), None if dtype == "fp32" else torch.bfloat16
    if dtype == "bf16":
        raise ValueError("train.dtype=bf16 needs a CUDA device; CPU training runs in fp32 (train.dtype=auto)")
    return torch.device("cpu"), None


def validation_batches(valid: PackedDataset, *, micro_batch_size: int, max_batches: int):
    n = min(len(valid), micro_batch_size * max_batches)
    return [collate_packed([valid[j] for j in range(i, min(i + micro_batch_size, n))]) for i in range(0, n, micro_batch_size)]


@dataclass
class Run:
    """Everything the loop and the final save need, built once from the config."""

    out_dir: Path
    train: TrainConfig
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    train_rows: PackedDataset
    val_batches: list
    autocast_dtype: torch.dtype | None
    bias_rate: float
    grad_clip: float
    checkpoint: dict  # save_checkpoint's fixed arguments
    checkpoint_every: int  # checkpoint.save_every (0: only at the end)
    step: int = 0
    consumed_rows: int = 0


def build(cfg: DictConfig, resolved: dict) -> Run:
    """Tokenizer check -> data -> model (+ LoRA, activation checkpointing) -> optimizer -> resume."""
    tc, opt, sched, peft = (to_object(cfg[k]) for k in ("train", "optimizer", "scheduler", "peft"))
    check_layout(to_object(cfg.parallel))
    validate_schedule(sched, total_steps=tc.steps)
    accum = grad_accumulation_steps(tc.global_batch_size, tc.micro_batch_size, 1)
    tokenizer = load_tokenizer(cfg.tokenizer.path)
    tok_fp = fingerprint(tokenizer, name=cfg.tokenizer.name, path=cfg.tokenizer.path)
    meta, train_rows, valid_rows = load_data(cfg.data.path, tok_fp)
    model, parent = build_model(to_object(cfg.model), load=cfg.checkpoint.load, seed=cfg.seed, tokenizer_fp=tok_fp)
    if peft.name == "lora":
        adapted = apply_lora(model, peft)  # freezes the base, router and expert bias included
        check_hf_exportable(adapted, model_cfg=to_object(cfg.model))  # fail now, not at save time
        log.info("LoRA r=%d alpha=%g on %d modules", peft.rank, peft.alpha, len(adapted))
    if tc.activation_checkpointing:
        apply_activation_checkpointing(model)
    device, autocast_dtype = compute_setup(tc.dtype)
    model.to(device)
    optimizer = build_optimizer(model, opt, device_type=device.type)
    scheduler = build_scheduler(optimizer, sched=sched, peak_lr=opt.lr, min_lr=opt.min_lr, total_steps=tc.steps)
    out_dir = Path(cfg.out_dir)
    lineage = Lineage(stage="stage1_sft/train", config=resolved, inputs=meta["inputs"], tokenizer=tok_fp.to_dict(), parent=parent)
    run = Run(
        out_dir=out_dir, train=tc, model=model, optimizer=optimizer, scheduler=scheduler, train_rows=train_rows,
        val_batches=validation_batches(valid_rows, micro_batch_size=tc.micro_batch_size, max_batches=tc.eval_batches),
        autocast_dtype=autocast_dtype, grad_clip=opt.grad_clip,
        bias_rate=0.0 if peft.name == "lora" else tc.moe_expert_bias_update_rate,  # LoRA keeps the base frozen
        checkpoint=dict(out_dir=out_dir, model=model, optimizer=optimizer, scheduler=scheduler, tokenizer_dir=cfg.tokenizer.path,
                        tokenizer_fp=tok_fp.to_dict(), lineage=lineage, keep_last=cfg.checkpoint.keep_last),
        checkpoint_every=cfg.checkpoint.save_every,
    )
    if (resume := resolve_resume(cfg.checkpoint.resume, out_dir)) is not None:
        state = load_checkpoint(resume, model=model, optimizer=optimizer, scheduler=scheduler)
        run.step, run.consumed_rows = state.step, state.consumed_rows
    counts = count_parameters(to_object(cfg.model))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info(
        "model %s: %s parameters (%s active, %s trainable); %d train rows (%d epochs in %d steps); global batch %d rows = "
        "%d micro-batches of %d, up to %d tokens per step; starting at step %d",
        cfg.model.name, f"{counts.total:,}", f"{counts.active:,}", f"{trainable:,}", len(train_rows),
        math.ceil(tc.steps * tc.global_batch_size / len(train_rows)), tc.steps, tc.global_batch_size, accum,
        tc.micro_batch_size, tc.global_batch_size * cfg.data.pack_size, run.step,
    )
    return run


def train(run: Run, *, data_seed: int, metrics: MetricsLogger) -> None:
    """The loop: one optimizer step per global batch, validation and checkpoints on schedule."""
    tc = run.train
    batches = iterate_batches(run.train_rows, micro_batch_size=tc.micro_batch_size, global_batch_size=tc.global_batch_size,
                              dp_rank=0, dp_size=1, seed=data_seed, start_row=run.consumed_rows)
    end = tc.steps if tc.stop_after_steps is None else min(tc.steps, run.step + tc.stop_after_steps)
    while run.step < end:
        _, micro_batches = next(batches)
        result = train_step(run.model, run.optimizer, micro_batches, normalization=tc.loss_normalization,
                            moe_aux_loss_coeff=tc.moe_aux_loss_coeff, moe_expert_bias_update_rate=run.bias_rate,
                            grad_clip=run.grad_clip, scheduler=run.scheduler, autocast_dtype=run.autocast_dtype)
        run.step, run.consumed_rows = run.step + 1, run.consumed_rows + tc.global_batch_size
        record = result.metrics()
        if run.val_batches and ((tc.eval_every and run.step % tc.eval_every == 0) or run.step == tc.steps):
            record["val_loss"] = evaluate(run.model, run.val_batches, autocast_dtype=run.autocast_dtype)
        metrics.log(run.step, record)
        if (run.checkpoint_every and run.step % run.checkpoint_every == 0) or run.step == end:
            save_checkpoint(step=run.step, consumed_rows=run.consumed_rows, **run.checkpoint)


def finish(run: Run, cfg: DictConfig) -> None:
    """Loss curve; when the run is complete: the LoRA adapter and the (merged) HF export."""
    plot_loss_curve(run.out_dir / cfg.logging.metrics_file, run.out_dir / "loss_curve.png", title=f"{cfg.run_name} (stage 1 SFT)")
    if run.step < run.train.steps:
        return  # stopped early (train.stop_after_steps): the next job resumes from the checkpoint
    if cfg.peft.name == "lora":
        save_adapter(run.out_dir / "adapter", run.model, to_object(cfg.peft), model_cfg=to_object(cfg.model), overwrite=True)
        log.info("saved the LoRA adapter (PEFT layout) to %s", run.out_dir / "adapter")
        merge_lora(run.model)  # the HF export below is the merged model
    if cfg.checkpoint.export_hf:
        export_hf(run.out_dir / "hf", run.model, model_cfg=to_object(cfg.model), tokenizer_dir=cfg.tokenizer.path,
                  lineage=run.checkpoint["lineage"])
        log.info("exported Hugging Face NemotronH model to %s", run.out_dir / "hf")


# ----------------------------------------------------------------------------- main
@hydra.main(version_base="1.3", config_path="../../../conf", config_name="stage1_sft")
def main(cfg: DictConfig) -> None:
    setup_logging(cfg.logging.level)
    resolved = log_and_save_config(cfg, out_dir=cfg.out_dir, job_name="train")  # printed and saved; fails on ???
    seed_everything(cfg.seed)
    run = build(cfg, resolved)  # tokenizer check, data, model, optimizer, resume
    with MetricsLogger(run.out_dir, metrics_file=cfg.logging.metrics_file, wandb=to_object(cfg.logging.wandb), run_name=cfg.run_name,
                       config=resolved, total_steps=run.train.steps, start_step=run.step, progress_bar=cfg.logging.progress_bar) as metrics:
        train(run, data_seed=cfg.data.seed, metrics=metrics)  # the loop
    finish(run, cfg)  # loss curve, adapter, HF export


if __name__ == "__main__":
    main()
