"""The benchmark's command line: ``python -m recbole_cllm4rec.benchmark`` (``run_benchmark.py`` in a checkout).

    python -m recbole_cllm4rec.benchmark --model=CLLM4Rec --dataset=ml-100k --label=my-run
    python -m recbole_cllm4rec.benchmark --model=Pop,BPR,MultiVAE --dataset=amazon-beauty --label=mine
    python -m recbole_cllm4rec.benchmark --model=MultiVAE --dataset=ml-100k --tune --n_trials=20

The protocol is read from ``properties/`` and records go to ``results/`` under the working directory (a
checkout's ``run_benchmark.py``: under the checkout), or where ``--properties_dir`` and ``--results_dir`` say.
A run with --label writes ``results/<dataset>/<label>.json`` and rebuilds that dataset's tables; a label that
already has a record is refused unless --overwrite says to replace it. A run without --label goes to the
git-ignored ``results/scratch/``. Any other --key=value goes to RecBole's Config, as with RecBole's own
run_recbole.py.
"""

import argparse
import sys
import warnings
from pathlib import Path

# RecBole 1.2.1's deprecation warnings on today's pandas and torch say nothing about a run; ours stay
warnings.filterwarnings("ignore", category=FutureWarning, module=r"recbole\.")

from recbole_cllm4rec.benchmark.protocol import BenchmarkError, split_config_files  # noqa: E402
from recbole_cllm4rec.benchmark.runs import run  # noqa: E402
from recbole_cllm4rec.benchmark.settings import Search, Settings  # noqa: E402
from recbole_cllm4rec.profiles import PROFILES  # noqa: E402


def parse_arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="one model or a comma-separated list")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--config_files", default="", help="extra yaml files, comma- or space-separated")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--label", default=None,
                        help="row name in the committed table (with several models, <model>-<label>); without it the "
                             "run is ad hoc and goes to results/scratch/")
    parser.add_argument("--debug", action="store_true", help="show the traceback behind an error message")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the record (or tuned row) this label already has in results/")
    parser.add_argument("--profile", choices=PROFILES, default=None,
                        help="CLLM4Rec's profile (default auto: cpu without a GPU, the paper's model with one)")
    parser.add_argument("--download", action="store_true", help="let RecBole download a dataset it knows")
    parser.add_argument("--properties_dir", default=None, help="the protocol's yaml files (default: ./properties)")
    parser.add_argument("--results_dir", default=None, help="records and tables (default: ./results)")
    parser.add_argument("--tune", action="store_true", help="Optuna search instead of one run")
    parser.add_argument("--n_trials", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=None, help="seconds for the whole search")
    parser.add_argument("--storage", default=None, help="Optuna storage URL (default: SQLite under saved/optuna/)")
    parser.add_argument("--study_name", default=None)
    parser.add_argument("--search_space", default=None, help="search space yaml (default: properties/hyper/<Model>.yaml)")
    parser.add_argument("--final_run", choices=["reuse", "retrain", "none"], default="reuse",
                        help="the <Model>-tuned row: the best trial's own run (reuse), its configuration trained "
                             "again (retrain), or no row (none)")
    return parser.parse_known_args(argv)


def main(argv=None, root=None):
    """Exit code 0 on success, 2 for a mistake in what was asked (one line on stderr), 3 for a search that ended
    without its outputs. ``root``: the folder whose properties/, results/ and saved/ are used (default: the
    working directory)."""
    arguments, recbole_arguments = parse_arguments(sys.argv[1:] if argv is None else argv)
    if any(argument.startswith("--nproc") for argument in recbole_arguments):
        print("error: run_benchmark.py trains in one process; for several, call recbole.quick_start.run(..., "
              "nproc=N) after `import recbole_cllm4rec` (docs/recbole-compat.md)", file=sys.stderr)
        return 2
    config_files = split_config_files(arguments.config_files)
    # progress bars where someone watches; one line per pass in logs (a --show_progress argument still wins)
    config_dict = {"show_progress": sys.stderr.isatty()}
    if arguments.seed is not None:
        config_dict["seed"] = arguments.seed
    if arguments.profile is not None:
        config_dict["profile"] = arguments.profile
    try:
        base = Settings(arguments.model, arguments.dataset, config_files=config_files, config_dict=config_dict,
                        recbole_arguments=recbole_arguments, download=arguments.download,
                        root=root or Path.cwd(), properties_dir=arguments.properties_dir,
                        results_dir=arguments.results_dir)
        if not (base.properties_dir / "overall.yaml").is_file():
            raise BenchmarkError(f"no protocol: {base.properties_dir / 'overall.yaml'} not found; run from a checkout "
                                 f"of recbole-cllm4rec or pass --properties_dir")
        models = [name for name in arguments.model.split(",") if name]
        for model in models:
            label = f"{model}-{arguments.label}" if arguments.label and len(models) > 1 else arguments.label
            settings = base.replace(model=model, label=label, overwrite=arguments.overwrite)
            if arguments.tune:
                from recbole_cllm4rec.benchmark.tuning import tune

                search = Search(n_trials=arguments.n_trials, timeout=arguments.timeout, storage=arguments.storage,
                                study_name=arguments.study_name, search_space=arguments.search_space,
                                final_run=None if arguments.final_run == "none" else arguments.final_run)
                study = tune(settings, search)
                if not study.outputs_written:
                    print(f"error: the search of {model} ended without its outputs: other workers still run trials "
                          f"of study {study.study_name}, and the last of them writes best.yaml and the tuned row",
                          file=sys.stderr)
                    return 3
            else:
                # without --label a run is ad hoc: it goes to the git-ignored scratch folder, never a committed table
                if not label:
                    settings = settings.replace(results_dir=base.results_dir / "scratch", overwrite=True)
                record = run(settings)
                headline = ", ".join(f"{key}={record['test'][key]:.4f}" for key in ("recall@20", "recall@40", "ndcg@100")
                                     if key in record["test"])
                print(f"{record['label']} on {arguments.dataset}: {headline} ({record['wall_time_s']} s); record in "
                      f"{settings.results_dir / arguments.dataset / (record['label'] + '.json')}"
                      + ("" if label else " (scratch: pass --label=NAME for a row of the committed tables)"))
    except (BenchmarkError, ValueError, FileNotFoundError) as error:  # what was asked for, not a fault of ours
        if arguments.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0

