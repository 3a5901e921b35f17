"""Per-step metrics: JSONL file, console line, wandb (offline by default) and a progress bar.

Metric names (defined once, logged by every stage):
    step                number of optimizer updates done (1 after the first update)
    loss                the optimised loss of the step (CE term + MoE aux term; `train/step.py`)
    lr                  learning rate of that update
    grad_norm           global gradient norm before clipping
    tokens_per_s        input tokens (no padding) of the step, all ranks, per second of train_step
    trainable_tokens    labels != IGNORE_INDEX in the step, all ranks
    moe_load_imbalance  max / mean tokens per expert, worst MoE layer (1.0 = balanced)
    val_loss            mean token CE on the validation batches (its own record, same step)
plus lm_loss, moe_aux_loss, tokens, documents from `StepResult.metrics()`.

Only rank 0 writes anything. `wandb.mode: disabled` (or WANDB_MODE=disabled in the environment)
never imports wandb; "offline" writes under `<out_dir>/wandb` and opens no connection ("online" is
the user's explicit choice and the only mode that uses the network).

Lineage as wandb artifacts (`log_lineage_artifact`): a stage output's `lineage.json` and
`metadata.json` become an artifact named `<Kind>Artifact-<stage tag>` (NVIDIA's Nemotron recipes'
names: `DataBlendsArtifact-sft` for packed data, `ModelArtifact-sft` for checkpoints and exports),
with the lineage as the artifact's metadata and the directory as an unhashed `file://` reference
(nothing large is uploaded). Data prep logs the data artifact (`log_lineage_artifacts_run`); a
trainer logs its model artifacts through `MetricsLogger.log_lineage_artifact` and declares its data
with `use=True` (online mode only: wandb cannot use artifacts offline, so there the model artifact's
lineage, which lists the data's inputs and cache key, is the link).
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nemotron_core.config.run import WandbConfig
from nemotron_core.utils.atomic import atomic_write_bytes, atomic_write_text

log = logging.getLogger("nemotron_core.train")

METRIC_NAMES = (
    "step",
    "loss",
    "lr",
    "grad_norm",
    "tokens_per_s",
    "trainable_tokens",
    "moe_load_imbalance",
    "val_loss",
)
WANDB_MODES = ("offline", "online", "disabled")
# kind -> (artifact name prefix, wandb artifact type)
ARTIFACT_KINDS = {"data": ("DataBlendsArtifact", "dataset"), "model": ("ModelArtifact", "model")}


def _format(name: str, value: Any) -> str:
    if isinstance(value, float):
        if name == "lr":
            return f"{name} {value:.3e}"
        if name in ("tokens_per_s", "tokens", "trainable_tokens"):
            return f"{name} {value:,.0f}"
        return f"{name} {value:.4f}"
    return f"{name} {value}"


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a metrics JSONL file, in order (blank lines skipped)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class MetricsLogger:
    """Rank-0 sink for per-step metrics. Use as a context manager, or call `close()`.

    Guarantees: one JSON object per `log` call, appended and flushed to `<out_dir>/<metrics_file>`
    as `{"step": step, **metrics}` (floats as JSON numbers; NaN/inf as Python's json writes them);
    on a resumed run (`start_step` > 0) records with step > start_step from the interrupted run are
    dropped first, so the file never holds a step twice; start_step = 0 starts an empty file. Other
    ranks write nothing and never import wandb.

    Args:
        out_dir: the run directory (created if missing, rank 0).
        metrics_file: file name relative to out_dir (`logging.metrics_file`).
        wandb: `logging.wandb`; run_name / config: the wandb run name and resolved config.
        rank: global rank; total_steps: for the bar and the console "step s/N".
        start_step: updates already done (resume); progress_bar: show a tqdm bar with ETA.

    Raises:
        ValueError: for an unknown wandb mode.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        *,
        metrics_file: str = "metrics.jsonl",
        wandb: WandbConfig,
        run_name: str,
        config: Mapping[str, Any] | None = None,
        rank: int = 0,
        total_steps: int | None = None,
        start_step: int = 0,
        progress_bar: bool = True,
    ):
        if wandb.mode not in WANDB_MODES:
            raise ValueError(f"logging.wandb.mode={wandb.mode!r} is not one of {list(WANDB_MODES)}")
        self.rank = rank
        self.total_steps = total_steps
        self.path = Path(out_dir) / metrics_file
        self._file = None
        self._bar = None
        self._redirect = None
        self._wandb_run = None
        if rank != 0:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if start_step > 0 and self.path.exists():
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= start_step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self._file = open(self.path, "a", encoding="utf-8")
        if progress_bar:
            from tqdm.auto import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)
            self._redirect = logging_redirect_tqdm()  # console log lines print above the bar
            self._redirect.__enter__()
        mode = "disabled" if os.environ.get("WANDB_MODE") == "disabled" else wandb.mode
        if mode != "disabled":
            import wandb as wandb_lib

            self._wandb_run = wandb_lib.init(
                project=wandb.project,
                entity=wandb.entity,
                name=run_name,
                tags=list(wandb.tags),
                config=dict(config or {}),
                mode=mode,
                dir=str(Path(out_dir)),
            )

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Record `metrics` (a subset of METRIC_NAMES and extras) for `step` (updates done)."""
        if self.rank != 0:
            return
        record = {"step": int(step)}
        for k, v in metrics.items():
            record[k] = float(v) if isinstance(v, float) or hasattr(v, "item") else v
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        of = f"/{self.total_steps}" if self.total_steps else ""
        line = " | ".join([f"step {step}{of}"] + [_format(k, v) for k, v in record.items() if k != "step"])
        log.info(line)
        if self._wandb_run is not None:
            self._wandb_run.log({k: v for k, v in record.items() if k != "step"}, step=int(step))
        if self._bar is not None:
            if "loss" in record and isinstance(record["loss"], float) and math.isfinite(record["loss"]):
                self._bar.set_postfix(loss=f"{record['loss']:.4f}", refresh=False)
            if step > self._bar.n:
                self._bar.update(step - self._bar.n)

    def log_lineage_artifact(self, directory: str | os.PathLike, *, kind: str, stage_tag: str = "sft", use: bool = False):
        """Log (or with `use`, declare as an input) `directory`'s lineage as a wandb artifact
        (`log_lineage_artifact`); nothing on other ranks or with wandb disabled."""
        if self._wandb_run is None:
            return None
        return log_lineage_artifact(self._wandb_run, directory, kind=kind, stage_tag=stage_tag, use=use)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._redirect is not None:
            self._redirect.__exit__(None, None, None)
            self._redirect = None
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def lineage_artifact_name(kind: str, stage_tag: str) -> str:
    """`DataBlendsArtifact-sft`, `ModelArtifact-sft`, ... (kind "data" or "model")."""
    if kind not in ARTIFACT_KINDS:
        raise ValueError(f"artifact kind must be one of {list(ARTIFACT_KINDS)}, got {kind!r}")
    if not stage_tag or not all(c.isalnum() or c in "-_." for c in stage_tag):
        raise ValueError(f"stage tag must be a non-empty name of letters, digits, '-', '_' or '.', got {stage_tag!r}")
    return f"{ARTIFACT_KINDS[kind][0]}-{stage_tag}"


def log_lineage_artifact(wandb_run, directory: str | os.PathLike, *, kind: str, stage_tag: str, use: bool = False):
    """Log `directory`'s lineage as the artifact `lineage_artifact_name(kind, stage_tag)`.

    The artifact holds `lineage.json` and `metadata.json` (as files), the lineage dict plus the
    directory's absolute path as its metadata, and a `file://` reference to the directory with
    no checksum (the weights or shards stay where they are). `use=True` declares it as an input
    of the run instead (`use_artifact`); in offline mode, where wandb refuses that, it is skipped.
    Returns the artifact, or None when skipped.

    Raises FileNotFoundError when `directory` has no lineage.json.
    """
    import wandb as wandb_lib

    from nemotron_core.lineage import LINEAGE_FILE, METADATA_FILE

    directory = Path(directory).resolve()
    if not (directory / LINEAGE_FILE).is_file():
        raise FileNotFoundError(f"{directory} has no {LINEAGE_FILE}: nothing to log as a wandb artifact")
    lineage = json.loads((directory / LINEAGE_FILE).read_text())
    name = lineage_artifact_name(kind, stage_tag)
    artifact = wandb_lib.Artifact(name, type=ARTIFACT_KINDS[kind][1], metadata={"path": str(directory), **lineage})
    for f in (LINEAGE_FILE, METADATA_FILE):
        if (directory / f).is_file():
            artifact.add_file(str(directory / f), name=f)
    artifact.add_reference(directory.as_uri(), name="files", checksum=False)
    if use:
        if getattr(wandb_run, "offline", False):
            log.debug("wandb offline: not declaring %s as an input (the lineage records it)", name)
            return None
        wandb_run.use_artifact(artifact)
    else:
        wandb_run.log_artifact(artifact)
    return artifact


def log_lineage_artifacts_run(
    wandb: WandbConfig, directories: Mapping[str, str | os.PathLike], *, out_dir: str | os.PathLike, run_name: str,
    job_type: str, stage_tag: str = "sft", config: Mapping[str, Any] | None = None,
) -> list:
    """A short wandb run (mode per `wandb`, offline by default; WANDB_MODE=disabled wins) that logs
    each `{kind: directory}` with `log_lineage_artifact`, for scripts without a MetricsLogger
    (data prep). Returns the logged artifacts; [] when disabled (wandb is never imported then)."""
    if wandb.mode not in WANDB_MODES:
        raise ValueError(f"logging.wandb.mode={wandb.mode!r} is not one of {list(WANDB_MODES)}")
    mode = "disabled" if os.environ.get("WANDB_MODE") == "disabled" else wandb.mode
    if mode == "disabled":
        return []
    import wandb as wandb_lib

    Path(out_dir).mkdir(parents=True, exist_ok=True)
    run = wandb_lib.init(project=wandb.project, entity=wandb.entity, name=run_name, tags=list(wandb.tags),
                         job_type=job_type, config=dict(config or {}), mode=mode, dir=str(Path(out_dir)))
    try:
        return [log_lineage_artifact(run, d, kind=kind, stage_tag=stage_tag) for kind, d in directories.items()]
    finally:
        run.finish()


def plot_loss_curve(
    metrics_jsonl: str | os.PathLike, png_path: str | os.PathLike, *, title: str | None = None
) -> Path:
    """Plot `loss` (line) and `val_loss` (markers) against `step` into a PNG, written atomically.

    Uses matplotlib's Agg canvas directly (no pyplot, no global backend change, no display).

    Raises:
        ValueError: when the file holds no `loss` record.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records = read_metrics(metrics_jsonl)
    train = [(r["step"], r["loss"]) for r in records if r.get("loss") is not None]
    val = [(r["step"], r["val_loss"]) for r in records if r.get("val_loss") is not None]
    if not train:
        raise ValueError(f"{metrics_jsonl}: no 'loss' record to plot")
    fig = Figure(figsize=(7, 4), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(*zip(*train), label="train loss", linewidth=1.2)
    if val:
        ax.plot(*zip(*val), "o-", label="val loss", markersize=4)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title or Path(metrics_jsonl).parent.name)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    canvas.print_png(buf)
    return atomic_write_bytes(png_path, buf.getvalue())
