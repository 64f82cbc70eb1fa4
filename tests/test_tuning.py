"""Optuna search on the tiny dataset: SQLite storage, resume, pruning, outputs, the tuned row."""

import json

import optuna
import pytest
import yaml
from test_benchmark import properties  # noqa: F401  (fixture)

from recbole_cllm4rec.benchmark import BenchmarkError, Search, Settings, tuning

SPACE = {"learning_rate": {"type": "float", "low": 0.001, "high": 0.05, "log": True},
         "embedding_size": {"type": "categorical", "choices": [8, 16]}}


def search(data_root, properties, tmp_path, n_trials, **kwargs):  # noqa: F811
    (properties / "hyper").mkdir(exist_ok=True)
    (properties / "hyper" / "BPR.yaml").write_text(yaml.safe_dump(SPACE))
    search_keys = {key: kwargs.pop(key) for key in list(kwargs) if key in Search.__dataclass_fields__}
    return tuning.tune(Settings("BPR", "tiny", config_dict={"data_path": str(data_root), "epochs": 4},
                                properties_dir=properties, results_dir=tmp_path / "results", **kwargs),
                       Search(n_trials=n_trials, storage=f"sqlite:///{tmp_path / 'study.db'}", **search_keys))


def counting_runs(monkeypatch):
    original_run, calls = tuning.runs.run, []
    monkeypatch.setattr(tuning.runs, "run", lambda settings, **kwargs: calls.append(settings) or original_run(settings, **kwargs))
    return calls


def test_three_trials_outputs_and_tuned_row_from_the_best_trials_own_run(data_root, properties, tmp_path, monkeypatch):  # noqa: F811
    calls = counting_runs(monkeypatch)
    study = search(data_root, properties, tmp_path, 3)
    assert len(study.trials) == 3 and len(calls) == 3  # no fourth training for the tuned row
    output = tmp_path / "results" / "tiny" / "tuning" / "BPR"
    best = yaml.safe_load((output / "best.yaml").read_text())
    assert set(best) == set(SPACE) and (output / "trials.csv").read_text().count("\n") == 4
    assert "user_attrs_run" not in (output / "trials.csv").read_text().split("\n")[0]  # the record is in trials.json
    assert (output / "history.png").is_file() and (output / "importance.png").is_file()
    record = json.loads((tmp_path / "results" / "tiny" / "BPR-tuned.json").read_text())
    assert record["tuning"]["n_trials"] == 3 and record["config"]["embedding_size"] == best["embedding_size"]
    assert record["config"]["learning_rate"] == best["learning_rate"]
    assert record["tuning"]["n_distinct_configurations"] == 3 and record["tuning"]["best_trial"] == study.best_trial.number
    assert record["test"] == study.best_trial.user_attrs["test"] and record["best_valid_score"] == study.best_value
    assert record["label"] == "BPR-tuned" and record["config_files"][-1].endswith("best.yaml") and record["git_commit"]
    assert [epoch for epoch, _ in record["valid_curve"]] == sorted(study.best_trial.intermediate_values)
    assert "yes, 3 trials" in (tmp_path / "results" / "tiny.md").read_text()


def test_retrained_tuned_row_is_the_best_configuration_run_again(data_root, properties, tmp_path, monkeypatch):  # noqa: F811
    study = search(data_root, properties, tmp_path, 2, final_run=None)
    assert not (tmp_path / "results" / "tiny" / "BPR-tuned.json").exists()
    calls = counting_runs(monkeypatch)
    search(data_root, properties, tmp_path, 2, final_run="retrain")
    assert len(calls) == 1 and calls[0].label == "BPR-tuned"  # only the final run
    record = json.loads((tmp_path / "results" / "tiny" / "BPR-tuned.json").read_text())
    assert record["tuning"]["row_from"] == "the best configuration trained again"
    assert record["best_valid_score"] == study.best_value and record["test"] == study.best_trial.user_attrs["test"]


def test_best_trial_recorded_without_its_run_is_trained_again(data_root, properties, tmp_path, monkeypatch):  # noqa: F811
    output = tmp_path / "results" / "tiny" / "tuning" / "BPR"
    output.mkdir(parents=True)
    recorded_study(tmp_path).trials_dataframe().to_csv(output / "trials.csv", index=False)  # no run records
    calls = counting_runs(monkeypatch)
    search(data_root, properties, tmp_path, 2)
    assert len(calls) == 1 and calls[0].label == "BPR-tuned"
    record = json.loads((tmp_path / "results" / "tiny" / "BPR-tuned.json").read_text())
    assert record["config"]["learning_rate"] == 0.009387580144433756 and record["tuning"]["best_trial"] == 0


def test_unknown_final_run_is_refused_before_the_search(data_root, properties, tmp_path):  # noqa: F811
    with pytest.raises(BenchmarkError, match="final_run"):
        search(data_root, properties, tmp_path, 2, final_run="again")
    assert not (tmp_path / "results" / "tiny" / "tuning").exists()


def test_resume_after_interruption_runs_only_missing_trials(data_root, properties, tmp_path, monkeypatch):  # noqa: F811
    original_run, calls, seen_while_running = tuning.runs.run, [], []
    output = tmp_path / "results" / "tiny" / "tuning" / "BPR"

    def interrupted_run(*args, callback_fn, **kwargs):
        calls.append(1)

        def report_then_stop(epoch, valid_score):  # Ctrl-C during the second trial's second epoch
            callback_fn(epoch, valid_score)
            if len(calls) == 2 and epoch == 1:
                seen_while_running.append(json.loads((output / "trials.json").read_text()))  # what a kill -9 leaves
                raise KeyboardInterrupt

        return original_run(*args, callback_fn=report_then_stop, **kwargs)

    monkeypatch.setattr(tuning.runs, "run", interrupted_run)
    with pytest.raises(KeyboardInterrupt):
        search(data_root, properties, tmp_path, 3, final_run=False)
    running = seen_while_running[0]["trials"][1]
    assert running["state"] == "RUNNING" and list(running["intermediate_values"]) == ["0", "1"]  # written every epoch
    recorded = json.loads((output / "trials.json").read_text())
    assert [trial["state"] for trial in recorded["trials"]] == ["COMPLETE", "FAIL"]
    assert list(recorded["trials"][1]["intermediate_values"]) == ["0", "1"]  # the epochs the cut-off trial reached
    monkeypatch.setattr(tuning.runs, "run", original_run)
    study = search(data_root, properties, tmp_path, 3, final_run=False)
    verdicts = [trial for trial in study.trials if tuning.reached_verdict(trial)]
    assert len(verdicts) == 3 and len(study.trials) == 4  # the interrupted one is kept, marked, and re-run
    assert study.trials[0].state == optuna.trial.TrialState.COMPLETE  # the finished trial was not repeated


def test_bad_trial_is_pruned_and_failures_recorded(data_root, properties, tmp_path):  # noqa: F811
    study = tuning.open_study("tiny", "BPR", f"sqlite:///{tmp_path / 'study.db'}")
    for learning_rate in (0.05, 0.04, 0.03):  # three configurations: one run three times would be one curve
        study.enqueue_trial({"learning_rate": learning_rate, "embedding_size": 16})
    study.enqueue_trial({"learning_rate": 0.001, "embedding_size": 8})  # learns nothing in 4 epochs
    search(data_root, properties, tmp_path, 4, final_run=False)
    study = tuning.open_study("tiny", "BPR", f"sqlite:///{tmp_path / 'study.db'}")
    assert study.trials[3].state == optuna.trial.TrialState.PRUNED


def test_workers_sharing_a_study_draw_their_own_configurations(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    first, second = (tuning.open_study("tiny", "BPR", storage) for _ in range(2))  # two workers, one seed
    drawn = [tuning.suggest(study.ask(), SPACE) for study in (first, second)]
    assert drawn[0] != drawn[1]
    again = tuning.open_study("tiny", "BPR", f"sqlite:///{tmp_path / 'again.db'}")
    assert tuning.suggest(again.ask(), SPACE) == drawn[0]  # one worker's search is reproducible


def test_tuned_cell_names_repeated_configurations():
    from recbole_cllm4rec.benchmark.tables import tuning_summary

    assert tuning_summary(None) == "no (defaults)"
    assert tuning_summary({"n_trials": 22}) == "yes, 22 trials"  # records from before the count
    assert tuning_summary({"n_trials": 22, "n_distinct_configurations": 14}) == "yes, 22 trials (14 distinct)"


def test_missing_search_space_names_the_file(data_root, properties, tmp_path):  # noqa: F811
    with pytest.raises(BenchmarkError, match=r"No search space for Pop: write .*hyper/Pop.yaml"):
        tuning.tune(Settings("Pop", "tiny", properties_dir=properties, results_dir=tmp_path), Search(n_trials=1))


def test_explicit_search_space_is_the_one_searched_and_recorded(data_root, properties, tmp_path):  # noqa: F811
    narrow = tmp_path / "BPR-narrow.yaml"
    narrow.write_text(yaml.safe_dump({"learning_rate": {"type": "float", "low": 0.01, "high": 0.02}}))
    study = search(data_root, properties, tmp_path, 2, search_space=str(narrow))
    assert all(set(trial.params) == {"learning_rate"} and 0.01 <= trial.params["learning_rate"] <= 0.02
               for trial in study.trials)
    record = json.loads((tmp_path / "results" / "tiny" / "BPR-tuned.json").read_text())
    assert record["tuning"]["search_space"] == str(narrow.resolve())
    with pytest.raises(BenchmarkError, match=r"Search space file .*missing.yaml does not exist"):
        tuning.tune(Settings("BPR", "tiny", properties_dir=properties),
                    Search(n_trials=1, search_space=str(tmp_path / "missing.yaml")))


def test_worker_leaves_outputs_to_the_last_one_still_running(data_root, properties, tmp_path):  # noqa: F811
    study = tuning.open_study("tiny", "BPR", f"sqlite:///{tmp_path / 'study.db'}")
    other_worker = study.ask()  # a trial another process is still running
    study = search(data_root, properties, tmp_path, 2)
    assert len(study.trials) == 2  # one of its own: with the other worker's, the study has its two
    output = tmp_path / "results" / "tiny" / "tuning" / "BPR"
    assert not (output / "best.yaml").exists() and not (tmp_path / "results" / "tiny" / "BPR-tuned.json").exists()
    study.tell(other_worker, 0.0)
    study = search(data_root, properties, tmp_path, 2)  # the study has its trials: this worker only finishes up
    assert len(study.trials) == 2
    assert (output / "best.yaml").is_file() and (tmp_path / "results" / "tiny" / "BPR-tuned.json").is_file()


def test_new_storage_goes_on_from_the_recorded_trials(data_root, properties, tmp_path, monkeypatch):  # noqa: F811
    search(data_root, properties, tmp_path, 2, final_run=False)
    output = tmp_path / "results" / "tiny" / "tuning" / "BPR"
    recorded = json.loads((output / "trials.json").read_text())
    assert recorded["study_name"] == "tiny-BPR" and [trial["state"] for trial in recorded["trials"]] == ["COMPLETE"] * 2
    assert all(len(trial["intermediate_values"]) >= 1 for trial in recorded["trials"])
    (tmp_path / "study.db").rename(tmp_path / "lost.db")  # a fresh checkout: the SQLite study is not in git
    original_run, calls = tuning.runs.run, []
    monkeypatch.setattr(tuning.runs, "run", lambda *args, **kwargs: calls.append(1) or original_run(*args, **kwargs))
    study = search(data_root, properties, tmp_path, 3, final_run=False)
    assert len(study.trials) == 3 and len(calls) == 1  # two restored, one run
    for trial, before in zip(study.trials, recorded["trials"]):
        assert trial.params == before["params"] and trial.value == before["value"]
        assert trial.intermediate_values == {int(step): value for step, value in before["intermediate_values"].items()}
        assert trial.user_attrs["test"] == before["user_attrs"]["test"]
    assert study.user_attrs["restored_from"]["n_trials"] == 2
    assert len(json.loads((output / "trials.json").read_text())["trials"]) == 3  # written after every trial


def recorded_study(tmp_path, name="tiny-BPR"):
    study = optuna.create_study(study_name=name, storage=f"sqlite:///{tmp_path / 'old.db'}", direction="maximize")
    space = tuning.distributions(SPACE)
    study.add_trial(optuna.trial.create_trial(params={"learning_rate": 0.009387580144433756, "embedding_size": 16},
                                              distributions=space, value=0.3, intermediate_values={0: 0.2, 1: 0.3},
                                              user_attrs={"test": {"ndcg@10": 0.25}}))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, params={"learning_rate": 0.002,
                                              "embedding_size": 8}, distributions=space, intermediate_values={0: 0.01}))
    failed = study.ask()
    failed.suggest_float("learning_rate", 0.001, 0.05, log=True)
    failed.suggest_categorical("embedding_size", [8, 16])
    study.tell(failed, state=optuna.trial.TrialState.FAIL)  # killed, no error of its own: no verdict
    return study


def test_older_trials_csv_is_restored_without_per_epoch_scores(data_root, properties, tmp_path):  # noqa: F811
    output = tmp_path / "results" / "tiny" / "tuning" / "BPR"
    output.mkdir(parents=True)
    recorded_study(tmp_path).trials_dataframe().to_csv(output / "trials.csv", index=False)
    study = search(data_root, properties, tmp_path, 2, final_run=False)  # two verdicts recorded: nothing to run
    assert [trial.state.name for trial in study.trials] == ["COMPLETE", "PRUNED", "FAIL"]
    assert study.trials[0].params == {"learning_rate": 0.009387580144433756, "embedding_size": 16}  # every digit
    assert study.trials[0].value == 0.3
    assert study.trials[0].user_attrs["test"] == {"ndcg@10": 0.25} and study.trials[0].intermediate_values == {}
    assert (output / "trials.json").is_file()  # from now on the full record


def test_recorded_trials_of_another_space_or_study_are_not_mixed_in(data_root, properties, tmp_path):  # noqa: F811
    output = tmp_path / "results" / "tiny" / "tuning" / "BPR"
    tuning.write_trials(recorded_study(tmp_path, name="tiny-BPR"), output, tmp_path / "space.yaml")
    narrow = tmp_path / "narrow.yaml"
    narrow.write_text(yaml.safe_dump({**SPACE, "learning_rate": {"type": "float", "low": 0.001, "high": 0.02}}))
    with pytest.raises(BenchmarkError, match="another search space.*--study_name"):
        search(data_root, properties, tmp_path, 2, final_run=False, search_space=str(narrow))
    before = (output / "trials.json").read_text()
    study = search(data_root, properties, tmp_path, 1, final_run=False, study_name="tiny-BPR-afresh")
    assert len(study.trials) == 1 and "restored_from" not in study.user_attrs
    assert (output / "trials.json").read_text() == before  # the first study's record is untouched
    own = json.loads((output.parent / "BPR-tiny-BPR-afresh" / "trials.json").read_text())
    assert own["study_name"] == "tiny-BPR-afresh" and len(own["trials"]) == 1


def test_restored_trials_keep_their_numbers_and_cut_off_configurations_run_again(data_root, properties, tmp_path):  # noqa: F811
    output = tmp_path / "results" / "tiny" / "tuning" / "BPR"
    recorded = recorded_study(tmp_path)
    running = recorded.ask()  # recorded while another worker was still running it
    running.suggest_float("learning_rate", 0.001, 0.05, log=True)
    running.suggest_categorical("embedding_size", [8, 16])
    tuning.write_trials(recorded, output, tmp_path / "space.yaml")
    study = search(data_root, properties, tmp_path, 4, final_run=False)
    assert [trial.number for trial in study.trials] == [0, 1, 2, 3, 4, 5]  # the failed and the running one kept
    assert [trial.state.name for trial in study.trials] == ["COMPLETE", "PRUNED", "FAIL", "FAIL", "COMPLETE", "COMPLETE"]
    assert [trial.params for trial in study.trials[:4]] == [trial.params for trial in recorded.trials]
    # both cut off, neither judged: their configurations are the next two trials, oldest first
    assert [trial.params for trial in study.trials[4:]] == [trial.params for trial in recorded.trials[2:4]]
    assert [trial.user_attrs["repeats_interrupted_trial"] for trial in study.trials[4:]] == [2, 3]
    assert tuning.queue_interrupted_configurations(study, 5) == 0  # judged now


def test_only_as_many_cut_off_configurations_are_queued_as_trials_remain(tmp_path):
    study = recorded_study(tmp_path)  # trial 2 was cut off
    for error in (None, "NaN loss", None):  # trials 3 and 5 cut off, trial 4 failed by its own error
        trial = study.ask()
        trial.suggest_float("learning_rate", 0.001, 0.05, log=True)
        trial.suggest_categorical("embedding_size", [8, 16])
        if error:
            trial.set_user_attr("error", error)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    assert tuning.queue_interrupted_configurations(study, 2) == 2
    waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
    assert [trial.system_attrs["fixed_params"] for trial in waiting] == [study.trials[2].params, study.trials[3].params]
    assert tuning.queue_interrupted_configurations(study, 5) == 1  # trial 5's: not the queued two again, not trial 4's
    waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
    assert waiting[-1].system_attrs["fixed_params"] == study.trials[5].params


def configuration_number(n):
    return {"learning_rate": 0.001 * (n + 1), "embedding_size": 8}


def test_pruning_waits_for_three_complete_curves_at_the_epoch():
    pruner = tuning.CurveMedianPruner(n_startup_trials=3, n_warmup_steps=2)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    space = tuning.distributions(SPACE)

    def finished(curve, **kwargs):
        study.add_trial(optuna.trial.create_trial(params=configuration_number(len(study.trials)),
                                                  distributions=space, intermediate_values=curve, **kwargs))

    for value in (0.5, 0.6, 0.7):  # restored from trials.csv: complete, but no curves
        finished({}, value=value)
    finished({step: 0.5 for step in range(6)}, value=0.5)
    trial = study.ask()
    for step in range(4):
        trial.report(0.1, step)
    assert not trial.should_prune()  # one curve is no median
    finished({step: 0.4 for step in range(6)}, value=0.4)
    finished({step: 0.3 for step in range(3)}, value=0.3)  # stopped early: no score at epoch 3
    assert not trial.should_prune()
    finished({step: 0.2 for step in range(6)}, value=0.2)
    assert trial.should_prune()  # below the median of three curves at epoch 3


def test_interrupted_curves_count_for_the_epochs_they_reached_pruned_and_errored_ones_do_not():
    study = optuna.create_study(direction="maximize", pruner=tuning.CurveMedianPruner(n_startup_trials=3, n_warmup_steps=2))
    space = tuning.distributions(SPACE)

    def finished(curve, state, value=None, user_attrs=None):
        study.add_trial(optuna.trial.create_trial(params=configuration_number(len(study.trials)), distributions=space,
                                                  intermediate_values=curve, state=state, value=value,
                                                  user_attrs=user_attrs or {}))

    finished({step: 0.5 for step in range(6)}, optuna.trial.TrialState.COMPLETE, value=0.5)
    finished({step: 0.9 for step in range(6)}, optuna.trial.TrialState.PRUNED)  # stopped for its scores
    finished({step: 0.9 for step in range(6)}, optuna.trial.TrialState.FAIL, user_attrs={"error": "NaN loss"})
    trial = study.ask()
    for step in range(4):
        trial.report(0.3, step)
    assert not trial.should_prune()  # one usable curve
    finished({step: 0.4 for step in range(3)}, optuna.trial.TrialState.FAIL)  # cut off before epoch 3
    assert not trial.should_prune()
    finished({step: 0.4 for step in range(5)}, optuna.trial.TrialState.FAIL)  # cut off after epoch 4
    finished({step: 0.2 for step in range(6)}, optuna.trial.TrialState.FAIL)
    assert trial.should_prune()  # 0.3 below the median of 0.5, 0.4 and 0.2 at epoch 3
    assert tuning.interrupted(study.trials[-1]) and not tuning.interrupted(study.trials[2])
    assert not tuning.reached_verdict(study.trials[-1]) and tuning.reached_verdict(study.trials[2])


def test_a_configuration_run_again_is_one_curve_and_never_its_own_comparator():
    study = optuna.create_study(direction="maximize", pruner=tuning.CurveMedianPruner(n_startup_trials=3, n_warmup_steps=2))
    space = tuning.distributions(SPACE)

    def finished(params, curve, state=optuna.trial.TrialState.COMPLETE):
        study.add_trial(optuna.trial.create_trial(params=params, distributions=space, intermediate_values=curve,
                                                  state=state, value=curve[5] if state.name == "COMPLETE" else None))

    first, second, third = (configuration_number(n) for n in range(3))
    finished(first, {step: 0.5 for step in range(6)})
    finished(first, {step: 0.5 for step in range(6)}, optuna.trial.TrialState.FAIL)  # cut off when run again
    finished(second, {step: 0.4 for step in range(6)})
    study.enqueue_trial(configuration_number(5))
    trial = study.ask()
    tuning.suggest(trial, SPACE)
    for step in range(4):
        trial.report(0.3, step)
    assert not trial.should_prune()  # two configurations, however many runs
    finished(third, {step: 0.2 for step in range(6)})
    assert trial.should_prune()  # 0.3 below the median of 0.5, 0.4 and 0.2
    study.enqueue_trial(second)
    rerun = study.ask()
    tuning.suggest(rerun, SPACE)
    for step in range(4):
        rerun.report(0.35, step)
    assert not rerun.should_prune()  # its own earlier 0.4 is not a comparator: 0.5 and 0.2 are two


def recorded_curves(tmp_path, output, runs):
    """A trials.json holding ``(configuration number, curve, state)`` runs."""
    recorded = optuna.create_study(study_name="tiny-BPR", storage=f"sqlite:///{tmp_path / 'old.db'}", direction="maximize")
    space = tuning.distributions(SPACE)
    for n, curve, state in runs:
        recorded.add_trial(optuna.trial.create_trial(params=configuration_number(n), distributions=space, state=state,
                                                     value=curve[max(curve)] if state.name == "COMPLETE" else None,
                                                     intermediate_values=curve))
    tuning.write_trials(recorded, output, tmp_path / "space.yaml")


def test_cut_off_configuration_below_the_median_is_pruned_on_its_recorded_curve(data_root, properties, tmp_path):  # noqa: F811
    output = tmp_path / "results" / "tiny" / "tuning" / "BPR"
    complete, cut_off = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL
    recorded_curves(tmp_path, output, [
        *((n, {step: score for step in range(6)}, complete) for n, score in enumerate((0.5, 0.4, 0.3))),
        (3, {0: 0.1, 1: 0.2, 2: 0.2, 3: 0.35}, cut_off),  # below 0.4 from epoch 2 on
        (4, {step: 0.45 for step in range(4)}, cut_off),  # above it: still unjudged
        (5, {0: 0.1, 1: 0.1}, cut_off)])  # cut off before the pruner looks (epoch 2)
    study = search(data_root, properties, tmp_path, 5, final_run=False)
    judged, run = study.trials[6:]  # three complete and one judged: one trial left to run
    assert judged.state == optuna.trial.TrialState.PRUNED and judged.params == configuration_number(3)
    assert judged.intermediate_values == {0: 0.1, 1: 0.2, 2: 0.2} and judged.user_attrs == {"pruned_on_curve_of": 3}
    assert run.params == configuration_number(4) and run.user_attrs["repeats_interrupted_trial"] == 4
    assert [trial.params for trial in tuning.unjudged_configurations(study)] == [configuration_number(5)]


def test_cut_off_configuration_waits_for_the_curves_that_judge_it_then_runs_again(data_root, properties, tmp_path):  # noqa: F811
    output = tmp_path / "results" / "tiny" / "tuning" / "BPR"
    complete, cut_off = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL
    recorded_curves(tmp_path, output, [(0, {step: 0.0 for step in range(4)}, complete),
                                       (1, {step: 0.0 for step in range(4)}, complete),
                                       (2, {step: 1.0 for step in range(4)}, cut_off)])  # two comparators: unjudged
    study = search(data_root, properties, tmp_path, 5, final_run=False)
    new, rerun, last = study.trials[3:]
    assert configuration_number(2) not in (new.params, last.params)  # a new configuration's curve came first
    assert new.state == optuna.trial.TrialState.COMPLETE
    assert rerun.params == configuration_number(2) and rerun.user_attrs["repeats_interrupted_trial"] == 2
    assert tuning.unjudged_configurations(study) == []


def test_cut_off_configurations_run_again_when_no_trials_are_left_for_new_ones(tmp_path):
    study = optuna.create_study(direction="maximize", pruner=tuning.CurveMedianPruner(n_startup_trials=3, n_warmup_steps=2))
    space = tuning.distributions(SPACE)
    for n, state in enumerate((optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL,
                               optuna.trial.TrialState.FAIL)):
        study.add_trial(optuna.trial.create_trial(params=configuration_number(n), distributions=space, state=state,
                                                  value=0.5 if state.name == "COMPLETE" else None,
                                                  intermediate_values={step: 0.5 for step in range(4)}))
    assert all(study.pruner.waits_for_comparators(study, trial) for trial in study.trials[1:])
    assert tuning.settle_cut_off_configurations(study, 5) == (0, 0)  # three trials to go: room for new curves
    assert tuning.settle_cut_off_configurations(study, 3) == (0, 2)  # two to go: both cut-off ones run again
    waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
    assert [trial.system_attrs["fixed_params"] for trial in waiting] == [configuration_number(1), configuration_number(2)]


def test_a_restart_right_after_the_only_worker_was_killed_finishes_the_search(data_root, properties, tmp_path):  # noqa: F811
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a worker killed mid-trial: its heartbeat is still fresh, its process is gone
    study = tuning.open_study("tiny", "BPR", f"sqlite:///{tmp_path / 'study.db'}")
    orphan = study.ask()
    orphan.set_user_attr(tuning.WORKER, {"host": tuning.this_worker()["host"], "pid": dead.pid})
    study = search(data_root, properties, tmp_path, 2)
    assert study.outputs_written and orphan.number in {trial.number for trial in study.trials
                                                       if trial.state == optuna.trial.TrialState.FAIL}
    assert (tmp_path / "results" / "tiny" / "tuning" / "BPR" / "best.yaml").is_file()
    assert (tmp_path / "results" / "tiny" / "BPR-tuned.json").is_file()
