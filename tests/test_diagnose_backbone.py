"""experiments/diagnose_backbone.py: how much of a soft token's identity reaches the item head."""


import pytest
from test_cllm4rec import build

from experiments import diagnose_backbone


def scoring_documents(model):
    return [model.corpus.scoring_document(user) for user in range(1, 6)]


def test_without_blocks_the_state_is_the_scaled_soft_token(data_root, tmp_path, tiny_llama):
    _, model, *_ = build(data_root, tmp_path, tiny_llama, llm_num_layers=0, item_head_input="residual",
                         soft_token_scale=4.0)
    identity = diagnose_backbone.soft_token_identity(model, scoring_documents(model))
    assert identity["block output norm"] == pytest.approx(0, abs=1e-5)
    assert identity["cosine token-state"] == pytest.approx(1, abs=1e-5)
    _, unscaled, *_ = build(data_root, tmp_path, tiny_llama, llm_num_layers=0, item_head_input="residual")
    unscaled_norm = diagnose_backbone.soft_token_identity(unscaled, scoring_documents(unscaled))["soft token norm"]
    assert identity["soft token norm"] == pytest.approx(4 * unscaled_norm, rel=1e-5)


def test_a_larger_scale_keeps_more_of_the_token_through_the_blocks(data_root, tmp_path, tiny_llama):
    cosines = []
    for scale in (1.0, 50.0):
        _, model, *_ = build(data_root, tmp_path, tiny_llama, item_head_input="residual", soft_token_scale=scale)
        identity = diagnose_backbone.soft_token_identity(model, scoring_documents(model))
        assert identity["block output norm"] > 0
        cosines.append(identity["cosine token-state"])
    assert cosines[1] > cosines[0]
