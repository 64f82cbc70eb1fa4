"""Run RecBole models and CLLM4Rec under one protocol and rebuild the comparison tables in results/.

    python run_benchmark.py --model=Pop,BPR,MultiVAE --dataset=amazon-beauty
    python run_benchmark.py --model=CLLM4Rec --dataset=amazon-beauty --profile=cpu
    python run_benchmark.py --model=MultiVAE --dataset=amazon-beauty --tune --n_trials=20
    python run_benchmark.py --model=CLLM4Rec --dataset=amazon-beauty --profile=cpu \
        --tune --n_trials=3 --search_space=properties/hyper/CLLM4Rec-cpu.yaml

Any other --key=value goes to RecBole's Config, as with RecBole's own run_recbole.py.
"""

import argparse
import sys

from recbole_cllm4rec.benchmark import BenchmarkError, run, split_config_files


def parse_arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="one model or a comma-separated list")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--config_files", default="", help="extra yaml files, comma- or space-separated")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--label", default=None, help="row name in the table (default: the model name)")
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
    config_files = split_config_files(arguments.config_files)
    config_dict = {} if arguments.seed is None else {"seed": arguments.seed}
    try:
        for model in [name for name in arguments.model.split(",") if name]:
            if arguments.tune:
                from recbole_cllm4rec.tuning import tune

                tune(model, arguments.dataset, n_trials=arguments.n_trials, timeout=arguments.timeout,
                     storage=arguments.storage, study_name=arguments.study_name, config_files=config_files,
                     config_dict=config_dict, recbole_arguments=recbole_arguments,
                     search_space=arguments.search_space,
                     final_run=None if arguments.final_run == "none" else arguments.final_run)
            else:
                record = run(model, arguments.dataset, config_files=config_files, config_dict=config_dict,
                             recbole_arguments=recbole_arguments, download=arguments.download, label=arguments.label)
                headline = ", ".join(f"{key}={record['test'][key]:.4f}" for key in ("recall@20", "recall@40", "ndcg@100")
                                     if key in record["test"])
                print(f"{record['label']} on {arguments.dataset}: {headline} ({record['wall_time_s']} s)")
    except BenchmarkError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
