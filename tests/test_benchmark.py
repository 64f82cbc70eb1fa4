"""run_benchmark.py end to end on the tiny dataset, and its error messages."""

import csv
import json
import subprocess
import sys

import pytest
import yaml
from conftest import PROJECT_ROOT

from recbole_cllm4rec import benchmark
from recbole_cllm4rec.benchmark import BenchmarkError, Settings, cpu_memory, tables


@pytest.fixture
def properties(tmp_path):
    """The project's properties with a tiny-friendly protocol (top-k below the tiny item count)."""
    folder = tmp_path / "properties"
    (folder / "dataset").mkdir(parents=True)
    (folder / "model").mkdir()
    protocol = yaml.safe_load((PROJECT_ROOT / "properties" / "overall.yaml").read_text())
    protocol.update({"topk": [5, 10, 20], "valid_metric": "NDCG@10", "checkpoint_dir": str(tmp_path / "saved")})
    (folder / "overall.yaml").write_text(yaml.safe_dump(protocol))
    (folder / "dataset" / "tiny.yaml").write_text(yaml.safe_dump({"load_col": {"inter": ["user_id", "item_id", "timestamp"]}}))
    for model in ("SASRec", "BERT4Rec"):
        (folder / "model" / f"{model}.yaml").write_text((PROJECT_ROOT / "properties" / "model" / f"{model}.yaml").read_text())
    return folder


def run_tiny(model, data_root, properties, tmp_path, write=True, **settings):
    return benchmark.run(Settings(model, "tiny", properties_dir=properties, results_dir=tmp_path / "results",
                                  config_dict={"data_path": str(data_root), "epochs": 2}, **settings), write=write)


def test_two_baselines_end_to_end(data_root, properties, tmp_path):
    pop = run_tiny("Pop", data_root, properties, tmp_path)
    bpr = run_tiny("bpr", data_root, properties, tmp_path)  # names are case-insensitive, as in RecBole's files
    assert bpr["model"] == "BPR"
    results = tmp_path / "results"
    for name in ("Pop", "BPR"):
        record = json.loads((results / "tiny" / f"{name}.json").read_text())
        assert set(record["test"]) >= {"recall@20", "ndcg@10", "hit@5", "mrr@10", "precision@20"}
        assert record["seed"] == 2020 and record["config"]["eval_args"]["order"] == "RO"
        assert record["wall_time_s"] > 0 and record["peak_memory_gib"] > 0 and record["machine"]["cpu_count"]
        assert record["machine"]["precision"] == "none"  # baselines run fp32; CLLM4Rec records its resolved setting
        assert "git_commit" in record and record["valid_metric"] == "ndcg@10"
    table = (results / "tiny.md").read_text()
    assert "**Protocol**" in table.split("|")[0] and "| Pop |" in table and "| BPR |" in table
    rows = list(csv.reader(open(results / "tiny.csv")))
    assert rows[0][0] == "model" and {row[0] for row in rows[1:]} == {"Pop", "BPR"}
    assert (results / "tiny.png").read_bytes()[:4] == b"\x89PNG"
    assert pop["test"] == run_tiny("Pop", data_root, properties, tmp_path, write=False)["test"]  # reproducible


def test_a_label_with_a_record_is_refused_before_any_work_unless_overwrite(data_root, properties, tmp_path):
    first = run_tiny("Pop", data_root, properties, tmp_path, overwrite=False)
    path = tmp_path / "results" / "tiny" / "Pop.json"
    before = path.read_text()
    with pytest.raises(BenchmarkError, match="already holds a record for 'Pop'.*--label.*--overwrite"):
        run_tiny("Pop", data_root, properties, tmp_path, overwrite=False)
    assert path.read_text() == before
    other = run_tiny("Pop", data_root, properties, tmp_path, overwrite=False, label="Pop-again")
    assert other["label"] == "Pop-again" and path.read_text() == before
    replaced = run_tiny("Pop", data_root, properties, tmp_path, overwrite=True)
    assert replaced["test"] == first["test"] and json.loads(path.read_text())["finished_at"] == replaced["finished_at"]


def test_command_line_refuses_to_replace_a_committed_row():
    committed = PROJECT_ROOT / "results" / "amazon-beauty" / "Pop.json"
    before = committed.read_text()
    completed = subprocess.run([sys.executable, str(PROJECT_ROOT / "run_benchmark.py"), "--model=Pop",
                                "--dataset=amazon-beauty", "--label=Pop"], capture_output=True, text=True,
                               cwd=PROJECT_ROOT)
    assert completed.returncode == 2 and "--overwrite" in completed.stderr and "Traceback" not in completed.stderr
    assert committed.read_text() == before


@pytest.mark.parametrize("model, arguments, message", [
    ("CLLM4Rec", ["--llm_num_layer=1"], "Unknown setting 'llm_num_layer' for CLLM4Rec; did you mean 'llm_num_layers'?"),
    ("CLLM4Rec", ["--mask_ration=0.5"], "did you mean 'mask_ratio'?"),
    ("BPR", ["--llm_num_layers=1"], "Unknown setting 'llm_num_layers' for BPR"),
    ("CLLM4Rec", ["--mask_ratio=1.5"], "mask_ratio=1.5 is not allowed: a number > 0 and < 1"),
    ("CLLM4Rec", ["--mask_ratio=0"], "mask_ratio=0 is not allowed"),
    ("CLLM4Rec", ["--epochs=0"], "epochs=0 is not allowed: an integer >= 1"),
    ("CLLM4Rec", ["--user_state=first"], "user_state='first' is not allowed: one of last, mean, history_mean"),
    ("CLLM4Rec", ["--profile=fast"], "profile must be one of"),
])
def test_unknown_keys_and_impossible_values_are_refused_before_any_work(data_root, properties, tmp_path, model,
                                                                         arguments, message):
    with pytest.raises(BenchmarkError, match=message.replace("(", r"\(").replace("?", r"\?")):
        run_tiny(model, data_root, properties, tmp_path, recbole_arguments=arguments)
    assert not (tmp_path / "results").exists()


def test_a_malformed_yaml_is_named_with_its_line(data_root, properties, tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("epochs: 3\nlearning_rate: [0.1\n")
    with pytest.raises(BenchmarkError, match=r"broken.yaml, line \d+: not valid yaml"):
        run_tiny("BPR", data_root, properties, tmp_path, config_files=[str(broken)])


def test_command_line_errors_are_one_line_with_exit_code_2():
    for arguments in (["--model=CLLM4Rec", "--dataset=ml-100k", "--mask_ration=0.5"],
                      ["--model=CLLM4Rec", "--dataset=ml-100k", "--nproc=2"]):
        completed = subprocess.run([sys.executable, str(PROJECT_ROOT / "run_benchmark.py"), *arguments],
                                   capture_output=True, text=True, cwd=PROJECT_ROOT)
        errors = [line for line in completed.stderr.splitlines() if line.startswith("error:")]
        assert completed.returncode == 2 and len(errors) == 1 and "Traceback" not in completed.stderr, completed.stderr


def test_every_record_keeps_per_user_metrics_that_average_to_its_test_metrics(data_root, properties, tmp_path):
    from recbole_cllm4rec.benchmark.per_user import read_per_user

    for model in ("BPR", "SASRec"):
        record = run_tiny(model, data_root, properties, tmp_path)
        users = read_per_user(tmp_path / "results" / "tiny" / record["per_user_file"])
        assert len(users) == 40  # every tiny user is tested
        for metric in ("recall@20", "ndcg@10"):
            mean = sum(user[metric] for user in users.values()) / len(users)
            assert round(mean, 4) == pytest.approx(record["test"][metric], abs=1.5e-4), (model, metric)
        for user in users.values():
            assert user["head_hits@20"] + user["tail_hits@20"] == round(user["recall@20"] * user["n_test"])
            assert user["n_train"] > 0


def test_cpu_keep_freed_memory_applies_to_any_model_that_asks(data_root, properties, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(cpu_memory, "keep_freed_memory", lambda: calls.append("kept"))
    run_tiny("Pop", data_root, properties, tmp_path, write=False)
    assert calls == []  # off unless the model's file or the command line asks (SASRec's does)
    run_tiny("Pop", data_root, properties, tmp_path, write=False, recbole_arguments=["--cpu_keep_freed_memory=True"])
    assert calls == ["kept"]
    run_tiny("SASRec", data_root, properties, tmp_path, write=False, recbole_arguments=["--cpu_keep_freed_memory=False"])
    assert calls == ["kept"]


def test_machine_label_names_bf16_runs():
    cpu = {"machine": {"torch_threads": 1, "precision": "bf16"}}
    assert tables.machine_label(cpu) == "CPU, 1 thread, bf16"
    assert tables.machine_label({"machine": {"torch_threads": 2, "precision": "none"}}) == "CPU, 2 threads"
    assert tables.machine_label({"machine": {"gpu": "NVIDIA H100", "precision": "bf16"}}) == "NVIDIA H100, bf16"


def test_sequential_model_uses_the_same_split(data_root, properties, tmp_path):
    record = run_tiny("SASRec", data_root, properties, tmp_path)
    assert 0 <= record["test"]["recall@10"] <= 1


def test_untrained_models_are_built_as_a_run_seeds_them(data_root, properties):
    import torch

    def untrained(model):
        config, _ = benchmark.protocol_config(Settings(model, "tiny", properties_dir=properties,
                                                       config_dict={"data_path": str(data_root)}))
        return benchmark.build_untrained(config)

    first = untrained("SASRec")
    torch.rand(1000)  # whatever ran before, the next build starts from the same seed
    second = untrained("SASRec")
    assert first.user_sequences and first.test_data is not None
    for (name, weight), (_, again) in zip(first.model.state_dict().items(), second.model.state_dict().items()):
        assert torch.equal(weight, again), name
    assert untrained("BPR").user_sequences is None


def test_unknown_model_lists_known_ones(data_root, properties, tmp_path):
    with pytest.raises(BenchmarkError, match=r"Unknown model 'NoSuchRec'. Known models: .*CLLM4Rec.*MultiVAE"):
        run_tiny("NoSuchRec", data_root, properties, tmp_path)


def test_topk_longer_than_the_catalogue_is_refused_before_training(data_root, properties, tmp_path):
    with pytest.raises(BenchmarkError, match=r"topk \[40\] exceeds the 24 items of dataset 'tiny'"):
        benchmark.run(Settings("Pop", "tiny", properties_dir=properties, results_dir=tmp_path / "r",
                               config_dict={"data_path": str(data_root), "topk": [5, 40]}))
    assert not (tmp_path / "r").exists()


def test_unknown_dataset_lists_available(data_root, properties, tmp_path):
    with pytest.raises(BenchmarkError, match=r"Unknown dataset 'nowhere': looked for .*nowhere/nowhere.inter. Available: .*tiny"):
        benchmark.run(Settings("Pop", "nowhere", properties_dir=properties, results_dir=tmp_path / "r",
                               config_dict={"data_path": str(data_root)}))


def test_missing_data_names_where_it_looked(tmp_path, properties):
    (properties / "dataset" / "ghost.yaml").write_text("load_col: {inter: [user_id, item_id]}\n")
    with pytest.raises(BenchmarkError, match=r"looked for .*ghost/ghost.inter.*scripts/setup.sh"):
        benchmark.run(Settings("Pop", "ghost", properties_dir=properties, results_dir=tmp_path / "r",
                               config_dict={"data_path": str(tmp_path / "empty")}))


def test_missing_config_file_is_reported(data_root, properties, tmp_path):
    with pytest.raises(BenchmarkError, match="Config file not found: nope.yaml"):
        run_tiny("Pop", data_root, properties, tmp_path, config_files=["nope.yaml"])


def test_command_line_reports_errors_cleanly():
    completed = subprocess.run([sys.executable, str(PROJECT_ROOT / "run_benchmark.py"), "--model=NoSuchRec",
                                "--dataset=amazon-beauty"], capture_output=True, text=True, cwd=PROJECT_ROOT)
    assert completed.returncode == 2 and "error: Unknown model 'NoSuchRec'" in completed.stderr


def test_cllm4rec_end_to_end_through_the_runner(data_root, properties, tmp_path, tiny_llama):
    from conftest import cllm4rec_config

    settings = cllm4rec_config(data_root, tmp_path, tiny_llama, epochs=2, pretrain_rounds=1)
    settings.pop("topk"), settings.pop("valid_metric"), settings.pop("metrics")  # the protocol file decides these
    record = benchmark.run(Settings("cllm4rec", "tiny", properties_dir=properties, results_dir=tmp_path / "results",
                                    config_dict=settings))
    assert record["model"] == "CLLM4Rec" and record["config"]["llm_path"] == tiny_llama
    assert "| CLLM4Rec |" in (tmp_path / "results" / "tiny.md").read_text()


def test_main_table_holds_baselines_and_cllm4rec_rows_and_everything_else_goes_to_variants(tmp_path):
    properties = tmp_path / "properties"
    (properties / "dataset").mkdir(parents=True)
    protocol = yaml.safe_load((PROJECT_ROOT / "properties" / "overall.yaml").read_text())
    (properties / "overall.yaml").write_text(yaml.safe_dump(protocol))
    folder = tmp_path / "results" / "toy"
    folder.mkdir(parents=True)
    seed = protocol["seed"]
    rows = [("Pop", "Pop", seed, 0.10), ("EASE", "EASE", seed, 0.12), ("EASE-tuned", "EASE", seed, 0.13),
            ("EASE-tuned-seed-2021", "EASE", seed + 1, 0.15), ("EASE-tuned-seed-2022", "EASE", seed + 2, 0.14),
            ("CLLM4Rec", "CLLM4Rec", seed, 0.11), ("CLLM4Rec-no-transformer", "CLLM4Rec", seed, 0.115),
            ("CLLM4Rec-lr-1e-2", "CLLM4Rec", seed, 0.30), ("CLLM4Rec-seed-7", "CLLM4Rec", 7, 0.40)]
    for label, model, run_seed, recall in rows:
        test = {"recall@20": recall, "recall@40": recall + 0.05, "ndcg@100": recall / 2}
        (folder / f"{label}.json").write_text(json.dumps({
            "label": label, "model": model, "seed": run_seed, "test": test, "valid_metric": "ndcg@100",
            "best_valid_score": 0.05, "config_files": [], "wall_time_s": 1.0, "peak_memory_gib": 0.1,
            "tuning": {"n_trials": 20} if "tuned" in label else None,
            "git_commit": "0123456789abcdef" + ("-dirty" if label == "Pop" else ""), "machine": {"torch_threads": 1}}))
    benchmark.rebuild_tables("toy", tmp_path / "results", properties)
    table = (tmp_path / "results" / "toy.md").read_text()
    headline = table.split("## Headline")[1].split("## Over seeds")[0]
    assert "| EASE (tuned, 20 trials) | **0.1300** |" in headline  # the best row of the protocol's seed
    assert "| CLLM4Rec, no transformer blocks (control) | 0.1150 |" in headline and "| Pop | 0.1000 |" in headline
    assert "lr-1e-2" not in table and "seed-7" not in table
    over_seeds = table.split("## Over seeds")[1].split("## All test metrics")[0]
    assert f"| EASE (tuned, 20 trials) | {seed}, {seed + 1}, {seed + 2} | 0.1400 ± 0.0100 |" in over_seeds
    assert "`0123456789ab-dirty` |" in table and "`0123456789ab` |" in table  # Pop ran from uncommitted changes
    variants = (tmp_path / "results" / "toy-variants.md").read_text()
    assert "| CLLM4Rec-lr-1e-2 | 2020 | 0.3000 |" in variants and "| CLLM4Rec-seed-7 | 7 | 0.4000 |" in variants
    assert "| EASE" not in variants.split("## Provenance")[0]
    rows = list(csv.reader(open(tmp_path / "results" / "toy.csv")))
    assert rows[0][-2:] == ["seed", "table"] and ("CLLM4Rec-lr-1e-2", "2020", "variants") in {
        (row[0], row[-2], row[-1]) for row in rows[1:]}
    assert (tmp_path / "results" / "toy.png").read_bytes()[:4] == b"\x89PNG"


def test_readme_tables_match_the_committed_records():
    """Every number in the README's results tables and first-screen table is the test metric of the row it names."""
    readme = (PROJECT_ROOT / "README.md").read_text()
    method_rows = {"**CLLM4Rec**": "CLLM4Rec", "CLLM4Rec, no transformer blocks (control)": "CLLM4Rec-no-transformer",
                   "CLLM4Rec, randomly initialised backbone (control)": "CLLM4Rec-random-init"}

    def matches(dataset, label, cell):
        record = json.loads((PROJECT_ROOT / "results" / dataset / f"{label}.json").read_text())
        assert [float(value) for value in cell.split(" (")[0].split(" / ")] == [
            round(record["test"][metric], 4) for metric in benchmark.HEADLINE_METRICS], (dataset, label)
        if label.endswith("-tuned"):
            assert f"({record['tuning']['n_trials']} trials" in cell, label

    checked = 0
    for dataset in ("amazon-beauty", "ml-100k"):
        section = readme.split(f"### {dataset}", 1)[1].split("\n\n")
        table = next(block for block in section if block.startswith("| model | RecBole defaults | tuned (Optuna) |"))
        for line in table.splitlines()[2:]:
            name, defaults, tuned = (cell.strip() for cell in line.strip("|").split("|"))
            label = method_rows.get(name, name)
            for row, cell in ((label, defaults), (f"{label}-tuned", tuned)):
                if cell[:1].isdigit():
                    matches(dataset, row, cell)
                    checked += 1
    first = readme.split("| dataset | CLLM4Rec |", 1)[1].split("\n\n")[0]
    for line in first.splitlines()[2:]:
        dataset, *cells, _ = (cell.strip() for cell in line.strip("|").split("|"))
        for label, cell in zip(("CLLM4Rec", "CLLM4Rec-no-transformer", "CLLM4Rec-random-init"), cells):
            if cell[:1].isdigit():
                matches(dataset.split(" (")[0], label, cell)
                checked += 1
    assert checked >= 30

def test_paired_wilcoxon_matches_a_hand_computed_case():
    from recbole_cllm4rec.benchmark.per_user import paired_wilcoxon

    # five users, every difference positive and distinct: W- = 0, and of the 2^5 equally likely sign patterns
    # only "all +" and "all -" are as extreme, so the exact two-sided p is 2/32
    difference, users, differing, p_value = paired_wilcoxon([1, 2, 3, 4, 5, 7], [0, 0, 0, 0, 0, 7])
    assert (users, differing) == (6, 5) and difference == pytest.approx(15 / 6)
    assert p_value == pytest.approx(2 / 32)
    # a user with no difference anywhere: p = 1
    assert paired_wilcoxon([0.5, 0.5], [0.5, 0.5])[3] == 1.0


def test_significance_report_pairs_users_and_slices_them(data_root, properties, tmp_path):
    from experiments import significance

    run_tiny("BPR", data_root, properties, tmp_path)
    run_tiny("Pop", data_root, properties, tmp_path)
    text = significance.report("tiny", "BPR", "Pop", [], tmp_path / "results")
    assert "40 test users" in text and "Wilcoxon" in text
    assert text.count("| recall@20 |") == 1 and "| head |" in text and "| tail |" in text


def test_a_saved_cllm4rec_checkpoint_loads_from_any_directory(data_root, properties, tmp_path, tiny_llama, monkeypatch):
    import shutil

    from conftest import cllm4rec_config
    from recbole.quick_start import load_data_and_model

    data = tmp_path / "data"
    shutil.copytree(data_root / "tiny", data / "tiny")
    settings = cllm4rec_config(data, tmp_path, tiny_llama, epochs=1, pretrain_rounds=0)
    settings.pop("topk"), settings.pop("valid_metric"), settings.pop("metrics")
    monkeypatch.chdir(tmp_path)
    settings["data_path"] = "data/"  # relative, as in the protocol
    benchmark.run(Settings("CLLM4Rec", "tiny", properties_dir=properties, results_dir=tmp_path / "results",
                           config_dict=settings))
    checkpoint = next((tmp_path / "saved").glob("CLLM4Rec-tiny-*-best.pth"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config, model, *_ = load_data_and_model(str(checkpoint))
    assert config["data_path"] == str(data / "tiny") and model.n_items == 25
    evaluate = ("import recbole_cllm4rec, sys\n"
                "from recbole.quick_start import load_data_and_model\n"
                "from recbole.utils import get_trainer\n"
                "config, model, _, _, _, test = load_data_and_model(sys.argv[1])\n"
                "trainer = get_trainer(config['MODEL_TYPE'], config['model'])(config, model)\n"
                "print(trainer.evaluate(test, load_best_model=False)['ndcg@10'])\n")
    completed = subprocess.run([sys.executable, "-c", evaluate, str(checkpoint)], capture_output=True, text=True,
                               cwd=elsewhere)  # a fresh process that only loads: NDCG needs RecBole's numpy aliases
    assert completed.returncode == 0, completed.stderr[-1500:]
    shutil.rmtree(data)
    with pytest.raises(FileNotFoundError, match="its dataset is gone"):
        load_data_and_model(str(checkpoint))
