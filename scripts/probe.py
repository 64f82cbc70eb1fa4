"""Short CLLM4Rec training probes on a fixed subset of validation users: what a change does to learning,
in minutes instead of a full run.

    python scripts/probe.py --dataset=amazon-beauty --profile=cpu \
        --schedule=collaborative,recommendation --label="collab + 1 finetune" [--users=2000] \
        [--output=results/notes/amazon-beauty-probes.md] [--key=value ...]

``--schedule`` lists the passes in order (``collaborative``, ``content``, ``recommendation``), each one
pass over its corpus exactly as ``CLLM4RecTrainer`` builds it, with one Adam optimizer over the trainable
parameters at ``learning_rate`` (finetuning's rate: probes compare changes, not the full schedule). After
every pass it prints the mean training loss and Recall@20 / NDCG@100 on ``--users`` validation users
drawn once with a fixed seed, ranked over all items with training items masked (RecBole's full-ranking
definitions). These are probe figures, not table rows: the table comes from ``run_benchmark.py``.
"""

import argparse
import shlex
import sys
from pathlib import Path
from time import perf_counter

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recbole_cllm4rec.benchmark import build_cllm4rec  # noqa: E402
from recbole_cllm4rec.corpus import bucket_batches  # noqa: E402
from recbole_cllm4rec.trainer import id_table_adam  # noqa: E402

PASS_KINDS = ("collaborative", "content", "recommendation")


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
    command = f"python scripts/{script} " + shlex.join(argv if argv is not None else sys.argv[1:])
    lines = [] if path.exists() else ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(value) for value in row) + " |" for row in rows]
    lines.append(f"| `{command}` |" + " |" * (len(columns) - 1))
    with path.open("a", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")


def run_pass(model, kind, optimizer, budget, generator):
    corpus = model.corpus
    held_out = None
    if kind == "collaborative":
        documents = corpus.collaborative_documents()
    elif kind == "content":
        documents = corpus.sampled_content_documents(generator)
    else:
        documents, held_out = corpus.recommendation_documents(range(1, len(corpus.user_histories)), model.mask_ratio, generator)
    model.train()
    losses = []
    for batch in bucket_batches([len(document.tokens) for document in documents], budget, generator):
        targets = [held_out[k] for k in batch] if held_out is not None else None
        language_loss, regularization, _ = model.document_loss(kind, [documents[k] for k in batch], targets)
        optimizer.zero_grad(set_to_none=True)
        (language_loss + regularization).backward()
        optimizer.step()
        model.constrain_id_embeddings()
        losses.append(float(language_loss.detach()))
    return float(np.mean(losses)), len(losses)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="amazon-beauty")
    parser.add_argument("--config_files", default="")
    parser.add_argument("--schedule", default="recommendation")
    parser.add_argument("--label", default=None)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--output", default=None, help="append one row per pass to this markdown file")
    arguments, recbole_arguments = parser.parse_known_args(argv)
    schedule = [kind.strip() for kind in arguments.schedule.split(",") if kind.strip()]
    unknown = [kind for kind in schedule if kind not in PASS_KINDS]
    if unknown:
        parser.error(f"unknown pass kind(s) {unknown}; use {', '.join(PASS_KINDS)}")

    config, model, _, valid_data = build_cllm4rec(arguments.dataset, arguments.config_files,
                                                  recbole_arguments=recbole_arguments)
    targets = validation_subset(valid_data._dataset, arguments.users)
    optimizer = id_table_adam(model, config["learning_rate"], config["weight_decay"])  # the trainer's optimizer
    label = arguments.label or " ".join(recbole_arguments) or "defaults"

    rows = [(0, "init", 0, float("nan"), *recall_ndcg(model, targets), 0.0)]
    print(f"init: recall@20 {rows[0][4]:.4f} ndcg@100 {rows[0][5]:.4f}", flush=True)
    started, steps = perf_counter(), 0
    for position, kind in enumerate(schedule, start=1):
        loss, n_steps = run_pass(model, kind, optimizer, config["train_batch_tokens"],
                                 torch.Generator().manual_seed(config["seed"] + position))
        steps += n_steps
        recall, ndcg = recall_ndcg(model, targets)
        rows.append((position, kind, steps, loss, recall, ndcg, perf_counter() - started))
        print(f"pass {position} {kind}: {n_steps} steps, loss {loss:.3f}, recall@20 {recall:.4f}, ndcg@100 {ndcg:.4f}, "
              f"{perf_counter() - started:.0f} s", flush=True)

    if arguments.output:
        append_table(arguments.output, "probe.py", argv,
                     ("probe", "pass", "kind", "steps so far", "mean loss", "recall@20", "ndcg@100", "seconds"),
                     [(label, position, kind, steps, f"{loss:.3f}", f"{recall:.4f}", f"{ndcg:.4f}", f"{seconds:.0f}")
                      for position, kind, steps, loss, recall, ndcg, seconds in rows])


if __name__ == "__main__":
    main()
