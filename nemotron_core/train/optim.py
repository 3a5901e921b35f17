"""AdamW with decoupled weight decay on matrices only, and global gradient-norm clipping.

Weight decay rule (one rule, no name lists): a parameter with `ndim >= 2` is decayed; every 1-D
(or 0-D) parameter is not. So decayed: embeddings, lm_head, every linear and router weight, the
3-D expert weights [E, out, in] and Mamba's 3-D conv1d weights. Not decayed: RMSNorm weights,
biases, Mamba `A_log`, `D`, `dt_bias` (all [heads]). Parameters with `requires_grad=False` are
left out entirely, so a LoRA-wrapped model optimises its adapters only.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from nemotron_core.config.optim import OptimizerConfig

IMPLEMENTATIONS = ("auto", "fused", "foreach", "for_loop")


def param_groups(
    params: nn.Module | Iterable[torch.Tensor] | Iterable[tuple[str, torch.Tensor]], *, weight_decay: float
) -> list[dict]:
    """Two AdamW groups: `ndim >= 2` with `weight_decay`, the rest with 0; frozen parameters dropped.

    Each group also carries `"names"` (None where unknown), for inspection and tests;
    `build_optimizer` drops that key. Empty groups are omitted.
    """
    if isinstance(params, nn.Module):
        named = list(params.named_parameters())
    else:
        items = list(params)
        named = [p if isinstance(p, tuple) else (None, p) for p in items]
    decay, no_decay = {"params": [], "names": []}, {"params": [], "names": []}
    seen: set[int] = set()
    for name, p in named:
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        group = decay if p.ndim >= 2 else no_decay
        group["params"].append(p)
        group["names"].append(name)
    decay["weight_decay"], no_decay["weight_decay"] = float(weight_decay), 0.0
    return [g for g in (decay, no_decay) if g["params"]]


def build_optimizer(
    model_or_params: nn.Module | Iterable[torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
    opt: OptimizerConfig,
    *,
    device_type: str,
) -> torch.optim.AdamW:
    """`torch.optim.AdamW(lr=opt.lr, betas=(beta1, beta2), eps)`, grouped by `param_groups`.

    Implementation (`opt.implementation`): "auto" = fused on CUDA, foreach elsewhere; "fused",
    "foreach" and "for_loop" force one. All give the same update up to fp rounding. (torch's
    AdamW takes DTensor parameters in all three; nothing here changes for FSDP/TP.)

    Args:
        model_or_params: a module, or parameters, or (name, parameter) pairs.
        device_type: "cuda", "cpu", ... (where the parameters live).

    Raises:
        ValueError: for `optimizer.name` other than "adamw", an unknown `optimizer.implementation`,
            or no parameter with requires_grad.
    """
    if opt.name != "adamw":
        raise ValueError(f"optimizer.name={opt.name!r}: only 'adamw' is implemented")
    if opt.implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"optimizer.implementation={opt.implementation!r} is not one of {list(IMPLEMENTATIONS)}"
        )
    groups = param_groups(model_or_params, weight_decay=opt.weight_decay)
    if not groups:
        raise ValueError("build_optimizer: no parameter has requires_grad=True (nothing to train)")
    groups = [{k: v for k, v in g.items() if k != "names"} for g in groups]
    impl = opt.implementation
    if impl == "auto":
        impl = "fused" if device_type == "cuda" else "foreach"
        kinds = {isinstance(p, DTensor) for g in groups for p in g["params"]}
        if len(kinds) > 1:  # tensor parallel: sharded DTensors beside replicated plain tensors
            impl = "for_loop"  # foreach / fused kernels refuse mixed lists
    kwargs = {"fused": True} if impl == "fused" else {"foreach": impl == "foreach"}
    return torch.optim.AdamW(
        groups, lr=opt.lr, betas=(opt.beta1, opt.beta2), eps=opt.eps, weight_decay=opt.weight_decay, **kwargs
    )


def clip_grad_norm(parameters: nn.Module | Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Scale gradients so their global L2 norm is at most `max_norm`; return the norm BEFORE clipping.

    `max_norm <= 0` only measures (nothing is scaled). Parameters without a gradient are skipped.
    A non-finite norm is returned as is (the gradients then scale to nan/inf; the caller decides).

    The norm is over the tensors this process holds: for plain (replicated) tensors that is the
    global norm. DTensor gradients (FSDP/TP) also work (torch reduces over their mesh); pipeline
    stages hold disjoint parameters, so PP will need one extra all-reduce of the squared norm over
    the pp group (as torchtitan's `clip_grad_norm_`) before scaling.

    Returns:
        fp32 scalar tensor (a full tensor, also for DTensor gradients).
    """
    if isinstance(parameters, nn.Module):
        parameters = parameters.parameters()
    grads_of = [p for p in parameters if p.grad is not None]
    if not grads_of:
        return torch.zeros(())
    if max_norm > 0:
        norm = torch.nn.utils.clip_grad_norm_(grads_of, max_norm, foreach=True)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in grads_of], foreach=True)
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return norm.float()
