"""Structured-config schemas for every `conf/` group, registered in Hydra's ConfigStore.

Each group has a schema stored as `<group>/base_<group>` (data has one per kind); every YAML
option starts with `defaults: [base_<group>, _self_]`, so a misspelt key or a wrong type fails at
compose time with Hydra's error naming the key. Primary configs extend `<stage>_schema`.

Resolvers (registered here, once):
  ${nc.asset:tokenizer}      absolute path of a file/dir shipped in `nemotron_core/assets/`
  ${nc.job_suffix:}          "" in a single run, "/job<N>" in a Hydra multirun job (sweeps)
  ${nc.slurm_setup:...}      a cluster's batch-script setup lines (and its container / srun flags)
  ${nc.slurm:<key>,${cluster},${parallel},${hydra.job.name}}   a job's nodes / tasks / GPUs per node
"""

from __future__ import annotations

import warnings

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from nemotron_core.config.cluster import ClusterConfig, slurm_resources, slurm_setup
from nemotron_core.config.data import PretrainDataConfig, SFTDataConfig
from nemotron_core.config.model import ModelConfig
from nemotron_core.config.optim import OptimizerConfig, SchedulerConfig
from nemotron_core.config.parallel import ParallelConfig
from nemotron_core.config.peft import PeftConfig
from nemotron_core.config.run import (
    CheckpointConfig,
    LoggingConfig,
    TokenizerConfig,
    TrainConfig,
    WandbConfig,
)
from nemotron_core.config.stages import PretrainStageConfig, SFTStageConfig
from nemotron_core.paths import asset_path

__all__ = [
    "CheckpointConfig",
    "ClusterConfig",
    "LoggingConfig",
    "ModelConfig",
    "OptimizerConfig",
    "ParallelConfig",
    "PeftConfig",
    "PretrainDataConfig",
    "PretrainStageConfig",
    "SFTDataConfig",
    "SFTStageConfig",
    "SchedulerConfig",
    "TokenizerConfig",
    "TrainConfig",
    "WandbConfig",
    "load_model_preset",
    "register_configs",
    "to_object",
]

GROUP_SCHEMAS = {
    ("model", "base_model"): ModelConfig,
    ("tokenizer", "base_tokenizer"): TokenizerConfig,
    ("parallel", "base_parallel"): ParallelConfig,
    ("peft", "base_peft"): PeftConfig,
    ("optimizer", "base_optimizer"): OptimizerConfig,
    ("scheduler", "base_scheduler"): SchedulerConfig,
    ("train", "base_train"): TrainConfig,
    ("checkpoint", "base_checkpoint"): CheckpointConfig,
    ("logging", "base_logging"): LoggingConfig,
    ("cluster", "base_cluster"): ClusterConfig,
    ("data", "base_sft_data"): SFTDataConfig,
    ("data", "base_pretrain_data"): PretrainDataConfig,
}
STAGE_SCHEMAS = {
    "stage0_pretrain_schema": PretrainStageConfig,
    "stage1_sft_schema": SFTStageConfig,
}


def _job_suffix() -> str:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return ""
    hc = HydraConfig.get()
    return f"/job{hc.job.num}" if hc.mode == RunMode.MULTIRUN else ""


_registered = False


def register_configs() -> None:
    """Register the schemas and resolvers (idempotent; recipes call it before `@hydra.main`)."""
    global _registered
    if _registered:
        return
    cs = ConfigStore.instance()
    for (group, name), schema in GROUP_SCHEMAS.items():
        cs.store(group=group, name=name, node=schema)
    for name, schema in STAGE_SCHEMAS.items():
        cs.store(name=name, node=schema)
    OmegaConf.register_new_resolver("nc.asset", lambda rel: str(asset_path(rel)), replace=True)
    OmegaConf.register_new_resolver("nc.job_suffix", _job_suffix, replace=True)
    OmegaConf.register_new_resolver("nc.slurm_setup", slurm_setup, replace=True)
    OmegaConf.register_new_resolver("nc.slurm", slurm_resources, replace=True)
    # conf/hydra/launcher/submitit_{slurm,local}.yaml shadow hydra-submitit-launcher's ConfigStore
    # entries of the same names, so Hydra validates them against those schemas ("automatic schema
    # matching": deprecated in 1.1 and still what 1.3 does, with a warning per compose). That is
    # the validation we want (a `defaults: [<schema>]` entry cannot name the plugin's class: Hydra's
    # plugin scan re-executes its module, so the class we could import is not the one it stores).
    warnings.filterwarnings(
        "ignore", message=r"\s*'hydra/launcher/submitit_(slurm|local)' is validated against ConfigStore schema", category=UserWarning
    )
    _registered = True


def load_model_preset(name_or_path) -> ModelConfig:
    """A `conf/model/` option as a ModelConfig, without Hydra: `load_model_preset("nano3_tiny")`
    or a path to such a YAML file (its `defaults` list is dropped; the schema checks the values)."""
    from pathlib import Path

    from nemotron_core.paths import CONF_DIR

    path = Path(name_or_path)
    if path.suffix != ".yaml":
        path = CONF_DIR / "model" / f"{name_or_path}.yaml"
    values = OmegaConf.load(path)
    values.pop("defaults", None)
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), values))


def to_object(node):
    """A group node -> its schema dataclass instance (what library functions take)."""
    return OmegaConf.to_object(node)


register_configs()
