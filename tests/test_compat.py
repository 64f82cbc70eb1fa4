"""Each RecBole 1.2.1 crash cause (A-I of the compatibility note and of compat.py) is handled; each test fails without its fix."""

import importlib.metadata
import os

import numpy as np
import pytest
import torch
from conftest import protocol
from recbole.quick_start import load_data_and_model, run_recbole

from recbole_cllm4rec import compat


def test_cause_a_ray_tune_imports():  # setuptools<82 keeps pkg_resources for ray 2.6.3
    import pkg_resources  # noqa: F401
    from ray import tune  # noqa: F401


def test_causes_b_and_c_numpy_aliases_exist():  # numpy<2
    assert np.bool8 is np.bool_ and np.float_ is np.float64 and np.unicode_ is np.str_


def test_check_environment_names_the_pin(monkeypatch):
    real_version = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda name: "3.1.1" if name == "pandas" else real_version(name))
    with pytest.raises(RuntimeError, match=r"pandas==3.1.1 \(cause F; need pandas<3\)"):
        compat.check_environment()


@pytest.mark.parametrize("model", ["MultiVAE", "LightGCN", "BERT4Rec"])
def test_models_train_and_best_checkpoint_reloads(model, data_root, tmp_path):
    # LightGCN needs dok_matrix._update (cause E, scipy<1.13); the final evaluation reloads the best
    # checkpoint with torch.load (cause D); BERT4Rec needs RecBole's sequential pipeline.
    overrides = {"epochs": 1, "load_col": {"inter": ["user_id", "item_id", "timestamp"]}}
    if model == "BERT4Rec":
        overrides.update({"train_neg_sample_args": None, "eval_args": {"split": {"RS": [0.8, 0.1, 0.1]}, "order": "TO",
                                                                       "group_by": "user", "mode": "full"}})
    result = run_recbole(model=model, dataset="tiny", config_dict=protocol(data_root, tmp_path, **overrides))
    assert 0 <= result["test_result"]["recall@10"] <= 1


def test_load_data_and_model_reads_recbole_checkpoints(data_root, tmp_path):
    config = protocol(data_root, tmp_path, epochs=1, load_col={"inter": ["user_id", "item_id"]})
    run_recbole(model="BPR", dataset="tiny", config_dict=config)
    (checkpoint,) = (tmp_path / "saved").glob("BPR-*.pth")
    loaded_config, model, _, _, _, test_data = load_data_and_model(str(checkpoint))
    assert loaded_config["model"] == "BPR" and model.n_items == 25


class NotAllowed:
    """Any class torch's weights-only unpickler refuses, like RecBole's Config."""


def test_torch_load_is_relaxed_only_inside_recbole_calls(tmp_path):
    path = tmp_path / "object.pth"
    torch.save({"config": NotAllowed()}, path)
    with pytest.raises(Exception):
        torch.load(path)  # the process-wide default stays safe
    with compat.trusted_checkpoint_loading():
        assert isinstance(torch.load(path)["config"], NotAllowed)


def test_cause_f_float_features_are_filled(data_root, tmp_path):
    # pandas 3 would leave NaN in float features (in-place fillna on a copy); pandas<3 fills them.
    from recbole.config import Config
    from recbole.data import create_dataset

    folder = data_root / "tiny-nan"
    folder.mkdir(exist_ok=True)
    (folder / "tiny-nan.inter").write_text(
        "user_id:token\titem_id:token\trating:float\n" + "".join(f"u{u}\ti{i}\t{'' if (u + i) % 3 else 4}\n"
                                                                for u in range(6) for i in range(6)))
    config = Config(model="BPR", dataset="tiny-nan", config_dict=protocol(
        data_root, tmp_path, load_col={"inter": ["user_id", "item_id", "rating"]}))
    dataset = create_dataset(config)
    assert not dataset.inter_feat["rating"].isna().any()  # still a DataFrame before build()


def test_cause_g_ensure_dir_survives_a_folder_made_by_another_process(monkeypatch, tmp_path):
    """Every module RecBole's trainer, data and logger code calls ``ensure_dir`` from: the folder appears
    between the existence check and the creation (another process of the run made it)."""
    monkeypatch.setattr(os.path, "exists", lambda path: False)
    for name in compat.ENSURE_DIR_IMPORTERS:
        importlib.import_module(name).ensure_dir(os.fspath(tmp_path))
    assert tmp_path.is_dir()


def test_cause_h_finding_a_sequential_model_leaves_anomaly_detection_off():
    """RecBole's SINE module turns autograd's anomaly detection on for the whole process when imported."""
    from recbole.utils import get_model

    from recbole_cllm4rec.benchmark.speedups import score_real_mask_slots_only_in_bert4rec

    get_model("SINE")
    get_model("SASRec")
    score_real_mask_slots_only_in_bert4rec()  # the runner's own import of a sequential model
    assert not torch.is_anomaly_enabled()


def test_cause_i_bert4rec_scores_real_mask_slots_only_with_recboles_loss_and_gradients(data_root, tmp_path):
    """The patched CE loss equals RecBole's (which scores every padding slot too), gradients and random draws included."""
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole_cllm4rec.compat import anomaly_detection_kept

    with anomaly_detection_kept():  # a plain import of RecBole's sequential package would turn it on (cause H)
        from recbole.model.sequential_recommender.bert4rec import BERT4Rec

    config = Config(model="BERT4Rec", dataset="tiny", config_dict=protocol(
        data_root, tmp_path, load_col={"inter": ["user_id", "item_id", "timestamp"]}, train_neg_sample_args=None,
        eval_args={"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full"},
        mask_ratio=0.5, MAX_ITEM_LIST_LENGTH=8, train_batch_size=64))
    train_data, _, _ = data_preparation(config, create_dataset(config))
    torch.manual_seed(0)
    model = BERT4Rec(config, train_data.dataset)
    batch = next(iter(train_data))
    real_slots = int((batch[model.MASK_INDEX] > 0).sum())
    assert 0 < real_slots < batch[model.MASK_INDEX].numel()  # some slots are padding: the case the patch skips

    def loss_gradients_and_rng(calculate_loss):
        model.zero_grad()
        torch.manual_seed(1)
        loss = calculate_loss(model, batch)
        loss.backward()
        return loss.detach(), [parameter.grad.clone() for parameter in model.parameters()], torch.get_rng_state()

    from recbole_cllm4rec.benchmark.speedups import score_real_mask_slots_only_in_bert4rec

    score_real_mask_slots_only_in_bert4rec()  # as the benchmark runner does
    assert BERT4Rec.calculate_loss.__wrapped_by_recbole_cllm4rec__
    patched = loss_gradients_and_rng(BERT4Rec.calculate_loss)
    recbole = loss_gradients_and_rng(BERT4Rec.calculate_loss.__wrapped__)
    assert torch.allclose(patched[0], recbole[0], atol=1e-6)
    for mine, theirs in zip(patched[1], recbole[1]):
        assert torch.allclose(mine, theirs, atol=1e-7)
    assert torch.equal(patched[2], recbole[2])  # the same dropout masks were drawn: the same training trajectory


def test_importing_the_plugin_changes_no_other_model():
    """A guest: RecBole's own models keep their methods on ``import recbole_cllm4rec``."""
    import subprocess
    import sys

    script = (
        "import recbole.model.sequential_recommender.bert4rec as b, recbole.model.general_recommender.bpr as p\n"
        "before = (b.BERT4Rec.calculate_loss, p.BPR.calculate_loss)\n"
        "import recbole_cllm4rec\n"
        "assert (b.BERT4Rec.calculate_loss, p.BPR.calculate_loss) == before\n"
        "import sys\n"
        "assert 'recbole_cllm4rec.benchmark' not in sys.modules  # the benchmark is not the plugin\n"
        "from recbole.utils import get_model\n"
        "assert get_model('CLLM4Rec') is recbole_cllm4rec.CLLM4Rec\n"
    )
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr[-2000:]
    # nor does it load models it does not use: SINE's import turns autograd's anomaly mode on for the process
    script = ("import sys, recbole_cllm4rec\n"
              "assert not [name for name in sys.modules if name.startswith('recbole.model.sequential_recommender')]\n")
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr[-2000:]
