"""Sequential RecBole models (SASRec, BERT4Rec, ...) under the same per-user random split as general models.

RecBole's ``SequentialDataset`` insists on time order and splits each user's *time-sorted* sequence, and
its evaluator scores one target per row. To put sequential models in the same table as Mult-VAE, this
module keeps the general pipeline unchanged (same ``Dataset``, same seeded RS/RO split, same samplers,
same per-user full-ranking evaluator) and only changes what the sequential model sees:

- training: each user's *training* items in time order become next-item examples
  ``(items[:k] -> items[k])``, the last ``MAX_ITEM_LIST_LENGTH`` items as context, like RecBole's own
  augmentation;
- validation and test: the model's input is the user's whole training sequence (time order), exactly
  the information general models get; validation and test items are targets, never inputs.
"""

import numpy as np
import torch
from recbole.data.dataloader import FullSortEvalDataLoader, TrainDataLoader
from recbole.data.interaction import Interaction
from recbole.data.utils import create_samplers
from recbole.trainer import Trainer
from recbole.utils import ModelType

from recbole_cllm4rec.data.histories import user_histories


def next_item_examples(train_dataset, max_length, item_seq_field, item_seq_len_field):
    """The training split as next-item examples, as a copy of the training dataset."""
    uid_field, iid_field = train_dataset.uid_field, train_dataset.iid_field
    users, targets, sequences, lengths = [], [], [], []
    for user, items in enumerate(user_histories(train_dataset)):
        for k in range(1, len(items)):
            context = items[max(0, k - max_length):k]
            users.append(user)
            targets.append(items[k])
            sequences.append(np.pad(context, (0, max_length - len(context))))
            lengths.append(len(context))
    examples = Interaction({
        uid_field: torch.tensor(users, dtype=torch.long),
        iid_field: torch.tensor(targets, dtype=torch.long),
        item_seq_field: torch.tensor(np.asarray(sequences), dtype=torch.long).reshape(-1, max_length),
        item_seq_len_field: torch.tensor(lengths, dtype=torch.long),
    })
    return train_dataset.copy(examples)


def user_sequence_table(train_dataset, max_length):
    """Padded ``[n_users, max_length]`` training sequences (most recent items) and their lengths."""
    sequences = torch.zeros(train_dataset.user_num, max_length, dtype=torch.long)
    lengths = torch.ones(train_dataset.user_num, dtype=torch.long)  # length >= 1 keeps gathers in range
    for user, items in enumerate(user_histories(train_dataset)):
        recent = items[-max_length:]
        sequences[user, : len(recent)] = torch.as_tensor(recent)
        lengths[user] = max(len(recent), 1)
    return sequences, lengths


def sequential_data_preparation(config, dataset):
    """``train, valid, test`` loaders: next-item training examples, per-user full-ranking evaluation."""
    built = dataset.build()
    train_dataset, valid_dataset, test_dataset = built
    train_sampler, valid_sampler, test_sampler = create_samplers(config, dataset, built)
    max_length = config["MAX_ITEM_LIST_LENGTH"]
    item_seq_field = config["ITEM_ID_FIELD"] + config["LIST_SUFFIX"]
    examples = next_item_examples(train_dataset, max_length, item_seq_field, config["ITEM_LIST_LENGTH_FIELD"])
    train_data = TrainDataLoader(config, examples, train_sampler, shuffle=config["shuffle"])
    model_type = config["MODEL_TYPE"]
    config["MODEL_TYPE"] = ModelType.GENERAL  # FullSortEvalDataLoader groups by user only for general models
    try:
        valid_data = FullSortEvalDataLoader(config, valid_dataset, valid_sampler, shuffle=False)
        test_data = FullSortEvalDataLoader(config, test_dataset, test_sampler, shuffle=False)
    finally:
        config["MODEL_TYPE"] = model_type
    user_sequences = user_sequence_table(train_dataset, max_length)
    return train_data, valid_data, test_data, user_sequences


class UserSplitSequentialTrainer(Trainer):
    """RecBole's trainer, whose full-ranking evaluation feeds each user's training sequence to the model."""

    def __init__(self, config, model, user_sequences):
        super().__init__(config, model)
        self.user_sequences, self.user_lengths = user_sequences
        self.item_seq_field = config["ITEM_ID_FIELD"] + config["LIST_SUFFIX"]
        self.item_seq_len_field = config["ITEM_LIST_LENGTH_FIELD"]

    def _full_sort_batch_eval(self, batched_data):
        interaction = batched_data[0]
        users = interaction[self.config["USER_ID_FIELD"]].cpu()
        interaction.update(Interaction({
            self.item_seq_field: self.user_sequences[users],
            self.item_seq_len_field: self.user_lengths[users],
        }))
        return super()._full_sort_batch_eval(batched_data)
