"""One benchmark run: any RecBole model or CLLM4Rec trained and tested under the protocol, recorded, the tables
rebuilt.

Every run writes ``<results>/<dataset>/<label>.json`` (valid and test metrics, the full config, seed, git commit,
wall time, peak memory, machine) and each test user's metrics beside it, then rebuilds ``<dataset>.md``,
``<dataset>-variants.md``, ``<dataset>.csv`` and ``<dataset>.png`` from all the records of that dataset.
"""

import resource
from datetime import datetime, timezone
from logging import getLogger
from pathlib import Path
from time import time

from recbole_cllm4rec.benchmark.cpu_memory import keep_freed_memory_if_configured
from recbole_cllm4rec.benchmark.per_user import collect_per_user, write_per_user
from recbole_cllm4rec.benchmark.protocol import build_untrained, canonical_model_name, protocol_config
from recbole_cllm4rec.benchmark.records import (git_commit, json_safe, machine_description, per_user_path,
                                                refuse_to_replace)
from recbole_cllm4rec.benchmark.speedups import score_real_mask_slots_only_in_bert4rec
from recbole_cllm4rec.benchmark.tables import publish_record


def run(settings, callback_fn=None, extra_record=None, write=True):
    """Train and test as ``settings`` say; return (and, with ``write``, publish) the result record. A label that
    already has a record is refused before any work unless ``settings.overwrite``. ``callback_fn(epoch, score)``
    hears every validation; ``extra_record`` adds keys to the record."""
    from recbole.utils import ModelType, get_environment, get_trainer, init_logger

    if write and not settings.overwrite:
        refuse_to_replace(settings.results_dir, settings.dataset, settings.label or canonical_model_name(settings.model))
    config, files = protocol_config(settings)
    model, dataset, label = config["model"], settings.dataset, settings.label
    init_logger(config)
    logger = getLogger()
    keep_freed_memory_if_configured(config)  # any model whose file or command line asks for it
    score_real_mask_slots_only_in_bert4rec()  # the runner's speed-up; importing the plugin changes no model
    started, commit = time(), git_commit()  # the code that runs is the code this process loaded

    built = build_untrained(config)
    train_data, valid_data, test_data, recommender = built.train_data, built.valid_data, built.test_data, built.model
    if config["MODEL_TYPE"] == ModelType.SEQUENTIAL:
        from recbole_cllm4rec.benchmark.sequential import UserSplitSequentialTrainer

        trainer = UserSplitSequentialTrainer(config, recommender, built.user_sequences)
    else:
        trainer = get_trainer(config["MODEL_TYPE"], model)(config, recommender)
    valid_curve = []

    def record_validation(epoch, valid_score):
        valid_curve.append([int(epoch), float(valid_score)])
        if callback_fn:
            callback_fn(epoch, valid_score)

    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=True, show_progress=config["show_progress"], callback_fn=record_validation
    )
    with collect_per_user(trainer, train_data._dataset, config["topk"]) as per_user_rows:
        test_result = trainer.evaluate(test_data, load_best_model=True, show_progress=config["show_progress"])
    record = {
        "model": model,
        "label": label or model,
        "dataset": dataset,
        "seed": config["seed"],
        "valid_metric": config["valid_metric"].lower(),
        "best_valid_score": float(best_valid_score),
        "valid": {key: float(value) for key, value in (best_valid_result or {}).items()},
        "test": {key: float(value) for key, value in test_result.items()},
        "epochs_run": len(trainer.train_loss_dict),
        "valid_curve": valid_curve,  # [epoch, validation score] at every validation
        "config_files": [settings.display_path(path) if Path(path).is_absolute() else path for path in files],
        "command_line_overrides": list(settings.recbole_arguments),
        "config": json_safe(config.final_config_dict),
        "git_commit": commit,
        "wall_time_s": round(time() - started, 3),
        "peak_memory_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "machine": {**machine_description(config), "precision": getattr(recommender, "mixed_precision", "none")},
        "environment": get_environment(config).draw(),  # samples CPU use for 1 s: call once
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    record.update(extra_record or {})
    users_file = per_user_path(settings.results_dir, dataset, record["label"])
    if per_user_rows:
        record["per_user_file"] = users_file.name
    if write:
        if per_user_rows:
            users_file.parent.mkdir(parents=True, exist_ok=True)
            write_per_user(users_file, per_user_rows, train_data._dataset)
        publish_record(record, settings.results_dir, settings.properties_dir)
    logger.info(f"test result: {dict(test_result)}")
    return record


