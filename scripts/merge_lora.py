"""Merge a LoRA adapter into its base model and write a full Hugging Face NemotronH checkpoint.

    python scripts/merge_lora.py --base outputs/sft/hf --adapter outputs/sft_lora/adapter --out outputs/sft_lora/merged
    python scripts/merge_lora.py --base outputs/pretrain/checkpoints/step_00001000 --adapter ... --out ... --dtype bfloat16

--base: a Hugging Face NemotronH directory (config.json + safetensors), one of our training
checkpoints (`<run>/checkpoints/step_N`, a full-model, non-LoRA run), or a run directory (its
newest checkpoint). --adapter: a peft LoRA adapter directory (`save_adapter` output, or one written
by Hugging Face peft for NemotronH). Every adapted weight becomes W + alpha / r * B @ A (fp32
arithmetic); the result loads with `NemotronHForCausalLM.from_pretrained` and in our
`load_hf_checkpoint`. The base's tokenizer files are copied when it has some. The output directory
appears whole or not at all.

Tests import `merge_lora_checkpoint(...)` from this file (tests/parity/test_lora_peft.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout

from nemotron_core.checkpoint.dcp import (  # noqa: E402
    TOKENIZER_DIR,
    copy_tokenizer_files,
    find_latest_checkpoint,
    is_checkpoint,
    load_model_weights,
    read_trainer_state,
)
from nemotron_core.checkpoint.hf import (  # noqa: E402
    from_hf_state_dict,
    load_hf_checkpoint,
    save_hf_checkpoint,
    to_hf_state_dict,
)
from nemotron_core.config.model import ModelConfig  # noqa: E402
from nemotron_core.model import Nano3Model  # noqa: E402
from nemotron_core.peft.hf_adapter import merge_adapter_into_hf, read_adapter  # noqa: E402
from nemotron_core.utils.atomic import atomic_directory  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_base(path: str | os.PathLike) -> tuple[Nano3Model, Path | None]:
    """(model on CPU, its tokenizer directory or None) from an HF dir, a checkpoint or a run dir."""
    path = Path(path)
    if (path / "config.json").is_file():
        return load_hf_checkpoint(path), path
    if path.is_dir() and not is_checkpoint(path):
        path = find_latest_checkpoint(path) or path
    if not is_checkpoint(path):
        raise FileNotFoundError(
            f"--base {os.fspath(path)!r} is neither a Hugging Face directory (config.json), a checkpoint "
            "directory (trainer_state.json + .metadata) nor a run directory holding one"
        )
    model_config = read_trainer_state(path).get("model_config")
    if not model_config:
        raise ValueError(f"{path}/trainer_state.json stores no model_config: cannot build the model")
    cfg = ModelConfig(**model_config)
    with torch.device("meta"):
        model = Nano3Model(cfg)
    model = model.to_empty(device="cpu")  # every tensor is overwritten by the checkpoint
    load_model_weights(path, model, config_key="--base")
    return model, path / TOKENIZER_DIR


def merge_lora_checkpoint(
    base: str | os.PathLike,
    adapter: str | os.PathLike,
    out: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
) -> Path:
    """Load `base`, add the adapter's B @ A updates, write `out` as an HF directory; returns `out`."""
    # --- base weights, in the HF disk layout
    model, tokenizer_dir = load_base(base)
    cfg = model.cfg
    hf_sd = to_hf_state_dict(model.state_dict(), cfg, layout="disk")

    # --- merge
    lora = read_adapter(adapter)
    merged = merge_adapter_into_hf(hf_sd, lora)
    sd = from_hf_state_dict(merged, cfg)  # strict: every tensor used, none missing
    print(f"merged {len(lora)} adapted modules of {adapter} into {base}")

    # --- write weights, config and tokenizer as one directory
    out = Path(out)
    with atomic_directory(out, overwrite=overwrite) as tmp:
        staged = save_hf_checkpoint(sd, tmp / "weights", cfg=cfg, dtype=dtype)
        for p in staged.iterdir():
            os.replace(p, tmp / p.name)
        staged.rmdir()
        if tokenizer_dir is not None and (
            (tokenizer_dir / "tokenizer.json").is_file()
            or (tokenizer_dir / "tokenizer_config.json").is_file()
        ):
            copy_tokenizer_files(tokenizer_dir, tmp)
        adapter_cfg = json.loads((Path(adapter) / "adapter_config.json").read_text())
        (tmp / "merge_info.json").write_text(
            json.dumps(
                {"base": os.fspath(base), "adapter": os.fspath(adapter), "adapter_config": adapter_cfg},
                indent=2,
            )
            + "\n"
        )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="HF dir, our checkpoint dir, or a run dir")
    parser.add_argument("--adapter", required=True, help="peft LoRA adapter dir (adapter_config.json)")
    parser.add_argument("--out", required=True, help="output HF directory")
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default=None, help="cast weights (default: as stored)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = parser.parse_args(argv)
    out = merge_lora_checkpoint(
        args.base, args.adapter, args.out, dtype=DTYPES.get(args.dtype), overwrite=args.overwrite
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
