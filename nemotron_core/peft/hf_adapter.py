"""LoRA adapters on disk in Hugging Face peft's layout, for transformers' `NemotronHForCausalLM`.

Files (what `peft.PeftModel.from_pretrained(NemotronHForCausalLM, dir)` reads):
    adapter_config.json         peft_type LORA, task_type CAUSAL_LM, r, lora_alpha, lora_dropout,
                                target_modules, rank_pattern, alpha_pattern, base_model_name_or_path
    adapter_model.safetensors   base_model.model.backbone.layers.{i}.mixer.{module}.lora_{A,B}.weight

Names. Tensors use the released checkpoints' `backbone.` prefix (checkpoint/hf.py "disk" layout,
also what transformers 4.x modules are called); peft 0.21 renames them to transformers 5's
in-memory `model.` through transformers' NemotronH conversion mapping, so both generations load.
`target_modules` lists each adapted module as a prefix-free suffix (`layers.3.mixer.q_proj`), which
peft matches with `endswith` under either prefix, so exactly the adapted modules get LoRA layers.

Module mapping (ours -> HF):
    layers.{i}.mixer.{q,k,v,o}_proj, dense {up,down}_proj, shared_experts.{up,down}_proj -> same name
    lm_head -> lm_head
    layers.{i}.mixer.{z,x,B,C,dt}_proj -> one fused layers.{i}.mixer.in_proj (rows z|x|B|C|dt):
        A = [A_z; A_x; ...] stacked over the adapted parts       [R, hidden], R = sum of part ranks
        B = block-diagonal: rows of part p x columns of p's rank  [out_total, R], zeros elsewhere
      so B @ A restricted to part p's rows is B_p @ A_p exactly. The file's rank for that in_proj is
      R (`rank_pattern`), and `alpha_pattern` = scaling * R keeps peft's alpha / r equal to ours.
    layers.{i}.mixer.out_proj (Mamba) -> not exportable: peft (0.21) refuses LoRA on `out_proj` for
      model_type nemotron_h (transformers' CUDA fused Mamba kernel reads out_proj.weight directly,
      bypassing the module), so `save_adapter` raises; merge in process instead (`merge_lora`).
    Routed experts (3-D parameters) and the router are never LoRA targets (`apply_lora` refuses).

Guarantee (tests/parity/test_lora_peft.py): an adapter saved from our model, loaded with
`PeftModel.from_pretrained` onto `NemotronHForCausalLM` holding the same base weights, gives our
adapted model's logits to 1e-5 (fp32), with LoRA on attention, Mamba in_proj parts and shared
experts; `merge_adapter_into_hf` + `save_hf_checkpoint` (scripts/merge_lora.py) gives a plain HF
checkpoint with the same logits.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from nemotron_core.config.model import ModelConfig
from nemotron_core.config.peft import PeftConfig
from nemotron_core.lineage import Lineage, write_metadata
from nemotron_core.peft.lora import lora_modules
from nemotron_core.utils.atomic import atomic_directory

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
HF_ADAPTER_PREFIX = "base_model.model."
MAMBA_IN_PARTS = ("z", "x", "B", "C", "dt")  # row order of HF's fused in_proj

_MAMBA_PART = re.compile(r"^layers\.(\d+)\.mixer\.(z|x|B|C|dt)_proj$")
_MAMBA_OUT = re.compile(r"^layers\.(\d+)\.mixer\.out_proj$")
_SAME_NAME = re.compile(
    r"^(layers\.(\d+)\.mixer\.(?:[qkvo]_proj|up_proj|down_proj|shared_experts\.(?:up|down)_proj)|lm_head)$"
)
_UNEXPORTABLE_HINT = (
    "peft refuses LoRA on `out_proj` for model_type nemotron_h (transformers' fused CUDA Mamba kernel "
    "reads out_proj.weight directly, so an adapter there would be ignored). Exclude them "
    "(peft.exclude_modules: ['*.mixer.out_proj'], or drop '*.out_proj' from peft.target_modules), "
    "or merge in process with merge_lora(model) + save_hf_checkpoint."
)


def _mamba_in_sizes(cfg: ModelConfig) -> dict[str, int]:
    bc = cfg.n_groups * cfg.ssm_state_size
    return dict(zip(MAMBA_IN_PARTS, (cfg.mamba_d_inner, cfg.mamba_d_inner, bc, bc, cfg.mamba_num_heads)))


def check_hf_exportable(adapted: Iterable[str], *, model_cfg: ModelConfig) -> None:
    """Raise ValueError if any adapted module (our name) has no peft-loadable HF counterpart.

    Call it right after `apply_lora` so a run fails before training, not at `save_adapter`.
    """
    kinds = model_cfg.layer_kinds()
    out_proj, unknown = [], []
    for name in adapted:
        if _MAMBA_OUT.match(name):
            out_proj.append(name)
        elif m := _MAMBA_PART.match(name):
            if kinds[int(m.group(1))] != "mamba":
                unknown.append(name)
        elif not _SAME_NAME.match(name):
            unknown.append(name)
    if out_proj:
        raise ValueError(
            f"LoRA on Mamba out_proj ({out_proj[:3]}{' ...' if len(out_proj) > 3 else ''}) cannot be saved "
            f"as a Hugging Face peft adapter: {_UNEXPORTABLE_HINT}"
        )
    if unknown:
        raise ValueError(f"LoRA modules with no Hugging Face NemotronH counterpart: {unknown[:5]}")


def _full(t: torch.Tensor) -> torch.Tensor:
    """A plain CPU tensor; DTensors are gathered first (a collective: every rank must call)."""
    if hasattr(t, "full_tensor"):
        t = t.full_tensor()
    return t.detach().to("cpu").contiguous()


@dataclass
class HFLoRA:
    """One LoRA pair on an HF module: delta W = scaling * B @ A."""

    A: torch.Tensor  # [r, in]
    B: torch.Tensor  # [out, r]
    alpha: float

    @property
    def rank(self) -> int:
        return self.A.shape[0]

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


def to_hf_adapter(model: torch.nn.Module, *, model_cfg: ModelConfig) -> dict[str, HFLoRA]:
    """Our adapted model's LoRA layers as {HF module name without prefix (`layers.0.mixer.in_proj`): HFLoRA}.

    Mamba z/x/B/C/dt adapters of one layer become one block-structured in_proj pair (module
    docstring); its alpha is scaling x R so alpha / rank is unchanged. Raises ValueError as
    `check_hf_exportable`, and when the parts of one in_proj have different scalings.
    """
    mods = lora_modules(model)
    check_hf_exportable(mods, model_cfg=model_cfg)
    sizes = _mamba_in_sizes(model_cfg)
    out: dict[str, HFLoRA | None] = {}  # model order; a fused in_proj sits where its first part is
    fused: dict[int, dict[str, object]] = {}
    for name, mod in mods.items():
        if m := _MAMBA_PART.match(name):
            fused.setdefault(int(m.group(1)), {})[m.group(2)] = mod
            out.setdefault(f"layers.{m.group(1)}.mixer.in_proj", None)
        else:
            out[name] = HFLoRA(A=_full(mod.lora_A.weight), B=_full(mod.lora_B.weight), alpha=mod.alpha)
    for layer, parts in fused.items():
        scalings = {p: mod.scaling for p, mod in parts.items()}
        if len(set(scalings.values())) != 1:
            raise ValueError(f"layers.{layer}.mixer in_proj parts have different LoRA scalings {scalings}")
        order = [p for p in MAMBA_IN_PARTS if p in parts]
        As = [_full(parts[p].lora_A.weight) for p in order]
        R = sum(a.shape[0] for a in As)
        B = As[0].new_zeros(sum(sizes.values()), R)
        row, col = 0, 0
        for p in MAMBA_IN_PARTS:
            if p in parts:
                bp = _full(parts[p].lora_B.weight)
                if bp.shape[0] != sizes[p]:
                    raise ValueError(
                        f"layers.{layer}.mixer.{p}_proj has {bp.shape[0]} rows, config says {sizes[p]}"
                    )
                B[row : row + sizes[p], col : col + bp.shape[1]] = bp
                col += bp.shape[1]
            row += sizes[p]
        out[f"layers.{layer}.mixer.in_proj"] = HFLoRA(
            A=torch.cat(As, dim=0), B=B, alpha=scalings[order[0]] * R
        )
    return out


def _natural(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _hf_key(module: str) -> str:
    """`layers.3.mixer.q_proj` -> `base_model.model.backbone.layers.3.mixer.q_proj` (lm_head has no backbone)."""
    return HF_ADAPTER_PREFIX + (module if module == "lm_head" else "backbone." + module)


def save_adapter(
    out_dir: str | os.PathLike,
    model: torch.nn.Module,
    peft_cfg: PeftConfig,
    *,
    model_cfg: ModelConfig,
    base_model_name_or_path: str | None = None,
    overwrite: bool = False,
    lineage: Lineage | None = None,
) -> Path:
    """Write the LoRA layers of `model` as a Hugging Face peft adapter directory (module docstring).

    With `lineage`, the directory also holds the shared writer's `metadata.json` and
    `lineage.json` (nemotron_core/lineage.py), beside the two peft files, which stay as they are.

    `r`, `lora_alpha`, `lora_dropout` come from `peft_cfg`; fused Mamba in_proj modules whose
    rank or alpha differs from it get `rank_pattern` / `alpha_pattern` entries (keys are the
    prefix-free module names, which peft matches as regex suffixes). Tensors keep
    their dtype. Under torch.distributed every rank calls it (DTensors are gathered), rank 0
    writes; the directory appears whole or not at all.

    Raises ValueError when the model has no LoRA layers, a layer's rank/alpha differs from
    `peft_cfg`, or a layer is not exportable (Mamba out_proj: see `check_hf_exportable`).
    """
    from safetensors.torch import save_file

    mods = lora_modules(model)
    if not mods:
        raise ValueError("model has no LoRA layers (call apply_lora first)")
    for name, mod in mods.items():
        if mod.rank != peft_cfg.rank or mod.alpha != float(peft_cfg.alpha):
            raise ValueError(
                f"{name} has rank {mod.rank} / alpha {mod.alpha}, but peft.rank={peft_cfg.rank}, "
                f"peft.alpha={peft_cfg.alpha}"
            )
    adapter = to_hf_adapter(model, model_cfg=model_cfg)
    out_dir = Path(out_dir)
    if (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_rank()
    ):
        return out_dir

    rank_pattern, alpha_pattern, tensors = {}, {}, {}
    for module, lora in adapter.items():
        if lora.rank != peft_cfg.rank or lora.alpha != float(peft_cfg.alpha):
            rank_pattern[module] = lora.rank
            alpha_pattern[module] = lora.alpha
        tensors[_hf_key(module) + ".lora_A.weight"] = lora.A
        tensors[_hf_key(module) + ".lora_B.weight"] = lora.B
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": int(peft_cfg.rank),
        "lora_alpha": float(peft_cfg.alpha),
        "lora_dropout": float(peft_cfg.dropout),
        "target_modules": list(adapter),
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
    }
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        if lineage is not None:
            meta = {"kind": "lora_adapter", "format": "peft", "r": int(peft_cfg.rank), "lora_alpha": float(peft_cfg.alpha),
                    "target_modules": list(adapter), "model": model_cfg.name}
            write_metadata(tmp, meta, lineage=lineage)
    return out_dir


# ---------------------------------------------------------------------------------------------
# reading and merging (any peft LoRA adapter for NemotronH, ours or Hugging Face's)
# ---------------------------------------------------------------------------------------------


def _pattern_value(patterns: Mapping[str, float], module: str, default: float) -> float:
    """peft's `get_pattern_key`: the first key k with re.match(rf"(.*\\.)?({k})$", module)."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def read_adapter(adapter_dir: str | os.PathLike) -> dict[str, HFLoRA]:
    """A peft LoRA adapter directory as {module name in the HF "disk" layout: HFLoRA}.

    Module names are normalised to `backbone.layers.{i}...` / `lm_head`, whichever prefix the file
    uses (`base_model.model.` + `backbone.` or `model.`). Scaling follows peft: alpha / r, with
    `rank_pattern` / `alpha_pattern` overrides; rsLoRA (alpha / sqrt(r)) is folded into alpha.
    Raises ValueError for adapter features that are not a plain W + s * B @ A update (DoRA,
    LoRA biases, fan_in_fan_out, non-LoRA peft types) and for tensors without their pair.
    """
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    cfg = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
    if cfg.get("peft_type") != "LORA":
        raise ValueError(
            f"{adapter_dir / ADAPTER_CONFIG}: peft_type {cfg.get('peft_type')!r}, expected 'LORA'"
        )
    for flag in ("use_dora", "fan_in_fan_out"):
        if cfg.get(flag):
            raise ValueError(f"{adapter_dir / ADAPTER_CONFIG}: {flag}=true is not supported")
    if cfg.get("bias", "none") != "none" or cfg.get("lora_bias"):
        raise ValueError(f"{adapter_dir / ADAPTER_CONFIG}: LoRA biases are not supported")
    r, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    rank_pattern, alpha_pattern = cfg.get("rank_pattern") or {}, cfg.get("alpha_pattern") or {}

    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in load_file(str(adapter_dir / ADAPTER_WEIGHTS)).items():
        m = re.match(r"^(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.[^.]+)?\.weight$", key)
        if m is None:
            raise ValueError(f"{adapter_dir / ADAPTER_WEIGHTS}: tensor {key!r} is not a LoRA A/B weight")
        module = re.sub(r"^(?:backbone|model)\.", "backbone.", m.group(1))
        pairs.setdefault(module, {})[m.group(2)] = t
    out = {}
    for module, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise ValueError(
                f"{adapter_dir / ADAPTER_WEIGHTS}: {module} has lora_{list(ab)[0]} without its pair"
            )
        bare = module.removeprefix("backbone.")
        r_m = int(_pattern_value(rank_pattern, bare, r))
        a_m = float(_pattern_value(alpha_pattern, bare, alpha))
        if ab["A"].shape[0] != r_m or ab["B"].shape[1] != r_m:
            raise ValueError(
                f"{module}: lora_A {tuple(ab['A'].shape)} / lora_B {tuple(ab['B'].shape)} do not have rank {r_m}"
            )
        if cfg.get("use_rslora"):
            a_m = a_m * r_m / r_m**0.5  # peft's rsLoRA scaling alpha / sqrt(r), as alpha' / r
        out[module] = HFLoRA(A=ab["A"], B=ab["B"], alpha=a_m)
    return dict(sorted(out.items(), key=lambda kv: _natural(kv[0])))


@torch.no_grad()
def merge_adapter_into_hf(hf_sd: Mapping[str, torch.Tensor], adapter: Mapping[str, HFLoRA]) -> dict:
    """`hf_sd` (HF "disk" layout, e.g. `to_hf_state_dict(..., layout="disk")`) with every adapter
    module's weight replaced by W + scaling * B @ A (computed in fp32, stored in W's dtype).

    Raises KeyError naming an adapter module whose `<module>.weight` is not in `hf_sd`, and
    ValueError when B @ A does not have the weight's shape.
    """
    out = dict(hf_sd)
    for module, lora in adapter.items():
        key = module + ".weight"
        if key not in out:
            raise KeyError(f"adapter module {module!r} has no base weight {key!r} in the checkpoint")
        w = out[key]
        delta = (lora.B.float() @ lora.A.float()) * lora.scaling
        if delta.shape != w.shape:
            raise ValueError(f"{module}: adapter delta {tuple(delta.shape)} != base weight {tuple(w.shape)}")
        out[key] = (w.float() + delta.to(w.device)).to(w.dtype)
    return out
