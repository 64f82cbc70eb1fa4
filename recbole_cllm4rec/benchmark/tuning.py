"""Optuna search for any model under the benchmark protocol, with per-epoch pruning.

    python run_benchmark.py --model=MultiVAE --dataset=amazon-beauty --tune --n_trials=20 [--timeout=S]
        [--storage=URL] [--study_name=S] [--search_space=FILE]

Search spaces: ``properties/hyper/<Model>.yaml``, one entry per hyperparameter:
``{type: float|int|categorical, low, high, log, step, choices}``; ``--search_space`` picks another file
(e.g. ``properties/hyper/CLLM4Rec-cpu.yaml`` for the cpu profile). The study lives in SQLite
(``saved/optuna/<dataset>/<Model>.db``, outside git) or any SQLAlchemy URL given by ``--storage``, so
several machines can work on one study. Trials keep a heartbeat: trials of an interrupted search are
marked failed when the search resumes, and the search runs only the trials still missing, beginning with the
configurations the interrupted trials left unjudged (those whose recorded epochs more curves could judge wait
while there is room for new configurations, and are pruned on their record or queued as soon as the curves
exist). After every epoch and every trial the study is written to
``results/<dataset>/tuning/<Model>/trials.json`` (parameters, verdicts, every epoch's validation score, the
metrics), so a worker cut off mid-trial (Ctrl-C, a killed process, a machine taken back) leaves the epochs its
trial reached on record for the pruner; a new storage (a fresh checkout: the SQLite file is not in git) starts
from the trials recorded there for the same study name and search space, so a search can go on across
machines and restarts (``trials.csv`` of older searches serves where there is
no ``trials.json``; it holds no per-epoch scores). Another ``--study_name`` starts afresh, in its own folder
``tuning/<Model>-<study name>/``. Several
workers on one study (the same command started more than once, here or on other machines) share
``--n_trials`` between them; the last worker to finish writes the outputs and trains the best configuration.

Every epoch's validation score reaches the trial through the trainer's ``callback_fn`` (RecBole's
trainers and CLLM4Rec's finetuning stage alike), and a median pruner stops unpromising trials: below the median
of the complete and interrupted trials' scores at the same epoch, once three other configurations' curves reach
it; a cut-off configuration that the rule stops on its recorded epochs is judged pruned without a second run.
A trial that raises (out of memory, NaN loss) is recorded as failed and the search goes on.
Outputs in ``results/<dataset>/tuning/<Model>/``: ``best.yaml`` (usable with --config_files),
``trials.csv``, ``history.png``, ``importance.png``; then the best trial's result enters the comparison table as
``<Model>-tuned``. Every trial keeps its whole run record (commit, config, machine, curve, metrics), so by default
(``--final_run=reuse``) the row is the best trial's own run, with no second training of the same seed and config;
a best trial recorded without it (older searches) is trained again, as is every best trial with
``--final_run=retrain``, which also logs whether the second run's validation score matches the trial's.
"""

import ast
import fcntl
import json
import math
import os
import socket
import statistics
import time
import warnings
from datetime import datetime
from logging import getLogger
from pathlib import Path

import optuna
import pandas as pd
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from recbole_cllm4rec.benchmark import runs
from recbole_cllm4rec.benchmark.protocol import BenchmarkError, canonical_model_name
from recbole_cllm4rec.benchmark.records import refuse_to_replace
from recbole_cllm4rec.benchmark.settings import Search, display_path
from recbole_cllm4rec.benchmark.tables import publish_record

TRIAL_ERRORS = (ValueError, RuntimeError, MemoryError, FloatingPointError)
RUN = "run"  # the trial's user attribute holding its run record, less the metrics kept beside it
FINAL_RUNS = ("reuse", "retrain")


def interrupted(trial):
    """Failed without an error of its own: cut off by a time limit or a killed worker, not by its values."""
    return trial.state == optuna.trial.TrialState.FAIL and "error" not in trial.user_attrs


def reached_verdict(trial):
    """Complete, pruned, or failed by its own error (NaN, out of memory). A trial cut short by an
    interruption (Ctrl-C, a killed process) has no verdict and is run again on resume."""
    state = trial.state
    return state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) or (
        state == optuna.trial.TrialState.FAIL and not interrupted(trial)
    )


WORKER = "worker"  # the trial's user attribute naming the process running it: host and pid


def this_worker():
    return {"host": socket.gethostname(), "pid": os.getpid()}


def process_is_gone(worker):
    """A worker of this machine whose process no longer exists (killed, crashed); other machines' are unknown."""
    if not worker or worker.get("host") != socket.gethostname() or worker.get("pid") == os.getpid():
        return False
    try:
        os.kill(worker["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def fail_stale_trials(study):
    """Mark as failed the running trials whose worker is gone: a process of this machine that no longer exists at
    once, any other once it stops sending heartbeats. Optuna calls its heartbeat check experimental (stable in use
    since 2.9) and would warn at every call, after every trial."""
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if process_is_gone(trial.user_attrs.get(WORKER)):
            study._storage.set_trial_state_values(trial._trial_id, state=optuna.trial.TrialState.FAIL)
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


def distributions(space):
    """The Optuna distribution of every hyperparameter of a search space."""
    made = {}
    for name, spec in space.items():
        if spec["type"] == "categorical":
            made[name] = CategoricalDistribution(spec["choices"])
        elif spec["type"] == "int":
            made[name] = IntDistribution(spec["low"], spec["high"], step=spec.get("step", 1), log=spec.get("log", False))
        else:
            made[name] = FloatDistribution(spec["low"], spec["high"], log=spec.get("log", False))
    return made


def suggest(trial, space):
    params = {}
    for name, distribution in distributions(space).items():
        if isinstance(distribution, CategoricalDistribution):
            params[name] = trial.suggest_categorical(name, distribution.choices)
        elif isinstance(distribution, IntDistribution):
            params[name] = trial.suggest_int(name, distribution.low, distribution.high, step=distribution.step,
                                             log=distribution.log)
        else:
            params[name] = trial.suggest_float(name, distribution.low, distribution.high, log=distribution.log)
    return params


def pruning_callback(trial, after_report=lambda: None):
    def report(epoch, valid_score):
        trial.report(float(valid_score), epoch)
        after_report()
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch} (valid {valid_score:.4f})")

    return report


class CurveMedianPruner(optuna.pruners.BasePruner):
    """Optuna's median rule (stop a trial whose best score so far is below the median of the other trials' scores
    at its epoch), applied at an epoch only once the curves of ``n_startup_trials`` other configurations reach it,
    and never before epoch ``n_warmup_steps``. The curves are those of complete trials and of interrupted ones for
    the epochs they reached: a trial cut off by a device call's time limit measured its first epochs like any
    other, and was not stopped for its scores (pruned trials are left out, as Optuna leaves them out: they were).
    Optuna's own rule counts complete trials with or without scores (restored trials may have none, so one curve
    would prune everything), and it ignores interrupted trials (so a search whose first trials were cut off
    cannot prune until slow configurations run to their end)."""

    def __init__(self, n_startup_trials=3, n_warmup_steps=2):
        self.n_startup_trials = n_startup_trials
        self.n_warmup_steps = n_warmup_steps

    def prune(self, study, trial):
        step = trial.last_step
        return step is not None and self.stops(study, trial, step)

    def first_stopping_epoch(self, study, trial):
        """The first epoch of a recorded curve at which this rule stops it, with the curves the study holds now;
        None where it runs through (a seeded run of the same configuration repeats the curve, so a cut-off
        configuration stopped here needs no second run to be judged)."""
        return next((step for step in sorted(trial.intermediate_values) if self.stops(study, trial, step)), None)

    def waits_for_comparators(self, study, trial):
        """Whether a recorded curve reaches the epochs this rule looks at but, with the curves the study holds
        now, is compared at none of them: more curves could still judge it without running it again."""
        steps = [step for step in trial.intermediate_values if step >= self.n_warmup_steps]
        own_configuration = configuration(trial.params)
        return bool(steps) and all(
            len(self.comparison_scores(study, step, own_configuration)) < self.n_startup_trials for step in steps)

    def stops(self, study, trial, step):
        if step < self.n_warmup_steps:
            return False
        scores = self.comparison_scores(study, step, configuration(trial.params))
        if len(scores) < self.n_startup_trials:
            return False
        own = [value for epoch, value in trial.intermediate_values.items() if epoch <= step and not math.isnan(value)]
        if not own:
            return True
        median = statistics.median(scores)
        if study.direction == optuna.study.StudyDirection.MAXIMIZE:
            return max(own) < median
        return min(own) > median

    @staticmethod
    def comparison_scores(study, step, own_configuration):
        """One score at ``step`` for each other configuration, from its latest complete or interrupted trial that
        reached it: a configuration run again after an interruption repeats its curve, and neither counts twice
        nor sets a median for itself. Configurations with a pruned trial are left out like their trials."""
        trials = study.get_trials(deepcopy=False)
        pruned = {configuration(trial.params) for trial in trials if trial.state == optuna.trial.TrialState.PRUNED}
        scores = {}
        for other in trials:
            key = configuration(other.params)
            value = other.intermediate_values.get(step)
            if (value is not None and not math.isnan(value) and key != own_configuration and key not in pruned
                    and (other.state == optuna.trial.TrialState.COMPLETE or interrupted(other))):
                scores[key] = value
        return list(scores.values())


def default_storage(saved_dir, dataset, model):
    path = Path(saved_dir) / "optuna" / dataset / f"{model}.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def study_folder(results_dir, dataset, model, study_name):
    """``tuning/<Model>/`` for the default study, ``tuning/<Model>-<study name>/`` for any other: every study keeps
    its own ``trials.json`` and outputs, so a second study never overwrites the record the first resumes from."""
    default = study_name == f"{dataset}-{model}"
    return Path(results_dir) / dataset / "tuning" / (model if default else f"{model}-{study_name}")


def rdb_storage(url, grace_period, attempts=5):
    """Optuna's storage at ``url``. Workers started together on a new database all create its tables, and on a
    database server the slower ones' CREATE fails: they try again once the first one's tables exist."""
    import sqlalchemy

    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url, heartbeat_interval=min(30, grace_period), grace_period=grace_period)
        except sqlalchemy.exc.SQLAlchemyError:
            if attempt == attempts - 1:
                raise
            time.sleep(1 + attempt)


def open_study(dataset, model, storage=None, study_name=None, seed=2020, bigger=True, grace_period=90, saved_dir="saved"):
    storage = rdb_storage(storage or default_storage(saved_dir, dataset, model), grace_period)
    return optuna.create_study(
        study_name=study_name or f"{dataset}-{model}",
        storage=storage,
        load_if_exists=True,
        direction="maximize" if bigger else "minimize",
        sampler=TrialSeededTPESampler(seed=seed),
        pruner=CurveMedianPruner(n_startup_trials=3, n_warmup_steps=2),
    )


def unjudged_configurations(study):
    """The interrupted trials whose configuration no other trial holds (complete, pruned, failed by its own error,
    running, queued), the one that ran longest for each configuration, oldest configuration first."""
    trials = study.get_trials(deepcopy=False)
    settled = {configuration(trial.system_attrs.get("fixed_params", trial.params)) for trial in trials
               if not interrupted(trial)}
    longest = {}
    for trial in trials:
        key = configuration(trial.params)
        if interrupted(trial) and trial.params and key not in settled:
            if key not in longest or len(trial.intermediate_values) >= len(longest[key].intermediate_values):
                longest[key] = trial
    return list(longest.values())


def prune_interrupted_configurations(study):
    """Judge each cut-off configuration by the epochs it reached before running it again: where the pruner stops
    its recorded curve against the curves the study holds now, add a pruned trial with that curve up to that epoch
    (``pruned_on_curve_of`` names the trial it comes from). A slow configuration can take longer than a worker is
    held, and run again from scratch every time it would never be judged. Returns how many were judged."""
    if not isinstance(study.pruner, CurveMedianPruner):
        return 0
    judged = 0
    for trial in unjudged_configurations(study):
        epoch = study.pruner.first_stopping_epoch(study, trial)
        if epoch is not None:
            study.add_trial(optuna.trial.create_trial(
                state=optuna.trial.TrialState.PRUNED, params=trial.params, distributions=trial.distributions,
                intermediate_values={step: value for step, value in trial.intermediate_values.items() if step <= epoch},
                user_attrs={"pruned_on_curve_of": trial.number}))
            judged += 1
    return judged


def queue_interrupted_configurations(study, limit):
    """Queue again, up to ``limit``, the configurations that only interrupted trials hold (cut off by a time
    limit or a killed worker, so they never got a verdict); returns how many were queued. Without this a
    resumed search draws new ones and a cut-off configuration is never judged: TPE learns nothing from a failed
    trial. Configurations already judged, running or queued are not queued again.

    A configuration whose recorded epochs the pruner could judge once more curves exist waits while the search
    has room for new configurations (``limit`` above the number of cut-off ones): re-running long cut-off
    configurations first can hold every worker without a verdict, while the curves of new configurations can
    prune them on their record. Those the pruner has already compared are queued first, then the oldest."""
    unjudged = unjudged_configurations(study)
    waiting = ({trial.number for trial in unjudged if study.pruner.waits_for_comparators(study, trial)}
               if isinstance(study.pruner, CurveMedianPruner) else set())
    if limit > len(unjudged):
        unjudged = [trial for trial in unjudged if trial.number not in waiting]
    unjudged = sorted(unjudged, key=lambda trial: trial.number in waiting)[:limit]
    for trial in unjudged:
        study.enqueue_trial(trial.params, user_attrs={"repeats_interrupted_trial": trial.number})
    return len(unjudged)


def settle_cut_off_configurations(study, n_trials):
    """Prune the cut-off configurations that the recorded curves now judge, and queue those to run again, as
    many as the trials the study still misses once every running and queued trial has its verdict. Returns
    (pruned, queued)."""
    judged = prune_interrupted_configurations(study)
    trials = study.get_trials(deepcopy=False)
    pending = sum(trial.state in (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING) for trial in trials)
    missing = n_trials - sum(reached_verdict(trial) for trial in trials) - pending
    return judged, queue_interrupted_configurations(study, missing) if missing > 0 else 0


def settle_after_every_trial(n_trials, lock_path, logger):
    """A finished trial adds a curve that may judge a cut-off configuration waiting for comparators."""

    def callback(study, trial):
        with open(lock_path, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            fail_stale_trials(study)
            judged, queued = settle_cut_off_configurations(study, n_trials)
        if judged or queued:
            logger.info(f"Optuna study {study.study_name}: after trial {trial.number}, {judged} cut-off configurations "
                        f"pruned on their recorded epochs, {queued} queued to run again")
        states = [other.state for other in study.get_trials(deepcopy=False) if reached_verdict(other)]
        complete = sum(state == optuna.trial.TrialState.COMPLETE for state in states)
        logger.info(f"Optuna study {study.study_name}: {len(states)} of {n_trials} trials done ({complete} complete, "
                    f"{len(states) - complete} pruned or failed), {max(n_trials - len(states), 0)} left")

    return callback


def trial_record(trial):
    return {"number": trial.number, "state": trial.state.name, "value": trial.value, "params": trial.params,
            "distributions": {name: optuna.distributions.distribution_to_json(distribution)
                              for name, distribution in trial.distributions.items()},
            "intermediate_values": {str(step): value for step, value in sorted(trial.intermediate_values.items())},
            "user_attrs": trial.user_attrs,
            "datetime_start": trial.datetime_start and trial.datetime_start.isoformat(),
            "datetime_complete": trial.datetime_complete and trial.datetime_complete.isoformat()}


def replace_atomically(path, text):
    """Write beside ``path`` and rename over it: workers sharing a study all rewrite the same files, and a
    reader (or a worker killed mid-write) never sees half of one."""
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)


def write_trials(study, output, space_path):
    """``trials.json`` (what a new storage restores from) and ``trials.csv`` (Optuna's table)."""
    output.mkdir(parents=True, exist_ok=True)
    record = {"study_name": study.study_name, "direction": study.direction.name.lower(),
              "search_space": display_path(space_path),
              "trials": [trial_record(trial) for trial in study.get_trials(deepcopy=False)]}
    replace_atomically(output / "trials.json", json.dumps(record, indent=1) + "\n")
    table = study.trials_dataframe().drop(columns=f"user_attrs_{RUN}", errors="ignore")  # in trials.json
    replace_atomically(output / "trials.csv", table.to_csv(index=False))


def record_every_trial(output, space_path):
    def callback(study, trial):
        write_trials(study, output, space_path)

    return callback


def frozen_trial(number, state, value, params, trial_distributions, user_attrs, intermediate_values, started,
                 completed):
    """A recorded trial as a finished one: a trial recorded while it was still running (another worker's, or
    one whose worker was killed) comes back failed, without the error that would make that its verdict."""
    if state in ("RUNNING", "WAITING"):
        state, completed = "FAIL", completed or started
    started = datetime.fromisoformat(str(started)) if started else datetime.now()
    trial = optuna.trial.FrozenTrial(
        number=number, trial_id=number, state=optuna.trial.TrialState[state],
        value=None if state == "FAIL" else value, datetime_start=started,
        datetime_complete=datetime.fromisoformat(str(completed)) if completed else started,
        params=params, distributions=trial_distributions, user_attrs=user_attrs, system_attrs={},
        intermediate_values=intermediate_values)
    trial._validate()  # a parameter outside the search space raises ValueError here
    return trial


def trials_from_json(path, study_name):
    record = json.loads(path.read_text(encoding="utf-8"))
    if record.get("study_name") != study_name:
        return []
    return [frozen_trial(trial["number"], trial["state"], trial["value"], trial["params"],
                         {name: optuna.distributions.json_to_distribution(text)
                          for name, text in trial["distributions"].items()},
                         trial["user_attrs"], {int(step): value for step, value in trial["intermediate_values"].items()},
                         trial["datetime_start"], trial["datetime_complete"])
            for trial in record["trials"]]


def trials_from_csv(path, space):
    """Optuna's ``trials_dataframe`` as older searches left it: no study name, no distributions (the search
    space's are assumed and checked), no per-epoch scores (so these trials set no pruning medians)."""
    table = pd.read_csv(path, float_precision="round_trip")  # pandas' default parser drops the last digits
    expected = {f"params_{name}" for name in space}
    found = {column for column in table.columns if column.startswith("params_")}
    if found != expected:
        raise ValueError(f"its parameters {sorted(found)} are not the search space's {sorted(expected)}")
    space_distributions = distributions(space)

    def cell(value):
        return None if isinstance(value, float) and math.isnan(value) else value

    def external(name, value):
        distribution = space_distributions[name]
        if isinstance(distribution, CategoricalDistribution):
            return next((choice for choice in distribution.choices if choice == value), value)
        return int(value) if isinstance(distribution, IntDistribution) else float(value)

    trials = []
    for row in table.to_dict("records"):
        user_attrs = {column[len("user_attrs_"):]: ast.literal_eval(row[column]) if row[column][:1] in "{[" else row[column]
                      for column in table.columns if column.startswith("user_attrs_") and cell(row[column]) is not None}
        params = {name: external(name, row[f"params_{name}"]) for name in space
                  if cell(row[f"params_{name}"]) is not None}
        trials.append(frozen_trial(int(row["number"]), row["state"], cell(row["value"]), params,
                                   {name: space_distributions[name] for name in params}, user_attrs, {},
                                   cell(row["datetime_start"]), cell(row["datetime_complete"])))
    return trials


def restore_recorded_trials(study, output, space, default_study_name):
    """Add to a study with no trials the trials recorded in ``output`` for the same study name (``trials.csv``
    only for the default name: it does not say which study it holds) and search space, all of them and under
    their own numbers: the sampler seeds each trial by its number, and a restored study that renumbered its
    trials (leaving out a failed one) drew again the configuration of an earlier trial. Returns how many
    trials with a verdict were added."""
    if study.get_trials(deepcopy=False):
        return 0
    json_path, csv_path = output / "trials.json", output / "trials.csv"
    if json_path.is_file():
        path, read = json_path, lambda: trials_from_json(json_path, study.study_name)
    elif csv_path.is_file() and study.study_name == default_study_name:
        path, read = csv_path, lambda: trials_from_csv(csv_path, space)
    else:
        return 0
    try:
        trials = read()
        if [trial.number for trial in trials] != list(range(len(trials))):
            raise ValueError("its trial numbers are not 0, 1, 2, ... in order")
    except (ValueError, KeyError, SyntaxError) as error:
        raise BenchmarkError(f"{display_path(path)} does not fit this search ({error}): pass another --study_name "
                             f"to start afresh, or move that folder away.") from error
    current = distributions(space)
    for trial in trials:
        if trial.distributions and trial.distributions != current:
            raise BenchmarkError(f"{display_path(path)} holds trials of another search space ({trial.distributions} "
                                 f"against {current}): pass another --study_name to start afresh, or move that "
                                 f"folder away.")
    study.add_trials(trials)
    verdicts = sum(reached_verdict(trial) for trial in trials)
    if trials:
        study.set_user_attr("restored_from", {"path": display_path(path), "n_trials": verdicts})
    return verdicts


def tune(settings, search=Search()):
    """Run the search ``search`` describes over runs as ``settings`` describe them; return the study.
    ``search.n_trials`` counts trials with a verdict, including earlier runs'."""
    final_run = search.final_run
    if final_run and final_run not in FINAL_RUNS:  # before the search, not hours into it
        raise BenchmarkError(f"final_run must be one of {', '.join(FINAL_RUNS)} or none, not {final_run!r}")
    model = canonical_model_name(settings.model)
    settings = settings.replace(model=model)
    dataset, n_trials = settings.dataset, search.n_trials
    if final_run and not settings.overwrite:
        refuse_to_replace(settings.results_dir, dataset, f"{model}-tuned", what="the tuned row of an earlier search")
    space_path, space = load_search_space(model, settings.properties_dir, search.search_space)
    config_dict = settings.config_dict
    study = open_study(dataset, model, search.storage, search.study_name, seed=config_dict.get("seed", 2020),
                       grace_period=search.grace_period, saved_dir=settings.saved_dir)
    output = study_folder(settings.results_dir, dataset, model, study.study_name)
    logger = optuna.logging.get_logger("optuna.recbole_cllm4rec")  # RecBole's logger is set up only per trial
    output.mkdir(parents=True, exist_ok=True)
    lock_path = output / ".restore.lock"
    with open(lock_path, "w") as lock:  # workers starting together restore and queue once
        fcntl.flock(lock, fcntl.LOCK_EX)
        restored = restore_recorded_trials(study, output, space, default_study_name=f"{dataset}-{model}")
        fail_stale_trials(study)
        judged, queued = settle_cut_off_configurations(study, n_trials)
        done = sum(reached_verdict(trial) for trial in study.trials)
        remaining = max(n_trials - done, 0)
        waiting = len(unjudged_configurations(study))
    if restored:
        logger.info(f"Optuna study {study.study_name}: a new storage, {restored} trials restored from {display_path(output)}")
    if judged:
        logger.info(f"Optuna study {study.study_name}: {judged} cut-off configurations pruned on their recorded epochs")
    logger.info(f"Optuna study {study.study_name}: {done} trials finished, running {remaining} more"
                + (f", first {queued} configurations that interrupted trials left unfinished" if queued else "")
                + (f"; {waiting} cut-off configurations not queued yet (no room, or waiting for the curves that "
                   f"could judge them)" if waiting else ""))

    def objective(trial):
        trial.set_user_attr(WORKER, this_worker())
        params = suggest(trial, space)
        try:
            record = runs.run(settings.replace(config_dict={**config_dict, **params}), write=False,
                              callback_fn=pruning_callback(trial, lambda: write_trials(study, output, space_path)))
        except TRIAL_ERRORS as error:
            trial.set_user_attr("error", repr(error))
            raise
        trial.set_user_attr("valid", record["valid"])
        trial.set_user_attr("test", record["test"])
        trial.set_user_attr(RUN, {key: value for key, value in record.items() if key not in ("valid", "test")})
        return record["best_valid_score"]

    if remaining:
        try:
            study.optimize(objective, n_trials=remaining, timeout=search.timeout, catch=TRIAL_ERRORS, gc_after_trial=True,
                           callbacks=[settle_after_every_trial(n_trials, lock_path, logger),
                                      record_every_trial(output, space_path), stop_at_verdicts(n_trials)])
        except KeyboardInterrupt:
            write_trials(study, output, space_path)  # the cut-off trial as failed, with every epoch it reached
            raise
    fail_stale_trials(study)  # an interrupted run's trials are not workers still busy
    study.outputs_written = False
    if any(trial.state == optuna.trial.TrialState.RUNNING for trial in study.get_trials(deepcopy=False)):
        logger.info("Other workers are still running trials of this study: the last one to finish writes the "
                    "outputs and trains the best configuration.")
        return study
    write_outputs(study, output, space_path)
    study.outputs_written = True
    if final_run and any(trial.state == optuna.trial.TrialState.COMPLETE for trial in study.trials):
        write_tuned_row(study, settings, final_run, output, space_path, logger)
    return study


def write_tuned_row(study, settings, final_run, output, space_path, logger):
    """``<Model>-tuned``: the best trial's own run where it was recorded whole and ``final_run`` is ``reuse``
    (the same seed and config train to the same result), otherwise the best configuration trained again."""
    model = settings.model
    finished = [trial for trial in study.trials if reached_verdict(trial)]
    best = study.best_trial
    tuning = {"n_trials": len(finished), "n_distinct_configurations": len({configuration(trial.params)
                                                                           for trial in finished}),
              "study_name": study.study_name, "best_params": study.best_params, "best_trial": best.number,
              "search_space": display_path(space_path),
              **{key: value for key, value in study.user_attrs.items() if key == "restored_from"}}
    best_yaml = output / "best.yaml"
    if final_run == "reuse" and RUN in best.user_attrs:
        run = best.user_attrs[RUN]
        record = {**run, "label": f"{model}-tuned", "valid": best.user_attrs["valid"],
                  "test": best.user_attrs["test"], "config_files": [*run["config_files"], display_path(best_yaml)],
                  "tuning": {**tuning, "row_from": "the best trial's own run"},
                  "peak_memory_note": "peak of the search worker process up to the end of this trial"}
        publish_record(record, settings.results_dir, settings.properties_dir)
        logger.info(f"Optuna study {study.study_name}: {model}-tuned is trial {best.number}'s run "
                    f"(commit {run.get('git_commit')}), not trained again")
        return record
    if final_run == "reuse":
        logger.info(f"Optuna study {study.study_name}: best trial {best.number} holds no run record (an older "
                    f"search): training its configuration again for {model}-tuned")
    record = runs.run(settings.replace(config_files=[*settings.config_files, str(best_yaml)], label=f"{model}-tuned",
                                       overwrite=True),
                      extra_record={"tuning": {**tuning, "row_from": "the best configuration trained again"}})
    if not math.isclose(record["best_valid_score"], best.value, rel_tol=0, abs_tol=1e-4):
        logger.warning(f"{model}-tuned validated at {record['best_valid_score']:.4f}, its trial {best.number} at "
                       f"{best.value:.4f}: the same seed and config gave another result (another machine, or "
                       f"nondeterministic kernels)")
    return record


def configuration(params):
    """Parameters as a comparable key, floats to 12 digits: a value read back from an older ``trials.csv``
    with pandas' default parser lost its last digits and must still count as the configuration it was."""
    return tuple(sorted((name, float(f"{value:.12g}") if isinstance(value, float) else value)
                        for name, value in params.items()))


def write_outputs(study, output, space_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    write_trials(study, output, space_path)
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
