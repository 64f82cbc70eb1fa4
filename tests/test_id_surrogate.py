"""experiments/id_surrogate.py: CLLM4Rec's finetuning objective on the ID embeddings alone."""


import numpy as np
import pytest
import torch
from test_cllm4rec import build

from experiments import id_surrogate


@pytest.fixture
def surrogate(data_root, tmp_path, tiny_llama):
    _, model, *_ = build(data_root, tmp_path, tiny_llama)
    return id_surrogate.IDSurrogate(model.corpus, model.n_users, model.n_items, 16, 0.1, 1.0, True, seed=0)


def test_state_is_the_mean_of_the_user_token_and_the_visible_items(surrogate):
    visible = [np.array([1, 2, 3]), np.array([4])]
    states = surrogate.states([1, 2], visible)
    users, items = surrogate.user_embedding, surrogate.item_embedding
    torch.testing.assert_close(states[0], (users[1] + items[1] + items[2] + items[3]) / 4)
    torch.testing.assert_close(states[1], (users[2] + items[4]) / 2)
    surrogate.user_token = False
    torch.testing.assert_close(surrogate.states([1, 2], visible)[1], items[4])


def test_final_norm_normalises_each_position_before_the_mean(surrogate):
    surrogate.final_norm = torch.nn.RMSNorm(16, eps=1e-6)
    with torch.no_grad():
        surrogate.final_norm.weight.uniform_(0.5, 2.0)
    items, norm = surrogate.item_embedding, surrogate.final_norm
    states = surrogate.states([1], [np.array([1, 2])])
    torch.testing.assert_close(states[0], (norm(surrogate.user_embedding[1]) + norm(items[1]) + norm(items[2])) / 3)


@pytest.mark.parametrize("batch_tokens", [None, 64])
def test_training_fits_the_held_out_items_and_never_predicts_padding(surrogate, batch_tokens):
    corpus = surrogate.corpus
    users = np.asarray([user for user in range(1, len(corpus.user_histories)) if len(corpus.user_histories[user])])
    optimizer = torch.optim.Adam(surrogate.parameters(), lr=0.05)
    losses = [id_surrogate.train_epoch(surrogate, optimizer, users, 4, torch.Generator().manual_seed(epoch),
                                       batch_tokens) for epoch in range(8)]
    assert losses[-1] < 0.8 * losses[0]
    scores = surrogate.full_sort_predict({"user_id": torch.as_tensor(users[:3])})
    assert scores.shape == (3, surrogate.item_embedding.shape[0]) and torch.isinf(scores[:, 0]).all()


def test_tables_get_one_header_and_each_run_its_command(tmp_path):
    output = tmp_path / "runs.md"
    for label in ("a", "b"):
        id_surrogate.append_table(output, "id_surrogate.py", ["--label", label], ("run", "epoch"), [(label, 1), (label, 2)])
    lines = output.read_text().splitlines()
    assert lines[:2] == ["| run | epoch |", "|---|---|"] and lines.count("| run | epoch |") == 1
    assert lines[2:5] == ["| a | 1 |", "| a | 2 |", "| `python -m experiments.id_surrogate --label a` | |"]
    assert len(lines) == 8
