r"""CLLM4Rec
################################################

Reference:
    Yaochen Zhu, Liang Wu, Qi Guo, Liangjie Hong, Jundong Li. "Collaborative Large Language Model for
    Recommender Systems." In WWW 2024. arXiv:2311.01343.

A frozen pretrained causal LM whose vocabulary is extended with one soft token per user and per item.
Each soft token has a *collaborative* and a *content* embedding; only these (and the heads tied to them)
train. Pretraining alternates a collaborative LM over item-only main texts (softmax over items) and a
content LM over text main texts (softmax over the backbone vocabulary), with mutual regularisation
between the two embeddings of each id. Recommendation-oriented finetuning then predicts held-out
items of a user's training history with a multinomial likelihood, and scoring is one forward pass.
The training schedule lives in :class:`recbole_cllm4rec.trainer.CLLM4RecTrainer`.
"""

import contextlib
from collections import OrderedDict
from logging import getLogger

import numpy as np
import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.utils import InputType, set_color
from torch import nn

from recbole_cllm4rec.backbone import add_residual_dropout, dropout, load_backbone, take_final_norm
from recbole_cllm4rec.options import check_batch_budgets, check_options
from recbole_cllm4rec.corpus import CLLM4RecCorpus, bucket_batches, pad_documents


def resolve_mixed_precision(setting, device):
    """``auto`` is bf16 autocast only where the hardware has bf16 matrix units: without them bf16 is emulated and
    runs far slower than fp32."""
    if setting not in ("auto", "bf16", "none"):
        raise ValueError(f"mixed_precision must be 'auto', 'bf16' or 'none', got {setting!r}")
    if setting != "auto":
        return setting
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "none"
    try:
        return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "none"
    except (AttributeError, RuntimeError):
        return "none"


class CLLM4Rec(GeneralRecommender):
    input_type = InputType.POINTWISE
    skip_flops = True  # see recbole_cllm4rec.compat: get_flops would deep-copy the backbone
    frozen_prefixes = ("backbone.", "vocab_head.", "final_norm.")

    def __init__(self, config, dataset):
        check_options(config)
        super().__init__(config, dataset)
        self.mixed_precision = resolve_mixed_precision(config["mixed_precision"], config["device"])
        # named because bf16 and fp32 runs of one config differ in their last digits
        precision = {"bf16": "bf16 autocast", "none": "fp32"}[self.mixed_precision] + (
            " (mixed_precision: auto)" if config["mixed_precision"] == "auto" else "")
        getLogger().info(
            set_color("CLLM4Rec profile", "green") + f": {config['profile_applied']} ({config['profile_reason']}); "
            f"{config['llm_num_layers'] if config['llm_num_layers'] is not None else 'all'} backbone layers, "
            f"content LM {'on' if config['content_lm'] else 'off'}, up to {config['epochs']} finetuning epochs, "
            f"{precision}"
        )
        self.llm_path = config["llm_path"]
        self.llm_num_layers = config["llm_num_layers"]
        self.reg_weight = config["reg_weight"]
        self.finetune_target = config["finetune_target"]
        self.id_embedding_init = config["id_embedding_init"]
        self.id_embedding_max_norm = config["id_embedding_max_norm"]
        self.soft_token_scale = config["soft_token_scale"]
        self.user_table_updates = config["user_table_updates"]
        self.item_text_fields = config["item_text_fields"]
        self.eval_batch_tokens = config["eval_batch_tokens"]
        self.seed = config["seed"]
        self.user_state = config["user_state"]
        self.item_head_input = config["item_head_input"]

        self.backbone, self.tokenizer = load_backbone(
            self.llm_path, self.llm_num_layers, config["llm_cache_dir"], config["llm_initialisation"]
        )
        self.llm_dropout = config["llm_dropout"]
        if self.llm_dropout:
            add_residual_dropout(self.backbone, self.llm_dropout, lambda: self.training)
        # ``item_head_input: residual``: the collaborative side (item head) reads the last block's output, the
        # residual stream, before the backbone's final norm. That norm is then taken out of the backbone and
        # applied here to the content side only, whose frozen vocabulary head was trained on normed states.
        # ``layer_mix``: the item head reads a learned softmax-weighted sum of the residual stream at every depth,
        # the soft tokens as they enter (depth 0) and each block's output, as ELMo reads a frozen LM; the
        # weights start where ``layer_mix_init`` says (equal by default) and train with the ID tables.
        self.final_norm = take_final_norm(self.backbone) if self.item_head_input != "normed" else None
        self.layer_mix = (
            nn.Parameter(self._layer_mix_start(config["layer_mix_init"], self.backbone.config.num_hidden_layers + 1))
            if self.item_head_input == "layer_mix" else None
        )
        word_embeddings = self.backbone.get_input_embeddings()
        self.vocab_size, hidden_size = word_embeddings.weight.shape
        if self.vocab_size < len(self.tokenizer):
            raise ValueError("The backbone's embedding matrix is smaller than its tokenizer's vocabulary")
        self.corpus = CLLM4RecCorpus(dataset, self.tokenizer, config, self.vocab_size, self.logger,
                                     read_item_texts=config["id_embedding_init"] == "text_mean")
        check_batch_budgets(config, self.corpus.longest_document())
        self.token_space = self.corpus.token_space

        # ``user_table_updates: lazy``: the user tables' gradients are sparse (only the batch's users' rows), and
        # the trainer's optimizer moves only those rows (trainer.id_table_adam).
        sparse_users = self.user_table_updates == "lazy"
        self.collaborative_user_embedding = nn.Embedding(self.n_users, hidden_size, sparse=sparse_users)
        self.collaborative_item_embedding = nn.Embedding(self.n_items, hidden_size)
        self.content_user_embedding = nn.Embedding(self.n_users, hidden_size, sparse=sparse_users)
        self.content_item_embedding = nn.Embedding(self.n_items, hidden_size)
        # Heads tied to embeddings: the item head *is* the collaborative item embedding matrix (paper; with
        # ``item_head_tied: False`` it is a matrix of its own), the vocabulary head *is* the backbone's frozen
        # token embedding matrix. ``item_bias``: a learned per-item logit offset, as in Mult-VAE's decoder.
        self.item_head = nn.Linear(hidden_size, self.n_items, bias=config["item_bias"])
        if config["item_head_tied"]:
            self.item_head.weight = self.collaborative_item_embedding.weight
        if config["item_bias"]:
            nn.init.zeros_(self.item_head.bias)
        self.vocab_head = nn.Linear(hidden_size, self.vocab_size, bias=False)
        self.vocab_head.weight = word_embeddings.weight
        # A learned scalar on the item logits (None: none, as in the paper). The frozen LM's last hidden
        # states are long (norm ~40 on SmolLM2) and nearly parallel across prompts, so with item
        # embeddings at the token-embedding scale the initial item logits spread with std ~5: the item
        # softmax starts far worse than uniform and the first hundreds of steps go to undoing that.
        # ``item_logit_scale_per_dimension`` makes it one scale per hidden dimension (a learned diagonal
        # reweighting of the last hidden state), so the head can damp the few large, prompt-independent
        # dimensions and amplify the ones that carry the user's history.
        logit_scale = config["item_logit_scale"]
        shape = (hidden_size,) if config["item_logit_scale_per_dimension"] else ()
        self.item_logit_scale = (
            None if logit_scale is None else nn.Parameter(torch.full(shape, float(logit_scale)))
        )

        content_users, content_items = self.corpus.content_ids()
        self.register_buffer("user_has_content", content_users, persistent=False)
        self.register_buffer("item_has_content", content_items, persistent=False)
        self._initialise_id_embeddings(word_embeddings.weight.detach())

    # ----- parameters ---------------------------------------------------------------------------
    @staticmethod
    def _layer_mix_start(init, depths):
        """The ``layer_mix`` logits to start from: ``~`` equal weights; a list of one logit per depth (0: the
        soft tokens as they enter, then each block's output); or a number ``w``, the weight depth 0 starts with,
        the rest shared equally by the blocks' outputs. Without blocks (``llm_num_layers: 0``, the
        no-transformer control) depth 0 is the only depth and has weight 1 whatever ``w`` is."""
        if init is None:
            return torch.zeros(depths)
        if isinstance(init, (int, float)) and not isinstance(init, bool):
            if not 0 < init < 1:
                raise ValueError(f"layer_mix_init as a number is depth 0's starting weight, in (0, 1); got {init!r}")
            logits = torch.zeros(depths)
            if depths == 1:
                return logits
            logits[0] = float(np.log(init * (depths - 1) / (1 - init)))
            return logits
        if isinstance(init, (list, tuple)) and len(init) == depths:
            return torch.tensor([float(logit) for logit in init])
        raise ValueError(f"layer_mix_init must be ~, depth 0's starting weight in (0, 1), or a list of {depths} "
                         f"logits (depth 0 and each of the {depths - 1} blocks); got {init!r}")

    def id_tables(self):
        """The four ID embedding tables: collaborative and content, user and item."""
        return (self.collaborative_user_embedding, self.collaborative_item_embedding,
                self.content_user_embedding, self.content_item_embedding)

    def _initialise_id_embeddings(self, word_embeddings):
        """N(0, s^2) with s the std of the backbone's token embeddings, so soft tokens enter the LM
        at the scale of real ones. ``text_mean`` starts each item that has text at the mean embedding
        of its text tokens (both sides), a warm start the paper does not use."""
        generator = torch.Generator().manual_seed(self.seed)
        scale = float(word_embeddings.std())
        tables = list(self.id_tables())
        if self.item_head.weight is not self.collaborative_item_embedding.weight:
            tables.append(self.item_head)
        for table in tables:
            with torch.no_grad():
                table.weight.copy_(torch.randn(table.weight.shape, generator=generator) * scale)
        if self.id_embedding_init == "text_mean":
            text_means = self.corpus.item_text_token_means(word_embeddings)
            if not text_means:
                raise ValueError("id_embedding_init: text_mean needs item text, and this dataset has none in "
                                 f"item_text_fields {self.item_text_fields}; use id_embedding_init: normal "
                                 "or load item text columns (load_col: item: [...]).")
            for item, mean in text_means.items():
                with torch.no_grad():
                    self.collaborative_item_embedding.weight[item] = mean
                    self.content_item_embedding.weight[item] = mean

    @torch.no_grad()
    def constrain_id_embeddings(self):
        """With ``id_embedding_max_norm``, pull every ID embedding longer than it back onto that norm (the
        trainer calls this after each update): unconstrained, trained soft tokens can grow to several times the norm
        of the backbone's own token embeddings, so the frozen layers see inputs unlike any text."""
        if self.id_embedding_max_norm is None:
            return
        for table in self.id_tables():
            table.weight.renorm_(2, 0, self.id_embedding_max_norm)

    def train(self, mode=True):
        super().train(mode)
        self.backbone.eval()  # the frozen LM's own dropout never runs; ``llm_dropout`` is ours, seeded
        return self

    def state_dict(self, *args, **kwargs):
        """Only what trains: the backbone is reloaded from ``llm_path``, never written to checkpoints."""
        full = super().state_dict(*args, **kwargs)
        return OrderedDict((key, value) for key, value in full.items() if not key.startswith(self.frozen_prefixes))

    def load_state_dict(self, state_dict, strict=True, assign=False):
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        missing = [key for key in result.missing_keys if not key.startswith(self.frozen_prefixes)]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(
                f"CLLM4Rec checkpoint does not match: missing {missing}, unexpected {result.unexpected_keys}"
            )
        return result

    def trainable_parameters(self):
        return [parameter for parameter in self.parameters() if parameter.requires_grad]

    # ----- the language model ---------------------------------------------------------------------
    def autocast(self):
        if self.mixed_precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def embed_tokens(self, tokens, side):
        """Input embeddings for extended token ids [B, L] -> [B, L, H]; ``side`` picks the ID table. The ID
        embeddings enter multiplied by ``soft_token_scale``: the frozen blocks add to every position a vector much
        longer than a token embedding, so at scale 1 a soft token's own identity is a small part of its last state."""
        user_table, item_table = (
            (self.collaborative_user_embedding, self.collaborative_item_embedding)
            if side == "collaborative"
            else (self.content_user_embedding, self.content_item_embedding)
        )
        space = self.token_space
        is_vocab = tokens < space.vocab_size
        is_item = tokens >= space.item_offset
        is_user = ~is_vocab & ~is_item
        embeddings = self.vocab_head.weight[torch.where(is_vocab, tokens, 0)]
        scale = self.soft_token_scale
        users = user_table(tokens[is_user] - space.vocab_size)
        items = item_table(tokens[is_item] - space.item_offset)
        if scale != 1:
            users, items = users * scale, items * scale
        embeddings = embeddings.masked_scatter(is_user.unsqueeze(-1), users)
        return embeddings.masked_scatter(is_item.unsqueeze(-1), items)

    def layer_mix_weights(self):
        """The ``layer_mix`` weights over depths 0 (the soft tokens as they enter) to the last block, or None."""
        return None if self.layer_mix is None else torch.softmax(self.layer_mix.detach().float(), 0)

    def hidden_states(self, tokens, attention_mask, side):
        """Last-layer hidden states [B, L, H] of the frozen backbone: after its final norm, except on the
        collaborative side with ``item_head_input: residual`` (the last block's output) or ``layer_mix`` (the
        learned mix of the residual stream at every depth)."""
        # A batch without padding (length bucketing makes many) runs with no mask: the backbone then takes
        # its plain causal-attention path instead of building and applying a padding mask.
        mask = None if bool(attention_mask.all()) else attention_mask.long()
        embeddings = self.embed_tokens(tokens, side)
        if self.training and self.llm_dropout:  # GPT-2's embd_pdrop; the blocks' branches drop in their hooks
            embeddings = dropout(embeddings, self.llm_dropout)
        mix = self.layer_mix is not None and side == "collaborative"
        with self.autocast():
            output = self.backbone.base_model(
                inputs_embeds=embeddings, attention_mask=mask, use_cache=False, output_hidden_states=mix
            )
            if mix:
                weights = torch.softmax(self.layer_mix, 0)
                # Without blocks, transformers returns no hidden states: the one depth is the input itself.
                depths = output.hidden_states or (output.last_hidden_state,)
                return sum(weight * depth for weight, depth in zip(weights, depths, strict=True))
            hidden = output.last_hidden_state
            if self.final_norm is not None and side == "content":
                hidden = self.final_norm(hidden)
        return hidden

    def prompt_states(self, hidden, attention_mask, tokens):
        """One state [B, H] per right-padded prompt: its last position's hidden state (paper); with
        ``user_state: mean`` the mean over all its positions; with ``history_mean`` the mean over the positions
        of its history items only (the hard-text positions are the same words for every user), or over all
        positions for a prompt with no visible item. Means are summed in fp32, also under bf16 autocast."""
        if self.user_state == "last":
            return hidden[torch.arange(len(hidden), device=hidden.device), attention_mask.sum(1) - 1]
        weights = attention_mask.bool()
        if self.user_state == "history_mean":
            is_item = weights & (tokens >= self.token_space.item_offset)
            weights = torch.where(is_item.any(1, keepdim=True), is_item, weights)
        weights = weights.unsqueeze(-1).float()
        return (hidden.float() * weights).sum(1) / weights.sum(1)

    def _item_logits(self, hidden):
        if self.item_logit_scale is not None:
            hidden = hidden * self.item_logit_scale
        with self.autocast():
            logits = self.item_head(hidden)
        logits = logits.float()
        logits[:, 0] = float("-inf")  # RecBole's padding item is never a valid prediction
        return logits

    # ----- losses ----------------------------------------------------------------------------------
    def mutual_regularization(self, tokens, side, extra_items=None):
        """``reg_weight / 2`` times the mean, over the distinct ids in the batch that have content, of
        the squared distance between an id's embedding on ``side`` and its other embedding (held fixed).

        A mean over distinct ids (not a sum over occurrences, as the reference code has it) keeps the
        weight independent of batch size, document length and item popularity."""
        if self.reg_weight == 0 or not self.corpus.has_content:
            return tokens.new_zeros((), dtype=torch.float)
        space = self.token_space
        soft = tokens[tokens >= space.vocab_size] - space.vocab_size
        users = torch.unique(soft[soft < space.n_users])
        items = soft[soft >= space.n_users] - space.n_users
        if extra_items is not None:
            items = torch.cat([items, extra_items])
        items = torch.unique(items)
        users = users[self.user_has_content[users]]
        items = items[self.item_has_content[items]]
        if side == "collaborative":
            own = (self.collaborative_user_embedding(users), self.collaborative_item_embedding(items))
            other = (self.content_user_embedding(users), self.content_item_embedding(items))
        else:
            own = (self.content_user_embedding(users), self.content_item_embedding(items))
            other = (self.collaborative_user_embedding(users), self.collaborative_item_embedding(items))
        distances = torch.cat([((mine - theirs.detach()) ** 2).sum(-1) for mine, theirs in zip(own, other)])
        if distances.numel() == 0:
            return tokens.new_zeros((), dtype=torch.float)
        return 0.5 * self.reg_weight * distances.mean()

    def collaborative_loss(self, tokens, attention_mask, target_mask):
        """Next-item cross-entropy over items only, on the item main text; plus the regulariser."""
        hidden = self.hidden_states(tokens, attention_mask, "collaborative")
        rows, columns = target_mask.nonzero(as_tuple=True)
        targets = tokens[rows, columns + 1] - self.token_space.item_offset
        language_loss = F.cross_entropy(self._item_logits(hidden[rows, columns]), targets)
        return language_loss, self.mutual_regularization(tokens, "collaborative")

    def content_loss(self, tokens, attention_mask, target_mask):
        """Next-token cross-entropy over the backbone vocabulary, on the text main text; plus the regulariser."""
        hidden = self.hidden_states(tokens, attention_mask, "content")
        rows, columns = target_mask.nonzero(as_tuple=True)
        with self.autocast():
            logits = self.vocab_head(hidden[rows, columns])
        language_loss = F.cross_entropy(logits.float(), tokens[rows, columns + 1])
        return language_loss, self.mutual_regularization(tokens, "content")

    def recommendation_loss(self, tokens, attention_mask, targets):
        """Multinomial negative log-likelihood of the target items (as in Mult-VAE): for each prompt the
        sum of -log softmax over all items at the targets, averaged over prompts; plus the regulariser.

        ``targets`` is ``(rows, items)``: one (prompt row, held-out item) pair per target."""
        hidden = self.hidden_states(tokens, attention_mask, "collaborative")
        states = self.prompt_states(hidden, attention_mask, tokens)
        log_probabilities = F.log_softmax(self._item_logits(states), dim=1)
        rows, columns = targets
        likelihood = -log_probabilities[rows, columns].sum() / len(tokens)
        return likelihood, self.mutual_regularization(tokens, "collaborative", extra_items=columns)

    def recommendation_batch(self, documents, held_out):
        """Tensors for ``recommendation_loss`` from finetuning documents and their held-out items. The
        targets are gathered on the host and moved in one copy (not one small copy per prompt)."""
        tokens, attention_mask, _ = pad_documents(documents)
        per_prompt = []
        for document, items in zip(documents, held_out):
            items = np.asarray(items, dtype=np.int64)
            if self.finetune_target == "all":  # the reference code's target: the whole history
                items = np.union1d(items, np.asarray(self.token_space.item_ids(document.tokens), dtype=np.int64))
            per_prompt.append(items)
        rows = np.repeat(np.arange(len(per_prompt)), [len(items) for items in per_prompt])
        columns = np.concatenate(per_prompt)
        targets = (torch.from_numpy(rows).to(self.device), torch.from_numpy(columns).to(self.device))
        return tokens.to(self.device), attention_mask.to(self.device), targets

    def document_loss(self, kind, documents, held_out=None):
        """``(language loss, regulariser, number of loss terms)`` of one training batch of ``kind``
        ('collaborative', 'content' or 'recommendation', with ``held_out`` targets) built from documents."""
        if kind == "recommendation":
            return (*self.recommendation_loss(*self.recommendation_batch(documents, held_out)), len(documents))
        tokens, attention_mask, target_mask = (tensor.to(self.device) for tensor in pad_documents(documents))
        loss_function = self.collaborative_loss if kind == "collaborative" else self.content_loss
        return (*loss_function(tokens, attention_mask, target_mask), int(target_mask.sum()))

    def calculate_loss(self, interaction):
        """The finetuning objective for the users of ``interaction`` (a fresh random mask each call)."""
        users = torch.unique(interaction[self.USER_ID]).tolist()
        documents, held_out = self.corpus.recommendation_documents(users, generator=None)
        language_loss, regularization = self.recommendation_loss(*self.recommendation_batch(documents, held_out))
        return language_loss + regularization

    # ----- scoring -------------------------------------------------------------------------------
    @torch.no_grad()
    def user_representations(self, users):
        """The state [B, H] of each user's scoring prompt (``prompt_states``), batched by similar length."""
        documents = [self.corpus.scoring_document(user) for user in users]
        lengths = [len(document.tokens) for document in documents]
        representations = [None] * len(documents)
        for batch in bucket_batches(lengths, self.eval_batch_tokens):
            tokens, attention_mask, _ = pad_documents([documents[k] for k in batch])
            tokens, attention_mask = tokens.to(self.device), attention_mask.to(self.device)
            hidden = self.hidden_states(tokens, attention_mask, "collaborative")
            states = self.prompt_states(hidden, attention_mask, tokens)
            for position, index in enumerate(batch):
                representations[index] = states[position]
        return torch.stack(representations)

    def full_sort_predict(self, interaction):
        users = interaction[self.USER_ID].tolist()
        return self._item_logits(self.user_representations(users))

    def predict(self, interaction):
        users = interaction[self.USER_ID]
        unique_users, position = torch.unique(users, return_inverse=True)
        scores = self._item_logits(self.user_representations(unique_users.tolist()))
        return scores[position, interaction[self.ITEM_ID]]
