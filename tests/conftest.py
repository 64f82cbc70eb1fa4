"""Shared fixtures: a tiny planted dataset written by the tests, tiny random backbones, RecBole configs."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the tests' own helpers
sys.path.insert(0, str(Path(__file__).parent.parent))  # experiments/, as ``python -m experiments.<name>`` sees it

import recbole_cllm4rec  # noqa: E402,F401  (applies the compatibility fixes)
from synthetic import tiny_backbone_dir, write_planted_dataset  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tokenizer_source():
    """The bundled SmolLM2's real tokenizer (converted once into the cache by scripts/setup.sh)."""
    from recbole_cllm4rec.backbone import resolve_llm_path

    return resolve_llm_path(None)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, tokenizer_source):
    return str(tiny_backbone_dir(tmp_path_factory.mktemp("backbones"), "llama", tokenizer_source))


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory, tokenizer_source):
    return str(tiny_backbone_dir(tmp_path_factory.mktemp("backbones"), "gpt2", tokenizer_source))


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    write_planted_dataset(root, "tiny", n_users=40, n_items=24, items_per_user=6, with_reviews=True)
    write_planted_dataset(root, "tiny-notext", n_users=40, n_items=24, items_per_user=6, with_reviews=False)
    (root / "tiny-notext" / "tiny-notext.item").unlink()
    return root


def protocol(data_root, tmp_path, **overrides):
    """The project's protocol, sized for a tiny dataset (top-k below the item count)."""
    config = {
        "data_path": str(data_root),
        "checkpoint_dir": str(tmp_path / "saved"),
        "eval_args": {"split": {"RS": [0.8, 0.1, 0.1]}, "order": "RO", "group_by": "user", "mode": "full"},
        "metrics": ["Recall", "NDCG"],
        "topk": [5, 10],
        "valid_metric": "NDCG@10",
        "seed": 7,
        "reproducibility": True,
        "show_progress": False,
        "state": "WARNING",
        "load_col": {"inter": ["user_id", "item_id", "timestamp", "review"], "item": ["item_id", "title", "brand", "categories"]},
    }
    config.update(overrides)
    return config


def cllm4rec_config(data_root, tmp_path, llm_path, **overrides):
    """A CLLM4Rec schedule small enough for a unit test."""
    config = protocol(data_root, tmp_path)
    config.update({
        "profile": "none",  # the model's defaults under the overrides below, whatever the machine
        "llm_path": llm_path,
        "content_warmup_epochs": 1,
        "pretrain_rounds": 2,
        "epochs": 3,
        "pretrain_learning_rate": 0.01,
        "learning_rate": 0.01,
        "train_batch_tokens": 256,
        "eval_batch_tokens": 512,
        "content_max_tokens": 12,
        "finetune_content_passes": False,
        # fp32 everywhere: ``auto`` turns bf16 autocast on where the CPU has AMX/AVX512-BF16, and the tests
        # compare scores exactly (test_backbone checks how auto resolves)
        "mixed_precision": "none",
    })
    config.update(overrides)
    return config
