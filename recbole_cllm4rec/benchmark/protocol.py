"""The protocol: which models and datasets exist, a run's RecBole config from the protocol's files and the
user's settings (checked before any work), and the untrained model with its split."""

import contextlib
import difflib
import re
import sys
from dataclasses import dataclass
from logging import getLogger
from pathlib import Path

import yaml

import recbole_cllm4rec  # noqa: F401  (applies the RecBole fixes, registers CLLM4Rec)
from recbole_cllm4rec import compat
from recbole_cllm4rec.benchmark.settings import Settings

HEADLINE_METRICS = ["recall@20", "recall@40", "ndcg@100"]


class BenchmarkError(Exception):
    """A mistake in what was asked for; the message says what exists or what to do."""


# ----- names -------------------------------------------------------------------------------------------
def available_models():
    """Class names of every model RecBole 1.2.1 ships (read from its sources), plus the plugin's."""
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
    folder = Path(folder).absolute()
    data_path = folder.parent
    if (folder / f"{dataset}.inter").is_file():
        return
    known = available_datasets(properties_dir, data_path)
    if dataset not in known and not recbole_download_url(dataset):
        raise BenchmarkError(
            f"Unknown dataset '{dataset}': looked for {folder / (dataset + '.inter')}. Available: "
            f"{', '.join(sorted(known)) or 'none'} (datasets are folders under data_path={data_path} or files "
            f"properties/dataset/<name>.yaml)."
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


def protocol_config(settings):
    """``(config, config file paths)`` for ``settings``: the protocol's files, then the user's files, config dict
    and ``--key=value`` arguments; relative paths read from ``settings.root``, every setting and the dataset
    checked before any work."""
    model = canonical_model_name(settings.model)
    files = config_files_for(model, settings.dataset, settings.properties_dir, settings.config_files)
    contents = {path: read_yaml(path) for path in files}  # a malformed file is named before RecBole reads it
    try:
        config = build_config(model, settings.dataset, files, settings.config_dict, settings.recbole_arguments)
    except ValueError as error:  # e.g. an unknown profile
        raise BenchmarkError(str(error)) from None
    user_files = set(settings.config_files)
    protocol_keys = {key for path in files if path not in user_files for key in contents[path]}
    user_keys = user_setting_keys([contents[path] for path in files if path in user_files], settings.config_dict,
                                  settings.recbole_arguments)
    check_known_keys(config, user_keys, protocol_keys)
    if model == "CLLM4Rec":
        from recbole_cllm4rec.options import check_options

        try:
            check_options(config)
        except ValueError as error:
            raise BenchmarkError(str(error)) from None
    anchor_relative_paths(config, settings.root)
    check_dataset(settings.dataset, config["data_path"], settings.properties_dir, settings.download)
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

        from recbole_cllm4rec.benchmark.sequential import sequential_data_preparation

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
    """``(config, model, train_data, valid_data)`` for the experiments: CLLM4Rec on ``dataset`` under the
    protocol, the extra ``config_files`` (comma or space separated) and ``--key=value`` arguments, untrained."""
    settings = Settings("CLLM4Rec", dataset, config_files=split_config_files(config_files),
                        config_dict={"show_progress": False, **(config_dict or {})},
                        recbole_arguments=recbole_arguments)
    config, _ = protocol_config(settings)
    built = build_untrained(config)
    return config, built.model, built.train_data, built.valid_data


def anchor_relative_paths(config, root):
    """The protocol's relative data and checkpoint paths, read from ``root`` (the working directory by default):
    the same from any working directory."""
    if Path(root).resolve() == Path.cwd().resolve():
        return
    for key in ("data_path", "checkpoint_dir"):
        path = Path(config[key])
        if not path.is_absolute():
            config[key] = str(Path(root) / path)


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
        f"user's training items in time order and ranked from that sequence (`recbole_cllm4rec/benchmark/sequential.py`)."
    )


