"""experiments/ablation.py's pure parts, and the protocol line a dataset's own properties change."""


import yaml

from recbole_cllm4rec import benchmark
from recbole_cllm4rec.benchmark.protocol import protocol_text
from recbole_cllm4rec.benchmark.tables import headline_columns

from experiments import ablation


def test_variant_overrides_replace_base_arguments_of_the_same_key():
    base = ["--content_lm=True", "--llm_num_layers=4", "--epochs=3"]
    assert ablation.variant_arguments(base, {"content_lm": False}) == ["--llm_num_layers=4", "--epochs=3",
                                                                         "--content_lm=False"]
    assert ablation.variant_arguments(base, {}) == base


def test_small_catalogue_columns_fall_back_to_its_own_cutoffs():
    small = {"test": {"recall@5": 0.5, "ndcg@5": 0.4, "recall@20": 0.9, "ndcg@10": 0.45}, "valid_metric": "ndcg@10"}
    assert headline_columns([small]) == ["recall@20", "recall@5", "ndcg@5", "ndcg@10"]
    full = {"test": {"recall@20": 0.1, "recall@40": 0.2, "ndcg@100": 0.05, "recall@10": 0.05}, "valid_metric": "ndcg@100"}
    assert headline_columns([full]) == benchmark.HEADLINE_METRICS


def test_variants_sort_full_first_then_deep_to_shallow():
    names = ["layers-2", "no-pretraining", "layers-8", "full", "no-content-lm"]
    ordered = sorted(({"variant": name} for name in names), key=ablation.variant_order)
    assert [record["variant"] for record in ordered] == ["full", "no-content-lm", "no-pretraining", "layers-8", "layers-2"]


def test_protocol_line_names_the_datasets_overrides(tmp_path):
    (tmp_path / "dataset").mkdir()
    (tmp_path / "overall.yaml").write_text(yaml.safe_dump({
        "seed": 1, "eval_args": {"split": {"RS": [0.8, 0.1, 0.1]}, "order": "RO", "group_by": "user"},
        "metrics": ["Recall"], "topk": [10, 100], "valid_metric": "NDCG@100"}))
    (tmp_path / "dataset" / "small.yaml").write_text(yaml.safe_dump({"topk": [5], "valid_metric": "NDCG@5", "load_col": {}}))
    assert "at [10, 100]" in protocol_text(tmp_path, "big") and "NDCG@100" in protocol_text(tmp_path)
    text = protocol_text(tmp_path, "small")
    assert "at [5]" in text and "`NDCG@5`" in text and "topk, valid_metric from `properties/dataset/small.yaml`" in text


def test_full_variant_from_a_benchmark_record_only_when_it_ran_the_same_configuration(tmp_path):
    import json

    import pytest

    profile = "properties/model/CLLM4Rec-gpu-short.yaml"
    record = {"model": "CLLM4Rec", "dataset": "amazon-beauty", "test": {}, "command_line_overrides": ["--show_progress=False"],
              "config_files": ["properties/overall.yaml", "properties/dataset/amazon-beauty.yaml", profile]}
    path = tmp_path / "CLLM4Rec.json"
    path.write_text(json.dumps(record))
    full = ablation.full_from_record(path, "amazon-beauty", [profile], [], "python -m experiments.ablation ...")
    assert full["variant"] == "full" and full["overrides"] == {} and full["full_record"] == str(path)

    with pytest.raises(SystemExit, match="overrides"):
        ablation.full_from_record(path, "amazon-beauty", [profile], ["--epochs=3"], "")
    with pytest.raises(SystemExit, match="config files"):
        ablation.full_from_record(path, "amazon-beauty", [], [], "")
    with pytest.raises(SystemExit, match="dataset"):
        ablation.full_from_record(path, "amazon-all-beauty-18", [profile], [], "")


def test_table_names_the_command_of_every_row_not_only_the_last(tmp_path):
    def record(variant, command):
        return {"variant": variant, "overrides": {}, "ablation_command": command, "test": {"recall@20": 0.1},
                "valid_metric": "ndcg@100", "epochs_run": 1, "wall_time_s": 1.0, "git_commit": "abc",
                "machine": {"device": "cpu", "torch_threads": 1}}

    records = [record("full", "python -m experiments.ablation --variants=full"),
               record("layers-0", "python -m experiments.ablation --variants=layers-0 --layers=0")]
    ablation.write_outputs(records, tmp_path / "ablation.md", "amazon-beauty")
    text = (tmp_path / "ablation.md").read_text()
    assert "--variants=full" in text and "--variants=layers-0 --layers=0" in text
    header, separator = [line for line in text.splitlines() if line.startswith("| variant |") or line.startswith("|---")]
    assert separator.count("---") == header.count("|") - 1
