"""Every CLLM4Rec option's allowed values, checked in one place before any data or backbone is loaded."""

CHOICES = {
    "profile": ("auto", "cpu", "paper", "none"),
    "llm_initialisation": ("pretrained", "random"),
    "mixed_precision": ("auto", "bf16", "none"),
    "user_table_updates": ("dense", "lazy"),
    "user_state": ("last", "mean", "history_mean"),
    "item_head_input": ("normed", "residual", "layer_mix"),
    "finetune_target": ("held_out", "all"),
    "id_embedding_init": ("normal", "text_mean"),
    "finetune_lr_decay": (None, "none", "linear", "cosine", "plateau"),
}
# key: (kind, lowest, highest, lowest included, highest included, ~ allowed)
RANGES = {
    "mask_ratio": (float, 0, 1, False, False, False),
    "llm_dropout": (float, 0, 1, True, False, False),
    "plateau_decay_factor": (float, 0, 1, False, False, False),
    "soft_token_scale": (float, 0, None, False, None, False),
    "user_learning_rate_scale": (float, 0, None, False, None, False),
    "id_embedding_max_norm": (float, 0, None, False, None, True),
    "item_logit_scale": (float, 0, None, False, None, True),
    "reg_weight": (float, 0, None, True, None, False),
    "learning_rate": (float, 0, None, False, None, False),
    "pretrain_learning_rate": (float, 0, None, False, None, False),
    "epochs": (int, 1, None, True, None, False),
    "pretrain_rounds": (int, 0, None, True, None, False),
    "content_warmup_epochs": (int, 0, None, True, None, False),
    "llm_num_layers": (int, 0, None, True, None, True),
    "content_max_tokens": (int, 1, None, True, None, False),
    "max_seq_length": (int, 2, None, True, None, False),
    "train_batch_tokens": (int, 1, None, True, None, False),
    "eval_batch_tokens": (int, 1, None, True, None, False),
    "eval_step": (int, 1, None, True, None, False),
    "stopping_step": (int, 0, None, True, None, False),
}


def describe_range(kind, low, high, low_closed, high_closed, none_allowed):
    name = "an integer" if kind is int else "a number"
    parts = []
    if low is not None:
        parts.append(f"{'>=' if low_closed else '>'} {low}")
    if high is not None:
        parts.append(f"{'<=' if high_closed else '<'} {high}")
    return f"{name} {' and '.join(parts)}" + (" or ~" if none_allowed else "")


def option_error(key, value, config):
    """The one-line complaint about ``config[key] = value``, or None where the value is allowed."""
    if key in CHOICES:
        if value not in CHOICES[key]:
            allowed = ", ".join(str(choice) for choice in CHOICES[key] if choice is not None)
            return f"{key}={value!r} is not allowed: one of {allowed}"
        return None
    kind, low, high, low_closed, high_closed, none_allowed = RANGES[key]
    wanted = describe_range(kind, low, high, low_closed, high_closed, none_allowed)
    if value is None:
        return None if none_allowed else f"{key}=~ is not allowed: {wanted}"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not float(value).is_integer()):
        return f"{key}={value!r} is not allowed: {wanted}"
    too_low = low is not None and (value < low if low_closed else value <= low)
    too_high = high is not None and (value > high if high_closed else value >= high)
    return f"{key}={value!r} is not allowed: {wanted}" if too_low or too_high else None


def check_options(config):
    """Raise ``ValueError`` naming the first CLLM4Rec option whose value is outside its allowed values."""
    for key in (*CHOICES, *RANGES):
        error = option_error(key, config[key], config)
        if error:
            raise ValueError(error)
    if config["finetune_lr_decay"] == "plateau" and not config["eval_step"]:
        raise ValueError("finetune_lr_decay=plateau follows validation: eval_step must be at least 1")
    if config["user_table_updates"] == "lazy":
        if config["weight_decay"]:
            raise ValueError("user_table_updates=lazy takes no weight_decay (a lazy Adam has none); set weight_decay: 0")
        if config["clip_grad_norm"] or not config["single_spec"]:
            raise ValueError("user_table_updates=lazy works with one process and no clip_grad_norm (the user tables' "
                             "gradients are sparse); use user_table_updates: dense there")


def check_batch_budgets(config, longest_document):
    """A batch budget below the longest document would put each long document in a batch of its own, over budget."""
    for key in ("train_batch_tokens", "eval_batch_tokens"):
        if config[key] < longest_document:
            raise ValueError(f"{key}={config[key]} is not allowed: at least the longest document, {longest_document} "
                             f"tokens on this dataset")
