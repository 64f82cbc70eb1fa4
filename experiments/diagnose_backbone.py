"""How much of the frozen backbone CLLM4Rec can use at a given depth, before any training.

    python -m experiments.diagnose_backbone --dataset=amazon-beauty --layers=2,8,16,30 \
        [--config_files=...] [--item_logit_scale=0.1] [--output=results/notes/amazon-beauty-diagnostics.md]

For each ``llm_num_layers`` it builds CLLM4Rec with fresh soft tokens and reports, with no gradient step:
- content loss: the content LM's cross-entropy per main-text token on the first ``--documents`` content
  documents (a uniform guess over the vocabulary costs ln(vocabulary size));
- item loss: the finetuning loss per held-out item on ``--users`` users (uniform: ln(number of items));
- the scoring prompt's last hidden state: its mean norm, the mean cosine between users, and how far it moves
  when a user's history is swapped for another user's (the signal the item head can use);
- with ``--item_head_input=residual``, at the history items' positions of the scoring prompts: the norm of the
  soft token as it enters (``soft_token_scale`` included), of what the blocks add to it, and of the part of that
  shared by all positions, and the mean cosine between the token and its own last residual state (also with the
  states' mean removed): how much of an item's identity reaches the item head.
"""

import argparse
import math
import sys
from pathlib import Path

import torch


from recbole_cllm4rec.benchmark.protocol import build_cllm4rec
from recbole_cllm4rec.corpus import Document, pad_documents


def last_states(model, documents):
    tokens, attention_mask, _ = pad_documents(documents)
    hidden = model.hidden_states(tokens, attention_mask, "collaborative")
    return hidden[torch.arange(len(documents)), attention_mask.sum(1) - 1]


def soft_token_identity(model, documents):
    tokens, attention_mask, _ = pad_documents(documents)
    is_item = attention_mask.bool() & (tokens >= model.token_space.item_offset)
    entering = model.embed_tokens(tokens, "collaborative")[is_item]
    states = model.hidden_states(tokens, attention_mask, "collaborative")[is_item]
    added = states - entering
    cosine = torch.nn.functional.cosine_similarity
    return {
        "soft token norm": float(entering.norm(dim=1).mean()),
        "block output norm": float(added.norm(dim=1).mean()),
        "shared block output norm": float(added.mean(0).norm()),
        "cosine token-state": float(cosine(entering, states, dim=1).mean()),
        "same, state mean removed": float(cosine(entering, states - states.mean(0), dim=1).mean()),
    }


@torch.no_grad()
def diagnose(model, n_documents, n_users):
    model.eval()
    corpus = model.corpus
    row = {}
    if corpus.has_content:
        content_loss, _, _ = model.document_loss("content", corpus.sampled_content_documents(torch.Generator().manual_seed(0))[:n_documents])
        row["content loss"] = float(content_loss)
    users = list(range(1, min(n_users, len(corpus.user_histories) - 1) + 1))
    documents, held_out = corpus.recommendation_documents(users, torch.Generator().manual_seed(0))
    item_loss, _, _ = model.document_loss("recommendation", documents, held_out)
    row["item loss"] = float(item_loss) * len(documents) / sum(len(items) for items in held_out)
    template = corpus.recommendation_template
    scoring = [Document(template.render(user=u, history=corpus.user_histories[u]), 0) for u in users]
    own = last_states(model, scoring)
    others = users[1:] + users[:1]
    swapped = last_states(model, [Document(template.render(user=u, history=corpus.user_histories[o]), 0)
                                  for u, o in zip(users, others)])
    unit = torch.nn.functional.normalize(own, dim=1)
    row["hidden norm"] = float(own.norm(dim=1).mean())
    row["cosine between users"] = float((unit @ unit.T).mean())
    row["move when history swapped"] = float((own - swapped).norm(dim=1).mean())
    if model.item_head_input == "residual":
        row.update(soft_token_identity(model, scoring))
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="amazon-beauty")
    parser.add_argument("--config_files", default="")
    parser.add_argument("--layers", default="2,30")
    parser.add_argument("--documents", type=int, default=64)
    parser.add_argument("--users", type=int, default=256)
    parser.add_argument("--output", default=None, help="write the table to this markdown file")
    arguments, recbole_arguments = parser.parse_known_args(argv)

    rows = []
    for layers in [int(value) for value in arguments.layers.split(",")]:
        config, model, _, _ = build_cllm4rec(arguments.dataset, arguments.config_files, {"content_lm": True},
                                             [*recbole_arguments, f"--llm_num_layers={layers}"])
        row = {"layers": model.backbone.config.num_hidden_layers, "soft token scale": config["soft_token_scale"],
               **diagnose(model, arguments.documents, arguments.users)}
        rows.append(row)
        print(", ".join(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}" for key, value in row.items()), flush=True)

    uniform_vocabulary, uniform_items = math.log(model.vocab_size), math.log(model.n_items - 1)
    if arguments.output:
        command = "python -m experiments.diagnose_backbone " + " ".join(argv if argv is not None else sys.argv[1:])
        keys = list(rows[0])
        path = Path(arguments.output)
        lines = [] if path.exists() else [f"# CLLM4Rec's frozen backbone by depth, {arguments.dataset}, before training", ""]
        lines += [f"Command: `{command}`", "",
                 f"Uniform guesses: {uniform_vocabulary:.2f} nats per content token ({model.vocab_size:,} tokens), "
                 f"{uniform_items:.2f} nats per held-out item ({model.n_items - 1:,} items). Losses are per token / per "
                 f"held-out item with fresh soft tokens (`id_embedding_init` of the config) and the config's "
                 f"`item_logit_scale` ({config['item_logit_scale']}).", "",
                 "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(f"{row[key]:.4g}" if isinstance(row[key], float) else str(row[key]) for key in keys) + " |"
                  for row in rows]
        with path.open("a", encoding="utf-8") as handle:  # one section per invocation
            handle.write("\n".join(lines) + "\n\n")


if __name__ == "__main__":
    main()
