"""Documents CLLM4Rec learns from, built from the training split only, and their length-bucketed batches.

Token ids live in one extended space shared by every document:
``[0, vocab_size)`` are the backbone's vocabulary, ``vocab_size + u`` is the soft token ``<user_u>`` and
``vocab_size + n_users + i`` is ``<item_i>`` (RecBole's internal ids; id 0 is RecBole's padding and is
never emitted). Soft tokens are placed by the templates and never pass through the tokenizer.

A document is a prompt followed by a homogeneous main text; ``main_start`` is the index of the first
main-text token, and the loss is taken only on tokens at ``main_start`` or later.
"""

import functools
import html
import re
from dataclasses import dataclass

import numpy as np
import torch
from recbole.utils import FeatureType

from recbole_cllm4rec.data.histories import user_histories

PLACEHOLDER = re.compile(r"\{(user|item|history)\}")


@dataclass
class Document:
    tokens: np.ndarray  # int64 [length], extended ids
    main_start: int


class TokenSpace:
    """Maps RecBole user/item ids to soft-token ids after the backbone vocabulary."""

    def __init__(self, vocab_size, n_users, n_items):
        self.vocab_size, self.n_users, self.n_items = vocab_size, n_users, n_items
        self.item_offset = vocab_size + n_users

    def user_token(self, user_id):
        return self.vocab_size + user_id

    def item_tokens(self, item_ids):
        return np.asarray(item_ids, dtype=np.int64) + self.item_offset

    def item_ids(self, tokens):
        """The item ids of the item tokens among ``tokens``, in order (the inverse of ``item_tokens``)."""
        return tokens[tokens >= self.item_offset] - self.item_offset


class PromptTemplate:
    """A text template with ``{user}``, ``{item}`` and ``{history}`` slots; hard text is tokenized once."""

    def __init__(self, template, tokenizer, token_space):
        self.template = template
        self.token_space = token_space
        self.pieces = []  # ("text", ids) or ("slot", name)
        position = 0
        for match in PLACEHOLDER.finditer(template):
            self._add_text(template[position:match.start()], tokenizer)
            self.pieces.append(("slot", match.group(1)))
            position = match.end()
        self._add_text(template[position:], tokenizer)

    def _add_text(self, text, tokenizer):
        if text:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            self.pieces.append(("text", np.asarray(ids, dtype=np.int64)))

    def render(self, user=None, item=None, history=()):
        parts = []
        for kind, value in self.pieces:
            if kind == "text":
                parts.append(value)
            elif value == "user":
                parts.append(np.asarray([self.token_space.user_token(user)], dtype=np.int64))
            elif value == "item":
                parts.append(self.token_space.item_tokens([item]))
            else:
                parts.append(self.token_space.item_tokens(history))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def length_without_history(self):
        return sum(len(value) if kind == "text" else int(value != "history") for kind, value in self.pieces)


def feature_texts(dataset, feature, field, list_field=False):
    """The text of ``field`` for every row of ``feature`` (an ``Interaction``), as RecBole loaded it.

    ``token`` fields give back the exact string; ``token_seq`` fields are re-joined with spaces (RecBole
    split them on ``seq_separator``), or, for ``list_field``, read as a list of values written with ``_``
    for spaces (``Skin_Care Face_Creams`` -> ``Skin Care, Face Creams``).
    """
    field_type = dataset.field2type[field]
    values = feature[field].numpy()
    if field_type in (FeatureType.FLOAT, FeatureType.FLOAT_SEQ):
        return [" ".join(f"{number:g}" for number in np.atleast_1d(row)) for row in values]
    id_to_token = dataset.field2id_token[field]
    if field_type == FeatureType.TOKEN:
        texts = [id_to_token[value] if value else "" for value in values]
    else:
        separator = ", " if list_field else " "
        texts = [
            separator.join(
                id_to_token[value].replace("_", " ") if list_field else id_to_token[value] for value in row if value
            )
            for row in values
        ]
    return [clean_text(text) for text in texts]


def clean_text(text):
    return " ".join(html.unescape(str(text)).split())


class CLLM4RecCorpus:
    """Collaborative, content, finetuning and scoring documents of one RecBole training dataset."""

    def __init__(self, dataset, tokenizer, config, vocab_size=None, logger=None, read_item_texts=False):
        """``read_item_texts``: build the item texts even without the content LM (an ID table initialised from
        them)."""
        self.dataset = dataset
        self.tokenizer = tokenizer
        self.token_space = TokenSpace(vocab_size or len(tokenizer), dataset.user_num, dataset.item_num)
        self.max_seq_length = config["max_seq_length"]
        self.mask_ratio = config["mask_ratio"]
        self.content_max_tokens = config["content_max_tokens"]
        templates = config["prompt_templates"]
        self.collaborative_template = PromptTemplate(templates["collaborative"], tokenizer, self.token_space)
        self.review_template = PromptTemplate(templates["review"], tokenizer, self.token_space)
        self.item_text_template = PromptTemplate(templates["item_text"], tokenizer, self.token_space)
        self.user_text_template = PromptTemplate(templates["user_text"], tokenizer, self.token_space)
        self.recommendation_template = PromptTemplate(templates["recommendation"], tokenizer, self.token_space)
        self.user_histories = user_histories(dataset)  # time order; fixed across epochs and scoring
        self.content_lm = config["content_lm"]
        self.content_documents = self._content_documents(config) if self.content_lm else []
        self._item_text_documents = self.content_documents or (
            self._content_documents(config) if read_item_texts else [])
        self.content_summary = self._summarise_content()
        if logger is not None:
            logger.info(self.content_summary)

    def _recent(self, history, room):
        """The most recent items that fit ``room`` tokens (long histories lose their oldest items)."""
        return history[-room:] if room > 0 else history[:0]

    # ----- documents -----------------------------------------------------------------------------
    def collaborative_documents(self):
        """One per user with training items: ``<user> has interacted with <item> <item> ...``."""
        documents = []
        room = self.max_seq_length - self.collaborative_template.length_without_history()
        for user, history in enumerate(self.user_histories):
            if len(history) == 0:
                continue
            prompt = self.collaborative_template.render(user=user)
            documents.append(Document(np.concatenate([prompt, self.token_space.item_tokens(self._recent(history, room))]), len(prompt)))
        return documents

    def _content_documents(self, config):
        documents, self.content_sources = [], {}
        review_field = config["review_field"]
        inter = self.dataset.inter_feat
        if review_field and review_field in inter:
            users = inter[self.dataset.uid_field].numpy()
            items = inter[self.dataset.iid_field].numpy()
            texts = feature_texts(self.dataset, inter, review_field)
            added = 0
            for user, item, text in zip(users, items, texts):
                if text:
                    documents.append(self._text_document(self.review_template, text, user=user, item=item))
                    added += 1
            self.content_sources["reviews"] = added
        for side, fields_key, template in (
            ("item", "item_text_fields", self.item_text_template),
            ("user", "user_text_fields", self.user_text_template),
        ):
            feature = self.dataset.item_feat if side == "item" else self.dataset.user_feat
            fields = [field for field in (config[fields_key] or []) if feature is not None and field in feature]
            if not fields:
                continue
            list_fields = set(config["text_list_fields"] or [])
            columns = {field: feature_texts(self.dataset, feature, field, field in list_fields) for field in fields}
            added = 0
            for entity in range(1, len(feature)):
                text = "; ".join(
                    f"{field}: {columns[field][entity]}" if index else columns[field][entity]
                    for index, field in enumerate(fields)
                    if columns[field][entity]
                )
                if text:
                    kwargs = {side: entity}
                    documents.append(self._text_document(template, text, **kwargs))
                    added += 1
            self.content_sources[f"{side} text ({', '.join(fields)})"] = added
        return documents

    def _text_document(self, template, text, **slots):
        prompt = template.render(**slots)
        main = np.asarray(self.tokenizer(" " + text, add_special_tokens=False)["input_ids"], dtype=np.int64)
        main = main[: max(self.max_seq_length - len(prompt), 1)]
        return Document(np.concatenate([prompt, main]), len(prompt))

    def _summarise_content(self):
        if not self.content_lm:
            return "CLLM4Rec: content_lm is False; training the collaborative side only (no content passes, no mutual regularisation)."
        if not self.content_documents:
            return "CLLM4Rec: this dataset has no usable text; training the collaborative side only."
        parts = ", ".join(f"{count} from {source}" for source, count in self.content_sources.items())
        return f"CLLM4Rec content corpus: {len(self.content_documents)} documents ({parts})."

    @property
    def has_content(self):
        return bool(self.content_documents)

    def sampled_content_documents(self, generator):
        """Content documents with long main texts cut to a random window of ``content_max_tokens``."""
        sampled = []
        for document in self.content_documents:
            main_length = len(document.tokens) - document.main_start
            if main_length <= self.content_max_tokens:
                sampled.append(document)
                continue
            start = int(torch.randint(main_length - self.content_max_tokens + 1, (1,), generator=generator))
            window = document.tokens[document.main_start + start : document.main_start + start + self.content_max_tokens]
            sampled.append(Document(np.concatenate([document.tokens[: document.main_start], window]), document.main_start))
        return sampled

    def content_ids(self):
        """Boolean masks (users, items) of the ids that appear in at least one content document."""
        users = np.zeros(self.token_space.n_users, dtype=bool)
        items = np.zeros(self.token_space.n_items, dtype=bool)
        for document in self.content_documents:
            prompt = document.tokens[: document.main_start]
            soft = prompt[prompt >= self.token_space.vocab_size] - self.token_space.vocab_size
            users[soft[soft < self.token_space.n_users]] = True
            items[soft[soft >= self.token_space.n_users] - self.token_space.n_users] = True
        return torch.from_numpy(users), torch.from_numpy(items)

    def item_text_token_means(self, word_embeddings):
        """Mean token embedding of each item's own text (from item-text documents), by item id."""
        means = {}
        for document in self._item_text_documents:
            prompt = document.tokens[: document.main_start]
            soft = prompt[prompt >= self.token_space.item_offset]
            if len(soft) == 1 and not (prompt[(prompt >= self.token_space.vocab_size)] < self.token_space.item_offset).any():
                text = torch.as_tensor(document.tokens[document.main_start :])
                means[int(soft[0] - self.token_space.item_offset)] = word_embeddings[text].mean(0)
        return means

    def pass_documents(self, kind, generator):
        """``(documents, held_out)`` of one training pass of ``kind``: 'collaborative', 'content' (a fresh sample)
        or 'recommendation' (every user, a fresh mask); ``held_out`` is None except for 'recommendation'."""
        if kind == "collaborative":
            return self.collaborative_documents(), None
        if kind == "content":
            return self.sampled_content_documents(generator), None
        return self.recommendation_documents(range(1, len(self.user_histories)), generator)

    def recommendation_documents(self, users, generator):
        """Finetuning prompts: a random ``mask_ratio`` of each history is held out as the target.

        Returns ``(documents, held_out)`` with ``held_out[k]`` the target items of ``documents[k]``.
        Every user keeps at least one held-out item; visible items keep their history order.
        """
        documents, held_out = [], []
        for user in users:
            history = self.user_histories[user]
            if len(history) == 0:
                continue
            n_held_out = min(max(1, int(round(self.mask_ratio * len(history)))), len(history))
            permutation = torch.randperm(len(history), generator=generator).numpy()
            is_held_out = np.zeros(len(history), dtype=bool)
            is_held_out[permutation[:n_held_out]] = True
            visible = self._recent(history[~is_held_out], self._recommendation_room())
            tokens = self.recommendation_template.render(user=user, history=visible)
            documents.append(Document(tokens, len(tokens)))
            held_out.append(history[is_held_out])
        return documents, held_out

    def _recommendation_room(self):
        return self.max_seq_length - self.recommendation_template.length_without_history()

    @functools.cached_property
    def document_lengths(self):
        """Token counts of each kind of document, once: scoring (each user's whole history visible, also the upper
        bound of a finetuning prompt), collaborative, and content at its token budget."""
        users = [user for user in range(1, len(self.user_histories)) if len(self.user_histories[user])]
        return {
            "scoring": [len(self.scoring_document(user).tokens) for user in users],
            "collaborative": [len(document.tokens) for document in self.collaborative_documents()],
            "content": [min(len(document.tokens), document.main_start + self.content_max_tokens)
                        for document in self.content_documents] if self.has_content else [],
        }

    def longest_document(self):
        """The most tokens any training or scoring document of this dataset holds (content at its budget)."""
        return max((max(lengths, default=0) for lengths in self.document_lengths.values()), default=0)

    def tokens_per_pass(self):
        """Tokens one pass of each kind reads, for a time estimate (a finetuning pass counted at its upper bound)."""
        totals = {kind: sum(lengths) for kind, lengths in self.document_lengths.items()}
        return {**totals, "recommendation": totals["scoring"]}

    def scoring_document(self, user):
        """The prompt that scores all items for ``user``: the whole training history is visible."""
        history = self._recent(self.user_histories[user], self._recommendation_room())
        tokens = self.recommendation_template.render(user=user, history=history)
        return Document(tokens, len(tokens))


def bucket_batches(lengths, token_budget, generator=None):
    """Batches of document indices with similar lengths, at most ``token_budget`` padded tokens each.

    Sorting by length (ties broken at random) keeps padding to a few percent; the batch order is then
    shuffled so training does not see short documents first. Without a generator the order is fixed.
    """
    lengths = np.asarray(lengths)
    if generator is not None:
        tie_break = torch.rand(len(lengths), generator=generator).numpy()
        order = np.lexsort((tie_break, lengths))
    else:
        order = np.argsort(lengths, kind="stable")
    batches, current, current_max = [], [], 0
    for index in order:
        length = int(lengths[index])
        if current and max(current_max, length) * (len(current) + 1) > token_budget:
            batches.append(np.asarray(current))
            current, current_max = [], 0
        current.append(index)
        current_max = max(current_max, length)
    if current:
        batches.append(np.asarray(current))
    if generator is not None:
        permutation = torch.randperm(len(batches), generator=generator).numpy()
        batches = [batches[k] for k in permutation]
    return batches


def pad_documents(documents, pad_id=0):
    """Right-pad a list of documents.

    Returns ``tokens`` [B, L], ``attention_mask`` [B, L] and ``target_mask`` [B, L] where
    ``target_mask[b, t]`` says the hidden state at ``t`` predicts main-text token ``t + 1``.
    """
    longest = max(len(document.tokens) for document in documents)
    tokens = np.full((len(documents), longest), pad_id, dtype=np.int64)
    attention_mask = np.zeros((len(documents), longest), dtype=bool)
    target_mask = np.zeros((len(documents), longest), dtype=bool)
    for row, document in enumerate(documents):
        length = len(document.tokens)
        tokens[row, :length] = document.tokens
        attention_mask[row, :length] = True
        target_mask[row, max(document.main_start - 1, 0) : length - 1] = True
    return torch.from_numpy(tokens), torch.from_numpy(attention_mask), torch.from_numpy(target_mask)
