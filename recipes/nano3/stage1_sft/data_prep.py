"""Stage 1 data prep: OpenAI chat JSONL -> role-masked, packed SFT files.

    python recipes/nano3/stage1_sft/data_prep.py                                   # tiny default, seconds
    python recipes/nano3/stage1_sft/data_prep.py data.input=[a.jsonl,b.jsonl] data.output_dir=out/sft \
        tokenizer=nano3 tokenizer.path=/models/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16 data.pack_size=4096
    python recipes/nano3/stage1_sft/data_prep.py data.sample=100                   # quick look at a subset
    python recipes/nano3/stage1_sft/data_prep.py data=prompt_response data.input=pairs.jsonl   # {"input", "output"} records
    python recipes/nano3/stage1_sft/data_prep.py tokenizer.chat_template=passthrough   # data templated offline
    python recipes/nano3/stage1_sft/data_prep.py data.filter_key=used_in data.filter_values=[nano_v3]
    python recipes/nano3/stage1_sft/data_prep.py --cfg job                         # dry run: print the config

Writes `data.output_dir` (train's default `data.path`): packed Parquet shards (or the reference
.npy files with data.format=npy), blend.json, metadata.json and lineage.json; with wandb on
(logging.wandb.mode, offline by default) the lineage is also logged as the artifact
`DataBlendsArtifact-sft`. (`data=chat_jsonl` skips this step: train.py packs in its loader.)
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from nemotron_core.config import register_configs, to_object
from nemotron_core.data.sft_prep import prepare_sft_data
from nemotron_core.runtime import log_and_save_config, setup_logging
from nemotron_core.train.metrics import log_lineage_artifacts_run

register_configs()


@hydra.main(version_base="1.3", config_path="../../../conf", config_name="stage1_sft")
def main(cfg: DictConfig) -> None:
    setup_logging(cfg.logging.level)
    resolved = log_and_save_config(cfg, out_dir=cfg.out_dir, job_name="data_prep")  # fails early on ??? values
    meta = prepare_sft_data(
        to_object(cfg.data),
        tokenizer_path=cfg.tokenizer.path,
        tokenizer_name=cfg.tokenizer.name,
        resolved_config=resolved,
        progress=cfg.logging.progress_bar,
        chat_template=cfg.tokenizer.chat_template,
    )
    log_lineage_artifacts_run(  # DataBlendsArtifact-sft; nothing with logging.wandb.mode=disabled
        to_object(cfg.logging.wandb), {"data": cfg.data.output_dir}, out_dir=cfg.out_dir,
        run_name=f"{cfg.run_name}-data_prep", job_type="data_prep", config=resolved,
    )
    print(
        f"{meta['num_sequences']} sequences -> {meta['num_packed_sequences']} rows of {meta['pack_size']} tokens "
        f"(packing efficiency {meta['packing_efficiency']:.3f}, {meta['trainable_tokens']} trainable of "
        f"{meta['total_tokens']} tokens, truncated {meta['num_truncated']}, filtered {meta['num_filtered']}) "
        f"in {cfg.data.output_dir}"
    )


if __name__ == "__main__":
    main()
