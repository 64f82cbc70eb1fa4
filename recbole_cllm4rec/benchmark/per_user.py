"""Per-user test metrics of a run, kept beside its record so that paired tests and slices need no retraining.

``collect_per_user`` wraps the trainer's collector for one evaluation: every batch's scores give each user's hits
in the top ``max(topk)``, from which recall and NDCG (RecBole's definitions) at the protocol's cutoffs follow, and
the hits on the test items that are popular in training (the head: the most-interacted items that make up
``HEAD_SHARE`` of the catalogue) and on the rest (the tail).
"""

import contextlib
import csv
import gzip
import math

import numpy as np
import torch

HEAD_SHARE = 0.2  # the most popular fifth of the items, by training interactions, is the head


def item_popularity_head(dataset, share=HEAD_SHARE):
    """A boolean per internal item id: in the head of training popularity."""
    counts = np.bincount(dataset.inter_feat[dataset.iid_field].numpy(), minlength=dataset.item_num)
    order = np.argsort(-counts[1:], kind="stable") + 1
    head = np.zeros(dataset.item_num, dtype=bool)
    head[order[: max(1, int(round(share * (dataset.item_num - 1))))]] = True
    return torch.from_numpy(head)


def user_rows(scores, users, positive_u, positive_i, is_head, cutoffs):
    """One dict per row of ``scores`` [users, items]: recall@k and ndcg@k (RecBole's), and head/tail hits."""
    positives = torch.zeros_like(scores, dtype=torch.bool)
    positives[positive_u, positive_i] = True
    top = torch.topk(scores, max(cutoffs), dim=-1).indices
    hits = torch.gather(positives, 1, top)
    head_hits = hits & is_head[top]
    n_positive = positives.sum(1)
    n_head = (positives & is_head.unsqueeze(0)).sum(1)
    discounts = 1.0 / torch.log2(torch.arange(2, max(cutoffs) + 2, dtype=torch.float64))
    rows = []
    for row in range(scores.shape[0]):
        record = {"user": users[row], "n_test": int(n_positive[row]), "n_test_head": int(n_head[row])}
        for k in cutoffs:
            hit_count = int(hits[row, :k].sum())
            record[f"recall@{k}"] = hit_count / max(int(n_positive[row]), 1)
            ideal = float(discounts[: min(int(n_positive[row]), k)].sum())
            record[f"ndcg@{k}"] = float((hits[row, :k].double() * discounts[:k]).sum()) / ideal if ideal else 0.0
            record[f"head_hits@{k}"] = int(head_hits[row, :k].sum())
            record[f"tail_hits@{k}"] = hit_count - record[f"head_hits@{k}"]
        rows.append(record)
    return rows


@contextlib.contextmanager
def collect_per_user(trainer, train_dataset, cutoffs):
    """Within the block, every evaluation batch the trainer collects adds its users' rows (metrics at ``cutoffs``,
    the protocol's top-k list) to the yielded list."""
    collector = trainer.eval_collector
    original = collector.eval_batch_collect
    is_head = item_popularity_head(train_dataset)
    uid_field = train_dataset.uid_field
    rows = []

    def collect(scores, interaction, positive_u, positive_i):
        original(scores, interaction, positive_u, positive_i)
        if scores.dim() == 2:  # full ranking: one row per user
            users = train_dataset.id2token(uid_field, interaction[uid_field].cpu().numpy())
            rows.extend(user_rows(scores.detach().cpu().float(), list(users), positive_u.cpu(), positive_i.cpu(),
                                  is_head, cutoffs))

    collector.eval_batch_collect = collect
    try:
        yield rows
    finally:
        collector.eval_batch_collect = original


def training_lengths(train_dataset):
    counts = np.bincount(train_dataset.inter_feat[train_dataset.uid_field].numpy(), minlength=train_dataset.user_num)
    return dict(zip(train_dataset.id2token(train_dataset.uid_field, np.arange(train_dataset.user_num)), counts.tolist()))


def write_per_user(path, rows, train_dataset):
    """``<label>.users.csv.gz`` beside the record: one line per test user."""
    lengths = training_lengths(train_dataset)
    columns = ["user", "n_train", *[key for key in rows[0] if key != "user"]] if rows else ["user"]
    with gzip.open(path, "wt", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in rows:
            row = {**row, "n_train": lengths.get(row["user"], 0)}
            writer.writerow([f"{row[key]:.6g}" if isinstance(row[key], float) else row[key] for key in columns])


def read_per_user(path):
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        return {row["user"]: {key: (float(value) if key != "user" else value) for key, value in row.items()}
                for row in reader}


def mean_metric(rows, metric):
    return sum(row[metric] for row in rows) / len(rows) if rows else math.nan


def paired_wilcoxon(first, second):
    """Two-sided Wilcoxon signed-rank test of paired per-user values; users with equal values are dropped
    (Wilcoxon's own rule). Returns ``(mean difference, users compared, users with a difference, p-value)``."""
    from scipy.stats import wilcoxon

    differences = np.asarray(first, dtype=float) - np.asarray(second, dtype=float)
    differing = differences[differences != 0]  # dropped first, so scipy's exact test serves small samples
    p_value = float(wilcoxon(differing, alternative="two-sided").pvalue) if len(differing) else 1.0
    return float(differences.mean()), len(differences), len(differing), p_value
