#!/usr/bin/env bash
# Optuna searches of baselines on a lent GPU, several workers per model sharing one study, in one device call.
#   bash scripts/gpu_search.sh OUTPUT_DIR MODEL:WORKERS[:NEW_TRIALS_UNTIL_S] ...
# e.g. bash scripts/gpu_search.sh "$OUT" RecVAE:10 LightGCN:5:240
# Each model runs WORKERS copies of `run_benchmark.py --tune --n_trials=$N_TRIALS` (default 20) on GPU 0; they
# share the study's SQLite file and its n_trials, and the last to finish writes results/<dataset>/tuning/<Model>/
# and puts the best trial's run into the table as <Model>-tuned. NEW_TRIALS_UNTIL_S is Optuna's --timeout: a
# worker starts no trial after it. Every worker is stopped at LIMIT_S (default 540) so the call returns its files:
# a trial cut off there has no verdict and is run again when the search resumes (on any machine, from the
# trials.json or SQLite file this script brings back in OUTPUT_DIR/search.tgz). One CPU thread a worker: the
# machine has 16 cores. Session 17 (H200): RecVAE:10 LightGCN:5:240 finished RecVAE's 20 trials in 8 minutes,
# and LightGCN's one trial (its epochs took ~13 s among 15 processes); RecVAE's final run (searches then trained
# the best configuration again) took 91 s alone.
# Staged as scripts/gpu_env.sh says, without the GGUF parts.
set -uo pipefail
OUTPUT_DIR=${1:?usage: bash scripts/gpu_search.sh OUTPUT_DIR MODEL:WORKERS[:NEW_TRIALS_UNTIL_S] ...}
shift
[ $# -ge 1 ] || { echo "name at least one MODEL:WORKERS" >&2; exit 2; }
DATASET=${DATASET:-amazon-beauty}
N_TRIALS=${N_TRIALS:-20}
LIMIT_S=${LIMIT_S:-540}
mkdir -p "$OUTPUT_DIR"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
source scripts/gpu_env.sh || { echo "gpu_env.sh failed" >&2; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUTPUT_DIR/gpu.txt"

models=()
for spec in "$@"; do
    IFS=: read -r model workers until_s <<<"$spec"
    models+=("$model")
    for worker in $(seq 1 "$workers"); do
        timeout "$LIMIT_S" python3 run_benchmark.py --model="$model" --dataset="$DATASET" --tune --n_trials="$N_TRIALS" \
            ${until_s:+--timeout="$until_s"} --gpu_id=0 --show_progress=False \
            >"$OUTPUT_DIR/$model-worker-$worker.log" 2>&1 &
        [ "$worker" -eq 1 ] && sleep 5  # the first worker creates the study; the others then load it
    done
done
wait
# One archive: a device call brings back only a few files, and the next call's copy of the working tree
# removes what this one left under results/ (the SQLite studies under saved/ stay while the machine is warm).
found=()
for model in "${models[@]}"; do
    for path in "results/$DATASET/tuning/$model" "results/$DATASET/$model-tuned.json" "saved/optuna/$DATASET/$model.db"; do
        [ -e "$path" ] && found+=("$path")
    done
    [ -e "results/$DATASET/$model-tuned.json" ] \
        || echo "$model: no tuned run within the limit (see $model-worker-*.log)" | tee -a "$OUTPUT_DIR/gpu.txt"
done
tar czf "$OUTPUT_DIR/search.tgz" --exclude=search.tgz "${found[@]}" -C "$OUTPUT_DIR" .
echo "unpack here with: tar xzf search.tgz (logs and gpu.txt land in the current folder)" | tee -a "$OUTPUT_DIR/gpu.txt"
