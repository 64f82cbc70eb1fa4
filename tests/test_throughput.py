"""experiments/throughput.py's measurements run on a tiny backbone: the three raw references and the plugin's step."""


import torch
from test_cllm4rec import build

from recbole_cllm4rec.corpus import bucket_batches

from experiments import throughput


def test_raw_references_and_plugin_step_measure_real_tokens(data_root, tmp_path, tiny_llama):
    _, model, *_ = build(data_root, tmp_path, tiny_llama)
    documents = model.corpus.collaborative_documents()
    batches = bucket_batches([len(document.tokens) for document in documents], 64, torch.Generator().manual_seed(0))
    rate, shapes, target_masks, density = throughput.plugin_rate(model, "collaborative", documents, batches[:2])
    assert rate > 0 and 0 < density <= 1 and len(shapes) == 2
    assert [tuple(mask.shape) for mask in target_masks] == shapes and all(mask.any() for mask in target_masks)
    for kind in ("collaborative", "content", "recommendation"):
        assert throughput.raw_step_rate(model, kind, target_masks) > 0
    assert throughput.raw_backbone_rate(model, shapes) > 0
    embeddings = model.backbone.get_input_embeddings().weight
    assert throughput.raw_backbone_rate(model, shapes, with_lm_head=True) > 0
    assert not embeddings.requires_grad and embeddings.grad is None  # the frozen LM stays frozen


def test_breakdown_sets_the_plugin_step_against_its_raw_step(data_root, tmp_path, tiny_llama):
    _, model, *_ = build(data_root, tmp_path, tiny_llama)
    documents = model.corpus.collaborative_documents()
    batches = bucket_batches([len(document.tokens) for document in documents], 64, torch.Generator().manual_seed(0))[:2]
    optimizer = throughput.id_table_adam(model, 1e-4)
    _, _, target_masks, _ = throughput.plugin_rate(model, "collaborative", documents, batches, optimizer=optimizer)
    rows = throughput.step_breakdown(model, "collaborative", documents, batches, None, optimizer, target_masks,
                                     rows=1000)
    ops = {op: (plugin_ms, raw_ms) for op, plugin_ms, raw_ms in rows}
    assert ops["total"][0] > 0 and ops["total"][1] > 0
    assert "aten::_fused_adam_" in ops and ops["aten::_fused_adam_"][1] == 0  # only the plugin trains with Adam
