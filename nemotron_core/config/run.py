"""Run-level schemas: training loop, checkpointing, logging, tokenizer (one group each)."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING


@dataclass
class TokenizerConfig:
    # A Hugging Face tokenizer directory; the default is the tiny one shipped in the package.
    path: str = MISSING
    name: str = MISSING  # short name used in output paths and metadata
    # default: the tokenizer's own | passthrough (or null): contents concatenated as they are |
    # a Jinja file path | a Jinja string (nemotron_core/data/chat.py, NeMo RL's convention)
    chat_template: str | None = "default"


@dataclass
class TrainConfig:
    steps: int = MISSING  # optimizer steps
    global_batch_size: int = MISSING  # rows (packed sequences) per optimizer step, all dp ranks
    micro_batch_size: int = 1  # rows per forward/backward on one rank
    loss_normalization: str = "token"  # token: / trainable tokens of the step; sequence: mean of per-sequence means
    moe_aux_loss_coeff: float = 0.0  # sequence-level load-balancing loss weight
    moe_expert_bias_update_rate: float = 0.0  # aux-loss-free balancing: bias step per optimizer step; 0 = off
    dtype: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU | fp32 | bf16
    activation_checkpointing: bool = False
    compile: bool = False
    stop_after_steps: int | None = None  # end this job after N steps (checkpointed); the schedule still spans `steps`
    eval_every: int = 0  # validation loss every N steps; 0 = only at the end (if there is a valid split)
    eval_batches: int = 8
    log_every: int = 1


@dataclass
class CheckpointConfig:
    load: str | None = None  # HF NemotronH directory or one of our checkpoints to start from
    resume: str = "auto"  # auto: continue from the newest checkpoint in out_dir | none | <path>
    save_every: int = 0  # steps between checkpoints; 0 = only the final one
    keep_last: int = 2
    export_hf: bool = True  # write an HF NemotronH directory at the end


@dataclass
class WandbConfig:
    mode: str = "offline"  # offline | online | disabled
    project: str = "nemotron-recipes"
    entity: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class LoggingConfig:
    level: str = "INFO"
    progress_bar: bool = True
    metrics_file: str = "metrics.jsonl"  # relative to out_dir
    wandb: WandbConfig = field(default_factory=WandbConfig)
