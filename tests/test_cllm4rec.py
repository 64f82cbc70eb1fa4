"""CLLM4Rec with tiny random backbones on a tiny planted dataset."""

import logging

import numpy as np
import pytest
import torch
from conftest import cllm4rec_config
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.utils import init_seed

from recbole_cllm4rec import CLLM4Rec, CLLM4RecTrainer
from recbole_cllm4rec.corpus import Document, pad_documents


def build(data_root, tmp_path, llm_path, dataset="tiny", **overrides):
    config = Config(model="CLLM4Rec", dataset=dataset, config_dict=cllm4rec_config(data_root, tmp_path, llm_path, **overrides))
    init_seed(config["seed"], config["reproducibility"])
    train_data, valid_data, test_data = data_preparation(config, create_dataset(config))
    init_seed(config["seed"], config["reproducibility"])
    model = CLLM4Rec(config, train_data._dataset)
    return config, model, train_data, valid_data, test_data


def pairs_of(dataset):
    return set(zip(dataset.inter_feat[dataset.uid_field].tolist(), dataset.inter_feat[dataset.iid_field].tolist()))


@pytest.fixture
def tiny(data_root, tmp_path, tiny_llama):
    return build(data_root, tmp_path, tiny_llama)


def test_labels_only_on_main_text(tiny):
    _, model, *_ = tiny
    corpus, space = model.corpus, model.token_space
    for documents, is_main_token in (
        (corpus.collaborative_documents(), lambda token: token >= space.item_offset),
        (corpus.content_documents, lambda token: token < space.vocab_size),
    ):
        tokens, _, target_mask = pad_documents(documents)
        for row, document in enumerate(documents):
            predicted = np.flatnonzero(target_mask[row].numpy()) + 1
            assert predicted.min() == document.main_start and predicted.max() == len(document.tokens) - 1
            assert all(is_main_token(int(tokens[row, position])) for position in predicted)
            # the prompt keeps its soft tokens and is never a target
            assert (document.tokens[: document.main_start] >= space.vocab_size).any()


def test_tied_heads_share_storage(tiny):
    _, model, *_ = tiny
    assert model.item_head.weight is model.collaborative_item_embedding.weight
    assert model.vocab_head.weight is model.backbone.get_input_embeddings().weight
    assert not model.vocab_head.weight.requires_grad
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert trainable == {f"{side}_{kind}_embedding.weight" for side in ("collaborative", "content") for kind in ("user", "item")}
    assert not any(key.startswith("backbone.") for key in model.state_dict())


def test_no_validation_or_test_item_reaches_any_corpus(tiny):
    _, model, train_data, valid_data, test_data = tiny
    train_pairs = pairs_of(train_data._dataset)
    held_back = pairs_of(valid_data._dataset) | pairs_of(test_data._dataset)
    assert held_back and not (train_pairs & held_back)
    corpus, space = model.corpus, model.token_space
    user_of = lambda tokens: int(tokens[0] - space.vocab_size)  # every template starts with the user token
    seen = set()
    for document in corpus.collaborative_documents():
        items = document.tokens[document.tokens >= space.item_offset] - space.item_offset
        seen |= {(user_of(document.tokens), int(item)) for item in items}
    documents, held_out = corpus.recommendation_documents(range(1, space.n_users), torch.Generator().manual_seed(0))
    for document, targets in zip(documents, held_out):
        items = document.tokens[document.tokens >= space.item_offset] - space.item_offset
        seen |= {(user_of(document.tokens), int(item)) for item in list(items) + list(targets)}
    for user in range(1, space.n_users):
        document = corpus.scoring_document(user)
        items = document.tokens[document.tokens >= space.item_offset] - space.item_offset
        seen |= {(user, int(item)) for item in items}
    is_user_token = lambda tokens: (tokens >= space.vocab_size) & (tokens < space.item_offset)
    reviews = [d for d in corpus.content_documents if is_user_token(d.tokens[: d.main_start]).any()
               and (d.tokens[: d.main_start] >= space.item_offset).any()]
    assert reviews
    for document in reviews:
        prompt = document.tokens[: document.main_start]
        user = int(prompt[is_user_token(prompt)][0] - space.vocab_size)
        seen.add((user, int(prompt[prompt >= space.item_offset][0] - space.item_offset)))
    assert seen == train_pairs


def test_training_losses_finite_and_decreasing_backbone_unchanged(tiny):
    config, model, train_data, valid_data, test_data = tiny
    backbone_before = {key: value.clone() for key, value in model.backbone.state_dict().items()}
    embedding_before = model.collaborative_item_embedding.weight.detach().clone()
    trainer = CLLM4RecTrainer(config, model)
    trainer.fit(train_data, valid_data, saved=True)
    losses = {}
    for stage, kind, _, language_loss, regularization in trainer.loss_history:
        assert np.isfinite(language_loss) and np.isfinite(regularization)
        losses.setdefault((stage, kind), []).append(language_loss)
    assert losses[("pretrain", "collaborative")][-1] < losses[("pretrain", "collaborative")][0]
    assert losses[("pretrain", "content")][-1] < losses[("pretrain", "content")][0]
    assert losses[("finetune", "recommendation")][-1] < losses[("finetune", "recommendation")][0]
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, backbone_before[key]), key
    assert not torch.equal(model.collaborative_item_embedding.weight, embedding_before)
    result = trainer.evaluate(test_data, load_best_model=True)
    assert 0 <= result["recall@10"] <= 1


def test_full_sort_predict_shape_predict_agreement_and_history_masking(tiny):
    config, model, train_data, valid_data, _ = tiny
    model.eval()
    users = torch.tensor([1, 2, 3, 5])
    scores = model.full_sort_predict({model.USER_ID: users})
    assert scores.shape == (4, model.n_items)
    assert torch.isinf(scores[:, 0]).all() and torch.isfinite(scores[:, 1:]).all()
    assert torch.equal(scores, model.full_sort_predict({model.USER_ID: users}))  # deterministic
    items = torch.tensor([3, 4, 7, 9])
    pointwise = model.predict({model.USER_ID: users, model.ITEM_ID: items})
    assert torch.allclose(pointwise, scores[torch.arange(4), items], atol=1e-4)
    trainer = CLLM4RecTrainer(config, model)
    trainer.tot_item_num = model.n_items
    batch = next(iter(valid_data))
    _, masked_scores, _, _ = trainer._full_sort_batch_eval(batch)
    history_rows, history_items = batch[1]
    assert len(history_rows) > 0 and torch.isinf(masked_scores[history_rows, history_items]).all()


def test_finetune_target_option(tiny):
    _, model, *_ = tiny
    documents, held_out = model.corpus.recommendation_documents([1], torch.Generator().manual_seed(0))
    _, _, (rows, items) = model.recommendation_batch(documents, held_out)
    assert rows.tolist() == [0] * len(held_out[0])
    assert sorted(items.tolist()) == sorted(held_out[0].tolist())
    model.finetune_target = "all"
    _, _, (rows, items) = model.recommendation_batch(documents, held_out)
    assert sorted(items.tolist()) == sorted(model.corpus.user_histories[1].tolist())


def interrupt_after(trainer, passes, train_data, valid_data):
    """Fit ``trainer`` until a KeyboardInterrupt after ``passes`` passes, as a killed run; returns the passes run."""
    original_run_pass, calls = trainer._run_pass, []

    def interrupted(*args, **kwargs):
        if len(calls) == passes:
            raise KeyboardInterrupt
        calls.append(args[0])
        return original_run_pass(*args, **kwargs)

    trainer._run_pass = interrupted
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(train_data, valid_data)
    return calls


# during pretraining, during finetuning; with dropout the resumed run must also continue the random stream
@pytest.mark.parametrize("interrupt_after_passes, llm_dropout, finetune_lr_decay, user_table_updates",
                         [(2, 0.0, "none", "dense"), (7, 0.0, "none", "dense"), (7, 0.3, "cosine", "dense"),
                          (2, 0.0, "none", "lazy"), (7, 0.3, "cosine", "lazy")])
def test_resume_after_interruption_matches_uninterrupted_run(data_root, tmp_path, tiny_llama, interrupt_after_passes,
                                                             llm_dropout, finetune_lr_decay, user_table_updates):
    config, model, train_data, valid_data, test_data = build(data_root, tmp_path / "a", tiny_llama, llm_dropout=llm_dropout,
                                                             finetune_lr_decay=finetune_lr_decay,
                                                             user_table_updates=user_table_updates)
    trainer = CLLM4RecTrainer(config, model)
    expected_score, _ = trainer.fit(train_data, valid_data)
    expected = trainer.evaluate(test_data, load_best_model=True)

    config, model, train_data, valid_data, test_data = build(data_root, tmp_path / "b", tiny_llama, resume=True,
                                                             llm_dropout=llm_dropout, finetune_lr_decay=finetune_lr_decay,
                                                             user_table_updates=user_table_updates)
    calls = interrupt_after(CLLM4RecTrainer(config, model), interrupt_after_passes, train_data, valid_data)

    config, model, train_data, valid_data, test_data = build(data_root, tmp_path / "b", tiny_llama, resume=True,
                                                             llm_dropout=llm_dropout, finetune_lr_decay=finetune_lr_decay,
                                                             user_table_updates=user_table_updates)
    trainer = CLLM4RecTrainer(config, model)
    resumed_calls = []
    original_run_pass = trainer._run_pass
    trainer._run_pass = lambda *args, **kwargs: resumed_calls.append(args[0]) or original_run_pass(*args, **kwargs)
    score, _ = trainer.fit(train_data, valid_data)
    assert len(calls) + len(resumed_calls) == len(trainer.pretrain_schedule) + config["epochs"]  # nothing redone
    assert score == pytest.approx(expected_score, abs=1e-6)
    assert trainer.evaluate(test_data, load_best_model=True) == expected


def test_gpt2_family_and_truncated_layers(data_root, tmp_path, tiny_gpt2):
    config, model, train_data, valid_data, test_data = build(data_root, tmp_path, tiny_gpt2, llm_num_layers=1,
                                                             mixed_precision="none", epochs=1)
    assert len(model.backbone.transformer.h) == 1
    trainer = CLLM4RecTrainer(config, model)
    trainer.fit(train_data, valid_data)
    assert "recall@10" in trainer.evaluate(test_data, load_best_model=True)


def test_zero_layers_keeps_only_the_embeddings_and_final_norm(data_root, tmp_path, tiny_llama):
    config, model, train_data, valid_data, test_data = build(data_root, tmp_path, tiny_llama, llm_num_layers=0,
                                                             user_state="mean", epochs=1)
    assert len(model.backbone.model.layers) == 0
    tokens, attention_mask, _ = pad_documents(model.corpus.collaborative_documents()[:2])
    hidden = model.hidden_states(tokens, attention_mask, "collaborative")
    own_embeddings = model.backbone.model.norm(model.embed_tokens(tokens, "collaborative"))
    assert torch.allclose(hidden, own_embeddings, atol=1e-6)  # no position sees another
    trainer = CLLM4RecTrainer(config, model)
    trainer.fit(train_data, valid_data)
    assert "recall@10" in trainer.evaluate(test_data, load_best_model=True)


def test_residual_item_head_input_skips_the_final_norm_on_the_collaborative_side_only(data_root, tmp_path, tiny_llama):
    config, model, train_data, valid_data, test_data = build(data_root, tmp_path, tiny_llama, llm_num_layers=0,
                                                             item_head_input="residual", epochs=1)
    _, normed, *_ = build(data_root, tmp_path, tiny_llama, llm_num_layers=0)
    tokens, attention_mask, _ = pad_documents(model.corpus.collaborative_documents()[:2])
    embeddings = model.embed_tokens(tokens, "collaborative")
    torch.testing.assert_close(model.hidden_states(tokens, attention_mask, "collaborative"), embeddings)
    torch.testing.assert_close(normed.hidden_states(tokens, attention_mask, "collaborative"), model.final_norm(embeddings))
    torch.testing.assert_close(model.hidden_states(tokens, attention_mask, "content"),
                               model.final_norm(model.embed_tokens(tokens, "content")))
    assert not any(key.startswith("final_norm.") for key in model.state_dict())
    assert not any(parameter.requires_grad for parameter in model.final_norm.parameters())
    trainer = CLLM4RecTrainer(config, model)
    trainer.fit(train_data, valid_data)
    assert "recall@10" in trainer.evaluate(test_data, load_best_model=True)


def test_layer_mix_reads_a_learned_mix_of_the_residual_stream_at_every_depth(data_root, tmp_path, tiny_llama, caplog):
    config, model, train_data, valid_data, test_data = build(data_root, tmp_path, tiny_llama,
                                                             item_head_input="layer_mix", epochs=1)
    depths = model.backbone.config.num_hidden_layers + 1
    assert depths >= 3 and model.layer_mix.shape == (depths,)
    torch.testing.assert_close(model.layer_mix_weights(), torch.full((depths,), 1 / depths))
    tokens, attention_mask, _ = pad_documents(model.corpus.collaborative_documents()[:2])
    truncated = [build(data_root, tmp_path, tiny_llama, item_head_input="residual", llm_num_layers=layers)[1]
                 for layers in range(depths)]
    streams = [shallow.hidden_states(tokens, attention_mask, "collaborative") for shallow in truncated]
    torch.testing.assert_close(model.hidden_states(tokens, attention_mask, "collaborative"), sum(streams) / depths)
    torch.testing.assert_close(model.hidden_states(tokens, attention_mask, "content"),
                               truncated[-1].hidden_states(tokens, attention_mask, "content"))
    assert "layer_mix" in model.state_dict()
    trainer = CLLM4RecTrainer(config, model)
    with caplog.at_level(logging.INFO):
        trainer.fit(train_data, valid_data)
    assert "layer mix" in caplog.text
    assert not torch.allclose(model.layer_mix_weights(), torch.full((depths,), 1 / depths))  # it trains
    assert "recall@10" in trainer.evaluate(test_data, load_best_model=True)


def test_layer_mix_init_sets_the_starting_weights(data_root, tmp_path, tiny_llama):
    _, model, *_ = build(data_root, tmp_path, tiny_llama, item_head_input="layer_mix", layer_mix_init=0.9)
    weights = model.layer_mix_weights()
    blocks = len(weights) - 1
    torch.testing.assert_close(weights, torch.tensor([0.9] + [0.1 / blocks] * blocks))
    logits = [2.0] + [0.0] * blocks
    _, listed, *_ = build(data_root, tmp_path, tiny_llama, item_head_input="layer_mix", layer_mix_init=logits)
    torch.testing.assert_close(listed.layer_mix_weights(), torch.softmax(torch.tensor(logits), 0))
    for bad in (1.5, 0, [1.0, 2.0] * (blocks + 3), "input"):
        with pytest.raises(ValueError, match="layer_mix_init"):
            build(data_root, tmp_path, tiny_llama, item_head_input="layer_mix", layer_mix_init=bad)
    _, blockless, *_ = build(data_root, tmp_path, tiny_llama, item_head_input="layer_mix", layer_mix_init=0.9,
                             llm_num_layers=0)  # the no-transformer ablation of a profile that sets a start weight
    torch.testing.assert_close(blockless.layer_mix_weights(), torch.ones(1))
    documents = blockless.corpus.collaborative_documents()[:4]
    assert torch.isfinite(blockless.document_loss("collaborative", documents)[0])


def test_soft_token_scale_multiplies_only_the_id_embeddings(data_root, tmp_path, tiny_llama):
    _, plain, *_ = build(data_root, tmp_path, tiny_llama)
    _, scaled, *_ = build(data_root, tmp_path, tiny_llama, soft_token_scale=3.0)
    tokens, _, _ = pad_documents(plain.corpus.collaborative_documents()[:3])
    is_soft = (tokens >= plain.token_space.vocab_size).unsqueeze(-1)
    for side in ("collaborative", "content"):
        expected = torch.where(is_soft, 3 * plain.embed_tokens(tokens, side), plain.embed_tokens(tokens, side))
        torch.testing.assert_close(scaled.embed_tokens(tokens, side), expected)
    torch.testing.assert_close(scaled.item_head.weight, plain.item_head.weight)  # the head reads them unscaled


def test_dataset_without_text_trains_collaborative_only(data_root, tmp_path, tiny_llama, caplog):
    config, model, train_data, valid_data, _ = build(data_root, tmp_path, tiny_llama, dataset="tiny-notext",
                                                     load_col={"inter": ["user_id", "item_id", "timestamp"]})
    assert not model.corpus.has_content
    assert "no usable text" in model.corpus.content_summary
    trainer = CLLM4RecTrainer(config, model)
    assert set(trainer.pretrain_schedule) == {"collaborative"}
    trainer.fit(train_data, valid_data)


def test_content_lm_off_drops_every_content_part(data_root, tmp_path, tiny_llama):
    config, model, *_ = build(data_root, tmp_path, tiny_llama, content_lm=False)
    assert not model.corpus.has_content and "content_lm is False" in model.corpus.content_summary
    assert set(CLLM4RecTrainer(config, model).pretrain_schedule) == {"collaborative"}
    documents = model.corpus.collaborative_documents()
    tokens, _, _ = pad_documents(documents)
    assert float(model.mutual_regularization(tokens, "collaborative")) == 0.0


def test_bad_options_are_rejected(data_root, tmp_path, tiny_llama):
    with pytest.raises(ValueError, match="finetune_target"):
        build(data_root, tmp_path, tiny_llama, finetune_target="everything")
    with pytest.raises(ValueError, match="llm_num_layers"):
        build(data_root, tmp_path, tiny_llama, llm_num_layers=5)
    with pytest.raises(ValueError, match="llm_num_layers"):
        build(data_root, tmp_path, tiny_llama, llm_num_layers=-1)
    with pytest.raises(ValueError, match="user_state"):
        build(data_root, tmp_path, tiny_llama, user_state="first")
    with pytest.raises(ValueError, match="soft_token_scale"):
        build(data_root, tmp_path, tiny_llama, soft_token_scale=0)
    with pytest.raises(ValueError, match="item_head_input"):
        build(data_root, tmp_path, tiny_llama, item_head_input="raw")
    with pytest.raises(OSError, match="llm_path"):
        build(data_root, tmp_path, tiny_llama + "-missing")


def test_planted_structure_beats_pop(data_root, tmp_path, tiny_llama):
    from conftest import protocol
    from recbole.quick_start import run_recbole

    cllm = run_recbole(model="CLLM4Rec", dataset="tiny", config_dict=cllm4rec_config(
        data_root, tmp_path, tiny_llama, epochs=20, pretrain_rounds=4, learning_rate=0.02), saved=True)
    pop = run_recbole(model="Pop", dataset="tiny", config_dict=protocol(data_root, tmp_path))
    assert cllm["test_result"]["recall@5"] > pop["test_result"]["recall@5"] + 0.2


def test_registration_with_plain_recbole_calls(data_root, tmp_path, tiny_llama):
    from recbole.quick_start import load_data_and_model, objective_function
    from recbole.utils import get_model, get_trainer

    assert get_model("CLLM4Rec") is CLLM4Rec and get_trainer(None, "CLLM4Rec") is CLLM4RecTrainer
    config = dict(cllm4rec_config(data_root, tmp_path, tiny_llama, epochs=1, pretrain_rounds=1), model="CLLM4Rec", dataset="tiny")
    result = objective_function(config_dict=config)
    assert set(result) >= {"best_valid_score", "valid_score_bigger", "best_valid_result", "test_result"}
    (checkpoint,) = (tmp_path / "saved").glob("CLLM4Rec-tiny-*-best.pth")
    saved = torch.load(checkpoint, weights_only=False)
    assert not any(key.startswith("backbone.") for key in saved["state_dict"])  # only what trains is written
    loaded_config, model, *_ = load_data_and_model(str(checkpoint))
    assert loaded_config["model"] == "CLLM4Rec"
    assert torch.equal(model.collaborative_item_embedding.weight, saved["state_dict"]["collaborative_item_embedding.weight"])


def test_item_logit_scale_multiplies_item_logits_and_trains(data_root, tmp_path, tiny_llama):
    _, plain, *_ = build(data_root, tmp_path, tiny_llama)
    _, scaled, *_ = build(data_root, tmp_path, tiny_llama, item_logit_scale=0.25)
    assert plain.item_logit_scale is None and "item_logit_scale" in scaled.state_dict()
    scaled.load_state_dict(plain.state_dict() | {"item_logit_scale": scaled.item_logit_scale.detach().clone()})
    users = {plain.USER_ID: torch.arange(1, 5)}
    plain.eval(), scaled.eval()
    expected, observed = plain.full_sort_predict(users), scaled.full_sort_predict(users)
    assert torch.isinf(observed[:, 0]).all()
    torch.testing.assert_close(observed[:, 1:], 0.25 * expected[:, 1:])

    optimizer = torch.optim.Adam(scaled.trainable_parameters(), lr=0.01)
    documents, held_out = scaled.corpus.recommendation_documents(range(1, 9), torch.Generator().manual_seed(0))
    language_loss, regularization, _ = scaled.document_loss("recommendation", documents, held_out)
    (language_loss + regularization).backward()
    optimizer.step()
    assert float(scaled.item_logit_scale) != 0.25

    _, per_dimension, *_ = build(data_root, tmp_path, tiny_llama, item_logit_scale=0.25, item_logit_scale_per_dimension=True)
    assert per_dimension.item_logit_scale.shape == (per_dimension.collaborative_item_embedding.embedding_dim,)
    per_dimension.load_state_dict(plain.state_dict() | {"item_logit_scale": per_dimension.item_logit_scale.detach().clone()})
    per_dimension.eval()
    torch.testing.assert_close(per_dimension.full_sort_predict(users)[:, 1:], 0.25 * expected[:, 1:])


def one_finetuning_step(model):
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=0.01)
    documents, held_out = model.corpus.recommendation_documents(range(1, 9), torch.Generator().manual_seed(0))
    language_loss, regularization, _ = model.document_loss("recommendation", documents, held_out)
    (language_loss + regularization).backward()
    optimizer.step()


def test_item_bias_and_untied_head_are_options_that_train(data_root, tmp_path, tiny_llama):
    _, plain, *_ = build(data_root, tmp_path, tiny_llama)
    _, biased, *_ = build(data_root, tmp_path, tiny_llama, item_bias=True)
    assert plain.item_head.bias is None and "item_head.bias" in biased.state_dict()
    biased.load_state_dict(plain.state_dict() | {"item_head.bias": torch.arange(biased.n_items, dtype=torch.float)})
    users = {plain.USER_ID: torch.arange(1, 5)}
    plain.eval(), biased.eval()
    torch.testing.assert_close(biased.full_sort_predict(users)[:, 1:],
                               plain.full_sort_predict(users)[:, 1:] + torch.arange(1, plain.n_items, dtype=torch.float))
    one_finetuning_step(biased)
    assert not torch.equal(biased.item_head.bias, torch.arange(biased.n_items, dtype=torch.float))

    _, untied, *_ = build(data_root, tmp_path, tiny_llama, item_head_tied=False)
    assert plain.item_head.weight is plain.collaborative_item_embedding.weight
    assert untied.item_head.weight is not untied.collaborative_item_embedding.weight
    assert not torch.equal(untied.item_head.weight, untied.collaborative_item_embedding.weight)  # drawn on its own
    head_before = untied.item_head.weight.detach().clone()
    one_finetuning_step(untied)
    assert not torch.equal(untied.item_head.weight, head_before)


def test_probe_metrics_match_recbole_evaluator(tiny):
    from experiments import common as probe
    config, model, train_data, valid_data, _ = tiny
    targets = probe.validation_subset(valid_data._dataset, n_users=10**6)
    recall, ndcg = probe.recall_ndcg(model, targets, k_recall=10, k_ndcg=10)
    result = CLLM4RecTrainer(config, model).evaluate(valid_data, load_best_model=False)
    assert recall == pytest.approx(result["recall@10"], abs=1e-4)
    assert ndcg == pytest.approx(result["ndcg@10"], abs=1e-4)


def short_and_long_prompts(model):
    """User 1's scoring prompt and a shorter one cut from it: batched together, the short one is padded."""
    long = model.corpus.scoring_document(1)
    return Document(np.concatenate([long.tokens[:4], long.tokens[-3:]]), 7), long


def test_padded_and_unpadded_batches_give_the_same_representation(tiny):
    _, model, *_ = tiny
    model.eval()
    short, long = short_and_long_prompts(model)
    with torch.no_grad():
        tokens, attention_mask, _ = pad_documents([short, long])
        assert not attention_mask.all()
        padded = model.hidden_states(tokens, attention_mask, "collaborative")[0, len(short.tokens) - 1]
        tokens, attention_mask, _ = pad_documents([short])
        assert attention_mask.all()
        alone = model.hidden_states(tokens, attention_mask, "collaborative")[0, -1]
    torch.testing.assert_close(padded, alone, rtol=1e-4, atol=1e-4)


def test_mean_user_state_averages_the_prompt_whatever_the_padding(data_root, tmp_path, tiny_llama):
    _, last, *_ = build(data_root, tmp_path, tiny_llama)
    _, mean, *_ = build(data_root, tmp_path, tiny_llama, user_state="mean")
    last.eval(), mean.eval()
    users = [1, 2, 3, 4]
    short, long = short_and_long_prompts(mean)
    with torch.no_grad():
        def alone(document):
            tokens, attention_mask, _ = pad_documents([document])
            return mean.hidden_states(tokens, attention_mask, "collaborative")[0].mean(0)

        tokens, attention_mask, _ = pad_documents([short, long])
        assert not attention_mask.all()
        padded = mean.prompt_states(mean.hidden_states(tokens, attention_mask, "collaborative"), attention_mask, tokens)
        torch.testing.assert_close(padded, torch.stack([alone(short), alone(long)]), rtol=1e-4, atol=1e-4)

        expected = torch.stack([alone(mean.corpus.scoring_document(user)) for user in users])
        torch.testing.assert_close(mean.user_representations(users), expected, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(last.user_representations(users), expected, atol=1e-3)
        scores = mean.full_sort_predict({mean.USER_ID: torch.tensor(users)})
    torch.testing.assert_close(scores[:, 1:], mean._item_logits(expected)[:, 1:])
    before = mean.collaborative_item_embedding.weight.detach().clone()
    one_finetuning_step(mean)
    assert not torch.equal(mean.collaborative_item_embedding.weight, before)


def test_history_mean_user_state_averages_only_the_history_items(data_root, tmp_path, tiny_llama):
    _, model, *_ = build(data_root, tmp_path, tiny_llama, user_state="history_mean")
    model.eval()
    short, long = short_and_long_prompts(model)
    no_history = model.corpus.recommendation_template.render(user=1, history=[])
    documents = [short, long, Document(no_history, len(no_history))]
    with torch.no_grad():
        def alone(document):
            tokens, attention_mask, _ = pad_documents([document])
            hidden = model.hidden_states(tokens, attention_mask, "collaborative")[0]
            is_item = tokens[0] >= model.token_space.item_offset
            return hidden[is_item].mean(0) if is_item.any() else hidden.mean(0)

        tokens, attention_mask, _ = pad_documents(documents)
        states = model.prompt_states(model.hidden_states(tokens, attention_mask, "collaborative"), attention_mask, tokens)
    torch.testing.assert_close(states, torch.stack([alone(document) for document in documents]), rtol=1e-4, atol=1e-4)


def test_text_mean_init_reads_item_text_without_the_content_lm(data_root, tmp_path, tiny_llama):
    _, plain, *_ = build(data_root, tmp_path / "plain", tiny_llama, content_lm=False)
    _, warm, *_ = build(data_root, tmp_path / "warm", tiny_llama, content_lm=False, id_embedding_init="text_mean")
    text_means = warm.corpus.item_text_token_means(warm.backbone.get_input_embeddings().weight.detach())
    assert text_means and not warm.corpus.has_content
    item, mean = next(iter(text_means.items()))
    assert torch.allclose(warm.collaborative_item_embedding.weight[item], mean)
    assert not torch.allclose(plain.collaborative_item_embedding.weight[item], mean)


def test_text_mean_init_without_item_text_is_refused(data_root, tmp_path, tiny_llama):
    with pytest.raises(ValueError, match="text_mean needs item text"):
        build(data_root, tmp_path, tiny_llama, id_embedding_init="text_mean", item_text_fields=[])


def test_id_embedding_max_norm_caps_every_trained_row(data_root, tmp_path, tiny_llama):
    config, model, train_data, valid_data, _ = build(data_root, tmp_path, tiny_llama, id_embedding_max_norm=0.05,
                                                     epochs=1)
    tables = (model.collaborative_user_embedding, model.collaborative_item_embedding,
              model.content_user_embedding, model.content_item_embedding)
    assert max(float(table.weight.norm(dim=1).max()) for table in tables) > 0.05  # the start is above the cap
    CLLM4RecTrainer(config, model).fit(train_data, valid_data)
    for table in tables:
        assert float(table.weight.norm(dim=1).max()) <= 0.05 * (1 + 1e-5)
    _, free, *_ = build(data_root, tmp_path / "free", tiny_llama, epochs=1)
    before = free.collaborative_item_embedding.weight.detach().clone()
    free.constrain_id_embeddings()  # no limit: nothing moves
    assert torch.equal(before, free.collaborative_item_embedding.weight)
    with pytest.raises(ValueError, match="id_embedding_max_norm"):
        build(data_root, tmp_path / "bad", tiny_llama, id_embedding_max_norm=0)


@pytest.mark.parametrize("backbone", ["tiny_llama", "tiny_gpt2"])
def test_llm_dropout_only_while_training(data_root, tmp_path, backbone, request):
    _, model, *_ = build(data_root, tmp_path, request.getfixturevalue(backbone), llm_dropout=0.5, mixed_precision="none")
    tokens, attention_mask, _ = pad_documents(model.corpus.collaborative_documents()[:3])
    model.eval()
    with torch.no_grad():
        first, second = (model.hidden_states(tokens, attention_mask, "collaborative") for _ in range(2))
    assert torch.equal(first, second)
    model.train()
    assert not model.backbone.training  # its own dropout modules stay off
    with torch.no_grad():
        dropped = model.hidden_states(tokens, attention_mask, "collaborative")
    assert not torch.allclose(dropped, first)
    _, plain, *_ = build(data_root, tmp_path / "plain", request.getfixturevalue(backbone), mixed_precision="none")
    plain.train()
    with torch.no_grad():
        assert torch.equal(plain.hidden_states(tokens, attention_mask, "collaborative"), first)
    with pytest.raises(ValueError, match="llm_dropout"):
        build(data_root, tmp_path / "bad", request.getfixturevalue(backbone), llm_dropout=1.0)


def test_user_learning_rate_scale_sets_the_user_tables_rate(data_root, tmp_path, tiny_llama):
    from recbole_cllm4rec.trainer import optimizer_for

    config, model, *_ = build(data_root, tmp_path, tiny_llama, user_learning_rate_scale=10.0)
    optimizer = optimizer_for(config, model, 1e-3)
    rates = {id(parameter): group["lr"] for group in optimizer.param_groups for parameter in group["params"]}
    assert rates[id(model.collaborative_user_embedding.weight)] == pytest.approx(1e-2)
    assert rates[id(model.content_user_embedding.weight)] == pytest.approx(1e-2)
    assert rates[id(model.collaborative_item_embedding.weight)] == pytest.approx(1e-3)
    assert len(rates) == len(model.trainable_parameters())  # every trainable table once
    with pytest.raises(ValueError, match="user_learning_rate_scale"):
        build(data_root, tmp_path / "bad", tiny_llama, user_learning_rate_scale=0)


@pytest.mark.parametrize("decay, factors", [("none", [1, 1, 1]), ("linear", [1, 2 / 3, 1 / 3]), ("cosine", [1, 0.75, 0.25])])
def test_finetune_lr_decay_sets_each_epochs_rate(data_root, tmp_path, tiny_llama, decay, factors):
    config, model, train_data, valid_data, _ = build(data_root, tmp_path, tiny_llama, finetune_lr_decay=decay,
                                                     user_learning_rate_scale=10.0, stopping_step=10)
    trainer = CLLM4RecTrainer(config, model)
    rates, original_run_pass = [], trainer._run_pass

    def recording(kind, generator, optimizer, description):
        if kind == "recommendation":
            rates.append([group["lr"] for group in optimizer.param_groups])
        return original_run_pass(kind, generator, optimizer, description)

    trainer._run_pass = recording
    trainer.fit(train_data, valid_data)
    learning_rate = config["learning_rate"]
    assert rates == [pytest.approx([learning_rate * factor, 10 * learning_rate * factor]) for factor in factors]


def test_plateau_decay_follows_validation_and_stops_when_it_stalls(data_root, tmp_path, tiny_llama):
    config, model, train_data, valid_data, _ = build(data_root, tmp_path, tiny_llama, finetune_lr_decay="plateau",
                                                     plateau_decay_factor=0.5, epochs=30, stopping_step=2,
                                                     learning_rate=0.05)
    trainer = CLLM4RecTrainer(config, model)
    rates, scores, original_run_pass = [], [], trainer._run_pass

    def recording(kind, generator, optimizer, description):
        if kind == "recommendation":
            rates.append(optimizer.param_groups[0]["lr"])
        return original_run_pass(kind, generator, optimizer, description)

    trainer._run_pass = recording
    trainer.fit(train_data, valid_data, callback_fn=lambda epoch, score: scores.append(score))
    # the rate at each epoch is halved once per earlier validation that did not reach the best so far
    expected, best, factor = [], -1.0, 1.0
    for score in scores:
        expected.append(0.05 * factor)
        if score >= best:
            best = score
        else:
            factor *= 0.5
    assert rates == pytest.approx(expected)
    assert len(rates) < 30, "the run must stop once validation stalls, not at the epoch cap"
    # RecBole's rule: stop at the (stopping_step + 1)-th validation in a row below the best
    assert scores[-4] == max(scores) and all(score < max(scores) for score in scores[-3:])


@pytest.mark.parametrize("interrupt_after_passes", [6, 9])
def test_plateau_decay_resumes_exactly(data_root, tmp_path, tiny_llama, interrupt_after_passes):
    settings = dict(finetune_lr_decay="plateau", epochs=12, stopping_step=3, learning_rate=0.05)
    config, model, train_data, valid_data, test_data = build(data_root, tmp_path / "a", tiny_llama, **settings)
    trainer = CLLM4RecTrainer(config, model)
    expected_score, _ = trainer.fit(train_data, valid_data)
    expected = trainer.evaluate(test_data, load_best_model=True)
    expected_factor = trainer.plateau_factor

    config, model, train_data, valid_data, _ = build(data_root, tmp_path / "b", tiny_llama, resume=True, **settings)
    calls = interrupt_after(CLLM4RecTrainer(config, model), interrupt_after_passes, train_data, valid_data)
    config, model, train_data, valid_data, test_data = build(data_root, tmp_path / "b", tiny_llama, resume=True, **settings)
    trainer = CLLM4RecTrainer(config, model)
    score, _ = trainer.fit(train_data, valid_data)
    assert score == pytest.approx(expected_score, abs=1e-6)
    assert trainer.plateau_factor == expected_factor
    assert trainer.evaluate(test_data, load_best_model=True) == expected


def test_random_initialisation_keeps_the_architecture_and_draws_new_weights(data_root, tmp_path, tiny_llama):
    _, pretrained, *_ = build(data_root, tmp_path / "a", tiny_llama)
    config, random, train_data, valid_data, test_data = build(data_root, tmp_path / "b", tiny_llama,
                                                             llm_initialisation="random", epochs=1)
    pretrained_weights, random_weights = pretrained.backbone.state_dict(), random.backbone.state_dict()
    assert pretrained_weights.keys() == random_weights.keys()
    assert all(pretrained_weights[key].shape == random_weights[key].shape for key in pretrained_weights)
    changed = [key for key in pretrained_weights if not torch.equal(pretrained_weights[key], random_weights[key])]
    assert any("embed" in key for key in changed) and any("layers.0" in key for key in changed)
    assert not any(parameter.requires_grad for parameter in random.backbone.parameters())
    trainer = CLLM4RecTrainer(config, random)
    trainer.fit(train_data, valid_data)
    assert "recall@10" in trainer.evaluate(test_data, load_best_model=True)
    with pytest.raises(ValueError, match="llm_initialisation"):
        build(data_root, tmp_path / "c", tiny_llama, llm_initialisation="scratch")


def test_unknown_finetune_lr_decay_is_refused(data_root, tmp_path, tiny_llama):
    with pytest.raises(ValueError, match="finetune_lr_decay='step' is not allowed: one of none, linear, cosine, plateau"):
        build(data_root, tmp_path, tiny_llama, finetune_lr_decay="step")


@pytest.mark.parametrize("overrides, message", [
    ({"train_batch_tokens": 8}, "train_batch_tokens=8 is not allowed: at least the longest document"),
    ({"plateau_decay_factor": 1.0}, "plateau_decay_factor=1.0 is not allowed: a number > 0 and < 1"),
    ({"llm_num_layers": 1.5}, "llm_num_layers=1.5 is not allowed: an integer >= 0 or ~"),
    ({"learning_rate": 0}, "learning_rate=0 is not allowed: a number > 0"),
])
def test_impossible_values_are_refused_with_their_allowed_range(data_root, tmp_path, tiny_llama, overrides, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        build(data_root, tmp_path, tiny_llama, **overrides)


def user_rows_after_two_steps(config, model):
    """The collaborative user table before, after a step on users 1-8, and after a second step on users 9-16."""
    from recbole_cllm4rec.trainer import optimizer_for

    optimizer, table = optimizer_for(config, model, 0.01), model.collaborative_user_embedding.weight
    snapshots = [table.detach().clone()]
    for users in (range(1, 9), range(9, 17)):
        documents, held_out = model.corpus.recommendation_documents(users, torch.Generator().manual_seed(0))
        optimizer.zero_grad(set_to_none=True)
        language_loss, regularization, _ = model.document_loss("recommendation", documents, held_out)
        (language_loss + regularization).backward()
        optimizer.step()
        snapshots.append(table.detach().clone())
    return snapshots


def test_lazy_user_table_updates_move_only_the_batchs_users(data_root, tmp_path, tiny_llama):
    lazy = build(data_root, tmp_path / "lazy", tiny_llama, user_table_updates="lazy")[:2]
    start, first, second = user_rows_after_two_steps(*lazy)
    moved = lambda before, after: set(torch.nonzero((after != before).any(1)).flatten().tolist())
    assert moved(start, first) == set(range(1, 9))
    assert moved(first, second) == set(range(9, 17))  # users 1-8 stay put once their batch has passed

    dense = build(data_root, tmp_path / "dense", tiny_llama)[:2]
    start, first, second = user_rows_after_two_steps(*dense)
    assert moved(start, first) == set(range(1, 9))  # their first step: rows without a gradient have no moments yet
    assert moved(first, second) == set(range(1, 17))  # dense Adam's moments carry users 1-8 on
    # the first step moves the same rows the same way (about lr * sign(gradient) either way; SparseAdam adds eps
    # before the bias correction, Adam after it, so tiny gradients take slightly smaller steps)
    lazy_again = build(data_root, tmp_path / "lazy-again", tiny_llama, user_table_updates="lazy")[:2]
    assert torch.equal(torch.sign(user_rows_after_two_steps(*lazy_again)[1] - start), torch.sign(first - start))


def test_lazy_user_table_updates_refuse_what_sparse_gradients_cannot_do(data_root, tmp_path, tiny_llama):
    with pytest.raises(ValueError, match="user_table_updates=lazy works with one process and no clip_grad_norm"):
        build(data_root, tmp_path, tiny_llama, user_table_updates="lazy", clip_grad_norm={"max_norm": 1.0})
    with pytest.raises(ValueError, match="user_table_updates=lazy takes no weight_decay"):
        build(data_root, tmp_path / "decay", tiny_llama, user_table_updates="lazy", weight_decay=1e-4)
    with pytest.raises(ValueError, match="user_table_updates"):
        build(data_root, tmp_path / "bad", tiny_llama, user_table_updates="sparse")


@pytest.mark.parametrize("settings, profile, layers", [
    ({}, "cpu", 2), ({"profile": "cpu", "llm_num_layers": 1}, "cpu", 1), ({"profile": "paper"}, "paper", None),
    ({"profile": "none"}, "none", None)])
def test_profile_auto_picks_the_cpu_profile_without_a_gpu_and_user_settings_win(data_root, settings, profile, layers,
                                                                              monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = Config(model="CLLM4Rec", dataset="tiny", config_dict={"data_path": str(data_root), **settings})
    assert config["profile_applied"] == profile and config["llm_num_layers"] == layers
    assert config["epochs"] == {"cpu": 40, "paper": 150, "none": 150}[profile]
    if profile == "cpu":
        assert config["finetune_lr_decay"] == "plateau" and config["content_lm"] is False


def test_profile_auto_picks_the_papers_model_on_a_gpu(data_root, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    config = Config(model="CLLM4Rec", dataset="tiny", config_dict={"data_path": str(data_root), "use_gpu": False})
    assert config["profile_applied"] == "cpu"  # a GPU the user turned off is no GPU
    from recbole_cllm4rec.profiles import resolve_profile

    assert resolve_profile({}) == ("paper", "auto: a GPU is available")
    with pytest.raises(ValueError, match="profile must be one of"):
        resolve_profile({"profile": "fast"})


@pytest.mark.parametrize("setting", ["auto", "none"])
def test_profile_line_names_the_precision_auto_chose(data_root, tmp_path, tiny_llama, caplog, setting):
    with caplog.at_level(logging.INFO):
        _, model, *_ = build(data_root, tmp_path, tiny_llama, mixed_precision=setting, epochs=1)
    line = next(record.getMessage() for record in caplog.records if "CLLM4Rec profile" in record.getMessage())
    named = "bf16 autocast" if model.mixed_precision == "bf16" else "fp32"
    assert line.endswith(named + (" (mixed_precision: auto)" if setting == "auto" else ""))


def test_first_log_lines_name_the_profile_and_estimate_the_time(data_root, tmp_path, tiny_llama, caplog):
    config, model, train_data, valid_data, _ = build(data_root, tmp_path, tiny_llama, epochs=2)
    trainer = CLLM4RecTrainer(config, model)
    with caplog.at_level(logging.INFO):
        trainer.fit(train_data, valid_data)
    estimates = [record.getMessage() for record in caplog.records if "Time estimate" in record.getMessage()]
    assert len(estimates) == 2 and all("finetuning epochs" in text and "tokens/s" in text for text in estimates)
    assert "up to 1 finetuning epochs" in estimates[1] and "scoring" in estimates[1]  # refined after epoch 1
    tokens = model.corpus.tokens_per_pass()
    assert tokens["scoring"] == sum(len(model.corpus.scoring_document(user).tokens)
                                    for user in range(1, len(model.corpus.user_histories)))
    assert tokens["collaborative"] > 0 and tokens["content"] > 0


def test_building_the_model_leaves_the_process_malloc_alone(data_root, tmp_path, tiny_llama, monkeypatch):
    from recbole_cllm4rec.benchmark import cpu_memory

    calls = []
    monkeypatch.setattr(cpu_memory, "keep_freed_memory", lambda: calls.append(1) or True)
    build(data_root, tmp_path, tiny_llama, cpu_keep_freed_memory=True)
    assert calls == []  # the benchmark runner applies it, where it is documented


def test_resume_with_another_configuration_names_the_differences_and_refuses(data_root, tmp_path, tiny_llama):
    config, model, train_data, valid_data, _ = build(data_root, tmp_path, tiny_llama, resume=True, epochs=1)
    CLLM4RecTrainer(config, model).fit(train_data, valid_data)
    config, model, train_data, valid_data, _ = build(data_root, tmp_path, tiny_llama, resume=True, epochs=2)
    with pytest.raises(ValueError, match=r"differs in epochs: 1 -> 2.*--resume=False"):
        CLLM4RecTrainer(config, model).fit(train_data, valid_data)
    config, model, train_data, valid_data, _ = build(data_root, tmp_path, tiny_llama, resume=False, epochs=2)
    CLLM4RecTrainer(config, model).fit(train_data, valid_data)  # asked to start afresh: it does


def test_a_damaged_checkpoint_is_named_with_what_to_do(data_root, tmp_path, tiny_llama):
    config, model, train_data, valid_data, _ = build(data_root, tmp_path, tiny_llama, resume=True, epochs=1)
    trainer = CLLM4RecTrainer(config, model)
    trainer.fit(train_data, valid_data)
    with open(trainer.last_checkpoint_file, "r+b") as handle:
        handle.truncate(100)
    config, model, train_data, valid_data, _ = build(data_root, tmp_path, tiny_llama, resume=True, epochs=1)
    trainer = CLLM4RecTrainer(config, model)
    with pytest.raises(ValueError, match=r"-last.pth cannot be read .*damaged or incomplete: move it away"):
        trainer.fit(train_data, valid_data)
