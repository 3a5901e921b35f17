"""Parallel layout schema: the degrees of the device mesh (`conf/parallel/`).

World size = pp x dp x tp. Expert parallelism reuses the dp x tp ranks (ep divides dp x tp).
`dp: -1` means "derive from the world size" (torchrun / Slurm); a script that starts its own
workers uses `dp` as written (and 1 for -1).
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING


@dataclass
class ParallelConfig:
    name: str = MISSING
    tp: int = 1  # tensor parallel (DTensor), with sequence parallel for norms when tp > 1
    pp: int = 1  # pipeline stages (torch.distributed.pipelining)
    dp: int = 1  # data parallel degree; -1: world_size / (pp * tp)
    ep: int = 1  # expert parallel degree, carved out of the dp x tp ranks
    fsdp: bool = False  # shard parameters/grads/optimizer state over dp (FSDP2) instead of replicating
    pp_schedule: str = "1F1B"  # GPipe | 1F1B | Interleaved1F1B
    pp_virtual_stages: int = 1  # stages per rank for interleaved schedules
    backend: str = "auto"  # auto: nccl on CUDA, gloo on CPU

    def world_size(self, derived_dp: int | None = None) -> int:
        dp = self.dp if self.dp > 0 else (derived_dp or 1)
        return self.pp * dp * self.tp
