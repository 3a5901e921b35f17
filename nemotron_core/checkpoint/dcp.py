"""Training checkpoints with `torch.distributed.checkpoint` (DCP), and the final HF export.

Layout of one checkpoint (`<out_dir>/checkpoints/step_<NNNNNNNN>/`, step zero-padded to 8 digits):

    .metadata, __<rank>_<i>.distcp   DCP files of {"model": ..., "optim": ...}; each rank writes its own
    rng_rank<R>.pt                   RNG states of rank R (python, numpy, torch CPU, current CUDA
                                     device), plain tensors/ints/lists: loads with weights_only=True
    trainer_state.json               step, consumed_rows (global data row counter), scheduler
                                     state_dict, config_hash, world_size, tokenizer fingerprint,
                                     model config, extra
    tokenizer/                       the tokenizer files the run used
    metadata.json, lineage.json      the shared writer's (`nemotron_core.lineage.write_metadata`),
                                     when a Lineage is given

Guarantees (tests/unit/checkpoint/test_dcp.py, test_dcp_distributed.py):
- save -> load into a fresh model/optimizer/scheduler restores every model and optimizer tensor
  bitwise, the scheduler, the step and row counter, and the RNG streams (the next `torch.rand`,
  `random.random` and `np.random.rand` equal those of the saving process after the save);
- a checkpoint appears whole or not at all: everything is written into
  `checkpoints/.step_<N>.tmp-*` and renamed into place by rank 0 after every rank finished; an
  exception anywhere in the write removes the temporary directory; a killed run leaves at most a
  `.step_*.tmp-*` directory, which `find_latest_checkpoint` ignores (and the next save removes);
- `keep_last` prunes older complete checkpoints, never the one just written; a pruned checkpoint
  is renamed out of the `step_*` namespace before it is deleted, so a crash mid-prune never leaves
  a partial `step_*` directory;
- the model/optimizer state goes through `get_state_dict`/`set_state_dict`, so FSDP2/DTensor
  models save sharded and load under another layout or world size (DCP reshards); a 2-process
  gloo test checks that each rank writes its own shard.

The HF export (`export_hf`) writes `config.json` + safetensors through `checkpoint/hf.py`, plus the
tokenizer files and `lineage.json`, as one atomic directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from nemotron_core.lineage import LINEAGE_FILE, Lineage, write_metadata
from nemotron_core.utils.atomic import atomic_directory, atomic_write_json

log = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
TRAINER_STATE_FILE = "trainer_state.json"
TOKENIZER_DIR = "tokenizer"
DCP_METADATA_FILE = ".metadata"
FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step_(\d+)$")
_TMP_DIR = re.compile(r"^\.step_\d+\.(tmp|old|del)-")
# Optimizer state keyed by parameter FQN, one flat key per tensor: resharding-friendly (torchtitan).
_SD_OPTIONS = StateDictOptions(flatten_optimizer_state_dict=True)
# Files of a Hugging Face tokenizer directory (never model weights, even if they sit beside them).
_TOKENIZER_FILES = {
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
}
_TOKENIZER_DIRS = {"additional_chat_templates"}


@dataclass
class TrainerState:
    """What `load_checkpoint` restored besides the tensors (the content of trainer_state.json)."""

    path: Path
    step: int
    consumed_rows: int  # global data row counter: the next row to read, independent of dp degree
    tokenizer: dict[str, Any] | None  # TokenizerFingerprint.to_dict() of the run that saved it
    config_hash: str | None = None
    world_size: int = 1  # world size of the run that saved it
    rng_restored: bool = False  # False when this rank had no rng_rank<R>.pt (world size grew)
    model_config: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# paths, discovery, resume
# ---------------------------------------------------------------------------------------------


def checkpoint_dir(out_dir: str | os.PathLike, step: int) -> Path:
    """`<out_dir>/checkpoints/step_<NNNNNNNN>`."""
    return Path(out_dir) / CHECKPOINTS_DIR / f"step_{step:08d}"


def is_checkpoint(path: str | os.PathLike) -> bool:
    """A directory written by `save_checkpoint` (trainer_state.json and DCP metadata present)."""
    path = Path(path)
    return (path / TRAINER_STATE_FILE).is_file() and (path / DCP_METADATA_FILE).is_file()


def list_checkpoints(out_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints under `<out_dir>/checkpoints`, oldest first; temporary dirs ignored."""
    root = Path(out_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and is_checkpoint(p):
            found.append((int(m.group(1)), p))
    return sorted(found)


def find_latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The complete checkpoint with the highest step under `<out_dir>/checkpoints`, or None."""
    found = list_checkpoints(out_dir)
    return found[-1][1] if found else None


def resolve_resume(resume: str | None, out_dir: str | os.PathLike) -> Path | None:
    """`checkpoint.resume` -> the checkpoint to resume from, or None for a fresh start.

    "auto": the newest complete checkpoint in `out_dir`, or None if there is none;
    "none" (or None / ""): None; anything else: a checkpoint directory, which must exist.
    Raises FileNotFoundError naming `checkpoint.resume` for a path that is not a checkpoint.
    """
    if resume is None or str(resume).strip().lower() in ("", "none", "null"):
        return None
    if str(resume).strip().lower() == "auto":
        latest = find_latest_checkpoint(out_dir)
        if latest is not None:
            log.info("checkpoint.resume=auto: resuming from %s", latest)
        return latest
    path = Path(resume)
    if not path.is_dir():
        raise FileNotFoundError(
            f"checkpoint.resume={os.fspath(resume)!r} does not exist; pass a checkpoint directory "
            f"(<out_dir>/{CHECKPOINTS_DIR}/step_NNNNNNNN), 'auto' (newest in out_dir) or 'none'"
        )
    if not is_checkpoint(path):
        raise FileNotFoundError(
            f"checkpoint.resume={os.fspath(resume)!r} is not a checkpoint directory (no "
            f"{TRAINER_STATE_FILE} and {DCP_METADATA_FILE}); pass "
            f"<out_dir>/{CHECKPOINTS_DIR}/step_NNNNNNNN, 'auto' or 'none'"
        )
    return path


# ---------------------------------------------------------------------------------------------
# helpers: distributed, RNG, tokenizer files, config hash
# ---------------------------------------------------------------------------------------------


def _dist_on() -> bool:
    return dist.is_available() and dist.is_initialized()


def _rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Explicit values win; otherwise the process group's (0, 1 without one). Inconsistent -> error."""
    if _dist_on():
        r, w = dist.get_rank(), dist.get_world_size()
        if (rank is not None and rank != r) or (world_size is not None and world_size != w):
            raise ValueError(
                f"rank/world_size ({rank}, {world_size}) disagree with the process group ({r}, {w})"
            )
        return r, w
    r, w = (0 if rank is None else rank), (1 if world_size is None else world_size)
    if w != 1:
        raise ValueError(f"world_size={w} but torch.distributed is not initialized")
    return r, w


@contextmanager
def _single_process_quiet() -> Iterator[None]:
    """DCP warns on every single-process save/load ("assuming the intent is..."): that is our intent."""
    with warnings.catch_warnings():
        if not _dist_on():
            warnings.filterwarnings(
                "ignore", message="torch.distributed is disabled, unavailable or uninitialized"
            )
        yield


def _dcp_save(state: dict[str, Any], path: Path) -> None:
    with _single_process_quiet():
        dcp.save(state, checkpoint_id=path, no_dist=not _dist_on())


def _dcp_load(state: dict[str, Any], path: Path) -> None:
    with _single_process_quiet():
        dcp.load(state, checkpoint_id=path, no_dist=not _dist_on())


def _barrier() -> None:
    if _dist_on():
        dist.barrier()


def _all_ok(ok: bool) -> bool:
    """True when every rank's `ok` is True (one collective; works with gloo and nccl)."""
    if not _dist_on():
        return ok
    flags: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(flags, ok)
    return all(flags)


def _broadcast_str(value: str | None) -> str:
    if not _dist_on():
        assert value is not None
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def capture_rng_state() -> dict[str, Any]:
    """RNG states of python, numpy, torch CPU and the current CUDA device, as weights_only-safe types."""
    import numpy as np

    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
        state["cuda_device"] = torch.cuda.current_device()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng_state` (the CUDA state goes to the current device, if any)."""
    import numpy as np

    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def copy_tokenizer_files(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy the tokenizer files of `src` (never weights or model configs) into `dst` (created).

    Raises FileNotFoundError when `src` holds no tokenizer file.
    """
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise FileNotFoundError(f"tokenizer directory {os.fspath(src)!r} does not exist")
    dst.mkdir(parents=True, exist_ok=True)
    copied = 0
    for p in sorted(src.iterdir()):
        if p.is_file() and p.name in _TOKENIZER_FILES:
            shutil.copy2(p, dst / p.name)
            copied += 1
        elif p.is_dir() and p.name in _TOKENIZER_DIRS:
            shutil.copytree(p, dst / p.name, dirs_exist_ok=True)
    if copied == 0:
        raise FileNotFoundError(
            f"{os.fspath(src)!r} holds no tokenizer files (expected e.g. tokenizer.json, tokenizer_config.json)"
        )
    return dst


def _has_tokenizer_files(path: Path) -> bool:
    return (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file()


def hash_config(config: Any) -> str:
    """sha256 of a resolved config (plain containers) as sorted compact JSON."""
    blob = json.dumps(config, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _json_ready(obj: Any, what: str) -> Any:
    """`obj` through a JSON round trip, or a TypeError naming `what`."""
    try:
        return json.loads(json.dumps(obj))
    except (TypeError, ValueError) as e:
        raise TypeError(f"{what} is not JSON-serialisable for {TRAINER_STATE_FILE}: {e}") from e


def _model_config_dict(model) -> dict[str, Any] | None:
    cfg = getattr(model, "cfg", None)
    if cfg is not None and dataclasses.is_dataclass(cfg):
        return _json_ready(dataclasses.asdict(cfg), "model.cfg")
    return None


def _remove_dir(path: Path) -> None:
    """Rename out of the `step_*` namespace, then delete: no partial `step_*` dir on a crash."""
    trash = Path(tempfile.mkdtemp(prefix=f".{path.name}.del-", dir=path.parent))
    os.replace(path, trash / path.name)
    shutil.rmtree(trash, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# save
# ---------------------------------------------------------------------------------------------


def save_checkpoint(
    out_dir: str | os.PathLike,
    *,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any | None,
    consumed_rows: int,
    tokenizer_dir: str | os.PathLike | None,
    tokenizer_fp: dict[str, Any] | Any | None,
    lineage: Lineage | None,
    keep_last: int,
    rank: int | None = None,
    world_size: int | None = None,
    config_hash: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write `<out_dir>/checkpoints/step_<step:08d>/` atomically; every rank calls it.

    Each rank writes its DCP shard and `rng_rank<R>.pt`; rank 0 writes trainer_state.json, the
    tokenizer copy and metadata/lineage, then (after a barrier) renames the temporary directory
    into place (replacing an existing checkpoint of the same step), prunes to the newest
    `keep_last` complete checkpoints (`keep_last <= 0` keeps all; the new one is always kept) and
    removes temporary directories left by killed runs.

    rank/world_size: default to the process group's (0 and 1 without one); passing values that
    disagree with it raises ValueError. config_hash: defaults to the hash of `lineage.config`.
    extra: JSON-serialisable trainer extras, returned as `TrainerState.extra`.
    Returns the final checkpoint path (on every rank).
    """
    rank, world_size = _rank_world(rank, world_size)
    rng = capture_rng_state()  # first, so the checkpoint holds the stream the loop continues with
    final = checkpoint_dir(out_dir, step)
    root = final.parent

    if hasattr(tokenizer_fp, "to_dict"):
        tokenizer_fp = tokenizer_fp.to_dict()
    if config_hash is None and lineage is not None:
        config_hash = hash_config(lineage.config)
    trainer_state = {
        "format_version": FORMAT_VERSION,
        "step": int(step),
        "consumed_rows": int(consumed_rows),
        "scheduler": _json_ready(scheduler.state_dict(), "scheduler.state_dict()")
        if scheduler is not None
        else None,
        "config_hash": config_hash,
        "world_size": world_size,
        "tokenizer": tokenizer_fp,
        "model_config": _model_config_dict(model),
        "extra": _json_ready(extra or {}, "extra"),
    }

    # One temporary directory, created by rank 0, shared by name with every rank.
    tmp_name = None
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        tmp_name = tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_name, 0o777 & ~umask)  # mkdtemp makes 0700; the checkpoint gets the usual mode
    tmp = Path(_broadcast_str(tmp_name))

    ok, error = True, None
    try:
        state = {"model": get_model_state_dict(model, options=_SD_OPTIONS)}
        if optimizer is not None:
            state["optim"] = get_optimizer_state_dict(model, optimizer, options=_SD_OPTIONS)
        _dcp_save(state, tmp)
        torch.save(rng, tmp / f"rng_rank{rank}.pt")
        if rank == 0:
            if tokenizer_dir is not None:
                copy_tokenizer_files(tokenizer_dir, tmp / TOKENIZER_DIR)
            if lineage is not None:
                meta = {
                    "kind": "checkpoint",
                    "format": "torch.distributed.checkpoint",
                    "step": int(step),
                    "consumed_rows": int(consumed_rows),
                    "world_size": world_size,
                }
                if tokenizer_fp is not None:
                    meta["tokenizer"] = tokenizer_fp
                write_metadata(tmp, meta, lineage=lineage)
            # Last file written: its presence marks a complete directory.
            atomic_write_json(tmp / TRAINER_STATE_FILE, trainer_state)
    except BaseException as e:  # noqa: B036 - also KeyboardInterrupt: never leave a temp dir behind
        ok, error = False, e
    if not _all_ok(ok):
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        if error is not None:
            raise error
        raise RuntimeError(f"save_checkpoint(step={step}) failed on another rank; nothing was written")

    if rank == 0:
        try:
            if final.exists():
                log.warning("replacing existing checkpoint %s", final)
                _remove_dir(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _prune(root, keep_last=keep_last, keep=final)
    _barrier()  # every rank returns after the checkpoint is in place
    log.info("saved checkpoint %s", final)
    return final


def _prune(root: Path, *, keep_last: int, keep: Path) -> None:
    """Rank 0 after a successful save: drop temp dirs of dead writers and old checkpoints."""
    for p in root.iterdir():
        if p.is_dir() and _TMP_DIR.match(p.name):
            shutil.rmtree(p, ignore_errors=True)
    if keep_last <= 0:
        return
    complete = list_checkpoints(root.parent)
    newest = {p for _, p in complete[-keep_last:]} | {keep}
    for _, p in complete:
        if p not in newest:
            log.info("keep_last=%d: removing %s", keep_last, p)
            _remove_dir(p)


# ---------------------------------------------------------------------------------------------
# load
# ---------------------------------------------------------------------------------------------


def read_trainer_state(path: str | os.PathLike) -> dict[str, Any]:
    return json.loads((Path(path) / TRAINER_STATE_FILE).read_text())


def load_checkpoint(
    path: str | os.PathLike,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any | None,
    rank: int | None = None,
) -> TrainerState:
    """Restore model, optimizer, scheduler and this rank's RNG from a `save_checkpoint` directory.

    Every rank calls it, with the model already built (and parallelised) the way it will train:
    DCP reshards to it, whatever layout or world size saved the checkpoint. The RNG of rank R
    comes from `rng_rank<R>.pt`; a rank the saving run did not have keeps its RNG (logged, and
    `rng_restored=False`). Raises FileNotFoundError for a directory that is not a checkpoint.
    """
    path = Path(path)
    if not is_checkpoint(path):
        raise FileNotFoundError(f"{os.fspath(path)!r} is not a checkpoint (no {TRAINER_STATE_FILE})")
    rank, _ = _rank_world(rank, None)
    ts = read_trainer_state(path)

    state = {"model": get_model_state_dict(model, options=_SD_OPTIONS)}
    if optimizer is not None:
        state["optim"] = get_optimizer_state_dict(model, optimizer, options=_SD_OPTIONS)
    _dcp_load(state, path)
    set_model_state_dict(model, state["model"], options=_SD_OPTIONS)
    if optimizer is not None:
        set_optimizer_state_dict(model, optimizer, state["optim"], options=_SD_OPTIONS)
    if scheduler is not None:
        if ts.get("scheduler") is None:
            raise ValueError(f"{path} holds no scheduler state, but a scheduler was given to restore")
        scheduler.load_state_dict(ts["scheduler"])

    rng_file = path / f"rng_rank{rank}.pt"
    rng_restored = rng_file.is_file()
    if rng_restored:  # last: nothing above may draw from the restored streams
        restore_rng_state(torch.load(rng_file, weights_only=True))
    else:
        log.warning(
            "%s has no RNG state for rank %d (saved with world size %s); RNG left as seeded",
            path,
            rank,
            ts.get("world_size"),
        )
    return TrainerState(
        path=path,
        step=int(ts["step"]),
        consumed_rows=int(ts["consumed_rows"]),
        tokenizer=ts.get("tokenizer"),
        config_hash=ts.get("config_hash"),
        world_size=int(ts.get("world_size", 1)),
        rng_restored=rng_restored,
        model_config=ts.get("model_config"),
        extra=ts.get("extra") or {},
    )


def load_full_model(path: str | os.PathLike, model: torch.nn.Module) -> TrainerState:
    """Load a checkpoint's weights into a full single-device `model` in THIS process only (no
    collective, also while a process group exists): how rank 0 exports the HF model of a run
    trained under any layout (DCP reshards from the saved shards). Returns the trainer state."""
    path = Path(path)
    if not is_checkpoint(path):
        raise FileNotFoundError(f"{os.fspath(path)!r} is not a checkpoint (no {TRAINER_STATE_FILE})")
    state = {"model": model.state_dict()}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        dcp.load(state, checkpoint_id=path, no_dist=True)
    model.load_state_dict(state["model"])
    ts = read_trainer_state(path)
    return TrainerState(path=path, step=int(ts["step"]), consumed_rows=int(ts["consumed_rows"]), tokenizer=ts.get("tokenizer"),
                        config_hash=ts.get("config_hash"), world_size=int(ts.get("world_size", 1)), rng_restored=False,
                        model_config=ts.get("model_config"), extra=ts.get("extra") or {})


# Fields that change the weights' shapes or meaning: must agree between an HF config.json and the model.
_ARCH_FIELDS = (
    "hybrid_override_pattern",
    "hidden_size",
    "vocab_size",
    "tie_word_embeddings",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "attention_bias",
    "mamba_num_heads",
    "mamba_head_dim",
    "ssm_state_size",
    "n_groups",
    "conv_kernel",
    "use_conv_bias",
    "mamba_proj_bias",
    "n_routed_experts",
    "num_experts_per_tok",
    "moe_intermediate_size",
    "moe_shared_expert_intermediate_size",
    "n_shared_experts",
    "intermediate_size",
    "mlp_bias",
)


def _check_arch(src: dict[str, Any], cfg: Any, *, source: str, config_key: str) -> None:
    if cfg is None:
        return
    diffs = [
        f"{k}: {src[k]!r} (source) vs {getattr(cfg, k)!r} (model)"
        for k in _ARCH_FIELDS
        if k in src and hasattr(cfg, k) and src[k] != getattr(cfg, k)
    ]
    if diffs:
        raise ValueError(
            f"{config_key}={source!r} holds another architecture than the configured model: "
            + "; ".join(diffs)
        )


def load_model_weights(
    path_or_hf_dir: str | os.PathLike,
    model: torch.nn.Module,
    *,
    config_key: str = "checkpoint.load",
) -> dict[str, Any]:
    """Load model weights only (for `checkpoint.load`), from one of our checkpoints or an HF dir.

    Accepts: a `save_checkpoint` directory (model part only; optimizer, scheduler, RNG, step
    ignored); a run's out_dir (its newest checkpoint); or a Hugging Face NemotronH directory
    (config.json + safetensors, e.g. our `export_hf` output or a released model). Every rank calls it.

    Returns {"source": "checkpoint" | "hf", "path": str, "step": int | None, "tokenizer":
    fingerprint dict or None, "lineage": the source's lineage.json or None}. The fingerprint is
    the one stored in trainer_state.json, or computed from the directory's tokenizer files
    (HF dir, or a checkpoint that stored none), so the caller can `check_tokenizer_match`.
    Raises FileNotFoundError (naming `config_key`) for anything else, ValueError for an HF
    config.json whose architecture differs from `model.cfg`.
    """
    from nemotron_core.checkpoint import hf as hf_io
    from nemotron_core.tokenization import fingerprint, load_tokenizer

    path = Path(path_or_hf_dir)
    if path.is_dir() and not is_checkpoint(path) and not (path / "config.json").is_file():
        latest = find_latest_checkpoint(path)
        if latest is not None:
            log.info("%s=%s is a run directory: loading its newest checkpoint %s", config_key, path, latest)
            path = latest

    lineage = json.loads((path / LINEAGE_FILE).read_text()) if (path / LINEAGE_FILE).is_file() else None
    if is_checkpoint(path):
        ts = read_trainer_state(path)
        if ts.get("model_config"):
            _check_arch(
                ts["model_config"], getattr(model, "cfg", None), source=os.fspath(path), config_key=config_key
            )
        state = {"model": get_model_state_dict(model, options=_SD_OPTIONS)}
        _dcp_load(state, path)
        set_model_state_dict(model, state["model"], options=_SD_OPTIONS)
        tok = ts.get("tokenizer")
        if tok is None and _has_tokenizer_files(path / TOKENIZER_DIR):
            tok_dir = path / TOKENIZER_DIR
            tok = fingerprint(
                load_tokenizer(tok_dir, config_key=config_key), name=path.name, path=tok_dir
            ).to_dict()
        return {
            "source": "checkpoint",
            "path": str(path),
            "step": int(ts["step"]),
            "tokenizer": tok,
            "lineage": lineage,
        }

    if (path / "config.json").is_file():
        src_cfg = hf_io.model_config_from_hf(json.loads((path / "config.json").read_text()), name=path.name)
        cfg = getattr(model, "cfg", None)
        _check_arch(dataclasses.asdict(src_cfg), cfg, source=os.fspath(path), config_key=config_key)
        sd = hf_io.from_hf_state_dict(hf_io.read_hf_tensors(path), cfg if cfg is not None else src_cfg)
        # A full (unsharded) state dict: set_model_state_dict shards it onto FSDP/DTensor params.
        set_model_state_dict(model, sd, options=StateDictOptions(full_state_dict=_dist_on()))
        tok = None
        if _has_tokenizer_files(path):
            tok = fingerprint(
                load_tokenizer(path, config_key=config_key), name=path.name, path=path
            ).to_dict()
        return {"source": "hf", "path": str(path), "step": None, "tokenizer": tok, "lineage": lineage}

    raise FileNotFoundError(
        f"{config_key}={os.fspath(path_or_hf_dir)!r} is neither a checkpoint directory "
        f"(<out_dir>/{CHECKPOINTS_DIR}/step_NNNNNNNN), a run directory holding one, nor a Hugging Face "
        "directory with config.json and safetensors"
    )


# ---------------------------------------------------------------------------------------------
# HF export
# ---------------------------------------------------------------------------------------------


def export_hf(
    out_dir: str | os.PathLike,
    model: torch.nn.Module,
    *,
    model_cfg: Any,
    tokenizer_dir: str | os.PathLike | None,
    lineage: Lineage | None,
    dtype: torch.dtype | None = None,
    rank: int | None = None,
    collective: bool = True,
) -> Path:
    """Write `out_dir` (e.g. `<run>/hf`) as a Hugging Face NemotronH directory; every rank calls it
    (`collective=False`: only this process calls it, with a full single-device model, e.g. rank 0
    exporting a parallel run from its checkpoint; no collective, no barrier).

    Weights and config.json come from `checkpoint/hf.py` (`save_hf_checkpoint`, cast to `dtype`
    if given); the tokenizer files of `tokenizer_dir` are copied in, so the directory loads with
    `AutoTokenizer` and `NemotronHForCausalLM`; `lineage.json` says where it came from. Sharded
    models are gathered to a full state dict (collective) and rank 0 writes. The directory appears
    whole or not at all and replaces an existing export.
    """
    from nemotron_core.checkpoint.hf import save_hf_checkpoint

    rank = 0 if not collective else _rank_world(rank, None)[0]
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True) if collective and _dist_on() else StateDictOptions()
    sd = get_model_state_dict(model, options=opts)
    out_dir = Path(out_dir)
    if rank == 0:
        sd = {k: v.detach().cpu() for k, v in sd.items()}
        with atomic_directory(out_dir, overwrite=True) as tmp:
            staged = save_hf_checkpoint(sd, tmp / "weights", cfg=model_cfg, dtype=dtype)
            for p in staged.iterdir():
                os.replace(p, tmp / p.name)
            staged.rmdir()
            if tokenizer_dir is not None:
                copy_tokenizer_files(tokenizer_dir, tmp)
            if lineage is not None:
                meta = {"kind": "hf_export", "format": "safetensors", "model": model_cfg.name}
                write_metadata(tmp, meta, lineage=lineage)
        log.info("exported Hugging Face model to %s", out_dir)
    if collective:
        _barrier()
    return out_dir
