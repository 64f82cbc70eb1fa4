"""Every patch of RecBole 1.2.1's internals, and nothing else.

RecBole 1.2.1 predates numpy 2, pandas 3, scipy 1.13, setuptools 82 and torch 2.6. The causes of the
crashes (see ``docs``/README) and how each one is handled here:

A. ray 2.6.3 imports ``pkg_resources``, which setuptools >= 82 no longer ships.
   -> version pin ``setuptools<82`` in pyproject.toml (torch needs >= 77.0.3, so 77-81 fit).
B. ray.tune uses ``np.bool8``; C. RecBole's ``Config`` uses ``np.float_``/``np.complex_``/``np.unicode_``.
   -> version pin ``numpy<2``. Aliasing attributes into numpy would change numpy for the whole process.
E. scipy >= 1.13 removed ``dok_matrix._update`` (LightGCN, NGCF, GCMC, SpectralCF, NCL, KGIN, MCCLK).
   -> version pin ``scipy<1.13``.
F. pandas 3 copy-on-write turns RecBole's in-place ``fillna`` into a silent no-op (NaN features stay NaN)
   and breaks ``Series.agg(len)`` on sequence fields.
   -> version pin ``pandas<3``: a silent wrong number is the worst failure, and a pin cannot miss a call site.
D. torch >= 2.6 loads with ``weights_only=True`` but RecBole checkpoints pickle its ``Config``.
   -> no pin can fix this (torch is pinned by the machine, not by us). ``Trainer.resume_checkpoint``,
      ``Trainer.evaluate`` and ``load_data_and_model`` are wrapped so that *during those calls only*
      ``torch.load`` defaults to ``weights_only=False``. They only read checkpoints RecBole itself wrote.

G. ``ensure_dir`` checks ``os.path.exists`` and then calls ``os.makedirs``: two processes of one multi-process
   run (or two runs sharing a ``checkpoint_dir``) can both see the folder missing, and the slower one dies
   with ``FileExistsError`` (seen in CI: the two-process gloo test, about one run in several).
   -> ``ensure_dir`` is replaced, in every module that imported it, by ``os.makedirs(exist_ok=True)``.

H. ``recbole/model/sequential_recommender/sine.py`` calls ``torch.autograd.set_detect_anomaly(True)`` when it
   is imported, and ``get_model`` imports every sequential model to find any one of them: from then on the
   whole process runs with autograd's debugging mode, which checks every gradient for NaN (and on a GPU
   waits for each check). SASRec's training step on the 2-core CPU spent a quarter of its time there.
   -> ``get_model`` puts anomaly detection back as it found it (and ``anomaly_detection_kept`` around any other
      import of a sequential model). Metrics are unchanged (the mode only
      inspects); a NaN loss still stops RecBole's trainer, which checks it.

``check_environment`` fails loudly, naming the pin, when A/B/C/E/F are violated anyway (someone forced
an upgrade): a clear error is better than RecBole's crash or, for pandas 3, silently wrong metrics.

Besides the fixes, this module is the one place that touches RecBole's private mechanics to register a
plugin model with an unmodified RecBole:
- ``get_model`` looks for ``recbole.model.<kind>_recommender.<name>``: the model module is entered in
  ``sys.modules`` under that name; ``get_trainer`` looks for ``recbole.trainer.<Name>Trainer``.
- ``Config`` only reads default hyperparameters from RecBole's own properties folder: the plugin's yaml
  is added for plugin models, with the lowest priority, exactly like RecBole's own model yaml.
- ``get_flops`` deep-copies the model and runs ``predict`` once; for a model with a frozen LLM backbone
  that doubles memory, so models that set ``skip_flops = True`` are reported with 0 FLOPs instead.

Multi-process training on CPUs: ``Config._init_device`` hard-codes NCCL and CUDA devices. When RecBole's
multi-process mode (``recbole.quick_start.run(..., nproc=N)``) starts on a machine without CUDA, or with
``distributed_backend: gloo``, the process group is opened with the gloo backend on the CPU instead, and
``DistributedDataParallel`` is built without CUDA ``device_ids``. Everything else is RecBole's own path.
"""

import contextlib
import functools
import importlib
import logging
import os
import sys
import warnings

import torch

VERSION_LIMITS = {
    # package: (exclusive upper bound, cause letter)
    "numpy": ((2,), "B/C"),
    "pandas": ((3,), "F"),
    "scipy": ((1, 13), "E"),
    "setuptools": ((82,), "A"),
}

_applied = False


def _version_tuple(version):
    parts = []
    for piece in version.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def check_environment():
    """Raise ``RuntimeError`` naming every installed package that breaks RecBole 1.2.1."""
    from importlib.metadata import PackageNotFoundError, version

    problems = []
    for package, (upper, cause) in VERSION_LIMITS.items():
        try:
            installed = version(package)
        except PackageNotFoundError:
            continue
        if _version_tuple(installed) >= upper:
            bound = ".".join(map(str, upper))
            problems.append(f"{package}=={installed} (cause {cause}; need {package}<{bound})")
    if problems:
        raise RuntimeError(
            "RecBole 1.2.1 cannot run with: " + "; ".join(problems)
            + ". Install the pinned versions: pip install 'numpy<2' 'pandas<3' 'scipy<1.13' 'setuptools>=77,<82'"
        )


@contextlib.contextmanager
def trusted_checkpoint_loading():
    """Within the block, ``torch.load`` unpickles full objects (cause D); RecBole wrote these files."""
    original_load = torch.load
    torch.load = functools.partial(original_load, weights_only=False)
    try:
        yield
    finally:
        torch.load = original_load


def _loads_trusted_checkpoints(function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with trusted_checkpoint_loading():
            return function(*args, **kwargs)

    wrapper.__wrapped_by_recbole_cllm4rec__ = True
    return wrapper


def _checks_plugin_model_data(function):
    """For a plugin model's checkpoint, a missing dataset is named instead of RecBole reaching for a download
    (of whatever dataset of the same name it knows); for any model, RecBole's numpy aliases are set first."""

    @functools.wraps(function)
    def load_data_and_model(model_file, *args, **kwargs):
        config = torch.load(model_file, map_location="cpu", weights_only=False)["config"]
        # RecBole sets its numpy aliases (np.float, ...) when it builds a Config, not when it unpickles one: without
        # this, NDCG fails in a fresh process that only loads a checkpoint
        config.compatibility_settings()
        interactions = os.path.join(config["data_path"], f"{config['dataset']}.inter")
        if config["model"] in PLUGIN_MODEL_FILES and not os.path.isfile(interactions):
            raise FileNotFoundError(f"{model_file}: its dataset is gone, {interactions} does not exist; put the atomic "
                                    f"files back there (the checkpoint records where they were)")
        return function(model_file, *args, **kwargs)

    return load_data_and_model


def _patch_checkpoint_loading():
    from recbole.trainer import trainer as trainer_module

    for name in ("resume_checkpoint", "evaluate"):
        method = getattr(trainer_module.Trainer, name)
        if not getattr(method, "__wrapped_by_recbole_cllm4rec__", False):
            setattr(trainer_module.Trainer, name, _loads_trusted_checkpoints(method))

    import recbole.quick_start as quick_start_package
    from recbole.quick_start import quick_start as quick_start_module

    original = quick_start_module.load_data_and_model
    if not getattr(original, "__wrapped_by_recbole_cllm4rec__", False):
        wrapped = _loads_trusted_checkpoints(_checks_plugin_model_data(original))
        quick_start_module.load_data_and_model = wrapped
        quick_start_package.load_data_and_model = wrapped


def _patch_get_flops():
    import recbole.utils as utils_package
    from recbole.quick_start import quick_start as quick_start_module
    from recbole.utils import utils as utils_module

    original = utils_module.get_flops
    if getattr(original, "__wrapped_by_recbole_cllm4rec__", False):
        return

    @functools.wraps(original)
    def get_flops(model, *args, **kwargs):
        if getattr(model, "skip_flops", False):
            logging.getLogger().info(
                "FLOPs not counted for %s: it would deep-copy a frozen LLM backbone.", type(model).__name__
            )
            return 0
        return original(model, *args, **kwargs)

    get_flops.__wrapped_by_recbole_cllm4rec__ = True
    for module in (utils_module, utils_package, quick_start_module):
        module.get_flops = get_flops


PLUGIN_MODEL_FILES = {}  # model name -> its default-hyperparameter yamls, or a function of the user's settings giving them


def _patch_config_defaults():
    from recbole.config import configurator

    original = configurator.Config._load_internal_config_dict
    if getattr(original, "__wrapped_by_recbole_cllm4rec__", False):
        return

    @functools.wraps(original)
    def load_internal_config_dict(self, model, model_class, dataset):
        original(self, model, model_class, dataset)
        defaults_files = PLUGIN_MODEL_FILES.get(model)
        if defaults_files is not None:
            # Same priority as RecBole's own model yaml: above overall.yaml and sample.yaml, below
            # RecBole's dataset yaml and below everything the user passes.
            if callable(defaults_files):
                defaults_files = defaults_files(self.external_config_dict, self.internal_config_dict)
            for defaults_file in defaults_files:
                self._update_internal_config_dict(defaults_file)
            recbole_dataset_file = os.path.join(
                os.path.dirname(os.path.realpath(configurator.__file__)), "../properties/dataset", dataset + ".yaml"
            )
            if os.path.isfile(recbole_dataset_file):
                self._update_internal_config_dict(recbole_dataset_file)

    load_internal_config_dict.__wrapped_by_recbole_cllm4rec__ = True
    configurator.Config._load_internal_config_dict = load_internal_config_dict


def _patch_cpu_distributed():
    from recbole.config import configurator
    from recbole.trainer import trainer as trainer_module

    original_init_device = configurator.Config._init_device
    if getattr(original_init_device, "__wrapped_by_recbole_cllm4rec__", False):
        return

    @functools.wraps(original_init_device)
    def init_device(self):
        settings = self.final_config_dict
        wants_gloo = settings.get("distributed_backend") == "gloo" or not torch.cuda.is_available()
        if "local_rank" not in settings or not wants_gloo:
            return original_init_device(self)
        if not torch.distributed.is_initialized():
            torch.distributed.init_process_group(
                backend="gloo",
                rank=settings["local_rank"] + settings.get("offset", 0),
                world_size=settings["world_size"],
                init_method=f"tcp://{settings['ip']}:{settings['port']}",
            )
        settings["gpu_id"] = ""
        settings["device"] = torch.device("cpu")
        settings["single_spec"] = False
        if settings["local_rank"] != 0:
            settings.update({"state": "error", "show_progress": False, "verbose": False})

    init_device.__wrapped_by_recbole_cllm4rec__ = True
    configurator.Config._init_device = init_device

    original_ddp = trainer_module.DistributedDataParallel

    def distributed_data_parallel(module, device_ids=None, **kwargs):
        on_cpu = all(parameter.device.type == "cpu" for parameter in module.parameters())
        return original_ddp(module, device_ids=None if on_cpu else device_ids, **kwargs)

    trainer_module.DistributedDataParallel = distributed_data_parallel


def ensure_dir(dir_path):
    os.makedirs(dir_path, exist_ok=True)


ENSURE_DIR_IMPORTERS = ("recbole.utils", "recbole.utils.utils", "recbole.utils.logger", "recbole.data.utils",
                        "recbole.data.dataset.dataset", "recbole.trainer.trainer")


def _patch_ensure_dir():
    for name in ENSURE_DIR_IMPORTERS:
        module = importlib.import_module(name)
        if hasattr(module, "ensure_dir"):
            module.ensure_dir = ensure_dir


GET_MODEL_IMPORTERS = ("recbole.utils.utils", "recbole.utils", "recbole.config.configurator",
                       "recbole.quick_start.quick_start")


@contextlib.contextmanager
def anomaly_detection_kept():
    """Cause H: whatever RecBole imports inside leaves autograd's anomaly detection as it was."""
    enabled = torch.is_anomaly_enabled()
    try:
        yield
    finally:
        torch.autograd.set_detect_anomaly(enabled)


def _patch_get_model_anomaly_detection():
    from recbole.utils import utils as utils_module

    original = utils_module.get_model
    if getattr(original, "__wrapped_by_recbole_cllm4rec__", False):
        return

    @functools.wraps(original)
    def get_model(model_name):
        with anomaly_detection_kept():
            return original(model_name)

    get_model.__wrapped_by_recbole_cllm4rec__ = True
    for name in GET_MODEL_IMPORTERS:
        module = importlib.import_module(name)
        if getattr(module, "get_model", None) is original:
            module.get_model = get_model


def register_model(model_class, trainer_class, defaults_files, kind="general_recommender"):
    """Make ``model_class`` reachable through RecBole's ``get_model``/``get_trainer``/``Config``. ``defaults_files``:
    yaml paths, or ``function(user settings, internal settings)`` returning them (a profile chosen per run)."""
    name = model_class.__name__
    module = sys.modules[model_class.__module__]
    sys.modules[f"recbole.model.{kind}.{name.lower()}"] = module
    importlib.import_module("recbole.trainer").__dict__[f"{name}Trainer"] = trainer_class
    PLUGIN_MODEL_FILES[name] = defaults_files if callable(defaults_files) else [os.fspath(path) for path in defaults_files]


def apply():
    """Apply every fix once; called when ``recbole_cllm4rec`` is imported."""
    global _applied
    if _applied:
        return
    check_environment()
    with warnings.catch_warnings():  # cause A's pin: ray's pkg_resources import warns while RecBole loads
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
        _patch_checkpoint_loading()
        _patch_get_flops()
        _patch_config_defaults()
        _patch_cpu_distributed()
        _patch_ensure_dir()
        _patch_get_model_anomaly_detection()
    _applied = True
