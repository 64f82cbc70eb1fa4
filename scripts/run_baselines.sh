#!/usr/bin/env bash
# The ten baselines at RecBole's defaults, one after another, on one dataset.
#   bash scripts/run_baselines.sh [dataset] [models...]   (logs in saved/baselines-<dataset>.log)
# A model whose row results/<dataset>/<model>.json exists is skipped, and the script says so: delete the file, or
# run `python run_benchmark.py --model=<model> --dataset=<dataset> --overwrite`, to run it again.
set -uo pipefail
cd "$(dirname "$0")/.."
DATASET=${1:-amazon-beauty}
shift || true
MODELS=${*:-Pop ItemKNN EASE MultiVAE MultiDAE RecVAE BPR SASRec BERT4Rec LightGCN}
mkdir -p saved
for model in $MODELS; do
  if [ -f "results/$DATASET/$model.json" ]; then
    echo "skip $model: results/$DATASET/$model.json already holds its row" | tee -a "saved/baselines-$DATASET.log"
    continue
  fi
  echo "run $model on $DATASET (log: saved/baselines-$DATASET.log)"
  .venv/bin/python run_benchmark.py --model="$model" --dataset="$DATASET" --label="$model" >> "saved/baselines-$DATASET.log" 2>&1 \
    || echo "FAILED: $model (see saved/baselines-$DATASET.log)" | tee -a "saved/baselines-$DATASET.log"
done
