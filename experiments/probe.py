"""Short CLLM4Rec training probes on a fixed subset of validation users: what a change does to learning,
in minutes instead of a full run.

    python -m experiments.probe --dataset=amazon-beauty --profile=cpu \
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
from time import perf_counter

import numpy as np
import torch


from experiments.common import append_table, recall_ndcg, validation_subset
from recbole_cllm4rec.benchmark.protocol import build_cllm4rec
from recbole_cllm4rec.corpus import bucket_batches
from recbole_cllm4rec.trainer import optimizer_for

PASS_KINDS = ("collaborative", "content", "recommendation")


def run_pass(model, kind, optimizer, budget, generator):
    documents, held_out = model.corpus.pass_documents(kind, generator)
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
    optimizer = optimizer_for(config, model, config["learning_rate"])  # the trainer's optimizer
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
