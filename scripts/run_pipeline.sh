#!/usr/bin/env bash
# Stage 0 -> stage 1 on the tiny default, end to end: pretrain the tiny Nano3 from scratch on the
# shipped text, then fine-tune its Hugging Face export on the shipped chats.
#
#   scripts/run_pipeline.sh                                   # tiny default on CPU, a few minutes
#   STAGE0_ARGS="train.steps=20" STAGE1_ARGS="train.steps=10" scripts/run_pipeline.sh
#   PYTHON=.venv/bin/python scripts/run_pipeline.sh
#
# Outputs go under ./outputs like the recipes' own (run from any directory): stage 0 to
# outputs/stage0_pretrain/<run>, its export to .../hf, which stage 1 loads with `checkpoint.load`
# into its own run directory outputs/stage1_sft/<run>-from-stage0 (a separate run_name, so a
# standalone stage 1 run, which starts from a fresh init, is never resumed instead). Rerunning the
# script resumes or reuses what is done (data prep cache hits, checkpoint.resume=auto).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python}"
read -r -a S0 <<< "${STAGE0_ARGS:-}"
read -r -a S1 <<< "${STAGE1_ARGS:-}"

# Stage 0: tokenize into Megatron .bin/.idx shards, pretrain, export (<out_dir>/hf).
"$PY" "$ROOT/recipes/nano3/stage0_pretrain/data_prep.py" "${S0[@]}"
"$PY" "$ROOT/recipes/nano3/stage0_pretrain/train.py" "${S0[@]}"
STAGE0_OUT="$("$PY" "$ROOT/recipes/nano3/stage0_pretrain/train.py" "${S0[@]}" --cfg job --resolve | sed -n 's/^out_dir: //p')"
test -f "$STAGE0_OUT/hf/config.json" || { echo "no stage-0 export at $STAGE0_OUT/hf (checkpoint.export_hf=false?)" >&2; exit 1; }
STAGE0_OUT="$(cd "$STAGE0_OUT" && pwd)"  # absolute: stage 1's lineage records where it started from

# Stage 1: pack the chats, fine-tune starting from the stage-0 export.
"$PY" "$ROOT/recipes/nano3/stage1_sft/data_prep.py" "${S1[@]}"
"$PY" "$ROOT/recipes/nano3/stage1_sft/train.py" "checkpoint.load=$STAGE0_OUT/hf" 'run_name=${model.name}-${data.name}-from-stage0' "${S1[@]}"
echo "pipeline done: stage 0 $STAGE0_OUT, stage 1 from its export (lineage.json parent: $STAGE0_OUT/hf)"
