"""The benchmark: RecBole models and CLLM4Rec under one protocol, their records, tables and Optuna searches.

It depends on the plugin (``recbole_cllm4rec``) and never the reverse: importing the plugin leaves this package
unloaded. ``python -m recbole_cllm4rec.benchmark`` (or the checkout's ``run_benchmark.py``) is its command line.

    from recbole_cllm4rec.benchmark import Settings, run
    record = run(Settings("EASE", "ml-100k", label="EASE-mine"))
"""

from recbole_cllm4rec.benchmark.protocol import (HEADLINE_METRICS, BenchmarkError, build_cllm4rec,
                                                 build_untrained, protocol_config)
from recbole_cllm4rec.benchmark.runs import run
from recbole_cllm4rec.benchmark.settings import Search, Settings
from recbole_cllm4rec.benchmark.tables import rebuild_tables
from recbole_cllm4rec.benchmark.tuning import tune

__all__ = ["HEADLINE_METRICS", "BenchmarkError", "Search", "Settings", "build_cllm4rec", "build_untrained",
           "protocol_config", "rebuild_tables", "run", "tune"]
