"""Helpers the experiments share: a fixed validation subset, its Recall and NDCG from a model's scores, and a
markdown table the experiments append to. Run an experiment from the checkout's root as a module:
``python -m experiments.<name> ...``."""

import shlex
import sys
from pathlib import Path

import numpy as np
import torch


def validation_subset(valid_dataset, n_users, seed=0):
    """``{user: validation items}`` for ``n_users`` users drawn with a fixed seed."""
    users = valid_dataset.inter_feat[valid_dataset.uid_field].numpy()
    items = valid_dataset.inter_feat[valid_dataset.iid_field].numpy()
    chosen = np.random.default_rng(seed).choice(np.unique(users), min(n_users, len(np.unique(users))), replace=False)
    targets = {int(user): [] for user in np.sort(chosen)}
    for user, item in zip(users, items):
        if int(user) in targets:
            targets[int(user)].append(int(item))
    return targets


@torch.no_grad()
def recall_ndcg(model, targets, k_recall=20, k_ndcg=100):
    model.eval()
    users = list(targets)
    scores = model.full_sort_predict({model.USER_ID: torch.tensor(users)})
    k_ndcg = min(k_ndcg, scores.shape[1] - 1)  # small catalogues
    recalls, ndcgs = [], []
    discounts = 1 / np.log2(np.arange(2, k_ndcg + 2))
    for row, user in enumerate(users):
        row_scores = scores[row]
        row_scores[torch.as_tensor(model.corpus.user_histories[user], dtype=torch.long)] = -float("inf")
        top = torch.topk(row_scores, k_ndcg).indices.numpy()
        hits = np.isin(top, targets[user])
        recalls.append(hits[:k_recall].sum() / len(targets[user]))  # RecBole's Recall (the table's)
        ndcgs.append((hits * discounts).sum() / discounts[: min(k_ndcg, len(targets[user]))].sum())
    return float(np.mean(recalls)), float(np.mean(ndcgs))


def append_table(path, script, argv, columns, rows):
    """Append ``rows`` to the markdown table in ``path`` (header first if the file is new), then the command."""
    path = Path(path)
    command = f"python -m experiments.{script.removesuffix('.py')} " + shlex.join(argv if argv is not None else sys.argv[1:])
    lines = [] if path.exists() else ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(value) for value in row) + " |" for row in rows]
    lines.append(f"| `{command}` |" + " |" * (len(columns) - 1))
    with path.open("a", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
