"""Paired per-user tests and slices of a dataset's main rows, from the per-user files beside their records.

    python -m experiments.significance --dataset=ml-100k --model=CLLM4Rec --against=EASE-tuned \
        --beside=CLLM4Rec-no-transformer,CLLM4Rec-random-init [--output=results/ml-100k-significance.md]

Writes the two-sided Wilcoxon signed-rank test of ``--model`` against ``--against`` on each headline metric
(users paired by id, users with equal values dropped), and the headline metrics by slice: users by training-history
length (quartiles), and recall over the test items in the head (most popular fifth of items by training
interactions) and in the tail.
"""

import argparse
import json
from pathlib import Path

import numpy as np

from recbole_cllm4rec.benchmark.protocol import HEADLINE_METRICS
from recbole_cllm4rec.benchmark.per_user import HEAD_SHARE, paired_wilcoxon, read_per_user


def load(dataset, label, results_dir):
    record = json.loads((results_dir / dataset / f"{label}.json").read_text(encoding="utf-8"))
    if not record.get("per_user_file"):
        raise SystemExit(f"{label} on {dataset} has no per-user file: run it again with the current runner")
    return record, read_per_user(results_dir / dataset / record["per_user_file"])


def quartile_slices(users):
    lengths = np.array([user["n_train"] for user in users.values()])
    edges = np.quantile(lengths, [0.25, 0.5, 0.75])
    names = [f"<= {edges[0]:g}", f"{edges[0]:g}-{edges[1]:g}", f"{edges[1]:g}-{edges[2]:g}", f"> {edges[2]:g}"]
    slices = {name: [] for name in names}
    for user_id, user in users.items():
        slices[names[int(np.searchsorted(edges, user["n_train"], side="left"))]].append(user_id)
    return slices


def slice_recall(users, ids, side, k):
    """Mean over the users with a test item on ``side`` (head or tail) of their recall@k over those items."""
    values = []
    for user_id in ids:
        user = users[user_id]
        n_side = user["n_test_head"] if side == "head" else user["n_test"] - user["n_test_head"]
        if n_side:
            values.append(user[f"{side}_hits@{k}"] / n_side)
    return (float(np.mean(values)) if values else float("nan")), len(values)


def report(dataset, model, against, beside, results_dir):
    rows = {label: load(dataset, label, results_dir) for label in [model, against, *beside]}
    users = {label: per_user for label, (_, per_user) in rows.items()}
    common = sorted(set.intersection(*(set(per_user) for per_user in users.values())))
    available = users[model][common[0]]
    metrics = [metric for metric in HEADLINE_METRICS if metric in available] or sorted(
        key for key in available if key.startswith(("recall@", "ndcg@")))
    recall_cutoffs = [int(metric.split("@")[1]) for metric in metrics if metric.startswith("recall@")]
    length_metrics = [metrics[0], metrics[-1]]
    seeds = {rows[label][0]["seed"] for label in rows}
    if len(seeds) != 1:
        raise SystemExit(f"the rows ran at different seeds {sorted(seeds)}: their splits differ, nothing pairs")
    lines = [f"# {dataset}: {model} against {against}, per user", "",
             f"Seed {seeds.pop()}, {len(common)} test users in every row. Test: two-sided Wilcoxon signed-rank on the "
             f"per-user differences ({model} minus {against}); users whose values are equal are dropped, as Wilcoxon's "
             "rule has it. Command: `python -m experiments.significance --dataset="
             f"{dataset} --model={model} --against={against}" + (f" --beside={','.join(beside)}`" if beside else "`"),
             "", "## Paired test", "", "| metric | " + f"{model} | {against} | mean difference | users differing | p-value |",
             "|---|---|---|---|---|---|"]
    for metric in metrics:
        first = [users[model][user][metric] for user in common]
        second = [users[against][user][metric] for user in common]
        difference, _, differing, p_value = paired_wilcoxon(first, second)
        lines.append(f"| {metric} | {np.mean(first):.4f} | {np.mean(second):.4f} | {difference:+.4f} | {differing} | "
                     f"{p_value:.3g} |")
    labels = [model, *beside, against]
    lines += ["", "## By training-history length (users in quartiles; mean per-user metric)", "",
              "| history length | users | " + " | ".join(f"{label} {metric}" for metric in length_metrics for label in labels) + " |",
              "|---" * (2 + 2 * len(labels)) + "|"]
    for name, ids in quartile_slices({user: users[model][user] for user in common}).items():
        cells = [f"{np.mean([users[label][user][metric] for user in ids]):.4f}"
                 for metric in length_metrics for label in labels]
        lines.append(f"| {name} | {len(ids)} | " + " | ".join(cells) + " |")
    lines += ["", f"## By test-item popularity (head: the most popular {HEAD_SHARE:.0%} of items by training "
              "interactions; recall over a user's test items of that side, mean over users having one)", "",
              "| items | users | " + " | ".join(f"{label} recall@{k}" for k in recall_cutoffs for label in labels) + " |",
              "|---" * (2 + len(recall_cutoffs) * len(labels)) + "|"]
    for side in ("head", "tail"):
        cells, count = [], 0
        for k in recall_cutoffs:
            for label in labels:
                value, count = slice_recall(users[label], common, side, k)
                cells.append(f"{value:.4f}")
        lines.append(f"| {side} | {count} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--model", default="CLLM4Rec")
    parser.add_argument("--against", required=True)
    parser.add_argument("--beside", default="")
    parser.add_argument("--results_dir", default="results")
    parser.add_argument("--output", default=None)
    arguments = parser.parse_args(argv)
    beside = [label for label in arguments.beside.split(",") if label]
    text = report(arguments.dataset, arguments.model, arguments.against, beside, Path(arguments.results_dir))
    output = Path(arguments.output or Path(arguments.results_dir) / f"{arguments.dataset}-significance.md")
    output.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
