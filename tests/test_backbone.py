"""Backbone resolution: directories, GGUF files, the bundled default, truncation, freezing."""

import os
import threading

import pytest
import torch

from recbole_cllm4rec import backbone


def test_directory_is_loaded_frozen_and_truncated(tiny_llama, tiny_gpt2):
    for path, layers in ((tiny_llama, "model.layers"), (tiny_gpt2, "transformer.h")):
        model, tokenizer = backbone.load_backbone(path, num_layers=1)
        assert len(model.get_submodule(layers)) == 1 and model.config.num_hidden_layers == 1
        assert not any(parameter.requires_grad for parameter in model.parameters()) and not model.training
        assert len(tokenizer) == model.get_input_embeddings().weight.shape[0]


def test_final_norm_is_taken_out_of_either_family(tiny_llama, tiny_gpt2):
    for path, name in ((tiny_llama, "norm"), (tiny_gpt2, "ln_f")):
        model, _ = backbone.load_backbone(path, num_layers=1)
        norm = getattr(model.base_model, name)
        inputs = torch.randn(1, 3, model.config.hidden_size)
        normed = model.base_model(inputs_embeds=inputs).last_hidden_state
        assert backbone.take_final_norm(model) is norm
        torch.testing.assert_close(norm(model.base_model(inputs_embeds=inputs).last_hidden_state), normed)
        with pytest.raises(ValueError, match="final norm"):
            backbone.take_final_norm(model)


def test_missing_gguf_and_bad_path_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="GGUF file that does not exist"):
        backbone.resolve_llm_path(str(tmp_path / "nope.gguf"))
    with pytest.raises(OSError, match="Cannot load the backbone"):
        backbone.load_backbone(str(tmp_path / "no-such-model"))


def test_bundled_default_is_converted_once_and_cached(tokenizer_source):
    gguf = backbone.locate_bundled_gguf(backbone.DEFAULT_BACKBONE)
    assert os.path.getsize(gguf) == 98_362_432
    assert backbone.resolve_llm_path(None) == tokenizer_source  # the cached copy, no second conversion
    assert os.path.isfile(os.path.join(tokenizer_source, "config.json"))


def test_concurrent_conversions_publish_one_complete_copy(tmp_path, monkeypatch):
    """Two runs converting at once: one converts, the other waits for the lock and reuses the result."""
    conversions = []
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"fake")

    class FakeModel:
        config = type("Config", (), {})()

        def __init__(self, config=None):
            pass

        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass

        def save_pretrained(self, folder):
            (folder / "config.json").write_text("{}")

    def fake_from_pretrained(folder, gguf_file, **kwargs):
        conversions.append(gguf_file)
        return FakeModel()

    class FakeTokenizer:
        @staticmethod
        def from_pretrained(folder, gguf_file):
            return FakeTokenizer()

        def save_pretrained(self, folder):
            (folder / "tokenizer.json").write_text("{}")

    import transformers

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake_from_pretrained)
    monkeypatch.setattr(transformers, "AutoTokenizer", FakeTokenizer)
    results = []
    threads = [threading.Thread(target=lambda: results.append(backbone.convert_gguf(gguf, tmp_path / "cache")))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(conversions) == 1 and results[0] == results[1]
    assert sorted(os.listdir(results[0])) == ["config.json", "tokenizer.json"]
    assert [name for name in os.listdir(tmp_path / "cache") if not name.endswith(".lock")] == [results[0].name]


def test_mixed_precision_auto_resolves():
    from recbole_cllm4rec.model.cllm4rec import resolve_mixed_precision

    assert resolve_mixed_precision("none", "cpu") == "none"
    assert resolve_mixed_precision("auto", "cpu") in ("bf16", "none")
    with pytest.raises(ValueError, match="mixed_precision"):
        resolve_mixed_precision("fp8", "cpu")
    assert torch.get_default_dtype() == torch.float32


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("probability", [0.5, 0.3, 0.1])
def test_cpu_dropout_is_torchs_dropout_bit_for_bit(dtype, probability):
    inputs = torch.randn(4, 33, 48).to(dtype).requires_grad_(True)
    upstream = torch.randn(4, 33, 48).to(dtype)
    results = []
    for drop in (lambda x: torch.nn.functional.dropout(x, probability, training=True),
                 lambda x: backbone.dropout(x, probability)):
        torch.manual_seed(7)
        outputs = drop(inputs)
        (outputs * upstream).sum().backward()
        results.append((outputs.detach(), inputs.grad.clone(), torch.rand(3)))
        inputs.grad = None
    (torch_outputs, torch_grad, torch_next), (outputs, grad, next_draws) = results
    assert 0 < int((outputs == 0).sum()) < outputs.numel()
    assert torch.equal(outputs, torch_outputs)
    assert torch.equal(grad, torch_grad)
    assert torch.equal(next_draws, torch_next)  # the generator is left where torch's dropout leaves it
