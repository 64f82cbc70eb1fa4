"""Benchmark runs under one protocol: run any RecBole model or CLLM4Rec, record it, rebuild the tables.

Every run writes ``results/<dataset>/<label>.json`` (valid and test metrics, the full config, seed, git
commit, wall time, peak memory, machine), then ``results/<dataset>.md``, ``results/<dataset>.csv`` and
``results/<dataset>.png`` are rebuilt from all the JSON records of that dataset.
"""

import contextlib
import csv
import functools
import json
import os
import platform
import resource
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from logging import getLogger
from pathlib import Path
from time import time

import yaml

import recbole_cllm4rec  # noqa: F401  (applies the RecBole fixes, registers CLLM4Rec)
from recbole_cllm4rec import compat
from recbole_cllm4rec.cpu_memory import keep_freed_memory_if_configured
from recbole_cllm4rec.per_user import collect_per_user, write_per_user

HEADLINE_METRICS = ["recall@20", "recall@40", "ndcg@100"]
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class BenchmarkError(Exception):
    """A mistake in what was asked for; the message says what exists or what to do."""


# ----- names -------------------------------------------------------------------------------------------
def available_models():
    """Class names of every model RecBole 1.2.1 ships (read from its sources), plus the plugin's."""
    import re

    import recbole.model as recbole_models

    root = Path(recbole_models.__file__).parent
    names = set(compat.PLUGIN_MODEL_FILES)
    for kind in ("general_recommender", "sequential_recommender", "context_aware_recommender",
                 "knowledge_aware_recommender", "exlib_recommender"):
        for path in (root / kind).glob("*.py"):
            if path.stem.startswith("_"):
                continue
            classes = re.findall(r"^class (\w+)\(", path.read_text(encoding="utf-8"), flags=re.MULTILINE)
            names.update(name for name in classes if name.lower() == path.stem)
    return names


def canonical_model_name(name):
    """RecBole's class name for ``name`` (case-insensitive), or a BenchmarkError listing what exists."""
    known = available_models()
    by_lower_name = {model.lower(): model for model in known}
    if name.lower() not in by_lower_name:
        raise BenchmarkError(f"Unknown model '{name}'. Known models: {', '.join(sorted(known, key=str.lower))}")
    return by_lower_name[name.lower()]


def available_datasets(properties_dir, data_path):
    names = {path.stem for path in (Path(properties_dir) / "dataset").glob("*.yaml")}
    if Path(data_path).is_dir():
        names.update(path.name for path in Path(data_path).iterdir() if path.is_dir())
    return names


def recbole_download_url(dataset):
    import recbole.config.configurator as configurator

    url_file = Path(configurator.__file__).parent.parent / "properties" / "dataset" / "url.yaml"
    with open(url_file, encoding="utf-8") as handle:
        return (yaml.safe_load(handle) or {}).get(dataset)


def check_dataset(dataset, folder, properties_dir, download=False):
    """Fail early, naming where we looked, unless the dataset's atomic files (or a download) exist.

    ``folder`` is RecBole's ``config['data_path']``: the data path joined with the dataset name."""
    folder = Path(folder)
    data_path = folder.parent
    if (folder / f"{dataset}.inter").is_file():
        return
    known = available_datasets(properties_dir, data_path)
    if dataset not in known and not recbole_download_url(dataset):
        raise BenchmarkError(
            f"Unknown dataset '{dataset}'. Available: {', '.join(sorted(known)) or 'none'} "
            f"(datasets are folders under data_path={data_path} or files properties/dataset/<name>.yaml)."
        )
    if download and recbole_download_url(dataset):
        return  # RecBole downloads it into data_path
    hint = " or pass --download to let RecBole fetch it" if recbole_download_url(dataset) else ""
    raise BenchmarkError(
        f"Dataset '{dataset}' not found: looked for {folder / (dataset + '.inter')}. Run `bash scripts/setup.sh` "
        f"(links ../shared/datasets into dataset/), put the atomic files there, point --data_path at a folder "
        f"holding {dataset}/{dataset}.inter{hint}."
    )


def check_topk(config, dataset):
    """Full ranking cannot take a top-k longer than the catalogue: say so before training, not after it."""
    n_items = dataset.item_num - 1  # RecBole's item 0 is padding
    too_long = [k for k in config["topk"] if k > n_items]
    if too_long:
        raise BenchmarkError(
            f"topk {too_long} exceeds the {n_items} items of dataset '{config['dataset']}'. Set a shorter list, "
            f"e.g. --topk=\"[5,10,20]\" --valid_metric=NDCG@10, or in properties/dataset/{config['dataset']}.yaml."
        )


# ----- one run ---------------------------------------------------------------------------------------------
def split_config_files(text):
    """``--config_files`` as a list: comma- or space-separated paths."""
    return [path for path in text.replace(",", " ").split() if path]


def config_files_for(model, dataset, properties_dir, extra_files=()):
    properties_dir = Path(properties_dir)
    files = [properties_dir / "overall.yaml", properties_dir / "dataset" / f"{dataset}.yaml",
             properties_dir / "model" / f"{model}.yaml"]
    files = [str(path) for path in files if path.is_file()]
    for path in extra_files:
        if not Path(path).is_file():
            raise BenchmarkError(f"Config file not found: {path}")
        files.append(str(path))
    return files


def read_yaml(path):
    """A yaml file's settings, or a BenchmarkError naming the file and line of a syntax error."""
    try:
        with open(path, encoding="utf-8") as handle:
            return yaml.safe_load(handle) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise BenchmarkError(f"{path}{where}: not valid yaml ({problem})") from None


# Keys RecBole reads without a default in its properties (multi-process runs), and the runner's own
RUN_KEYS = {"nproc", "world_size", "ip", "port", "offset", "local_rank", "distributed_backend", "single_spec",
            "cpu_keep_freed_memory", "valid_metric_bigger"}


def check_known_keys(config, user_keys, protocol_keys=()):
    """Refuse a key that neither RecBole, the model (with its trainer) nor the protocol knows, with the closest
    known key: RecBole's Config keeps unknown keys silently, so a typo would run the defaults."""
    import difflib

    known = set(config.internal_config_dict) | set(protocol_keys) | RUN_KEYS
    for key in sorted(set(user_keys) - known):
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise BenchmarkError(f"Unknown setting '{key}' for {config['model']}{hint} (RecBole's, the model's and the "
                             f"protocol's keys are known; see the model's yaml)")


def user_setting_keys(file_settings, config_dict, recbole_arguments):
    """The keys a user set: in their own config files (``file_settings``: their parsed contents), the config dict
    and ``--key=value`` arguments."""
    keys = set(config_dict or {})
    for settings in file_settings:
        keys.update(settings)
    for argument in recbole_arguments:
        if argument.startswith("--") and "=" in argument:
            keys.add(argument[2:].split("=", 1)[0])
    return keys


@contextlib.contextmanager
def recbole_command_line(arguments):
    """RecBole's Config reads --key=value from sys.argv: give it exactly the arguments meant for it."""
    saved = sys.argv
    sys.argv = [saved[0], *arguments]
    try:
        yield
    finally:
        sys.argv = saved


def build_config(model, dataset, config_files, config_dict, recbole_arguments=()):
    from recbole.config import Config

    with recbole_command_line(recbole_arguments):
        return Config(model=model, dataset=dataset, config_file_list=list(config_files), config_dict=dict(config_dict))


@dataclass
class Untrained:
    """A model as the protocol builds it before training, with the data it trains and is judged on."""

    train_data: object
    valid_data: object
    test_data: object
    model: object
    user_sequences: object = None  # sequential models: each user's items in time order, for their trainer


def protocol_config(model, dataset, properties_dir=PROJECT_ROOT / "properties", config_files=(), config_dict=None,
                    recbole_arguments=(), download=False):
    """``(config, config file paths)`` for ``model`` on ``dataset``: the protocol's files, then ``config_files``,
    ``config_dict`` and ``--key=value`` arguments; relative paths anchored, the dataset checked."""
    model = canonical_model_name(model)
    files = config_files_for(model, dataset, properties_dir, config_files)
    settings = {path: read_yaml(path) for path in files}  # a malformed file is named before RecBole reads it
    try:
        config = build_config(model, dataset, files, config_dict or {}, recbole_arguments)
    except ValueError as error:  # e.g. an unknown profile
        raise BenchmarkError(str(error)) from None
    user_files = set(map(str, config_files))
    protocol_keys = {key for path in files if path not in user_files for key in settings[path]}
    user_keys = user_setting_keys([settings[path] for path in files if path in user_files], config_dict,
                                  recbole_arguments)
    check_known_keys(config, user_keys, protocol_keys)
    if model == "CLLM4Rec":
        from recbole_cllm4rec.options import check_options

        try:
            check_options(config)
        except ValueError as error:
            raise BenchmarkError(str(error)) from None
    anchor_relative_paths(config)
    check_dataset(dataset, config["data_path"], properties_dir, download)
    return config, files


def build_untrained(config):
    """The split, samplers and freshly initialised model for ``config``, seeded as a run seeds them: a script
    that measures or probes a model starts from the model a run would train."""
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import ModelType, get_model, init_seed

    init_seed(config["seed"], config["reproducibility"])
    user_sequences = None
    if config["MODEL_TYPE"] == ModelType.SEQUENTIAL:
        from recbole.data.dataset import Dataset

        from recbole_cllm4rec.sequential import sequential_data_preparation

        dataset = Dataset(config)
        train_data, valid_data, test_data, user_sequences = sequential_data_preparation(config, dataset)
    else:
        dataset = create_dataset(config)
        train_data, valid_data, test_data = data_preparation(config, dataset)
    getLogger().info(dataset)
    check_topk(config, dataset)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    return Untrained(train_data, valid_data, test_data, model, user_sequences)


def build_cllm4rec(dataset, config_files="", config_dict=None, recbole_arguments=()):
    """``(config, model, train_data, valid_data)`` for the analysis scripts: CLLM4Rec on ``dataset`` under the
    protocol, the extra ``config_files`` (comma or space separated) and ``--key=value`` arguments, untrained."""
    config, _ = protocol_config("CLLM4Rec", dataset, config_files=split_config_files(config_files),
                                config_dict={"show_progress": False, **(config_dict or {})},
                                recbole_arguments=recbole_arguments)
    built = build_untrained(config)
    return config, built.model, built.train_data, built.valid_data


def refuse_to_replace(results_dir, dataset, label, what="a record"):
    """A row already in ``results/`` is replaced only when the command says so."""
    path = record_path(results_dir, dataset, label)
    if path.exists():
        raise BenchmarkError(
            f"{path} already holds {what} for '{label}': pass --label=<new name> for a new row, or --overwrite "
            f"to replace it."
        )


def run(model, dataset, properties_dir=PROJECT_ROOT / "properties", results_dir=PROJECT_ROOT / "results",
        config_files=(), config_dict=None, recbole_arguments=(), download=False, label=None, callback_fn=None,
        extra_record=None, write=True, overwrite=True):
    """Train and test ``model`` on ``dataset`` under the protocol; return (and write) the result record. With
    ``overwrite=False`` an existing record of the same label is refused before any work."""
    from recbole.utils import ModelType, get_environment, get_trainer, init_logger

    if write and not overwrite:
        refuse_to_replace(results_dir, dataset, label or canonical_model_name(model))
    config, files = protocol_config(model, dataset, properties_dir, config_files, config_dict, recbole_arguments,
                                    download)
    model = config["model"]
    init_logger(config)
    logger = getLogger()
    keep_freed_memory_if_configured(config)  # any model whose file or command line asks for it
    compat.score_real_mask_slots_only_in_bert4rec()  # the runner's speed-up; importing the plugin changes no model
    started, commit = time(), git_commit()  # the code that runs is the code this process loaded

    built = build_untrained(config)
    train_data, valid_data, test_data, recommender = built.train_data, built.valid_data, built.test_data, built.model
    if config["MODEL_TYPE"] == ModelType.SEQUENTIAL:
        from recbole_cllm4rec.sequential import UserSplitSequentialTrainer

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
        "config_files": [os.path.relpath(path, PROJECT_ROOT) if Path(path).is_absolute() else path for path in files],
        "command_line_overrides": list(recbole_arguments),
        "config": json_safe(config.final_config_dict),
        "git_commit": commit,
        "wall_time_s": round(time() - started, 3),
        "peak_memory_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "machine": {**machine_description(config), "precision": getattr(recommender, "mixed_precision", "none")},
        "environment": get_environment(config).draw(),  # samples CPU use for 1 s: call once
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    record.update(extra_record or {})
    users_file = per_user_path(results_dir, dataset, record["label"])
    if per_user_rows:
        record["per_user_file"] = users_file.name
    if write:
        if per_user_rows:
            users_file.parent.mkdir(parents=True, exist_ok=True)
            write_per_user(users_file, per_user_rows, train_data._dataset)
        publish_record(record, results_dir, properties_dir)
    logger.info(f"test result: {dict(test_result)}")
    return record


def anchor_relative_paths(config):
    """Relative data and checkpoint paths that do not exist from the working directory are read from the
    project root, so run_benchmark.py works from any directory."""
    for key in ("data_path", "checkpoint_dir"):
        path = Path(config[key])
        if not path.is_absolute() and not path.exists() and (PROJECT_ROOT / path).parent.exists():
            config[key] = str(PROJECT_ROOT / path)


def json_safe(value):
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


@functools.lru_cache(maxsize=None)
def git_commit():
    """HEAD, with ``-dirty`` when tracked code or configuration differs from it. ``results/`` is left out:
    every run rewrites the tables there, which changes nothing that runs. ``$RECBOLE_CLLM4REC_GIT_COMMIT``,
    where set, wins: a copy of the tree on another machine may carry no .git, or a stale one. Read once per
    process: a long process (a search, an ablation) runs the code it loaded, whatever is committed meanwhile."""
    stated = os.environ.get("RECBOLE_CLLM4REC_GIT_COMMIT")
    if stated:
        return stated
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results"], cwd=PROJECT_ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def machine_description(config):
    import torch

    return {
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(config["device"]),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def cpu_model():
    """The CPU's model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere): CLLM4Rec's ``mixed_precision:
    auto`` turns bf16 on where the CPU has bf16 units, so the same config computes differently on another CPU."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


# ----- records and tables ----------------------------------------------------------------------------------
def record_path(results_dir, dataset, label):
    return Path(results_dir) / dataset / f"{label}.json"


def per_user_path(results_dir, dataset, label):
    return Path(results_dir) / dataset / f"{label}.users.csv.gz"


def write_record(record, results_dir):
    path = record_path(results_dir, record["dataset"], record["label"])
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(record, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(temporary, path)
    return path


def publish_record(record, results_dir, properties_dir):
    """Write the record and rebuild its dataset's tables, where the row appears."""
    write_record(record, results_dir)
    rebuild_tables(record["dataset"], results_dir, properties_dir)


def load_records(dataset, results_dir):
    folder = Path(results_dir) / dataset
    return [json.loads(path.read_text(encoding="utf-8")) for path in sorted(folder.glob("*.json"))]


def metric_columns(records):
    """Every test metric, ordered by metric family then cutoff."""
    names = {name for record in records for name in record["test"]}
    return sorted(names, key=lambda name: (name.split("@")[0], int(name.split("@")[1]) if "@" in name else 0))


def protocol_settings(properties_dir, dataset=None):
    """``overall.yaml``'s protocol, with the keys the dataset's own properties file overrides (a small catalogue's
    top-k and validation metric); returns the settings and the names of the overridden keys."""
    with open(Path(properties_dir) / "overall.yaml", encoding="utf-8") as handle:
        protocol = yaml.safe_load(handle)
    dataset_file = Path(properties_dir) / "dataset" / f"{dataset}.yaml"
    overrides = {}
    if dataset and dataset_file.exists():
        with open(dataset_file, encoding="utf-8") as handle:
            overrides = {key: value for key, value in (yaml.safe_load(handle) or {}).items() if key in protocol}
        protocol.update(overrides)
    return protocol, sorted(overrides)


def protocol_text(properties_dir, dataset=None):
    """The protocol sentence above every table: ``overall.yaml``, with the keys the dataset's own
    properties file overrides named as such."""
    protocol, overridden = protocol_settings(properties_dir, dataset)
    source = "`properties/overall.yaml`"
    if overridden:
        source += f", with {', '.join(overridden)} from `properties/dataset/{dataset}.yaml`"
    split = protocol["eval_args"]["split"]
    return (
        f"**Protocol** ({source}): per-user random split {split} "
        f"(RecBole `RS`, order `{protocol['eval_args']['order']}`, group by `{protocol['eval_args']['group_by']}`), "
        f"full ranking over all items with training items masked (and validation items for test), seed "
        f"{protocol['seed']}, metrics {', '.join(protocol['metrics'])} at {protocol['topk']}; model selection and "
        f"early stopping on validation `{protocol['valid_metric']}`. Headline columns (the paper's): "
        f"{', '.join(HEADLINE_METRICS)}. Numbers are **test** metrics. Sequential models are trained on each "
        f"user's training items in time order and ranked from that sequence (`recbole_cllm4rec/sequential.py`)."
    )


def headline_columns(records):
    """The paper's headline metrics where the dataset reports them; a small catalogue (top-k capped below
    40 or 100) adds recall and NDCG at its shortest list and its validation metric instead."""
    test = records[0]["test"]
    columns = [metric for metric in HEADLINE_METRICS if metric in test]
    if len(columns) < len(HEADLINE_METRICS):
        shortest = min(int(metric.split("@")[1]) for metric in test)
        columns += [f"recall@{shortest}", f"ndcg@{shortest}", records[0]["valid_metric"]]
    return list(dict.fromkeys(metric for metric in columns if metric in test))


def tuning_summary(tuning):
    """The table's 'tuned' cell: how many trials, and how many distinct configurations where fewer."""
    if not tuning:
        return "no (defaults)"
    distinct = tuning.get("n_distinct_configurations", tuning["n_trials"])
    repeated = f" ({distinct} distinct)" if distinct < tuning["n_trials"] else ""
    return f"yes, {tuning['n_trials']} trials{repeated}"


METHOD = "CLLM4Rec"
# CLLM4Rec's rows in a main table, by label: its current profile, its search's best, its controls, the paper's model
METHOD_ROWS = {
    METHOD: "CLLM4Rec",
    f"{METHOD}-tuned": "CLLM4Rec (tuned)",
    f"{METHOD}-no-transformer": "CLLM4Rec, no transformer blocks (control)",
    f"{METHOD}-random-init": "CLLM4Rec, randomly initialised backbone (control)",
    f"{METHOD}-paper": "CLLM4Rec, the paper's model",
}
SEED_SUFFIX = "-seed-"
SEED_COUNT = 3  # main tables and seed statistics: the protocol's seed and the next two


def base_label(label):
    """``EASE-tuned-seed-2021`` -> ``EASE-tuned``: the row a seed repetition belongs to."""
    return label.split(SEED_SUFFIX)[0] if SEED_SUFFIX in label else label


def is_main_row(record, protocol_seed):
    """A main table holds each baseline at its defaults and tuned, and CLLM4Rec's rows of ``METHOD_ROWS``, at the
    protocol's seed and the next ``SEED_COUNT - 1``."""
    if not protocol_seed <= record["seed"] < protocol_seed + SEED_COUNT:
        return False
    label = base_label(record["label"])
    if record.get("model") == METHOD:
        return label in METHOD_ROWS
    return label in (record.get("model"), f"{record.get('model')}-tuned")


def schedule_note(record):
    """A CLLM4Rec row trained on a fixed-length schedule says so: the cpu profile now follows validation."""
    config = record.get("config", {})
    decay = config.get("finetune_lr_decay")
    if record.get("model") != METHOD or decay in (None, "plateau") or "profile_applied" in config:
        return ""
    return f" [former cpu profile: {decay} decay over {config.get('epochs')} epochs]"


def display_name(record):
    label = base_label(record["label"])
    if label in METHOD_ROWS:
        return METHOD_ROWS[label] + schedule_note(record)
    if label.endswith("-tuned") and record.get("tuning"):
        return f"{label[:-len('-tuned')]} (tuned, {record['tuning']['n_trials']} trials)"
    return label


def seed_statistics(records, headline, protocol_seed):
    """``{base label: {metric: (mean, sd), 'seeds': [...]}}`` for the rows run at every one of the protocol's seed
    and the next ``SEED_COUNT - 1``: the same splits for every row, so the means compare."""
    import statistics

    seeds = set(range(protocol_seed, protocol_seed + SEED_COUNT))
    groups = {}
    for record in records:
        if record["seed"] in seeds:
            groups.setdefault(base_label(record["label"]), {})[record["seed"]] = record
    stats = {}
    for label, by_seed in groups.items():
        if set(by_seed) != seeds:
            continue
        stats[label] = {metric: (statistics.mean(r["test"][metric] for r in by_seed.values()),
                                 statistics.stdev(r["test"][metric] for r in by_seed.values())) for metric in headline}
        stats[label]["seeds"] = sorted(by_seed)
    return stats


def provenance_lines(records):
    lines = ["| row | config files and overrides | tuned | best validation | epochs run | wall time (s) | machine | "
             "peak memory (GiB) | commit |", "|---|---|---|---|---|---|---|---|---|"]
    for record in records:
        overrides = ", ".join(record["config_files"] + record.get("command_line_overrides", []))
        lines.append(
            f"| {display_name(record)} | {overrides} | {tuning_summary(record.get('tuning'))} | {record['valid_metric']} = "
            f"{record['best_valid_score']:.4f} | {record.get('epochs_run', '')} | {record['wall_time_s']} | "
            f"{machine_label(record)} | {record['peak_memory_gib']} | {short_commit(record)} |")
    return lines


def rebuild_tables(dataset, results_dir, properties_dir):
    """Write ``<dataset>.md`` (the main table), ``<dataset>-variants.md`` (every other record), ``<dataset>.csv``
    (all records) and ``<dataset>.png`` (the main rows) from the dataset's JSON records."""
    records = load_records(dataset, results_dir)
    if not records:
        return
    headline = headline_columns(records)
    records.sort(key=lambda record: -record["test"].get(headline[0], 0))
    metrics = metric_columns(records)
    results_dir = Path(results_dir)
    protocol_seed = protocol_settings(properties_dir, dataset)[0]["seed"]
    for record in records:
        record.setdefault("seed", protocol_seed)
    with open(results_dir / f"{dataset}.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", *metrics, "seed", "table"])
        for record in records:
            writer.writerow([record["label"], *(record["test"].get(metric, "") for metric in metrics), record["seed"],
                             "main" if is_main_row(record, protocol_seed) else "variants"])
    main = [record for record in records if is_main_row(record, protocol_seed)]
    variants = [record for record in records if not is_main_row(record, protocol_seed)]
    if not main:  # nothing of the protocol's rows yet (e.g. only other seeds): one table of them all
        main, variants = records, []
    main_at_seed = [record for record in main if record["seed"] == protocol_seed] or main
    stats = seed_statistics(main, headline, protocol_seed)
    lines = [f"# {dataset}", "", protocol_text(properties_dir, dataset), "",
             f"Each baseline at RecBole's defaults and tuned, CLLM4Rec's current profile and its controls. Every "
             f"other record (earlier profiles, variants, probes) is in [{dataset}-variants.md]({dataset}-variants.md).",
             "", f"![headline metrics]({dataset}.png)", "", f"## Headline (test, seed {protocol_seed})", "",
             "| model | " + " | ".join(headline) + " |", "|---" * (len(headline) + 1) + "|"]
    best = {metric: max(record["test"].get(metric, -1) for record in main_at_seed) for metric in headline}
    for record in main_at_seed:
        cells = [format_metric(record["test"].get(metric), best[metric]) for metric in headline]
        lines.append(f"| {display_name(record)} | " + " | ".join(cells) + " |")
    if stats:
        lines += ["", "## Over seeds (test, mean ± sd)", "",
                  "Each seed also redraws the split, so rows are compared seed by seed; the means below are over the "
                  "same seeds for every row.", "",
                  "| model | seeds | " + " | ".join(headline) + " |", "|---" * (len(headline) + 2) + "|"]
        named = {base_label(record["label"]): record for record in main}
        for label, stat in sorted(stats.items(), key=lambda item: -item[1][headline[0]][0]):
            cells = [f"{stat[metric][0]:.4f} ± {stat[metric][1]:.4f}" for metric in headline]
            lines.append(f"| {display_name(named[label])} | {', '.join(map(str, stat['seeds']))} | "
                         + " | ".join(cells) + " |")
    lines += ["", "## All test metrics", "", "| model | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for record in main_at_seed:
        lines.append(f"| {display_name(record)} | " + " | ".join(format_metric(record["test"].get(m)) for m in metrics) + " |")
    lines += ["", "## Provenance", "", *provenance_lines(main), "",
              f"Each row comes from `results/{dataset}/<label>.json` (full config, seed, machine), written by "
              f"`python run_benchmark.py --model=<model> --dataset={dataset}` with the files and overrides listed."]
    lines += [f"- {display_name(record)}: {record[key]}" for record in main
              for key in ("label_note", "git_commit_note", "tuning_note") if record.get(key)]
    lines.append("")
    (results_dir / f"{dataset}.md").write_text("\n".join(lines), encoding="utf-8")
    write_variants_table(dataset, variants, headline, results_dir)
    plot_headline(main_at_seed, results_dir / f"{dataset}.png", dataset, headline, stats)


def write_variants_table(dataset, records, headline, results_dir):
    """Every record that is not a main row: earlier profiles, variants, probes, other machines."""
    path = results_dir / f"{dataset}-variants.md"
    if not records:
        path.unlink(missing_ok=True)
        return
    lines = [f"# {dataset}: other records", "",
             f"Records beside the main table ([{dataset}.md]({dataset}.md)): earlier CLLM4Rec profiles, variants and "
             f"probes, and runs on other machines. Exploration only: configurations are chosen on validation, and "
             f"these rows are not a ranking. Rows of another seed than the protocol's are tested on another split.", "",
             "| row | seed | " + " | ".join(headline) + " | note |", "|---" * (len(headline) + 3) + "|"]
    for record in records:
        note = record.get("label_note") or (f"formerly `{record['former_label']}`" if record.get("former_label") else "")
        cells = [format_metric(record["test"].get(metric)) for metric in headline]
        lines.append(f"| {record['label']} | {record['seed']} | " + " | ".join(cells) + f" | {note} |")
    lines += ["", "## Provenance", "", *provenance_lines(records), ""]
    path.write_text("\n".join(lines), encoding="utf-8")


def short_commit(record):
    """The commit's first 12 digits, keeping ``-dirty``: a row run from uncommitted changes must say so."""
    commit, dirty, _ = (record["git_commit"] or "unknown").partition("-dirty")
    return f"`{commit[:12]}{dirty}`"


def machine_label(record):
    machine = record.get("machine", {})
    threads = machine.get("torch_threads")
    if machine.get("gpu"):
        label = machine["gpu"]
    else:
        label = f"CPU, {threads} thread{'s' if threads != 1 else ''}" if threads else "CPU"
    return label + (", bf16" if machine.get("precision") == "bf16" else "")


def format_metric(value, best=None):
    if value is None:
        return "–"
    return f"**{value:.4f}**" if value == best else f"{value:.4f}"


def plot_headline(records, path, dataset, headline=HEADLINE_METRICS, stats=None):
    """One panel per headline metric, rows in the table's order, the axis spanning the rows' range so the
    differences that decide the ranking show; CLLM4Rec's rows in their own colour, controls hatched, seed sd as bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    stats = stats or {}
    labels = [display_name(record) for record in records]
    positions = np.arange(len(records))[::-1]
    colours = ["tab:orange" if record.get("model") == METHOD else
               ("tab:blue" if record["label"].endswith("-tuned") else "lightsteelblue") for record in records]
    hatches = ["//" if "control" in label else "" for label in labels]
    figure, axes = plt.subplots(1, len(headline), figsize=(4.2 * len(headline) + 3, 0.36 * len(records) + 1.6),
                                sharey=True)
    for axis, metric in zip(np.atleast_1d(axes), headline):
        values = np.array([record["test"].get(metric, 0) for record in records])
        errors = [stats.get(base_label(record["label"]), {}).get(metric, (0, 0))[1] for record in records]
        bars = axis.barh(positions, values, xerr=errors, color=colours, edgecolor="black", linewidth=0.4,
                         error_kw={"elinewidth": 1, "capsize": 2})
        for bar, hatch in zip(bars, hatches):
            bar.set_hatch(hatch)
        shown = values[values > 0]
        low, high = (shown.min(), shown.max()) if len(shown) else (0, 1)
        axis.set_xlim(max(0, low - 0.15 * (high - low) - 1e-3), high + 0.08 * (high - low) + 1e-3)
        axis.set_title(metric)
        axis.grid(axis="x", alpha=0.3)
    np.atleast_1d(axes)[0].set_yticks(positions, labels)
    figure.suptitle(f"{dataset}: test metrics (orange: CLLM4Rec, hatched: its controls; dark blue: tuned "
                    f"baselines; error bars: sd over seeds)", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
