"""Speed changes the benchmark runner applies to RecBole models in its own process; importing the plugin
applies none of them.

BERT4Rec's CE loss computes item logits at every one of its ``mask_ratio * MAX_ITEM_LIST_LENGTH`` mask slots,
padding slots included, and then multiplies the padding slots' losses by zero; with short histories most slots
are padding, and their logits over the whole catalogue are most of a step. The patched loss scores the real slots
only (``MASK_INDEX`` above 0, RecBole's own rule): RecBole's loss and gradients up to float rounding, the random
stream consumed exactly as before (the same dropout masks), so training follows the same trajectory.
"""

import functools

import torch

from recbole_cllm4rec.compat import anomaly_detection_kept


def score_real_mask_slots_only_in_bert4rec():
    """BERT4Rec's CE loss over its real mask slots only (above)."""
    with anomaly_detection_kept():
        from recbole.model.sequential_recommender.bert4rec import BERT4Rec

    original = BERT4Rec.calculate_loss
    if getattr(original, "__wrapped_by_recbole_cllm4rec__", False):
        return

    @functools.wraps(original)
    def calculate_loss(self, interaction):
        if self.loss_type != "CE":
            return original(self, interaction)
        masked_index = interaction[self.MASK_INDEX]
        seq_output = self.forward(interaction[self.MASK_ITEM_SEQ])
        is_target = masked_index > 0
        sequences = is_target.nonzero(as_tuple=True)[0]
        target_states = seq_output[sequences, masked_index[is_target]]
        logits = target_states @ self.item_embedding.weight[: self.n_items].T + self.output_bias
        return torch.nn.functional.cross_entropy(logits, interaction[self.POS_ITEMS][is_target])

    calculate_loss.__wrapped_by_recbole_cllm4rec__ = True
    BERT4Rec.calculate_loss = calculate_loss
