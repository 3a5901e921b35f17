"""LoRA on our own module names: choose, wrap, freeze, merge; no `peft` import at training time.

`LoRALinear` is `base_layer(x) + lora_B(lora_A(dropout(x))) * alpha / rank` (dropout_position
"pre", Hugging Face peft's arithmetic) or `base_layer(x) + dropout(lora_B(lora_A(x)) * alpha / rank)`
("post", NeMo RL / AutoModel's), with the parameter names of Hugging Face peft's LoRA layer
(`base_layer`, `lora_A`, `lora_B`). All three
are plain `nn.Linear` children and the forward is ordinary autograd, so FSDP2 shards them like any
other block parameter and a TP plan can address them by name (`q_proj.base_layer` colwise,
`q_proj.lora_A` replicated, `q_proj.lora_B` colwise; the mirror image for rowwise layers).

State-dict names of an adapted module `layers.3.mixer.q_proj`:
    layers.3.mixer.q_proj.base_layer.weight   (frozen)
    layers.3.mixer.q_proj.lora_A.weight       [rank, in]
    layers.3.mixer.q_proj.lora_B.weight       [out, rank]

Which modules (`select_lora_targets`, options in nemotron_core/config/peft.py):
- a pattern with a dot or a wildcard (`*`, `?`, `[...]`) is fnmatched against full names
  (`layers.3.mixer.q_proj`); a bare name (`q_proj`, `lm_head`) matches the last name component;
- the fused names users bring from Hugging Face NemotronH or Megatron stand for our split
  modules (`MODULE_ALIASES`, on the last component): `in_proj` -> Mamba `{z,x,B,C,dt}_proj`,
  `linear_qkv` -> `{q,k,v}_proj`, `linear_proj` -> `o_proj`, `linear_fc1` -> `up_proj`,
  `linear_fc2` -> `down_proj`;
- `match_all_linear` takes every `nn.Linear` (Mamba out_proj and lm_head included);
- `exclude_modules` patterns (same rules) remove modules from any of these.

Guarantees (tests/unit/peft/test_lora.py, test_lora_options.py):
- `lora_B` starts at zero, so an adapted model's forward equals the base model's bitwise at init;
  `lora_A` is kaiming-uniform(a=sqrt(5)) (`lora_A_init="uniform"`) or xavier-normal ("xavier");
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

from nemotron_core.config.peft import DEFAULT_TARGET_MODULES, PeftConfig

LORA_PARAM_MARKERS = (".lora_A.", ".lora_B.")
DROPOUT_POSITIONS = ("pre", "post")
LORA_A_INITS = ("uniform", "xavier")
# Fused (Hugging Face NemotronH, Megatron) module names -> the modules we keep split.
MODULE_ALIASES = {
    "in_proj": ("z_proj", "x_proj", "B_proj", "C_proj", "dt_proj"),
    "linear_qkv": ("q_proj", "k_proj", "v_proj"),
    "linear_proj": ("o_proj",),
    "linear_fc1": ("up_proj",),
    "linear_fc2": ("down_proj",),
}


class LoRALinear(nn.Module):
    """A frozen `nn.Linear` plus a trainable low-rank update.

    out = base_layer(x) + lora_B(lora_A(dropout(x))) * scaling,   scaling = alpha / rank.

    `lora_A` [rank, in] is kaiming-uniform(a=sqrt(5)) (`lora_A_init="uniform"`, nn.Linear's and
    peft's default) or xavier-normal (`"xavier"`), `lora_B` [out, rank] is zero. Adapter weights
    take the base weight's device and dtype. Dropout acts on the adapter path only: on its input
    (`dropout_position="pre"`) or on its scaled output (`"post"`); the base path sees `x` unchanged.
    """

    def __init__(
        self, base: nn.Linear, *, rank: int, alpha: float, dropout: float = 0.0, dropout_position: str = "pre",
        lora_A_init: str = "uniform",
    ):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        if dropout_position not in DROPOUT_POSITIONS:
            raise ValueError(f"dropout_position must be one of {list(DROPOUT_POSITIONS)}, got {dropout_position!r}")
        if lora_A_init not in LORA_A_INITS:
            raise ValueError(f"lora_A_init must be one of {list(LORA_A_INITS)}, got {lora_A_init!r}")
        self.base_layer = base
        self.rank, self.alpha = int(rank), float(alpha)
        self.scaling = self.alpha / self.rank
        self.dropout_position, self.lora_A_init = dropout_position, lora_A_init
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Linear(base.in_features, self.rank, bias=False, **factory)
        self.lora_B = nn.Linear(self.rank, base.out_features, bias=False, **factory)
        self.reset_lora_parameters()

    @torch.no_grad()
    def reset_lora_parameters(self, generator: torch.Generator | None = None) -> None:
        """A = kaiming-uniform(a=sqrt(5)) or xavier-normal (`lora_A_init`), B = 0 (so the adapter
        starts as a no-op)."""
        if self.lora_A_init == "xavier":
            nn.init.xavier_normal_(self.lora_A.weight, generator=generator)
        else:
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
        if self.dropout_position == "post":
            return self.base_layer(x) + self.lora_dropout(self.lora_B(self.lora_A(x)) * self.scaling)
        return self.base_layer(x) + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling

    @torch.no_grad()
    def merged_linear(self) -> nn.Linear:
        """The base layer with `W += scaling * B @ A` folded in (computed in fp32, stored in W's dtype)."""
        w = self.base_layer.weight
        delta = (self.lora_B.weight.float() @ self.lora_A.weight.float()) * self.scaling
        w.copy_((w.float() + delta).to(w.dtype))
        return self.base_layer

    def extra_repr(self) -> str:
        return (f"rank={self.rank}, alpha={self.alpha}, scaling={self.scaling:g}, "
                f"dropout_position={self.dropout_position}, lora_A_init={self.lora_A_init}")


def _validate(peft: PeftConfig) -> None:
    if peft.name != "lora":
        raise ValueError(f"apply_lora needs peft.name='lora', got {peft.name!r}")
    if int(peft.rank) < 1:
        raise ValueError(f"peft.rank must be >= 1, got {peft.rank}")
    if not float(peft.alpha) > 0:
        raise ValueError(f"peft.alpha must be > 0, got {peft.alpha}")
    if not 0.0 <= float(peft.dropout) < 1.0:
        raise ValueError(f"peft.dropout must be in [0, 1), got {peft.dropout}")
    if peft.dropout_position not in DROPOUT_POSITIONS:
        raise ValueError(f"peft.dropout_position must be one of {list(DROPOUT_POSITIONS)}, got {peft.dropout_position!r}")
    if peft.lora_A_init not in LORA_A_INITS:
        raise ValueError(f"peft.lora_A_init must be one of {list(LORA_A_INITS)}, got {peft.lora_A_init!r}")
    if peft.match_all_linear and peft.target_modules is not None:
        raise ValueError(
            f"peft.match_all_linear=true adapts every nn.Linear, which conflicts with peft.target_modules="
            f"{list(peft.target_modules)}: set one of them (peft.exclude_modules leaves modules out of either)"
        )
    if peft.target_modules is not None and not peft.target_modules:
        raise ValueError("peft.target_modules is empty: nothing to adapt (null selects the default set)")


def _expand(pattern: str) -> list[str]:
    """The pattern with a fused last component (`MODULE_ALIASES`) replaced by our split names."""
    head, dot, last = pattern.rpartition(".")
    return [f"{head}{dot}{alt}" for alt in MODULE_ALIASES[last]] if last in MODULE_ALIASES else [pattern]


def _matches(pattern: str, name: str) -> bool:
    if "." not in pattern and not any(c in pattern for c in "*?["):  # a bare name: the last component
        return name == pattern or name.endswith("." + pattern)
    return fnmatch.fnmatchcase(name, pattern)


def _hits(pattern: str, names: list[str]) -> list[str]:
    expanded = _expand(pattern)
    return [n for n in names if any(_matches(p, n) for p in expanded)]


def _describe(pattern: str) -> str:
    expanded = _expand(pattern)
    return repr(pattern) if expanded == [pattern] else f"{pattern!r} (= {', '.join(expanded)})"


def select_lora_targets(model: nn.Module, peft: PeftConfig) -> list[str]:
    """The names of the modules `apply_lora` adapts, in model order, without changing the model.

    Raises ValueError, naming the config key, when: an option is out of range (rank, alpha,
    dropout, dropout_position, lora_A_init); `match_all_linear` and `target_modules` are both set;
    `target_modules` is an empty list; a `target_modules` or `exclude_modules` pattern matches no
    module (the default set only needs to match something); `exclude_modules` removes every module
    one target pattern matches (or everything); a chosen module is not an `nn.Linear` (e.g. the
    router or the 3-D routed experts).
    """
    _validate(peft)
    modules = dict(model.named_modules())
    names = [n for n in modules if n]

    if peft.match_all_linear:
        targets = {"peft.match_all_linear": [n for n in names if isinstance(modules[n], nn.Linear)]}
    else:
        explicit = peft.target_modules is not None
        targets = {}
        for pattern in (peft.target_modules if explicit else DEFAULT_TARGET_MODULES):
            hits = _hits(pattern, names)
            if not hits and explicit:
                raise ValueError(
                    f"peft.target_modules pattern {_describe(pattern)} matches no module of the model "
                    f"(patterns are fnmatch over full names such as 'layers.0.mixer.z_proj', or a bare last name such as 'q_proj')"
                )
            targets[f"peft.target_modules pattern {_describe(pattern)}"] = hits
        if not any(targets.values()):
            raise ValueError(f"the default peft.target_modules {list(DEFAULT_TARGET_MODULES)} match no module of the model")
    excluded: set[str] = set()
    for pattern in peft.exclude_modules:
        hits = set(_hits(pattern, names))
        if not hits:
            raise ValueError(f"peft.exclude_modules pattern {_describe(pattern)} matches no module of the model")
        excluded |= hits
    for source, hits in targets.items():
        if hits and set(hits) <= excluded:
            raise ValueError(
                f"peft.exclude_modules removes every module matched by {source} ({hits[:3]}"
                f"{' ...' if len(hits) > 3 else ''}): the two lists conflict"
            )
    chosen = {n for hits in targets.values() for n in hits} - excluded
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
    return adapted


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def apply_lora(model: nn.Module, peft: PeftConfig, *, generator: torch.Generator | None = None) -> list[str]:
    """Freeze `model` and wrap the modules `select_lora_targets` chooses in `LoRALinear`, in place.

    Every base parameter gets `requires_grad=False` (embeddings, norms, Mamba, router, routed
    experts); buffers such as the router's `e_score_correction_bias` never have gradients. Only
    the new `lora_A`/`lora_B` weights are trainable; they use `peft.rank`, `peft.alpha`,
    `peft.dropout`, `peft.dropout_position` and `peft.lora_A_init`.

    Returns the adapted module names in model order.
    Raises ValueError (before changing the model) for everything `select_lora_targets` raises,
    and when the model already holds LoRA layers.
    """
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise ValueError("model already has LoRA layers (apply_lora was called before); merge_lora first")
    adapted = select_lora_targets(model, peft)
    modules = dict(model.named_modules())
    for p in model.parameters():
        p.requires_grad_(False)
    for name in adapted:
        wrapped = LoRALinear(
            modules[name], rank=peft.rank, alpha=peft.alpha, dropout=peft.dropout,
            dropout_position=peft.dropout_position, lora_A_init=peft.lora_A_init,
        )
        if generator is not None:
            wrapped.reset_lora_parameters(generator)
        _set_module(model, name, wrapped)
    return adapted


def init_lora_weights(model: nn.Module, *, generator: torch.Generator | None = None) -> None:
    """Re-initialise every adapter (A per its `lora_A_init`, B = 0), e.g. after `to_empty` on a model
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
