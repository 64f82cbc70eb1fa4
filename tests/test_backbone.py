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
def test_cpu_dropout_keeps_1_minus_p_scaled_so_the_expectation_is_the_input(dtype, probability):
    inputs = torch.full((200, 33, 49), 2.0, dtype=dtype, requires_grad=True)  # 323,400: not a multiple of 4
    torch.manual_seed(7)
    outputs = backbone.dropout(inputs, probability)
    kept = outputs != 0
    threshold = round(probability * backbone.MASK_LEVELS)
    scale = backbone.MASK_LEVELS / (backbone.MASK_LEVELS - threshold)
    assert torch.equal(outputs[kept], torch.full_like(outputs[kept], 2.0 * scale))
    assert abs(float(kept.double().mean()) - (1 - probability)) < 4 * ((1 - probability) * probability / kept.numel()) ** 0.5
    for axis in range(3):  # no position always kept or always dropped by how the bits are laid out
        rates = kept.double().mean(dim=[other for other in range(3) if other != axis])
        assert float((rates - (1 - probability)).abs().max()) < 0.1
    outputs.sum().backward()
    assert torch.equal(inputs.grad, kept.to(dtype) * torch.tensor(scale, dtype=dtype))
    torch.manual_seed(7)
    assert torch.equal(backbone.dropout(inputs.detach(), probability), outputs.detach())  # the seed fixes the mask
    assert not torch.equal(backbone.dropout(inputs.detach(), probability), outputs.detach())


def test_cpu_dropout_masks_of_neighbouring_elements_are_independent():
    torch.manual_seed(3)
    kept = (backbone.dropout(torch.ones(400_000), 0.5) != 0).double()
    for lag in (1, 2, 3, 4, 5):  # the four 16-bit lanes of one 64-bit draw, and across draws
        correlation = torch.corrcoef(torch.stack([kept[:-lag], kept[lag:]]))[0, 1]
        assert abs(float(correlation)) < 0.01


def test_cpu_dropout_at_the_ends_of_the_range():
    inputs = torch.randn(5, 7)
    assert torch.equal(backbone.dropout(inputs, 0.0), inputs)
    assert torch.equal(backbone.dropout(inputs, 1.0), torch.zeros_like(inputs))
    with pytest.raises(ValueError, match="dropout probability"):
        backbone.dropout(inputs, 1.5)
