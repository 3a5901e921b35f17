"""Stage 0 data prep: raw text (JSONL / Parquet, .gz / .zst) -> Megatron indexed .bin/.idx shards.

    python recipes/nano3/stage0_pretrain/data_prep.py                              # tiny corpus, seconds
    python recipes/nano3/stage0_pretrain/data_prep.py data.input=/corpora/cc/*.jsonl data.output_dir=out/pt data.num_shards=128
    python recipes/nano3/stage0_pretrain/data_prep.py 'data.input={cc:/corpora/cc/*.jsonl.zst,math:/corpora/math/*.parquet}' \
        'data.weights={cc:0.7,math:0.3}' tokenizer=nano3 tokenizer.path=/models/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16
    python recipes/nano3/stage0_pretrain/data_prep.py --cfg job                    # dry run: print the config

Writes `data.output_dir` (train's default `data.path`): `{train,valid,test}/<corpus>/shard_*.bin/.idx`
written by megatron-core's IndexedDatasetBuilder, blend.json, metadata.json and lineage.json; with
wandb on (logging.wandb.mode), its lineage is logged as the artifact `DataBlendsArtifact-pretrain`.
Documents are tokenized with `data.add_bos=false data.add_eos=true` (EOD `data.eod_token`) in
worker processes; the output is the same for any `data.num_workers`, and a rerun is a cache hit.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from nemotron_core.config import register_configs, to_object
from nemotron_core.data.pretrain_prep import prepare_pretrain_data
from nemotron_core.runtime import log_and_save_config, setup_logging
from nemotron_core.train.metrics import log_lineage_artifacts_run

register_configs()


@hydra.main(version_base="1.3", config_path="../../../conf", config_name="stage0_pretrain")
def main(cfg: DictConfig) -> None:
    setup_logging(cfg.logging.level)
    resolved = log_and_save_config(cfg, out_dir=cfg.out_dir, job_name="data_prep")  # fails early on ??? values
    meta = prepare_pretrain_data(
        to_object(cfg.data),
        tokenizer_path=cfg.tokenizer.path,
        tokenizer_name=cfg.tokenizer.name,
        resolved_config=resolved,
        progress=cfg.logging.progress_bar,
    )
    log_lineage_artifacts_run(  # DataBlendsArtifact-pretrain; nothing with logging.wandb.mode=disabled
        to_object(cfg.logging.wandb), {"data": cfg.data.output_dir}, out_dir=cfg.out_dir,
        run_name=f"{cfg.run_name}-data_prep", job_type="data_prep", stage_tag="pretrain", config=resolved,
    )
    splits = ", ".join(
        f"{s} {v['documents']} documents / {v['tokens']} tokens in {len(v['shards'])} shards" for s, v in ((s, meta["splits"][s]) for s in ("train", "valid", "test"))
    )
    print(
        f"{meta['num_documents']} documents, {meta['num_tokens']} tokens ({meta['token_dtype']}): {splits}; "
        f"skipped {meta['num_skipped']} -> {cfg.data.output_dir}"
    )


if __name__ == "__main__":
    main()
