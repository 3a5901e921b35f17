"""Primary-config schemas, one per stage: the typed root each `conf/<stage>.yaml` extends.

Because the root is typed, a group option of the wrong kind (pretraining data in the SFT stage)
or a misspelt top-level key fails at compose time.
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

from nemotron_core.config.cluster import ClusterConfig
from nemotron_core.config.data import PretrainDataConfig, SFTDataConfig
from nemotron_core.config.model import ModelConfig
from nemotron_core.config.optim import OptimizerConfig, SchedulerConfig
from nemotron_core.config.parallel import ParallelConfig
from nemotron_core.config.peft import PeftConfig
from nemotron_core.config.run import CheckpointConfig, LoggingConfig, TokenizerConfig, TrainConfig


@dataclass
class _StageConfig:
    stage: str = MISSING
    run_name: str = "default"
    # A function of the config, never of the clock: every rank, a resume and a requeued job agree.
    out_dir: str = MISSING
    seed: int = 1234
    model: ModelConfig = MISSING
    tokenizer: TokenizerConfig = MISSING
    parallel: ParallelConfig = MISSING
    optimizer: OptimizerConfig = MISSING
    scheduler: SchedulerConfig = MISSING
    train: TrainConfig = MISSING
    checkpoint: CheckpointConfig = MISSING
    logging: LoggingConfig = MISSING
    cluster: ClusterConfig = MISSING  # where `hydra/launcher=submitit_slurm` submits (unused locally)


@dataclass
class PretrainStageConfig(_StageConfig):
    data: PretrainDataConfig = MISSING


@dataclass
class SFTStageConfig(_StageConfig):
    data: SFTDataConfig = MISSING
    peft: PeftConfig = MISSING
