"""Each user's items of one RecBole dataset split, in time order: the single definition of "history"."""

import numpy as np


def user_histories(dataset):
    """``histories[user]``: the user's items in ``dataset``, sorted by time where the dataset has a time
    field, else in the dataset's own (seeded) order; an empty array for users without interactions."""
    users = dataset.inter_feat[dataset.uid_field].numpy()
    items = dataset.inter_feat[dataset.iid_field].numpy()
    if dataset.time_field and dataset.time_field in dataset.inter_feat:
        order = np.lexsort((dataset.inter_feat[dataset.time_field].numpy(), users))  # stable for ties
    else:
        order = np.argsort(users, kind="stable")
    users, items = users[order], items[order].astype(np.int64)
    histories = [np.zeros(0, dtype=np.int64) for _ in range(dataset.user_num)]
    starts = np.flatnonzero(np.r_[True, np.diff(users) != 0]) if len(users) else []
    for start, end in zip(starts, np.r_[starts[1:], len(users)] if len(users) else []):
        histories[users[start]] = items[start:end]
    return histories
