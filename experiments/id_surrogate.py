"""CLLM4Rec's finetuning objective with the language model taken out: what the ID embeddings alone learn.

    python -m experiments.id_surrogate --dataset=amazon-beauty --learning_rate=2e-3 --epochs=10 [--no_user_token] \
        [--final_norm] [--bucketed] [--users=0] [--label=NAME] [--output=FILE.md] [--key=value ...]

The user's state is the mean of the ID embeddings in the finetuning prompt (the user token and the visible
items), the item logits are that state times a learned per-dimension scale dotted with the item embeddings
(tied, as in the cpu profile), and the loss is the multinomial likelihood of the held-out items, over the
same random masks as CLLM4Rec's finetuning (``CLLM4RecCorpus.recommendation_documents``, ``mask_ratio``) and
with Adam. With no frozen transformer it runs an epoch in about a minute on one core, so it shows in minutes
how the training settings alone (learning rate, epochs, user token) shape validation, which a cpu-profile run
needs an hour for. After each epoch it prints Recall@20 / NDCG@100 on validation users (RecBole's full-ranking
definitions, training items masked; ``--users=0``: all of them). Diagnostic figures, not table rows.

``--final_norm`` passes every prompt position through the backbone's final RMSNorm before the mean (the model's
state with ``llm_num_layers: 0`` and the normed readout); ``--bucketed`` trains on the trainer's length-bucketed
batches. The masks of an epoch are drawn for all users before its batches (as the trainer does).
"""

import argparse
from time import perf_counter

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


from experiments.common import append_table, recall_ndcg, validation_subset

from recbole_cllm4rec.backbone import take_final_norm
from recbole_cllm4rec.benchmark.protocol import build_cllm4rec
from recbole_cllm4rec.corpus import bucket_batches


class IDSurrogate(nn.Module):
    """Mean of the prompt's ID embeddings -> scaled dot product with the item embeddings."""

    USER_ID = "user_id"

    def __init__(self, corpus, n_users, n_items, hidden_size, init_std, logit_scale, user_token, seed,
                 final_norm=None):
        super().__init__()
        self.final_norm = final_norm  # the backbone's last RMSNorm (frozen), applied to each prompt position
        generator = torch.Generator().manual_seed(seed)
        self.corpus = corpus
        self.user_token = user_token
        self.user_embedding = nn.Parameter(torch.randn(n_users, hidden_size, generator=generator) * init_std)
        self.item_embedding = nn.Parameter(torch.randn(n_items, hidden_size, generator=generator) * init_std)
        self.logit_scale = nn.Parameter(torch.full((hidden_size,), float(logit_scale)))

    def states(self, users, visible_items):
        lengths = torch.tensor([len(items) for items in visible_items])
        flat = torch.as_tensor(np.concatenate(visible_items), dtype=torch.long)
        segments = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
        total = torch.zeros(len(lengths), self.item_embedding.shape[1]).index_add_(
            0, segments, self.position_states(self.item_embedding[flat]))
        count = lengths.float()
        if self.user_token:
            total = total + self.position_states(self.user_embedding[torch.as_tensor(users, dtype=torch.long)])
            count = count + 1
        return total / count.clamp(min=1).unsqueeze(1)

    def position_states(self, embeddings):
        return embeddings if self.final_norm is None else self.final_norm(embeddings)

    def item_logits(self, states):
        logits = (states * self.logit_scale) @ self.item_embedding.T
        logits[:, 0] = float("-inf")  # RecBole's padding item
        return logits

    def full_sort_predict(self, interaction):
        users = interaction[self.USER_ID].tolist()
        return self.item_logits(self.states(users, [self.corpus.user_histories[user] for user in users]))


def train_epoch(model, optimizer, users, batch_users, generator, batch_tokens=None):
    """One pass over ``users`` in random batches of ``batch_users``; with ``batch_tokens``, in the trainer's
    length-bucketed batches of at most that many padded prompt tokens instead."""
    corpus = model.corpus
    losses = []
    all_documents, all_held_out = corpus.recommendation_documents(users, generator)
    if batch_tokens:
        batches = bucket_batches([len(document.tokens) for document in all_documents], batch_tokens, generator)
    else:
        order = torch.randperm(len(users), generator=generator).numpy()
        batches = [order[start:start + batch_users] for start in range(0, len(order), batch_users)]
    for indices in batches:
        batch = users[indices]
        documents, held_out = [all_documents[k] for k in indices], [all_held_out[k] for k in indices]
        log_probabilities = F.log_softmax(model.item_logits(
            model.states(batch, [corpus.token_space.item_ids(document.tokens) for document in documents])), dim=1)
        rows = np.repeat(np.arange(len(held_out)), [len(items) for items in held_out])
        loss = -log_probabilities[rows, np.concatenate(held_out)].sum() / len(held_out)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return float(np.mean(losses))


def evaluate(model, targets, chunk=2000):
    """Recall@20 / NDCG@100 over ``targets``, in chunks of users (a full score matrix is users x items)."""
    users = list(targets)
    totals = np.zeros(2)
    for start in range(0, len(users), chunk):
        part = {user: targets[user] for user in users[start:start + chunk]}
        totals += np.asarray(recall_ndcg(model, part)) * len(part)
    return tuple(totals / len(users))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="amazon-beauty")
    parser.add_argument("--config_files", default="")
    parser.add_argument("--learning_rate", type=float, default=None, help="default: the config's learning_rate")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch_users", type=int, default=50, help="about the cpu profile's prompts per step")
    parser.add_argument("--no_user_token", action="store_true")
    parser.add_argument("--final_norm", action="store_true",
                        help="each prompt position through the backbone's final RMSNorm and gain, as llm_num_layers: 0")
    parser.add_argument("--bucketed", action="store_true",
                        help="the trainer's length-bucketed batches of train_batch_tokens instead of batch_users")
    parser.add_argument("--users", type=int, default=0, help="validation users to score (0: all)")
    parser.add_argument("--label", default=None)
    parser.add_argument("--output", default=None, help="append one row per epoch to this markdown file")
    arguments, recbole_arguments = parser.parse_known_args(argv)

    config, backbone_model, _, valid_data = build_cllm4rec(
        arguments.dataset, arguments.config_files, {"llm_num_layers": 0}, recbole_arguments)
    corpus = backbone_model.corpus
    init_std = float(backbone_model.vocab_head.weight.std())  # CLLM4Rec's own start: the token embeddings' std
    hidden_size = backbone_model.vocab_head.weight.shape[1]
    final_norm = None  # frozen; a residual-readout config has already taken it out of the backbone
    if arguments.final_norm:
        final_norm = backbone_model.final_norm or take_final_norm(backbone_model.backbone)
    n_users, n_items = backbone_model.n_users, backbone_model.n_items
    del backbone_model
    model = IDSurrogate(corpus, n_users, n_items, hidden_size, init_std, config["item_logit_scale"] or 1.0,
                        not arguments.no_user_token, config["seed"], final_norm)
    learning_rate = arguments.learning_rate or config["learning_rate"]
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    targets = validation_subset(valid_data._dataset, arguments.users or n_users)  # 0: every validation user
    users = np.asarray([user for user in range(1, len(corpus.user_histories)) if len(corpus.user_histories[user])])
    label = arguments.label or ", ".join([f"lr {learning_rate:g}"] + [
        name for name, chosen in (("no user token", arguments.no_user_token), ("final norm", arguments.final_norm),
                                  ("bucketed", arguments.bucketed)) if chosen])
    batch_tokens = config["train_batch_tokens"] if arguments.bucketed else None

    rows = []
    started = perf_counter()
    for epoch in range(1, arguments.epochs + 1):
        generator = torch.Generator().manual_seed(config["seed"] + epoch)
        loss = train_epoch(model, optimizer, users, arguments.batch_users, generator,
                           batch_tokens)
        recall, ndcg = evaluate(model, targets)
        rows.append((epoch, loss, recall, ndcg, perf_counter() - started))
        print(f"{label}: epoch {epoch}, loss {loss:.3f}, recall@20 {recall:.4f}, ndcg@100 {ndcg:.4f}, "
              f"{perf_counter() - started:.0f} s", flush=True)

    if arguments.output:
        append_table(arguments.output, "id_surrogate.py", argv,
                     ("run", "epoch", "mean loss", "recall@20", "ndcg@100", "seconds"),
                     [(label, epoch, f"{loss:.3f}", f"{recall:.4f}", f"{ndcg:.4f}", f"{seconds:.0f}")
                      for epoch, loss, recall, ndcg, seconds in rows])


if __name__ == "__main__":
    main()
