"""Hugging Face NemotronH interchange: state-dict name mapping, safetensors export and import.

Layouts
- "disk": what the released checkpoints and transformers 5.23 `save_pretrained` write:
  `backbone.embeddings.weight`, `backbone.layers.{i}.norm.weight`,
  Mamba `backbone.layers.{i}.mixer.{in_proj.weight (fused z|x|B|C|dt), conv1d.weight [C,1,K] (fused
  x|B|C), conv1d.bias, dt_bias, A_log, D, norm.weight, out_proj.weight}`,
  attention `mixer.{q,k,v,o}_proj.weight`, dense MLP `mixer.{up,down}_proj.weight`,
  MoE `mixer.gate.weight`, `mixer.gate.e_score_correction_bias`,
  `mixer.experts.{j}.{up,down}_proj.weight` (one per expert), `mixer.shared_experts.{up,down}_proj.weight`,
  `backbone.norm_f.weight`, `lm_head.weight`.
- "memory": transformers 5.23's in-memory `NemotronHForCausalLM.state_dict()`: prefix `model.`
  and routed experts as 3-D `mixer.experts.up_proj` [E, I, H] / `mixer.experts.down_proj` [E, H, I].
The importer accepts either (and a mix of prefixes), so released weights, transformers'
`save_pretrained` output and our own export all load.

Guarantee (tests/parity/test_hf_checkpoint.py): our export loads in
`NemotronHForCausalLM.from_pretrained` with no missing/unexpected keys and the same logits (1e-5,
fp32); transformers' `save_pretrained` output loads into `Nano3Model` with the same logits.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from nemotron_core.config.model import ModelConfig
from nemotron_core.utils.atomic import atomic_directory

SAFE_INDEX = "model.safetensors.index.json"
SAFE_SINGLE = "model.safetensors"
DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3


# ---------------------------------------------------------------------------------------------
# config.json
# ---------------------------------------------------------------------------------------------

_PASSTHROUGH = (
    "vocab_size",
    "hidden_size",
    "tie_word_embeddings",
    "layer_norm_epsilon",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "attention_bias",
    "mamba_num_heads",
    "mamba_head_dim",
    "ssm_state_size",
    "n_groups",
    "conv_kernel",
    "chunk_size",
    "use_conv_bias",
    "mamba_proj_bias",
    "mamba_hidden_act",
    "time_step_min",
    "time_step_max",
    "time_step_floor",
    "n_routed_experts",
    "num_experts_per_tok",
    "moe_intermediate_size",
    "moe_shared_expert_intermediate_size",
    "n_shared_experts",
    "routed_scaling_factor",
    "norm_topk_prob",
    "intermediate_size",
    "mlp_hidden_act",
    "mlp_bias",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    "max_position_embeddings",
)
_PATTERN_OF_TYPE = {
    "mamba": "M",
    "linear_attention": "M",
    "moe": "E",
    "attention": "*",
    "full_attention": "*",
    "mlp": "-",
}
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def hf_config_dict(cfg: ModelConfig, *, dtype: torch.dtype = torch.float32) -> dict:
    """config.json for `NemotronHForCausalLM`, in the released layout (`hybrid_override_pattern`)."""
    d = {k: getattr(cfg, k) for k in _PASSTHROUGH}
    d.update(
        architectures=["NemotronHForCausalLM"],
        model_type="nemotron_h",
        hybrid_override_pattern=cfg.hybrid_override_pattern,
        num_hidden_layers=cfg.num_layers,
        initializer_range=cfg.init_std,
        rescale_prenorm_residual=True,
        residual_in_fp32=False,
        use_bias=cfg.mamba_proj_bias,
        n_group=1,
        topk_group=1,
        moe_latent_size=None,
        num_nextn_predict_layers=0,
        mamba_ssm_cache_dtype="float32",
        use_cache=True,
        dtype=_DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch.")),
    )
    return d


def model_config_from_hf(d: Mapping, *, name: str = "hf_import") -> ModelConfig:
    """ModelConfig from an HF NemotronH config.json dict (pattern or `layers_block_type` form)."""
    d = dict(d)
    if d.get("model_type", "nemotron_h") != "nemotron_h":
        raise ValueError(f"config.json model_type is {d.get('model_type')!r}, expected 'nemotron_h'")
    if "hybrid_override_pattern" in d:
        pattern = d["hybrid_override_pattern"]
    elif "layers_block_type" in d:
        pattern = "".join(_PATTERN_OF_TYPE[t] for t in d["layers_block_type"])
    else:
        raise ValueError("config.json has neither hybrid_override_pattern nor layers_block_type")
    if d.get("n_group", 1) != 1 or d.get("topk_group", 1) != 1:
        raise ValueError("grouped routing (n_group/topk_group != 1) is not supported")
    if d.get("moe_latent_size") is not None:
        raise ValueError("moe_latent_size (latent MoE projections) is not supported")
    legacy = {
        "mamba_n_groups": "n_groups",
        "mamba_d_conv": "conv_kernel",
        "mamba_dt_min": "time_step_min",
        "mamba_dt_max": "time_step_max",
        "mamba_dt_init_floor": "time_step_floor",
        "mamba_conv_bias": "use_conv_bias",
        "mamba_chunk_size": "chunk_size",
    }
    for old, new in legacy.items():
        if old in d and new not in d:
            d[new] = d[old]
    fields = set(ModelConfig.__dataclass_fields__)
    values = {k: d[k] for k in _PASSTHROUGH if k in d and k in fields}
    if isinstance(values.get("eos_token_id"), list):
        values["eos_token_id"] = values["eos_token_id"][0]
    if "use_bias" in d and "mamba_proj_bias" not in d:
        values["mamba_proj_bias"] = d["use_bias"]
    values["hybrid_override_pattern"] = pattern
    values["init_std"] = d.get("initializer_range", ModelConfig.init_std)
    return ModelConfig(name=name, **values)


# ---------------------------------------------------------------------------------------------
# state-dict mapping
# ---------------------------------------------------------------------------------------------


def to_hf_state_dict(sd: Mapping[str, torch.Tensor], cfg: ModelConfig, *, layout: str = "disk") -> dict:
    """Our `Nano3Model.state_dict()` -> HF names ("disk": released layout; "memory": HF in-memory)."""
    if layout not in ("disk", "memory"):
        raise ValueError(f"layout must be 'disk' or 'memory', got {layout!r}")
    if cfg.attention_bias:
        raise ValueError("model.attention_bias=True cannot be exported: HF NemotronH attention has no biases")
    prefix = "backbone." if layout == "disk" else "model."
    out: dict[str, torch.Tensor] = {
        prefix + "embeddings.weight": sd["embeddings.weight"],
        prefix + "norm_f.weight": sd["norm_f.weight"],
        "lm_head.weight": sd["lm_head.weight"],
    }
    for i, kind in enumerate(cfg.layer_kinds()):
        ours, hf = f"layers.{i}.", f"{prefix}layers.{i}."
        out[hf + "norm.weight"] = sd[ours + "norm.weight"]
        m, h = ours + "mixer.", hf + "mixer."
        if kind == "mamba":
            out[h + "in_proj.weight"] = torch.cat(
                [sd[m + f"{p}_proj.weight"] for p in ("z", "x", "B", "C", "dt")], dim=0
            )
            if m + "z_proj.bias" in sd:
                out[h + "in_proj.bias"] = torch.cat(
                    [sd[m + f"{p}_proj.bias"] for p in ("z", "x", "B", "C", "dt")]
                )
            out[h + "conv1d.weight"] = torch.cat([sd[m + f"conv_{p}.weight"] for p in ("x", "B", "C")], dim=0)
            if m + "conv_x.bias" in sd:
                out[h + "conv1d.bias"] = torch.cat([sd[m + f"conv_{p}.bias"] for p in ("x", "B", "C")], dim=0)
            for name in ("dt_bias", "A_log", "D", "norm.weight", "out_proj.weight", "out_proj.bias"):
                if m + name in sd:
                    out[h + name] = sd[m + name]
        elif kind == "moe":
            out[h + "gate.weight"] = sd[m + "router.weight"]
            out[h + "gate.e_score_correction_bias"] = sd[m + "router.e_score_correction_bias"].float()
            up, down = sd[m + "experts.up_proj"], sd[m + "experts.down_proj"]
            if layout == "memory":
                out[h + "experts.up_proj"] = up
                out[h + "experts.down_proj"] = down
            else:
                for j in range(up.shape[0]):
                    out[h + f"experts.{j}.up_proj.weight"] = up[j]
                    out[h + f"experts.{j}.down_proj.weight"] = down[j]
            for name in ("up_proj.weight", "down_proj.weight", "up_proj.bias", "down_proj.bias"):
                if m + "shared_experts." + name in sd:
                    out[h + "shared_experts." + name] = sd[m + "shared_experts." + name]
        else:  # attention and mlp share HF's names
            for key, value in sd.items():
                if key.startswith(m):
                    out[h + key[len(m) :]] = value
    return out


_PREFIX = re.compile(r"^(backbone|model)\.")


def from_hf_state_dict(hf: Mapping[str, torch.Tensor], cfg: ModelConfig) -> dict:
    """HF names (disk or memory layout, `backbone.` or `model.` prefix) -> our state-dict names.

    Raises KeyError naming the first missing HF tensor; ignores `mtp.*` (multi-token prediction)
    tensors like transformers does; raises ValueError listing any other tensor it did not use.
    """
    src = {_PREFIX.sub("", k): v for k, v in hf.items() if not k.startswith("mtp.")}
    used: set[str] = set()

    def take(name: str) -> torch.Tensor:
        if name not in src:
            raise KeyError(
                f"HF checkpoint has no tensor {name!r} (after dropping the backbone./model. prefix)"
            )
        used.add(name)
        return src[name]

    def maybe(name: str) -> torch.Tensor | None:
        return take(name) if name in src else None

    out: dict[str, torch.Tensor] = {
        "embeddings.weight": take("embeddings.weight"),
        "norm_f.weight": take("norm_f.weight"),
        "lm_head.weight": take("lm_head.weight"),
    }
    d_inner = cfg.mamba_d_inner
    bc = cfg.n_groups * cfg.ssm_state_size
    in_split = [d_inner, d_inner, bc, bc, cfg.mamba_num_heads]
    conv_split = [d_inner, bc, bc]
    for i, kind in enumerate(cfg.layer_kinds()):
        ours, h = f"layers.{i}.", f"layers.{i}."
        out[ours + "norm.weight"] = take(h + "norm.weight")
        m, h = ours + "mixer.", h + "mixer."
        if kind == "mamba":
            parts = torch.split(take(h + "in_proj.weight"), in_split, dim=0)
            for p, t in zip(("z", "x", "B", "C", "dt"), parts):
                out[m + f"{p}_proj.weight"] = t
            if (b := maybe(h + "in_proj.bias")) is not None:
                for p, t in zip(("z", "x", "B", "C", "dt"), torch.split(b, in_split)):
                    out[m + f"{p}_proj.bias"] = t
            for p, t in zip(("x", "B", "C"), torch.split(take(h + "conv1d.weight"), conv_split, dim=0)):
                out[m + f"conv_{p}.weight"] = t
            if (b := maybe(h + "conv1d.bias")) is not None:
                for p, t in zip(("x", "B", "C"), torch.split(b, conv_split)):
                    out[m + f"conv_{p}.bias"] = t
            for name in ("dt_bias", "A_log", "D", "norm.weight", "out_proj.weight"):
                out[m + name] = take(h + name)
            if (b := maybe(h + "out_proj.bias")) is not None:
                out[m + "out_proj.bias"] = b
        elif kind == "moe":
            out[m + "router.weight"] = take(h + "gate.weight")
            out[m + "router.e_score_correction_bias"] = take(h + "gate.e_score_correction_bias").float()
            if h + "experts.up_proj" in src:
                out[m + "experts.up_proj"] = take(h + "experts.up_proj")
                out[m + "experts.down_proj"] = take(h + "experts.down_proj")
            else:
                e = cfg.n_routed_experts
                out[m + "experts.up_proj"] = torch.stack(
                    [take(h + f"experts.{j}.up_proj.weight") for j in range(e)]
                )
                out[m + "experts.down_proj"] = torch.stack(
                    [take(h + f"experts.{j}.down_proj.weight") for j in range(e)]
                )
            for name in ("up_proj.weight", "down_proj.weight"):
                out[m + "shared_experts." + name] = take(h + "shared_experts." + name)
        elif kind == "attention":
            for p in ("q", "k", "v", "o"):
                out[m + f"{p}_proj.weight"] = take(h + f"{p}_proj.weight")
                if (b := maybe(h + f"{p}_proj.bias")) is not None:
                    out[m + f"{p}_proj.bias"] = b
        else:
            for p in ("up", "down"):
                out[m + f"{p}_proj.weight"] = take(h + f"{p}_proj.weight")
                if (b := maybe(h + f"{p}_proj.bias")) is not None:
                    out[m + f"{p}_proj.bias"] = b
    unused = sorted(set(src) - used)
    if unused:
        raise ValueError(
            f"HF checkpoint tensors not used by the model config: {unused[:10]} ({len(unused)} total)"
        )
    # Own storage per tensor (splits are views), so parameters never alias each other.
    return {k: v.clone() if v._base is not None or not v.is_contiguous() else v for k, v in out.items()}


# ---------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------


def save_hf_checkpoint(
    model,
    out_dir: str | os.PathLike,
    *,
    cfg: ModelConfig | None = None,
    dtype: torch.dtype | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    overwrite: bool = False,
) -> Path:
    """Write `model` (a Nano3Model or its state dict + `cfg`) as an HF NemotronH directory.

    Files: `config.json`, `generation_config.json`, and `model.safetensors`, or shards
    `model-0000i-of-0000n.safetensors` plus `model.safetensors.index.json` when the tensors exceed
    `max_shard_bytes`. Tensors are cast to `dtype` (default: as stored), except
    `e_score_correction_bias`, which stays fp32 as in the released checkpoints. The directory
    appears whole or not at all.
    """
    from safetensors.torch import save_file

    if isinstance(model, torch.nn.Module):
        cfg = cfg or model.cfg
        sd = model.state_dict()
    else:
        sd = model
    if cfg is None:
        raise ValueError("save_hf_checkpoint needs cfg when given a state dict")
    hf = to_hf_state_dict(sd, cfg, layout="disk")
    tensors: dict[str, torch.Tensor] = {}
    for k, v in hf.items():
        v = v.detach()
        if dtype is not None and v.is_floating_point() and not k.endswith("e_score_correction_bias"):
            v = v.to(dtype)
        tensors[k] = v.to("cpu").contiguous()
    main_dtype = dtype or sd["lm_head.weight"].dtype

    # Greedy shards in name order.
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k in sorted(tensors):
        nbytes = tensors[k].numel() * tensors[k].element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = tensors[k]
        size += nbytes

    out_dir = Path(out_dir)
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        meta = {"format": "pt"}
        if len(shards) == 1:
            save_file(shards[0], str(tmp / SAFE_SINGLE), metadata=meta)
        else:
            weight_map = {}
            n = len(shards)
            for i, shard in enumerate(shards, start=1):
                fname = f"model-{i:05d}-of-{n:05d}.safetensors"
                save_file(shard, str(tmp / fname), metadata=meta)
                weight_map.update({k: fname for k in shard})
            total = sum(t.numel() * t.element_size() for t in tensors.values())
            index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
            (tmp / SAFE_INDEX).write_text(json.dumps(index, indent=2) + "\n")
        (tmp / "config.json").write_text(json.dumps(hf_config_dict(cfg, dtype=main_dtype), indent=2) + "\n")
        gen = {
            "bos_token_id": cfg.bos_token_id,
            "eos_token_id": cfg.eos_token_id,
            "pad_token_id": cfg.pad_token_id,
        }
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    return out_dir


def read_hf_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of an HF directory (single file or index + shards), on CPU."""
    from safetensors.torch import load_file

    path = Path(path)
    if (path / SAFE_INDEX).exists():
        index = json.loads((path / SAFE_INDEX).read_text())
        tensors: dict[str, torch.Tensor] = {}
        for fname in sorted(set(index["weight_map"].values())):
            tensors.update(load_file(str(path / fname)))
        return tensors
    if (path / SAFE_SINGLE).exists():
        return load_file(str(path / SAFE_SINGLE))
    raise FileNotFoundError(f"{path} has neither {SAFE_INDEX} nor {SAFE_SINGLE}")


def load_hf_checkpoint(
    path: str | os.PathLike,
    *,
    cfg: ModelConfig | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
):
    """Build a Nano3Model from an HF NemotronH directory (config.json + safetensors).

    `cfg` defaults to the one read from config.json. Loading is strict: every tensor of the model
    must be present and every tensor of the checkpoint used (except `mtp.*`).
    """
    from nemotron_core.model.nano3 import Nano3Model

    path = Path(path)
    if cfg is None:
        cfg = model_config_from_hf(json.loads((path / "config.json").read_text()), name=path.name)
    sd = from_hf_state_dict(read_hf_tensors(path), cfg)
    with torch.device("meta"):
        model = Nano3Model(cfg)
    model.load_state_dict(sd, strict=True, assign=True)
    model = model.to(device)
    if dtype is not None:
        for p in model.parameters():
            p.data = p.data.to(dtype)
    return model
