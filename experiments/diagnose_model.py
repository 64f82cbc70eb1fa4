"""What a trained CLLM4Rec's scores rest on: its user token or the items of the prompt.

    python -m experiments.diagnose_model --dataset=amazon-beauty --profile=cpu \
        --checkpoint=saved/CLLM4Rec-amazon-beauty-<hash>-best.pth [--users=2000] [--output=FILE.md]

Loads the checkpoint's trained embeddings (the backbone comes from ``llm_path`` as always) and scores the same
validation users as ``experiments/probe.py`` (RecBole's Recall@20 / NDCG@100 over all items, training items
masked) with the scoring prompt changed in one way at a time:
- ``as trained``: the prompt the model is evaluated with (user token, whole training history);
- ``average user token``: every user's token replaced by the mean user embedding, history unchanged;
- ``user token only``: no history items in the prompt;
- ``history shuffled`` / ``history reversed``: the same items in another order;
- ``last 3 items``: only the three most recent history items.
A model that aggregates the history keeps most of its accuracy under the average user token; a model that
behaves like matrix factorisation keeps it under ``user token only``.

It also reports how far training moved the collaborative ID tables from their seeded start (the model is
built with the checkpoint's config, so its fresh tables are that start): mean row norm before and after,
mean distance moved, and the norm of the mean move (a shared drift) beside the backbone's own token norms.
``--drift_only`` reports just that, without scoring.
"""

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np
import torch


from experiments.common import recall_ndcg, validation_subset

from recbole_cllm4rec.benchmark.protocol import build_cllm4rec
from recbole_cllm4rec.corpus import Document


def prompt_variants(seed=0):
    """``{name: (history transform, average user token)}``; a transform maps a user's history array to the
    prompt's items, and ``average user token`` swaps every user's token for the mean user embedding."""
    generator = np.random.default_rng(seed)
    return {
        "as trained": (lambda history: history, False),
        "average user token": (lambda history: history, True),
        "user token only": (lambda history: history[:0], False),
        "history shuffled": (lambda history: generator.permutation(history), False),
        "history reversed": (lambda history: history[::-1], False),
        "last 3 items": (lambda history: history[-3:], False),
    }


def score_variant(model, targets, transform, average_user):
    corpus = model.corpus
    room = corpus._recommendation_room()
    original_scoring = corpus.scoring_document

    def scoring_document(user):  # corpus.scoring_document with the history transformed
        history = transform(corpus._recent(corpus.user_histories[user], room))
        tokens = corpus.recommendation_template.render(user=user, history=history)
        return Document(tokens, len(tokens))

    user_table = model.collaborative_user_embedding.weight
    saved_users = user_table.detach().clone()
    try:
        corpus.scoring_document = scoring_document
        if average_user:
            with torch.no_grad():
                user_table.copy_(saved_users[1:].mean(0, keepdim=True).expand_as(user_table))
        return recall_ndcg(model, targets)
    finally:
        corpus.scoring_document = original_scoring
        with torch.no_grad():
            user_table.copy_(saved_users)


def embedding_drift(model, initial_tables):
    """Rows ``(table, start norm, trained norm, distance moved, shared drift)``, each a mean over rows 1.. (row 0 is
    RecBole's padding id), then the backbone's token embeddings' mean and largest norm."""
    rows = []
    for name, start in initial_tables.items():
        trained = getattr(model, name).weight.detach()[1:]
        start = start[1:]
        moved = trained - start
        rows.append((name, float(start.norm(dim=1).mean()), float(trained.norm(dim=1).mean()),
                     float(moved.norm(dim=1).mean()), float(moved.mean(0).norm())))
    token_norms = model.backbone.get_input_embeddings().weight.detach().norm(dim=1)
    return rows, (float(token_norms.mean()), float(token_norms.max()))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="amazon-beauty")
    parser.add_argument("--config_files", default="")
    parser.add_argument("--checkpoint", required=True, help="a -best.pth or -last.pth written by CLLM4RecTrainer")
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--output", default=None, help="append the table to this markdown file")
    parser.add_argument("--drift_only", action="store_true", help="only how far the ID tables moved; no scoring")
    arguments, recbole_arguments = parser.parse_known_args(argv)
    if not Path(arguments.checkpoint).is_file():
        parser.error(f"checkpoint {arguments.checkpoint} does not exist")

    _, model, _, valid_data = build_cllm4rec(arguments.dataset, arguments.config_files,
                                             recbole_arguments=recbole_arguments)
    initial_tables = {name: getattr(model, name).weight.detach().clone()
                      for name in ("collaborative_user_embedding", "collaborative_item_embedding")}
    checkpoint = torch.load(arguments.checkpoint, map_location=model.device, weights_only=False)
    model.load_state_dict(checkpoint["state_dict"])
    drift, (token_mean, token_max) = embedding_drift(model, initial_tables)
    drift_table = ["| ID table | start row norm | trained row norm | distance moved | shared drift |", "|---|---|---|---|---|"]
    drift_table += [f"| {name} | {start:.2f} | {trained:.2f} | {moved:.2f} | {shared:.2f} |"
                    for name, start, trained, moved, shared in drift]
    drift_table += ["", f"Backbone token embeddings: mean norm {token_mean:.2f}, largest {token_max:.2f}."]
    print("\n".join(drift_table), flush=True)

    rows = []
    variants = {} if arguments.drift_only else prompt_variants()
    targets = None if arguments.drift_only else validation_subset(valid_data._dataset, arguments.users)
    for name, (transform, average_user) in variants.items():
        recall, ndcg = score_variant(model, targets, transform, average_user)
        rows.append((name, recall, ndcg))
        print(f"{name}: recall@20 {recall:.4f} ndcg@100 {ndcg:.4f}", flush=True)

    if arguments.output:
        command = "python -m experiments.diagnose_model " + shlex.join(argv if argv is not None else sys.argv[1:])
        table = []
        if rows:
            reference = rows[0][1]
            table = ["| scoring prompt | recall@20 | ndcg@100 | recall@20 vs as trained |", "|---|---|---|---|"]
            table += [f"| {name} | {recall:.4f} | {ndcg:.4f} | {recall / reference:.2f} |" for name, recall, ndcg in rows]
            table.append("")
        table += drift_table
        with Path(arguments.output).open("a", encoding="utf-8") as handle:
            handle.write("\n".join([*table, "", f"`{command}`", ""]) + "\n")


if __name__ == "__main__":
    main()
