"""experiments/seed_table.py: per-seed tables of records, and differences only where both families have the seed."""

import json

import pytest


def load_script():
    from experiments import seed_table

    return seed_table


def write_record(folder, label, seed, ndcg):
    path = folder / f"{label}.json"
    test = {"recall@20": ndcg * 1.5, "recall@40": ndcg * 2.0, "ndcg@100": ndcg}
    path.write_text(json.dumps({"label": label, "seed": seed, "test": test, "machine": {"gpu": None},
                                "git_commit": "0123456789"}))
    return str(path)


def test_rows_per_seed_and_differences_over_shared_seeds_only(tmp_path):
    base = [write_record(tmp_path, f"base-{seed}", seed, ndcg) for seed, ndcg in ((1, 0.10), (2, 0.20), (3, 0.30))]
    other = [write_record(tmp_path, f"other-{seed}", seed, ndcg) for seed, ndcg in ((1, 0.15), (3, 0.27))]
    output = tmp_path / "seeds.md"
    load_script().main([f"--family=base={','.join(base)}", f"--family=other={','.join(other)}", f"--output={output}"])
    ndcg = output.read_text().split("### test ndcg@100")[1]
    assert "| 2 | 0.2000 |  |" in ndcg  # no record of ``other`` at seed 2: a blank, not a number
    assert "| mean (seeds) | 0.2000 (3) | 0.2100 (2) |" in ndcg
    assert "| mean difference from base at the same seeds |  | +0.0100 (2) |" in ndcg  # (0.05 - 0.03) / 2


def test_two_records_at_one_seed_are_refused(tmp_path):
    records = [write_record(tmp_path, "a", 1, 0.1), write_record(tmp_path, "b", 1, 0.2)]
    with pytest.raises(SystemExit, match="two records at seed 1"):
        load_script().main([f"--family=x={','.join(records)}", f"--output={tmp_path / 'out.md'}"])
