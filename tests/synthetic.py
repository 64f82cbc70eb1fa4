"""A tiny atomic dataset with planted structure, and tiny random backbones, for tests."""

import random
from pathlib import Path

GROUP_WORDS = ["lipstick red matte", "shampoo hair repair", "moisturizer face cream", "nail polish pink"]


def write_planted_dataset(root, name="tiny", n_users=60, n_items=40, items_per_user=8, seed=0, with_reviews=True):
    """Users and items fall in 4 groups; each user interacts with items of their own group only.

    Item titles name their group, so both the collaborative and the content side carry the signal.
    """
    rng = random.Random(seed)
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    groups = len(GROUP_WORDS)
    items_by_group = {g: [i for i in range(n_items) if i % groups == g] for g in range(groups)}
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float" + ("\treview:token" if with_reviews else "")]
    for user in range(n_users):
        group = user % groups
        chosen = rng.sample(items_by_group[group], min(items_per_user, len(items_by_group[group])))
        for position, item in enumerate(chosen):
            row = f"u{user}\ti{item}\t5\t{position + 1}"
            if with_reviews:
                row += f"\tI love this {GROUP_WORDS[group].split()[0]}, great {GROUP_WORDS[group].split()[1]}"
            lines.append(row)
    (folder / f"{name}.inter").write_text("\n".join(lines) + "\n", encoding="utf-8")
    item_lines = ["item_id:token\ttitle:token_seq\tbrand:token\tcategories:token_seq"]
    for item in range(n_items):
        group = item % groups
        item_lines.append(f"i{item}\t{GROUP_WORDS[group]} number {item}\tBrand {group}\tBeauty Group_{group}")
    (folder / f"{name}.item").write_text("\n".join(item_lines) + "\n", encoding="utf-8")
    return folder


def tiny_backbone_dir(root, family, tokenizer_source):
    """A randomly initialised 2-layer causal LM of ``family`` ('llama' or 'gpt2') with a real tokenizer."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    target = Path(root) / f"tiny-{family}"
    if family == "llama":
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                             tie_word_embeddings=True)
        model = LlamaForCausalLM(config)
    else:
        config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4, n_positions=512)
        model = GPT2LMHeadModel(config)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target
