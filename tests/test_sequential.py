"""Sequential baselines see exactly the general models' split, and only training items as input."""

from conftest import protocol
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.data.dataset import Dataset
from recbole.utils import init_seed

from recbole_cllm4rec.benchmark.sequential import sequential_data_preparation


def pairs(dataset):
    return set(zip(dataset.inter_feat[dataset.uid_field].tolist(), dataset.inter_feat[dataset.iid_field].tolist()))


def test_same_split_as_general_models_and_no_leakage(data_root, tmp_path):
    overrides = {"load_col": {"inter": ["user_id", "item_id", "timestamp"]}}
    config = Config(model="BPR", dataset="tiny", config_dict=protocol(data_root, tmp_path, **overrides))
    init_seed(config["seed"], True)
    general = data_preparation(config, create_dataset(config))

    config = Config(model="SASRec", dataset="tiny", config_dict=protocol(data_root, tmp_path, train_neg_sample_args=None, **overrides))
    init_seed(config["seed"], True)
    train, valid, test, (sequences, lengths) = sequential_data_preparation(config, Dataset(config))

    assert pairs(valid._dataset) == pairs(general[1]._dataset)
    assert pairs(test._dataset) == pairs(general[2]._dataset)
    train_pairs = pairs(general[0]._dataset)
    examples = train._dataset.inter_feat
    seq_field = config["ITEM_ID_FIELD"] + config["LIST_SUFFIX"]
    for user, target, sequence, length in zip(examples["user_id"].tolist(), examples["item_id"].tolist(),
                                              examples[seq_field].tolist(), examples["item_length"].tolist()):
        assert (user, target) in train_pairs
        assert all((user, item) in train_pairs for item in sequence[:length])
    for user in range(1, len(lengths)):
        assert {(user, item) for item in sequences[user, : lengths[user]].tolist() if item} <= train_pairs
    assert next(iter(valid))[0].length <= config["eval_batch_size"]  # per-user batches, as for general models
