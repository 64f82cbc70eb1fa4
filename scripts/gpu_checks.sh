#!/usr/bin/env bash
# The checks a session with a lent GPU runs, in one command that fits a 10-minute device call:
#   1. experiments/throughput.py on the paper's model (profile: paper, 30 layers, content LM) -> perf-gpu.md
#   2. the cpu profile trained and tested twice with the same seed, side by side on the
#      one GPU -> two result records, the GPU's run-to-run tolerance (results/notes/reproducibility.md)
# Usage, on the GPU machine in the repository root, with the files scripts/gpu_env.sh names staged:
#   bash scripts/gpu_checks.sh OUTPUT_DIR
# Each step has its own time limit and logs to OUTPUT_DIR, so one that fails or runs long leaves the others.
# Staging (session 16, an H200 with 15 minutes of device time): one call carries 64 MiB, so the wheels (~75 MB)
# and the GGUF (98 MB, split with `split -b 62000000`) went over in three calls a few seconds apart, each copying
# its carried folder into /tmp/stage on the still-warm machine; the third ran this script.
set -uo pipefail
OUTPUT_DIR=${1:?usage: bash scripts/gpu_checks.sh OUTPUT_DIR}
mkdir -p "$OUTPUT_DIR"
export PYTHONUNBUFFERED=1
source scripts/gpu_env.sh || { echo "gpu_env.sh failed" >&2; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUTPUT_DIR/gpu.txt"
python3 -c "import torch, transformers, numpy, pandas; print('torch', torch.__version__, 'transformers', transformers.__version__, 'numpy', numpy.__version__, 'pandas', pandas.__version__)" | tee -a "$OUTPUT_DIR/gpu.txt"

timeout "${THROUGHPUT_LIMIT_S:-240}" python3 -m experiments.throughput --dataset=amazon-beauty \
    --profile=paper --llm_path="$CLLM4REC_GGUF" --batches=4 --rounds=2 \
    --scoring_users=2048 --output="$OUTPUT_DIR/perf-gpu.md" >"$OUTPUT_DIR/throughput.log" 2>&1
echo "throughput exit $?" | tee -a "$OUTPUT_DIR/gpu.txt"

for run in 1 2; do
    timeout "${RUN_LIMIT_S:-300}" python3 run_benchmark.py --model=CLLM4Rec --dataset=amazon-beauty \
        --profile=cpu --llm_path="$CLLM4REC_GGUF" --gpu_id=0 \
        --show_progress=False --label="CLLM4Rec-cpu-h200-run-$run" >"$OUTPUT_DIR/run-$run.log" 2>&1 &
done
wait
for run in 1 2; do
    cp "results/amazon-beauty/CLLM4Rec-cpu-h200-run-$run.json" "$OUTPUT_DIR/" 2>/dev/null \
        || echo "run $run left no record (see run-$run.log)" | tee -a "$OUTPUT_DIR/gpu.txt"
done
