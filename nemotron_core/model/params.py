"""The one place model code meets sharded parameters.

`nemotron_core/parallel/` may turn parameters that nn.Linear does not handle (convolution
weights, per-head vectors, the gated norm's weight, routed experts) into DTensors sharded over
a mesh, and sets the module's head / group / expert counts to this rank's share. The model's math
then runs on the local shard; autograd routes the gradient back to the DTensor parameter. With
no parallelism every parameter is a plain tensor and `local` is the identity. (Duck-typed: the
model package imports nothing distributed.)
"""

from __future__ import annotations

import torch


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a sharded (DTensor) parameter, differentiable, or `t` itself."""
    to_local = getattr(t, "to_local", None)
    return to_local() if to_local is not None else t
