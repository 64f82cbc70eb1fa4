#!/usr/bin/env bash
# Prepare a lent GPU machine that has Python 3.12 with CUDA torch, transformers and accelerate, but no
# package registry and no network, to run this benchmark (how the GPU rows in results/ were produced).
#
# Everything arrives staged in $STAGE (default /tmp/stage), copied there from several carried folders:
#   *.whl                     cp312 wheels of the pinned packages: numpy 1.26.4, pandas 2.3.3 (with pytz and
#                             tzdata, which the machine's pandas 3 no longer needs), scipy 1.12.0, setuptools 81,
#                             recbole 1.2.1 and its small pure-Python needs (colorlog, texttable, thop), gguf
#                             (optuna, sqlalchemy, alembic and mako only for a search)
#   gguf.part.*               the bundled SmolLM2 GGUF (98 MB) split into parts: one call carries 64 MiB
#                             (only CLLM4Rec needs it: a baseline search stages no parts)
#   amazon-beauty.tar.xz      the dataset's atomic files
# The pinned wheels go to $SITE (default /tmp/site) ahead of the machine's own packages on PYTHONPATH, so
# compat.check_environment sees the same versions as on the CPU machines.
#
# ray: RecBole pins ray<=2.6.3, which has no wheel for Python 3.12, and recbole.quick_start imports it at
# module level only for RecBole's own ray-based tuning (never used here: this project tunes with Optuna).
# A stand-in package makes that import succeed and fails loudly if anything actually calls ray.
#
# Usage (on the GPU machine, repository root):  source scripts/gpu_env.sh
set -euo pipefail
STAGE=${STAGE:-/tmp/stage}
SITE=${SITE:-/tmp/site}
GGUF_MD5=a1231443440b107ff29f02bdb38c9d0a

if [ ! -d "$SITE/recbole" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$STAGE"/*.whl
fi
mkdir -p "$SITE/ray"
cat >"$SITE/ray/__init__.py" <<'PY'
"""Stand-in for ray, which has no wheel for this Python: recbole.quick_start imports it at module level."""
from . import tune  # noqa: F401
PY
cat >"$SITE/ray/tune.py" <<'PY'
def __getattr__(name):
    raise RuntimeError(f"ray.tune.{name}: ray is not installed here (stand-in from scripts/gpu_env.sh)")


def report(**metrics):
    raise RuntimeError("ray.tune.report: ray is not installed here (stand-in from scripts/gpu_env.sh)")
PY

GGUF="$STAGE/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -f "$GGUF" ] && compgen -G "$STAGE/gguf.part.*" >/dev/null; then
    cat "$STAGE"/gguf.part.* >"$GGUF.partial"
    echo "$GGUF_MD5  $GGUF.partial" | md5sum -c --quiet - || { echo "GGUF parts do not join to the bundled file" >&2; exit 1; }
    mv "$GGUF.partial" "$GGUF"
fi
mkdir -p dataset
[ -f dataset/amazon-beauty/amazon-beauty.inter ] || tar -C dataset -xJf "$STAGE/amazon-beauty.tar.xz"

export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -f "$GGUF" ]; then
    export CLLM4REC_GGUF="$GGUF"
else
    echo "gpu_env.sh: no GGUF parts in $STAGE: the baselines run, CLLM4Rec needs the bundled LM" >&2
fi
set +euo pipefail
