"""One object that owns the device mesh of a run: `pp`, `dp`, `tp`, and `ep` carved from dp x tp.

Rank order (row-major, tp fastest):

    rank = (pp_rank x dp + dp_rank) x tp + tp_rank

so the tp ranks of a replica are neighbours (one node), then dp, then pipeline stages.

Two meshes over the same ranks:
    `mesh`     dims ("pp", "dp", "tp")   non-expert parameters, data, pipeline P2P
    `ep_mesh`  dims ("pp", "edp", "ep")  routed experts: the dp x tp ranks of a stage, flattened
               as j = dp_rank x tp + tp_rank, are split into groups of `ep` consecutive ranks
               (ep_rank = j % ep) holding different experts; `edp` (= dp x tp / ep) ranks hold
               the same experts (their gradients are summed over `edp_group`).
Without torch.distributed initialised (one process) every group is None and every degree 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh


@dataclass
class ParallelState:
    """Degrees, this rank's coordinates, meshes and process groups of a layout."""

    pp: int = 1
    dp: int = 1
    tp: int = 1
    ep: int = 1
    fsdp: bool = False
    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    mesh: DeviceMesh | None = None
    ep_mesh: DeviceMesh | None = None

    # --- coordinates ------------------------------------------------------------------------
    @property
    def pp_rank(self) -> int:
        return self.rank // (self.dp * self.tp)

    @property
    def dp_rank(self) -> int:
        return (self.rank // self.tp) % self.dp

    @property
    def tp_rank(self) -> int:
        return self.rank % self.tp

    @property
    def ep_rank(self) -> int:
        return (self.rank % (self.dp * self.tp)) % self.ep

    @property
    def edp(self) -> int:
        return self.dp * self.tp // self.ep

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp - 1

    @property
    def distributed(self) -> bool:
        return self.mesh is not None

    # --- groups -----------------------------------------------------------------------------
    def _group(self, mesh: DeviceMesh | None, dim: str, size: int):
        if mesh is None or size == 1:
            return None
        return mesh.get_group(dim)

    @property
    def dp_group(self):
        return self._group(self.mesh, "dp", self.dp)

    @property
    def tp_group(self):
        return self._group(self.mesh, "tp", self.tp)

    @property
    def pp_group(self):
        return self._group(self.mesh, "pp", self.pp)

    @property
    def ep_group(self):
        return self._group(self.ep_mesh, "ep", self.ep)

    @property
    def edp_group(self):
        return self._group(self.ep_mesh, "edp", self.edp)

    @property
    def tp_mesh(self) -> DeviceMesh | None:
        return None if self.mesh is None else self.mesh["tp"]

    @property
    def dp_mesh(self) -> DeviceMesh | None:
        return None if self.mesh is None else self.mesh["dp"]

    def describe(self) -> str:
        return (
            f"rank {self.rank}/{self.world_size}: pp {self.pp_rank}/{self.pp} dp {self.dp_rank}/{self.dp} "
            f"tp {self.tp_rank}/{self.tp} ep {self.ep_rank}/{self.ep}{' fsdp' if self.fsdp else ''}"
        )


def build_parallel_state(*, pp: int, dp: int, tp: int, ep: int, fsdp: bool, device: torch.device) -> ParallelState:
    """The ParallelState of this process; builds the meshes when torch.distributed is initialised.

    Raises:
        ValueError: when the initialised world size is not pp x dp x tp, or ep does not divide
            dp x tp (naming the `parallel.*` keys).
    """
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if world != pp * dp * tp:
        raise ValueError(
            f"world size {world} != parallel.pp x parallel.dp x parallel.tp = {pp} x {dp} x {tp} = {pp * dp * tp}"
        )
    if (dp * tp) % ep:
        raise ValueError(f"parallel.ep={ep} must divide parallel.dp x parallel.tp = {dp * tp}")
    state = ParallelState(pp=pp, dp=dp, tp=tp, ep=ep, fsdp=fsdp, world_size=world, device=device)
    if world == 1:
        return state
    state.rank = dist.get_rank()
    device_type = device.type
    state.mesh = init_device_mesh(device_type, (pp, dp, tp), mesh_dim_names=("pp", "dp", "tp"))
    state.ep_mesh = init_device_mesh(device_type, (pp, dp * tp // ep, ep), mesh_dim_names=("pp", "edp", "ep"))
    return state


__all__ = ["ParallelState", "build_parallel_state"]
