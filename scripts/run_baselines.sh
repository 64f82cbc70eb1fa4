#!/usr/bin/env bash
# The ten baselines of results/amazon-beauty.md at RecBole's defaults, one after another.
#   bash scripts/run_baselines.sh [dataset]      (logs in saved/baselines-<dataset>.log)
set -uo pipefail
cd "$(dirname "$0")/.."
DATASET=${1:-amazon-beauty}
mkdir -p saved
for model in Pop ItemKNN EASE MultiVAE MultiDAE RecVAE BPR SASRec BERT4Rec LightGCN; do
  .venv/bin/python run_benchmark.py --model=$model --dataset="$DATASET" >> "saved/baselines-$DATASET.log" 2>&1 \
    || echo "FAILED: $model" >> "saved/baselines-$DATASET.log"
done
