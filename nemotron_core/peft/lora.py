"""LoRA on our own module names: wrap, freeze, merge; no `peft` import at training time.

`LoRALinear` is `base_layer(x) + lora_B(lora_A(dropout(x))) * alpha / rank`, the same arithmetic
and parameter names as Hugging Face peft's LoRA layer (`base_layer`, `lora_A`, `lora_B`). All three
are plain `nn.Linear` children and the forward is ordinary autograd, so FSDP2 shards them like any
other block parameter and a TP plan can address them by name (`q_proj.base_layer` colwise,
`q_proj.lora_A` replicated, `q_proj.lora_B` colwise; the mirror image for rowwise layers).

State-dict names of an adapted module `layers.3.mixer.q_proj`:
    layers.3.mixer.q_proj.base_layer.weight   (frozen)
    layers.3.mixer.q_proj.lora_A.weight       [rank, in]
    layers.3.mixer.q_proj.lora_B.weight       [out, rank]

Guarantees (tests/unit/peft/test_lora.py):
- `lora_B` starts at zero, so an adapted model's forward equals the base model's bitwise at init;
- after `apply_lora` only `lora_A`/`lora_B` weights require gradients; an optimizer step changes
  them and leaves every base tensor (router and its correction bias included) bitwise unchanged;
- `merge_lora` folds `W += alpha / rank * B @ A` and the merged model's logits equal the adapted
  model's to 1e-5 (fp32).
"""

from __future__ import annotations

import fnmatch
import math

import torch
from torch import nn

from nemotron_core.config.peft import PeftConfig

LORA_PARAM_MARKERS = (".lora_A.", ".lora_B.")


class LoRALinear(nn.Module):
    """A frozen `nn.Linear` plus a trainable low-rank update.

    out = base_layer(x) + lora_B(lora_A(dropout(x))) * scaling,   scaling = alpha / rank.

    `lora_A` [rank, in] is kaiming-uniform(a=sqrt(5)) (nn.Linear's and peft's default), `lora_B`
    [out, rank] is zero. Adapter weights take the base weight's device and dtype. Dropout acts on
    the adapter's input only; the base path sees `x` unchanged.
    """

    def __init__(self, base: nn.Linear, *, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        self.base_layer = base
        self.rank, self.alpha = int(rank), float(alpha)
        self.scaling = self.alpha / self.rank
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Linear(base.in_features, self.rank, bias=False, **factory)
        self.lora_B = nn.Linear(self.rank, base.out_features, bias=False, **factory)
        self.reset_lora_parameters()

    @torch.no_grad()
    def reset_lora_parameters(self, generator: torch.Generator | None = None) -> None:
        """A = kaiming-uniform(a=sqrt(5)), B = 0 (so the adapter starts as a no-op)."""
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5), generator=generator)
        nn.init.zeros_(self.lora_B.weight)

    # Read-only views of the base layer, for code that inspects `module.weight` / sizes.
    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling

    @torch.no_grad()
    def merged_linear(self) -> nn.Linear:
        """The base layer with `W += scaling * B @ A` folded in (computed in fp32, stored in W's dtype)."""
        w = self.base_layer.weight
        delta = (self.lora_B.weight.float() @ self.lora_A.weight.float()) * self.scaling
        w.copy_((w.float() + delta).to(w.dtype))
        return self.base_layer

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}, scaling={self.scaling:g}"


def _validate(peft: PeftConfig) -> None:
    if peft.name != "lora":
        raise ValueError(f"apply_lora needs peft.name='lora', got {peft.name!r}")
    if int(peft.rank) < 1:
        raise ValueError(f"peft.rank must be >= 1, got {peft.rank}")
    if not float(peft.alpha) > 0:
        raise ValueError(f"peft.alpha must be > 0, got {peft.alpha}")
    if not 0.0 <= float(peft.dropout) < 1.0:
        raise ValueError(f"peft.dropout must be in [0, 1), got {peft.dropout}")
    if not peft.target_modules:
        raise ValueError("peft.target_modules is empty: nothing to adapt")


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def apply_lora(model: nn.Module, peft: PeftConfig, *, generator: torch.Generator | None = None) -> list[str]:
    """Freeze `model` and wrap the matched `nn.Linear` modules in `LoRALinear`, in place.

    Matching: a module is adapted when its full name (`model.named_modules()`, e.g.
    `layers.3.mixer.q_proj`) fnmatches any `peft.target_modules` pattern and no
    `peft.exclude_modules` pattern. Every base parameter gets `requires_grad=False` (embeddings,
    norms, Mamba, router, routed experts); buffers such as the router's `e_score_correction_bias`
    never have gradients. Only the new `lora_A`/`lora_B` weights are trainable.

    Returns the adapted module names in model order.
    Raises ValueError (before changing the model) when `peft.name` is not "lora", rank/alpha/
    dropout are out of range, a `peft.target_modules` pattern matches no module, a
    `peft.exclude_modules` pattern matches no module, a matched module is not an `nn.Linear`
    (e.g. the router or the 3-D routed experts), nothing is left to adapt, or the model already
    holds LoRA layers.
    """
    _validate(peft)
    modules = dict(model.named_modules())
    if any(isinstance(m, LoRALinear) for m in modules.values()):
        raise ValueError("model already has LoRA layers (apply_lora was called before); merge_lora first")
    names = [n for n in modules if n]

    targets: list[str] = []
    for pattern in peft.target_modules:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise ValueError(
                f"peft.target_modules pattern {pattern!r} matches no module of the model "
                f"(patterns are fnmatch over full names such as 'layers.0.mixer.z_proj')"
            )
        targets.extend(hits)
    excluded: set[str] = set()
    for pattern in peft.exclude_modules:
        hits = {n for n in names if fnmatch.fnmatchcase(n, pattern)}
        if not hits:
            raise ValueError(f"peft.exclude_modules pattern {pattern!r} matches no module of the model")
        excluded |= hits
    chosen = set(targets) - excluded
    adapted = [n for n in names if n in chosen]  # model order, no duplicates
    bad = [f"{n} ({type(modules[n]).__name__})" for n in adapted if not isinstance(modules[n], nn.Linear)]
    if bad:
        raise ValueError(
            f"peft.target_modules matched modules that are not nn.Linear: {bad[:5]}"
            f"{f' and {len(bad) - 5} more' if len(bad) > 5 else ''}; LoRA adapts plain linear layers only "
            "(routed experts are 3-D parameters, the router is not a Linear)"
        )
    if not adapted:
        raise ValueError("peft.exclude_modules removes every module matched by peft.target_modules")

    for p in model.parameters():
        p.requires_grad_(False)
    for name in adapted:
        wrapped = LoRALinear(modules[name], rank=peft.rank, alpha=peft.alpha, dropout=peft.dropout)
        if generator is not None:
            wrapped.reset_lora_parameters(generator)
        _set_module(model, name, wrapped)
    return adapted


def init_lora_weights(model: nn.Module, *, generator: torch.Generator | None = None) -> None:
    """Re-initialise every adapter (A kaiming-uniform, B = 0), e.g. after `to_empty` on a model
    that was built and adapted on the meta device (`init_weights` only covers base parameters)."""
    for mod in lora_modules(model).values():
        mod.reset_lora_parameters(generator)


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    """{name: LoRALinear} of an adapted model, in model order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def merge_lora(model: nn.Module) -> list[str]:
    """Fold every LoRALinear into its base weight (`W += alpha / rank * B @ A`) and put the plain
    `nn.Linear` back under the same name, in place. Returns the merged module names.

    Afterwards the state dict has the base model's names again (`...q_proj.weight`), so
    `save_hf_checkpoint` exports it. The merged weights keep `requires_grad=False`.
    """
    merged = lora_modules(model)
    for name, module in merged.items():
        _set_module(model, name, module.merged_linear())
    return list(merged)


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors only, under our names (`layers.3.mixer.q_proj.lora_A.weight`, ...).

    Tensors are those of `model.state_dict()` (DTensors stay DTensors under FSDP2/TP).
    """
    return {k: v for k, v in model.state_dict().items() if any(m in k for m in LORA_PARAM_MARKERS)}
