"""Optuna search for any model under the benchmark protocol, with per-epoch pruning.

    python run_benchmark.py --model=MultiVAE --dataset=amazon-beauty --tune --n_trials=20 [--timeout=S]
        [--storage=URL] [--study_name=S] [--search_space=FILE]

Search spaces: ``properties/hyper/<Model>.yaml``, one entry per hyperparameter:
``{type: float|int|categorical, low, high, log, step, choices}``; ``--search_space`` picks another file
(e.g. ``properties/hyper/CLLM4Rec-cpu.yaml``: without the content LM, the content knobs do nothing). The study lives in SQLite
(``saved/optuna/<dataset>/<Model>.db``, outside git) or any SQLAlchemy URL given by ``--storage``, so
several machines can work on one study. Trials keep a heartbeat: trials of an interrupted search are
marked failed when the search resumes, and the search runs only the trials still missing. Several
workers on one study (the same command started more than once, here or on other machines) share
``--n_trials`` between them; the last worker to finish writes the outputs and trains the best configuration.

Every epoch's validation score reaches the trial through the trainer's ``callback_fn`` (RecBole's
trainers and CLLM4Rec's finetuning stage alike), and Optuna's median pruner stops unpromising trials.
A trial that raises (out of memory, NaN loss) is recorded as failed and the search goes on.
Outputs in ``results/<dataset>/tuning/<Model>/``: ``best.yaml`` (usable with --config_files),
``trials.csv``, ``history.png``, ``importance.png``; then the best configuration is trained again and
its test result enters the comparison table as ``<Model>-tuned``.
"""

import warnings
from logging import getLogger
from pathlib import Path

import optuna
import yaml

from recbole_cllm4rec import benchmark
from recbole_cllm4rec.benchmark import PROJECT_ROOT, BenchmarkError

TRIAL_ERRORS = (ValueError, RuntimeError, MemoryError, FloatingPointError)


def reached_verdict(trial):
    """Complete, pruned, or failed by its own error (NaN, out of memory). A trial cut short by an
    interruption (Ctrl-C, a killed process) has no verdict and is run again on resume."""
    state = trial.state
    return state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) or (
        state == optuna.trial.TrialState.FAIL and "error" in trial.user_attrs
    )


def fail_stale_trials(study):
    """Mark trials whose worker stopped sending heartbeats as failed. Optuna calls the function experimental
    (stable in use since 2.9) and would warn at every call, after every trial."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def stop_at_verdicts(n_trials):
    """Stop this worker once the study as a whole (every worker sharing its storage) has ``n_trials``
    trials with a verdict or still running elsewhere: two workers asked for two trials run two, not three.
    A running trial that is then interrupted leaves the study short; resuming runs what is missing."""

    def callback(study, trial):
        fail_stale_trials(study)  # a killed worker's trial is not running any more
        trials = study.get_trials(deepcopy=False)
        running = sum(other.state == optuna.trial.TrialState.RUNNING for other in trials)
        if sum(reached_verdict(other) for other in trials) + running >= n_trials:
            study.stop()

    return callback


class TrialSeededTPESampler(optuna.samplers.TPESampler):
    """TPE whose random draws for trial ``n`` come from ``seed + n``. With one seed per sampler, workers that
    share a study draw the very same startup configurations (three workers ran each of the first four
    MultiVAE configurations three times); trial numbers are unique within a study, so seeding by them gives
    every worker its own draws and keeps a single worker's search reproducible."""

    def __init__(self, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.base_seed = seed

    def before_trial(self, study, trial):
        super().before_trial(study, trial)
        if self.base_seed is not None:
            trial_seed = self.base_seed + trial.number
            self._rng.rng.seed(trial_seed)
            self._random_sampler._rng.rng.seed(trial_seed)


def load_search_space(model, properties_dir, search_space=None):
    """``(path, space)``: ``search_space`` if given, else ``properties/hyper/<Model>.yaml``."""
    path = Path(search_space) if search_space else Path(properties_dir) / "hyper" / f"{model}.yaml"
    if not path.is_file():
        if search_space:
            raise BenchmarkError(f"Search space file {path} does not exist.")
        raise BenchmarkError(f"No search space for {model}: write {path} "
                             f"(one line per hyperparameter, see properties/hyper/MultiVAE.yaml).")
    with open(path, encoding="utf-8") as handle:
        space = yaml.safe_load(handle) or {}
    for name, spec in space.items():
        if spec.get("type") not in ("float", "int", "categorical"):
            raise BenchmarkError(f"{path}: '{name}' needs type float, int or categorical, got {spec.get('type')!r}")
    return path, space


def suggest(trial, space):
    params = {}
    for name, spec in space.items():
        if spec["type"] == "categorical":
            params[name] = trial.suggest_categorical(name, spec["choices"])
        elif spec["type"] == "int":
            params[name] = trial.suggest_int(name, spec["low"], spec["high"], step=spec.get("step", 1), log=spec.get("log", False))
        else:
            params[name] = trial.suggest_float(name, spec["low"], spec["high"], log=spec.get("log", False))
    return params


def pruning_callback(trial):
    def report(epoch, valid_score):
        trial.report(float(valid_score), epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch} (valid {valid_score:.4f})")

    return report


def default_storage(dataset, model):
    path = PROJECT_ROOT / "saved" / "optuna" / dataset / f"{model}.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def open_study(dataset, model, storage=None, study_name=None, seed=2020, bigger=True, grace_period=90):
    storage = optuna.storages.RDBStorage(storage or default_storage(dataset, model), heartbeat_interval=min(30, grace_period),
                                         grace_period=grace_period)
    return optuna.create_study(
        study_name=study_name or f"{dataset}-{model}",
        storage=storage,
        load_if_exists=True,
        direction="maximize" if bigger else "minimize",
        sampler=TrialSeededTPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2),
    )


def tune(model, dataset, n_trials=20, timeout=None, storage=None, study_name=None, config_files=(), config_dict=None,
         recbole_arguments=(), properties_dir=PROJECT_ROOT / "properties", results_dir=PROJECT_ROOT / "results",
         final_run=True, grace_period=90, search_space=None):
    """Run the search; return the study. ``n_trials`` counts trials with a verdict, including earlier runs'."""
    model = benchmark.canonical_model_name(model)
    space_path, space = load_search_space(model, properties_dir, search_space)
    config_dict = dict(config_dict or {})
    study = open_study(dataset, model, storage, study_name, seed=config_dict.get("seed", 2020), grace_period=grace_period)
    fail_stale_trials(study)
    done = sum(reached_verdict(trial) for trial in study.trials)
    remaining = max(n_trials - done, 0)
    logger = getLogger()
    logger.info(f"Optuna study {study.study_name}: {done} trials finished, running {remaining} more")

    def objective(trial):
        params = suggest(trial, space)
        try:
            record = benchmark.run(model, dataset, properties_dir=properties_dir, results_dir=results_dir,
                                   config_files=config_files, config_dict={**config_dict, **params},
                                   recbole_arguments=recbole_arguments, callback_fn=pruning_callback(trial), write=False)
        except TRIAL_ERRORS as error:
            trial.set_user_attr("error", repr(error))
            raise
        trial.set_user_attr("valid", record["valid"])
        trial.set_user_attr("test", record["test"])
        return record["best_valid_score"]

    if remaining:
        study.optimize(objective, n_trials=remaining, timeout=timeout, catch=TRIAL_ERRORS, gc_after_trial=True,
                       callbacks=[stop_at_verdicts(n_trials)])
    fail_stale_trials(study)  # an interrupted run's trials are not workers still busy
    if any(trial.state == optuna.trial.TrialState.RUNNING for trial in study.get_trials(deepcopy=False)):
        logger.info("Other workers are still running trials of this study: the last one to finish writes the "
                    "outputs and trains the best configuration.")
        return study
    output = Path(results_dir) / dataset / "tuning" / model
    write_outputs(study, output)
    if final_run and any(trial.state == optuna.trial.TrialState.COMPLETE for trial in study.trials):
        finished = [trial for trial in study.trials if reached_verdict(trial)]
        distinct = len({tuple(sorted(trial.params.items())) for trial in finished})
        benchmark.run(model, dataset, properties_dir=properties_dir, results_dir=results_dir,
                      config_files=[*config_files, str(output / "best.yaml")], config_dict=config_dict,
                      recbole_arguments=recbole_arguments, label=f"{model}-tuned",
                      extra_record={"tuning": {"n_trials": len(finished), "n_distinct_configurations": distinct,
                                               "study_name": study.study_name,
                                               "best_params": study.best_params,
                                               "search_space": display_path(space_path)}})
    return study


def display_path(path):
    """Relative to the project where it lies inside it (records stay the same on every checkout)."""
    path = Path(path).resolve()
    return str(path.relative_to(PROJECT_ROOT)) if path.is_relative_to(PROJECT_ROOT) else str(path)


def write_outputs(study, output):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    output.mkdir(parents=True, exist_ok=True)
    study.trials_dataframe().to_csv(output / "trials.csv", index=False)
    complete = [trial for trial in study.trials if trial.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        return
    (output / "best.yaml").write_text(
        f"# best of {len(complete)} complete trials of study {study.study_name}: valid {study.best_value:.4f}\n"
        + yaml.safe_dump(study.best_params, sort_keys=True), encoding="utf-8")
    plots = [("history.png", optuna.visualization.matplotlib.plot_optimization_history)]
    if len(complete) >= 2 and len(study.best_params) >= 1:
        plots.append(("importance.png", optuna.visualization.matplotlib.plot_param_importances))
    for name, plot in plots:
        try:
            axis = plot(study)
        except (ValueError, RuntimeError) as error:  # e.g. importances of a parameter that never varied
            getLogger().warning(f"{name} not drawn: {error}")
            continue
        axis.figure.tight_layout()
        axis.figure.savefig(output / name, dpi=100)
        plt.close(axis.figure)
