"""Run RecBole models and CLLM4Rec under one protocol and rebuild the comparison tables in results/.

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

import argparse
import sys
import warnings

# RecBole 1.2.1's deprecation warnings on today's pandas, torch and setuptools say nothing about a run; ours stay
warnings.filterwarnings("ignore", category=FutureWarning, module=r"recbole\.")
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)

from recbole_cllm4rec.benchmark import PROJECT_ROOT, BenchmarkError, run, split_config_files
from recbole_cllm4rec.profiles import PROFILES


RESULTS_DIR = PROJECT_ROOT / "results"
SCRATCH_DIR = RESULTS_DIR / "scratch"


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


def main(argv=None):
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
        models = [name for name in arguments.model.split(",") if name]
        for model in models:
            label = f"{model}-{arguments.label}" if arguments.label and len(models) > 1 else arguments.label
            if arguments.tune:
                from recbole_cllm4rec.tuning import tune

                study = tune(model, arguments.dataset, n_trials=arguments.n_trials, timeout=arguments.timeout,
                     storage=arguments.storage, study_name=arguments.study_name, config_files=config_files,
                     config_dict=config_dict, recbole_arguments=recbole_arguments,
                     search_space=arguments.search_space, overwrite=arguments.overwrite,
                     final_run=None if arguments.final_run == "none" else arguments.final_run)
                if not study.outputs_written:
                    print(f"error: the search of {model} ended without its outputs: other workers still run trials "
                          f"of study {study.study_name}, and the last of them writes best.yaml and the tuned row",
                          file=sys.stderr)
                    return 3
            else:
                # without --label a run is ad hoc: it goes to the git-ignored scratch folder, never a committed table
                results_dir = RESULTS_DIR if label else SCRATCH_DIR
                record = run(model, arguments.dataset, results_dir=results_dir, config_files=config_files,
                             config_dict=config_dict, recbole_arguments=recbole_arguments, download=arguments.download,
                             label=label, overwrite=arguments.overwrite or not label)
                headline = ", ".join(f"{key}={record['test'][key]:.4f}" for key in ("recall@20", "recall@40", "ndcg@100")
                                     if key in record["test"])
                print(f"{record['label']} on {arguments.dataset}: {headline} ({record['wall_time_s']} s); record in "
                      f"{results_dir / arguments.dataset / (record['label'] + '.json')}"
                      + ("" if label else " (scratch: pass --label=NAME for a row of the committed tables)"))
    except (BenchmarkError, ValueError, FileNotFoundError) as error:  # what was asked for, not a fault of ours
        if arguments.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
