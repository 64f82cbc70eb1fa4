"""Run RecBole models and CLLM4Rec under one protocol and rebuild the comparison tables in results/.

The checkout's entry to ``recbole_cllm4rec.benchmark.cli`` (``python -m recbole_cllm4rec.benchmark`` elsewhere),
reading ``properties/`` and writing ``results/`` of this checkout from any working directory.

    python run_benchmark.py --model=CLLM4Rec --dataset=ml-100k --label=my-run
    python run_benchmark.py --model=Pop,BPR,MultiVAE --dataset=amazon-beauty --label=mine   # rows Pop-mine, ...
    python run_benchmark.py --model=MultiVAE --dataset=ml-100k --tune --n_trials=20
    python run_benchmark.py --model=CLLM4Rec --dataset=ml-100k --profile=cpu \
        --tune --n_trials=20 --search_space=properties/hyper/CLLM4Rec-cpu.yaml

A run with --label writes results/<dataset>/<label>.json and rebuilds that dataset's tables; a label that already
has a record is refused unless --overwrite says to replace it. A run without --label goes to the git-ignored
results/scratch/. Any other --key=value goes to RecBole's Config, as with RecBole's
own run_recbole.py.
"""

import sys
from pathlib import Path

from recbole_cllm4rec.benchmark.cli import main

if __name__ == "__main__":
    sys.exit(main(root=Path(__file__).resolve().parent))
