#!/usr/bin/env bash
# The ten baselines of results/amazon-beauty.md at RecBole's defaults, one after another.
#   bash scripts/run_baselines.sh [dataset] [models...]   (logs in saved/baselines-<dataset>.log)
# Models that already have results/<dataset>/<model>.json are skipped; delete the file to rerun one.
set -uo pipefail
cd "$(dirname "$0")/.."
DATASET=${1:-amazon-beauty}
shift || true
MODELS=${*:-Pop ItemKNN EASE MultiVAE MultiDAE RecVAE BPR SASRec BERT4Rec LightGCN}
mkdir -p saved
for model in $MODELS; do
  if [ -f "results/$DATASET/$model.json" ]; then
    echo "skip $model: results/$DATASET/$model.json exists" >> "saved/baselines-$DATASET.log"
    continue
  fi
  .venv/bin/python run_benchmark.py --model="$model" --dataset="$DATASET" >> "saved/baselines-$DATASET.log" 2>&1 \
    || echo "FAILED: $model" >> "saved/baselines-$DATASET.log"
done
