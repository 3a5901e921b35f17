"""Single-device NemotronH (Nemotron 3 Nano) in plain torch.nn; parallelism lives in nemotron_core/parallel."""

from nemotron_core.model.nano3 import (
    IGNORE_INDEX,
    Block,
    Nano3Model,
    Nano3Output,
    build_nano3,
    count_model_parameters,
    init_weights,
)

__all__ = [
    "IGNORE_INDEX",
    "Block",
    "Nano3Model",
    "Nano3Output",
    "build_nano3",
    "count_model_parameters",
    "init_weights",
]
