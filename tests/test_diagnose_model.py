"""experiments/diagnose_model.py's drift report: how far training moved the ID tables from their seeded start."""


import pytest
import torch
from test_cllm4rec import build

from experiments import diagnose_model


def test_drift_separates_a_shared_move_from_each_row_moving_its_own_way(data_root, tmp_path, tiny_llama):
    _, model, *_ = build(data_root, tmp_path, tiny_llama)
    names = ("collaborative_user_embedding", "collaborative_item_embedding")
    start = {name: getattr(model, name).weight.detach().clone() for name in names}
    shared = torch.zeros(model.collaborative_user_embedding.weight.shape[1])
    shared[0] = 3.0
    own = torch.randn(start["collaborative_item_embedding"].shape, generator=torch.Generator().manual_seed(0))
    own[1:] -= own[1:].mean(0)  # no shared part among the real rows
    with torch.no_grad():
        model.collaborative_user_embedding.weight.add_(shared)
        model.collaborative_item_embedding.weight.add_(own)
    rows, (token_mean, token_max) = diagnose_model.embedding_drift(model, start)
    user, item = rows
    assert user[0] == names[0] and user[3] == pytest.approx(3.0, rel=1e-4) and user[4] == pytest.approx(3.0, rel=1e-4)
    assert item[3] == pytest.approx(float(own[1:].norm(dim=1).mean()), rel=1e-4) and item[4] < 1e-4
    assert item[2] == pytest.approx(float(model.collaborative_item_embedding.weight[1:].norm(dim=1).mean()))
    assert 0 < token_mean <= token_max
